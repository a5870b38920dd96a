/**
 * The program of the DataParallel tests: an ordinary Effect program (iris, a small
 * MLP, the Trainer with a last-checkpoint callback), whose data-parallel strategy
 * re-runs this module in each worker with the run's config in argv.
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import * as Callback from "../../src/Callback.ts"
import { CheckpointIO } from "../../src/CheckpointIO.ts"
import * as DataParallel from "../../src/DataParallel.ts"
import * as Device from "../../src/Device.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import * as Strategy from "../../src/Strategy.ts"
import * as Trainer from "../../src/Trainer.ts"
import { irisClassifier, irisData } from "./iris.ts"

export interface Config {
  /** 0: `Strategy.singleDevice()`; n ≥ 1: `dataParallel({ devices: n })`. */
  readonly devices: number
  readonly maxSteps: number
  readonly root: string
  readonly ckptPath?: string | undefined
  /** Rank `rank` fails (a typed hook error) at this global step. */
  readonly failAt?: { readonly rank: number; readonly step: number } | undefined
  /** Rank `rank` crashes (an uncaught exception in its thread) at this global step. */
  readonly crashAt?: { readonly rank: number; readonly step: number } | undefined
}

/** What rank 0 returns. */
export interface Result {
  readonly weights: ReadonlyArray<Float32Array>
  readonly globalStep: number
  readonly metrics: ReadonlyMap<string, number>
}

const rank = DataParallel.replica?.rank ?? 0

/** A CheckpointIO that records which rank saved what (in `${root}/saves.log`). */
const recordingIO = (root: string) =>
  Layer.effect(
    CheckpointIO,
    Effect.map(FileCheckpointIO.make, (io) => ({
      ...io,
      save: (record, p, options) =>
        Effect.andThen(Effect.sync(() => fs.appendFileSync(path.join(root, "saves.log"), `${rank} ${p}\n`)), io.save(record, p, options))
    }))
  )

const faults = (config: Config): Callback.Callback => ({
  name: "faults",
  onTrainBatchEnd: (state) =>
    Effect.suspend(() => {
      if (config.failAt?.rank === rank && state.globalStep === config.failAt.step) {
        return Effect.fail(new Callback.CallbackError({ callback: "faults", reason: `injected failure on rank ${rank}` }))
      }
      if (config.crashAt?.rank === rank && state.globalStep === config.crashAt.step) {
        setImmediate(() => {
          throw new Error(`injected crash on rank ${rank}`)
        })
        // Stay in the step until the crash ends the thread.
        return Effect.never
      }
      return Effect.void
    })
})

/** Trains and returns rank 0's weights, step count and metrics; `extra` callbacks run on rank 0 only. */
export const run = (config: Config, extra: ReadonlyArray<Callback.Callback> = []) =>
  Effect.gen(function*() {
    const checkpoint = yield* ModelCheckpoint.make({
      dirpath: path.join(config.root, "checkpoints"),
      saveLast: true,
      saveTopK: 0,
      saveOnException: true
    })
    const strategy = config.devices === 0
      ? Strategy.singleDevice()
      : Strategy.dataParallel({ devices: config.devices, entry: import.meta.url, argv: [JSON.stringify(config)] })
    const layers = Trainer.layer({
      maxSteps: config.maxSteps,
      seed: 3,
      enableProgressBar: false,
      logger: false,
      enableModelSummary: false,
      numSanityValSteps: 0,
      defaultRootDir: config.root,
      callbacks: [checkpoint, faults(config), ...(rank === 0 ? extra : [])]
    }).pipe(
      Layer.provideMerge(strategy),
      Layer.provideMerge(Device.layer("cpu")),
      Layer.provideMerge(recordingIO(config.root)),
      Layer.provideMerge(NodeServices.layer)
    )
    return yield* Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      const module = irisClassifier("ddp")
      yield* trainer.fit(module, irisData(), config.ckptPath === undefined ? {} : { ckptPath: config.ckptPath })
      const model = yield* Effect.fromOption(trainer.model(module))
      return {
        weights: model.weights.map((w) => Float32Array.from(w.read().dataSync() as Float32Array)),
        globalStep: trainer.state.globalStep,
        metrics: new Map(trainer.state.callbackMetrics)
      } satisfies Result
    }).pipe(Effect.provide(layers))
  })

if (DataParallel.replica !== undefined) {
  NodeRuntime.runMain(run(JSON.parse(process.argv[2]!) as Config), { disableErrorReporting: true })
}
