/**
 * A custom `CheckpointIO` given to the Strategy: the Effect counterpart of Lightning's
 * `Trainer(strategy=SingleDeviceStrategy(..., checkpoint_io=CustomCheckpointIO()))`.
 *
 * The same logging store as examples/custom-io-trainer.ts, this time over the memory
 * store: a whole run (checkpoints, retention, resume) happens without touching the disk.
 * The strategy owns the store, so every Trainer built on that strategy uses it; giving
 * a second store to the Trainer as well is a configuration error.
 *
 *   node examples/custom-io-strategy.ts
 *
 * The backend comes from EFFECT_TRAINER_BACKEND (auto, wasm, cpu, tensorflow).
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { Checkpoint, CheckpointIO, Device, MemoryCheckpointIO, ModelCheckpoint, Strategy, Trainer } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import { iris, irisData } from "./iris.ts"

// ---------------------------------------------------------------------------
// The custom store (as in custom-io-trainer.ts): logs and counts every call, then
// delegates to the CheckpointIO it is provided with.

const LoggingCheckpointIO = (
  counts: Map<string, number>
): Layer.Layer<CheckpointIO.CheckpointIO, never, CheckpointIO.CheckpointIO> =>
  Layer.effect(
    CheckpointIO.CheckpointIO,
    Effect.gen(function*() {
      const inner = yield* CheckpointIO.CheckpointIO
      const seen = (operation: CheckpointIO.Operation, what: string) =>
        Effect.sync(() => {
          counts.set(operation, (counts.get(operation) ?? 0) + 1)
          console.log(`[io] ${operation} ${what}`)
        })
      return CheckpointIO.make({
        save: (checkpoint, file, options) =>
          Effect.andThen(seen("save", `${file} (${Checkpoint.byteSize(checkpoint)} bytes)`), inner.save(checkpoint, file, options)),
        load: (file, options) => Effect.andThen(seen("load", file), inner.load(file, options)),
        remove: (file) => Effect.andThen(seen("remove", file), inner.remove(file)),
        exists: (file) => Effect.andThen(seen("exists", file), inner.exists(file)),
        list: (dir) => Effect.andThen(seen("list", dir), inner.list(dir)),
        copy: (source, target) => Effect.andThen(seen("copy", `${source} -> ${target}`), inner.copy(source, target)),
        flush: Effect.andThen(seen("flush", ""), inner.flush),
        // Passed on, or an asynchronous store's background failures and its path
        // identity would be replaced by the defaults (none; the path as given).
        takeFailures: inner.takeFailures,
        identify: inner.identify
      })
    })
  )

// ---------------------------------------------------------------------------
// The program

const counts = new Map<string, number>()
const data = irisData()

const program = Effect.gen(function*() {
  const trainer = yield* Trainer.Trainer
  // The Trainer took its storage from the strategy.
  console.log(`strategy has a custom CheckpointIO: ${trainer.strategy.checkpointIO !== undefined}`)
  console.log(`the Trainer uses the strategy's: ${trainer.checkpointIO === trainer.strategy.checkpointIO}`)

  yield* trainer.fit(iris, data)
  yield* trainer.saveCheckpoint("final.ckpt")

  // A second Trainer on the same strategy (three epochs in all) resumes from the
  // last.ckpt the first one wrote: a fresh ModelCheckpoint lists its directory at
  // setup, through the same store, and offers it for ckptPath "last".
  yield* Effect.scoped(Effect.gen(function*() {
    const checkpoint = yield* ModelCheckpoint.make({ dirpath: "ckpts", saveLast: true })
    const resumed = yield* Trainer.make({ maxEpochs: 3, logger: false, enableProgressBar: false, callbacks: [checkpoint] })
    yield* resumed.fit(iris, data, { ckptPath: "last" })
    console.log(`resumed from ${resumed.state.resumedFrom} and trained to step ${resumed.state.globalStep}`)
  }))

  // Everything is in memory: the store's bytes, by key.
  const { files } = yield* MemoryCheckpointIO.MemoryStore
  for (const [key, file] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    console.log(`stored: ${key} ${file.bytes.byteLength} bytes`)
  }

  // One store per run: giving one to the Trainer too is refused when it is built.
  const conflict = yield* Trainer.make({ logger: false, plugins: { checkpointIO: MemoryCheckpointIO.layer } }).pipe(
    Effect.scoped,
    Effect.flip
  )
  console.log(`both at once: ${conflict._tag}: ${conflict.message}`)
})

// The memory store, with its MemoryStore left as a requirement: provided below, so
// that the program can read the stored bytes.
const memoryIO = Layer.effect(CheckpointIO.CheckpointIO, MemoryCheckpointIO.make)

const main = Effect.gen(function*() {
  const checkpoint = yield* ModelCheckpoint.make({ dirpath: "ckpts", saveLast: true })
  const layers = Trainer.layer({ maxEpochs: 2, seed: 1, logger: false, callbacks: [checkpoint] }).pipe(
    // The custom store goes to the strategy.
    Layer.provideMerge(Strategy.singleDevice({ checkpointIO: LoggingCheckpointIO(counts).pipe(Layer.provide(memoryIO)) })),
    Layer.provideMerge(Device.layerConfig),
    Layer.provideMerge(MemoryCheckpointIO.MemoryStore.layer)
  )
  yield* program.pipe(Effect.provide(layers))
  const summary = ["save", "load", "exists", "list", "remove", "copy", "flush"].map((op) => `${op}=${counts.get(op) ?? 0}`)
  console.log(`custom IO saw: ${summary.join(" ")}`)
})

runMain(main.pipe(Effect.provide(NodeServices.layer)))
