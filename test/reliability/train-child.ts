/**
 * A child process for the crash and interruption harnesses: trains a small model on
 * seeded synthetic data with `ModelCheckpoint(saveLast, everyNTrainSteps, saveTopK 2)`
 * through `FileCheckpointIO` (sync) or `AsyncCheckpointIO` over it (async), into
 * `--dir`, and writes a journal of every storage operation to stdout as it happens.
 *
 *   node test/reliability/train-child.ts --dir D [--io sync|async] [--every 2] [--max-steps N]
 *        [--resume] [--save-last true|link] [--hidden 256] [--save-on-exception]
 *
 * Journal lines start with `J ` and hold one JSON object each. They are written with
 * `fs.writeSync(1, …)` (synchronous on a pipe), so a line printed before a SIGKILL is
 * never lost, and a line about a save is printed when the store below
 * `AsyncCheckpointIO` actually begins or finishes it:
 * - `{"op":"fit-start","resumedFrom":string|null,"step":n,"pid":p}`
 * - `{"op":"save-begin"|"save-end"|"save-fail","path":p,"step":n}`
 * - `{"op":"copy-begin"|"copy-end"|"copy-fail","source":s,"path":p}`
 * - `{"op":"remove-begin"|"remove-end"|"remove-fail","path":p}`
 * - `{"op":"done","step":n}` when fit returned
 * - `{"op":"released","live":bool,"tensors":n}` after the Device was released (also on
 *   interruption: SIGINT / SIGTERM go through `NodeRuntime.runMain`).
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import * as tf from "@tensorflow/tfjs"
import { Effect, Layer } from "effect"
import { writeSync } from "node:fs"
import { parseArgs } from "node:util"
import * as AsyncCheckpointIO from "../../src/AsyncCheckpointIO.ts"
import type * as Callback from "../../src/Callback.ts"
import { CheckpointIO } from "../../src/CheckpointIO.ts"
import * as DataModule from "../../src/DataModule.ts"
import * as Device from "../../src/Device.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import * as Random from "../../src/Random.ts"
import * as Strategy from "../../src/Strategy.ts"
import * as Trainer from "../../src/Trainer.ts"
import type { TrainingModule } from "../../src/TrainingModule.ts"
import { journaling } from "./support.ts"

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    io: { type: "string", default: "sync" },
    every: { type: "string", default: "2" },
    "max-steps": { type: "string", default: "100000" },
    resume: { type: "boolean", default: false },
    "save-last": { type: "string", default: "true" },
    hidden: { type: "string", default: "256" },
    "save-on-exception": { type: "boolean", default: false },
    backend: { type: "string", default: "wasm" }
  }
})
if (values.dir === undefined) throw new Error("--dir is required")
const dirpath = values.dir

const journal = (entry: Record<string, unknown>) => {
  writeSync(1, `J ${JSON.stringify(entry)}\n`)
}

/** Synthetic 4-class data from a seeded linear teacher: 128 rows, 16 features, 8 batches of 16. */
const synthetic = (): DataModule.DataModule<DataModule.XY> => {
  const rows = 128
  const features = 16
  let state = 12345
  const draw = () => {
    const [s, r] = Random.next(state)
    state = s
    return r * 2 - 1
  }
  const x = new Float32Array(rows * features)
  for (let i = 0; i < x.length; i++) x[i] = draw()
  const teacher = Array.from({ length: features * 4 }, draw)
  const labels: Array<number> = []
  for (let r = 0; r < rows; r++) {
    let best = 0
    let bestScore = -Infinity
    for (let c = 0; c < 4; c++) {
      let score = 0
      for (let f = 0; f < features; f++) score += x[r * features + f]! * teacher[f * 4 + c]!
      if (score > bestScore) [best, bestScore] = [c, score]
    }
    labels.push(best)
  }
  return DataModule.fromArrays(
    { x: { dtype: "F32", shape: [rows, features], data: x }, y: DataModule.oneHot(labels, 4) },
    { batchSize: 16, seed: 3, valFraction: 0, testFraction: 0 }
  )
}

const hidden = Number(values.hidden)
const classifier: TrainingModule<DataModule.XY> = {
  name: "synthetic",
  hyperParameters: { hidden },
  configureModel: (t) =>
    t.sequential({
      layers: [
        t.layers.dense({
          units: hidden,
          activation: "relu",
          inputShape: [16],
          name: "in",
          kernelInitializer: t.initializers.glorotUniform({ seed: 1 })
        }),
        t.layers.dense({ units: hidden, activation: "relu", name: "mid", kernelInitializer: t.initializers.glorotUniform({ seed: 2 }) }),
        t.layers.dense({ units: 4, name: "out", kernelInitializer: t.initializers.glorotUniform({ seed: 3 }) })
      ]
    }),
  configureOptimizers: (t) => t.train.adam(0.01),
  trainingStep: (model, batch, ctx) =>
    ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as tf.Tensor) as tf.Scalar
}

/** Logs every storage operation of the store below it, when it really happens. */
const journaled: Layer.Layer<CheckpointIO, never, CheckpointIO> = Layer.effect(
  CheckpointIO,
  Effect.map(CheckpointIO, (base) => journaling(base, journal))
)

const store = journaled.pipe(Layer.provide(FileCheckpointIO.layerNode))
const io = values.io === "async" ? AsyncCheckpointIO.layer().pipe(Layer.provide(store)) : store

const announcer: Callback.Callback = {
  name: "announcer",
  onTrainStart: (t) =>
    Effect.sync(() => journal({ op: "fit-start", resumedFrom: t.resumedFrom ?? null, step: t.globalStep, pid: process.pid }))
}

const program = Effect.gen(function*() {
  const checkpoint = yield* ModelCheckpoint.make({
    dirpath,
    monitor: "loss",
    mode: "min",
    saveTopK: 2,
    saveLast: values["save-last"] === "link" ? "link" : true,
    everyNTrainSteps: Number(values.every),
    saveOnException: values["save-on-exception"]
  })
  const layers = Trainer.layer({
    maxSteps: Number(values["max-steps"]),
    seed: 5,
    numSanityValSteps: 0,
    enableProgressBar: false,
    logger: false,
    defaultRootDir: dirpath,
    callbacks: [announcer, checkpoint],
    plugins: { checkpointIO: io }
  }).pipe(
    Layer.provideMerge(Strategy.singleDevice()),
    Layer.provideMerge(Device.layer(values.backend === "cpu" ? "cpu" : "wasm"))
  )
  yield* Effect.gen(function*() {
    const trainer = yield* Trainer.Trainer
    yield* trainer.fit(classifier, synthetic(), values.resume ? { ckptPath: "last" } : {})
    yield* trainer.checkpointIO.flush
    journal({ op: "done", step: trainer.state.globalStep })
  }).pipe(Effect.provide(layers))
}).pipe(
  // Runs once the layers above (the Device among them) are released.
  Effect.ensuring(Effect.sync(() => {
    const live = (globalThis as unknown as Record<symbol, unknown>)[Symbol.for("effect-trainer/Device/live")] !== undefined
    journal({ op: "released", live, tensors: tf.memory().numTensors })
  }))
)

NodeRuntime.runMain(program.pipe(Effect.provide(NodeServices.layer)))
