/**
 * Evaluating checkpoints, Lightning-style: `trainer.test(module, data, { ckptPath:
 * "best" })` after a fit, then `Inference.loadFromCheckpoint` to get the best weights
 * into a fresh model for inference, outside any Trainer.
 *
 * It trains iris for a few epochs keeping the best checkpoint by validation accuracy,
 * tests the best weights (not the last ones), loads the same checkpoint into a new
 * model and checks both give the same predictions, then shows a non-strict load into a
 * model with one layer more (its weights are reported as missing).
 *
 *   node examples/evaluate-best.ts [--root <dir>] [--max-epochs 4]
 *
 * The backend comes from EFFECT_TRAINER_BACKEND (auto, wasm, cpu, tensorflow).
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer, Option } from "effect"
import { Device, FileCheckpointIO, Inference, ModelCheckpoint, Strategy, Trainer } from "effect-trainer"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { iris, irisData } from "./iris.ts"

const { values } = parseArgs({
  options: {
    root: { type: "string" },
    "max-epochs": { type: "string", default: "4" }
  }
})
const root = path.resolve(values.root ?? fs.mkdtempSync(path.join(os.tmpdir(), "effect-trainer-evaluate-")))

const program = Effect.gen(function*() {
  const checkpoint = yield* ModelCheckpoint.make({ monitor: "val_acc", mode: "max", saveTopK: 1, saveLast: true })
  const trainer = yield* Trainer.make({
    maxEpochs: Number(values["max-epochs"]),
    defaultRootDir: root,
    seed: 1,
    logger: false,
    enableProgressBar: false,
    callbacks: [checkpoint]
  })
  const data = irisData()
  yield* trainer.fit(iris, data)
  console.log(`best: ${path.basename(checkpoint.bestModelPath ?? "none")} (val_acc ${checkpoint.bestModelScore})`)

  // Lightning's trainer.test(ckpt_path="best"): the best checkpoint's weights are
  // loaded into the module's model, then the test loop runs.
  const metrics = yield* trainer.test(iris, data, { ckptPath: "best" })
  console.log(`test_acc of the best checkpoint: ${metrics.get("test_acc")?.toFixed(4)}`)

  // Lightning's load_from_checkpoint: a fresh model with the checkpoint's weights
  // (through the CheckpointIO and on the Device in context).
  const { model } = yield* Inference.loadFromCheckpoint(iris, checkpoint.bestModelPath!)
  const tested = Option.getOrThrow(trainer.model(iris))
  const probe = model.getWeights().every((w, i) => {
    const a = w.dataSync()
    const b = tested.getWeights()[i]!.dataSync()
    return a.length === b.length && a.every((v, j) => v === b[j])
  })
  console.log(`loadFromCheckpoint gives the tested weights: ${probe}`)

  // Non-strict: a model with one more layer gets what matches; the rest is reported.
  const wider = {
    ...iris,
    name: "iris-wider",
    configureModel: (t: typeof tf) =>
      t.sequential({
        layers: [
          t.layers.dense({ units: 16, activation: "relu", inputShape: [4], name: "hidden" }),
          t.layers.dense({ units: 3, name: "out" }),
          t.layers.dense({ units: 3, name: "head" })
        ]
      })
  }
  const strict = yield* Effect.flip(Inference.loadFromCheckpoint(wider, checkpoint.bestModelPath!))
  console.log(`strict: ${strict._tag}: ${strict.message}`)
  const partial = yield* Inference.loadFromCheckpoint(wider, checkpoint.bestModelPath!, { strict: false })
  console.log(`non-strict missing: ${partial.missing.join(", ")}`)
})

const layers = Layer.mergeAll(Strategy.singleDevice(), FileCheckpointIO.layerNode).pipe(Layer.provideMerge(Device.layerConfig))

NodeRuntime.runMain(program.pipe(Effect.scoped, Effect.provide(layers), Effect.provide(NodeServices.layer)))
