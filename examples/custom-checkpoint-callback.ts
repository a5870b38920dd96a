/**
 * A custom checkpoint callback: a subclass of `Callback.Checkpoint` (Lightning's
 * `Checkpoint`) that saves every N optimizer steps and keeps the newest two, used
 * alongside `ModelCheckpoint` (which keeps the best epoch by validation accuracy).
 *
 * What the base class gives: the Trainer recognises the callback as a checkpoint
 * callback (`trainer.checkpointCallbacks`), runs it after every other callback (so it
 * sees the metrics they logged), and asks its `lastModelPath` for `ckptPath: "last"`.
 * The callback reaches storage through `trainer.checkpointIO` only, so it works on
 * any store: files, memory, async, yours.
 *
 *   node examples/custom-checkpoint-callback.ts [--root <dir>]
 *
 * The backend comes from EFFECT_TRAINER_BACKEND (auto, wasm, cpu, tensorflow).
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { Callback, Device, ModelCheckpoint, Strategy, Trainer } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { iris, irisData } from "./iris.ts"

const { values } = parseArgs({ options: { root: { type: "string" } } })
const root = path.resolve(values.root ?? fs.mkdtempSync(path.join(os.tmpdir(), "effect-trainer-callback-")))

// ---------------------------------------------------------------------------
// The callback

const stepFile = /^step=\d{6}\.ckpt$/

/** Saves `<dir>/step=000012.ckpt` every `every` optimizer steps and keeps the newest `keep`. */
class EveryNSteps extends Callback.Checkpoint implements Callback.Callback {
  readonly name = "EveryNSteps"
  readonly dir: string
  readonly every: number
  readonly keep: number
  #newest: string | undefined = undefined

  constructor(options: { readonly dir: string; readonly every: number; readonly keep: number }) {
    super()
    this.dir = options.dir
    this.every = options.every
    this.keep = options.keep
  }

  /** What `fit(..., { ckptPath: "last" })` resumes from. */
  override get lastModelPath(): string | undefined {
    return this.#newest
  }

  // Hooks are arrow-function properties: the Trainer calls them unbound.

  /** At setup, before the Trainer resolves `ckptPath`: find the newest file of an earlier run. */
  readonly setup: Callback.Hook<[stage: Callback.Stage]> = (trainer) =>
    Effect.map(trainer.checkpointIO.list(this.dir), (entries) => {
      // `list` is sorted by path, and the zero-padded step makes that the step order.
      this.#newest = entries.filter((e) => stepFile.test(path.basename(e.path))).at(-1)?.path ?? this.#newest
    })

  readonly onTrainBatchEnd: Callback.Hook<[output: Callback.TrainStepOutput, batchIdx: number]> = (trainer) =>
    trainer.globalStep % this.every === 0 ? this.#save(trainer) : Effect.void

  #save(trainer: Callback.TrainerState): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      const file = path.join(this.dir, `step=${String(trainer.globalStep).padStart(6, "0")}.ckpt`)
      // The Trainer decides what goes in (weights, optimizer, loops, callback states);
      // its CheckpointIO decides how it is stored.
      yield* trainer.saveCheckpoint(file)
      this.#newest = file
      // Remove old files only once the new one is committed: on AsyncCheckpointIO,
      // `exists` waits for the pending save (and reports one that failed).
      if (!(yield* trainer.checkpointIO.exists(file))) return
      const ours = (yield* trainer.checkpointIO.list(this.dir)).filter((e) => stepFile.test(path.basename(e.path)))
      for (const old of ours.slice(0, Math.max(0, ours.length - this.keep))) {
        // Never the checkpoint this run resumed from (a reader may still have it open).
        if (trainer.resumedFrom !== undefined && path.resolve(old.path) === path.resolve(trainer.resumedFrom)) continue
        yield* trainer.checkpointIO.remove(old.path)
      }
    })
  }
}

/** A plain callback, given first: the checkpoint callbacks still run after it. */
const printEpoch: Callback.Callback = {
  name: "PrintEpoch",
  onTrainEpochEnd: (trainer) => Effect.sync(() => console.log(`epoch ${trainer.currentEpoch} done at step ${trainer.globalStep}`))
}

// ---------------------------------------------------------------------------
// The program

const stepsDir = path.join(root, "steps")
const listSteps = () => fs.readdirSync(stepsDir).sort().join(", ")
const data = irisData()

const program = Effect.gen(function*() {
  // Two epochs of 6 steps: saves at steps 3, 6, 9 and 12; the newest two stay.
  const best = yield* ModelCheckpoint.make({
    dirpath: path.join(root, "best"),
    monitor: "val_acc",
    mode: "max",
    filename: "{epoch}-{val_acc:.3f}"
  })
  yield* Effect.scoped(Effect.gen(function*() {
    const trainer = yield* Trainer.make({
      maxEpochs: 2,
      seed: 1,
      logger: false,
      enableProgressBar: false,
      callbacks: [new EveryNSteps({ dir: stepsDir, every: 3, keep: 2 }), best, printEpoch]
    })
    console.log(`run order: ${trainer.callbacks.map((c) => c.name).join(", ")}`)
    console.log(`checkpoint callbacks: ${trainer.checkpointCallbacks.map((c) => c.name).join(", ")}`)
    yield* trainer.fit(iris, data)
  }))
  console.log(`steps/ after 2 epochs: ${listSteps()}`)
  console.log(`best by val_acc: ${path.basename(best.bestModelPath!)} (${best.bestModelScore})`)

  // A new Trainer (three epochs in all) resumes from the newest step checkpoint; a fresh
  // EveryNSteps finds it at setup. Saves at 15 and 18; step 12, resumed from, is kept.
  yield* Effect.scoped(Effect.gen(function*() {
    const trainer = yield* Trainer.make({
      maxEpochs: 3,
      logger: false,
      enableProgressBar: false,
      callbacks: [new EveryNSteps({ dir: stepsDir, every: 3, keep: 2 }), printEpoch]
    })
    yield* trainer.fit(iris, data, { ckptPath: "last" })
    console.log(`resumed from ${path.basename(trainer.state.resumedFrom!)}, trained to step ${trainer.state.globalStep}`)
  }))
  console.log(`steps/ after the resumed run: ${listSteps()}`)
  console.log(`files: ${root}`)
})

const layers = Strategy.singleDevice().pipe(
  Layer.provideMerge(Device.layerConfig),
  Layer.provideMerge(NodeServices.layer)
)

runMain(program.pipe(Effect.provide(layers)))
