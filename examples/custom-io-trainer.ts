/**
 * A custom `CheckpointIO` given to the Trainer: the Effect counterpart of Lightning's
 * `Trainer(plugins=[CustomCheckpointIO()])`.
 *
 * The custom store here logs and counts every call, then hands it to the file store
 * it wraps. It trains iris for a couple of epochs with a `ModelCheckpoint`, saves a
 * final checkpoint, loads it back, and prints what the store saw: every read, write,
 * listing and deletion of a checkpoint goes through the store, the callback's too.
 *
 *   node examples/custom-io-trainer.ts [--root <dir>] [--max-epochs 2]
 *
 * The backend comes from EFFECT_TRAINER_BACKEND (auto, wasm, cpu, tensorflow).
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer, Option } from "effect"
import { Checkpoint, CheckpointIO, Device, FileCheckpointIO, ModelCheckpoint, Strategy, Trainer } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { iris, irisData } from "./iris.ts"

const { values } = parseArgs({
  options: {
    root: { type: "string" },
    "max-epochs": { type: "string", default: "2" }
  }
})
// A fresh directory per run unless one is given, so that every run starts empty.
const root = path.resolve(values.root ?? fs.mkdtempSync(path.join(os.tmpdir(), "effect-trainer-custom-io-")))

// ---------------------------------------------------------------------------
// The custom store

/**
 * Logs and counts every call, then delegates to the `CheckpointIO` this layer is
 * provided with. The layer's type says so: it provides a `CheckpointIO` and needs one.
 * `CheckpointIO.make` builds the service from its operations (`flush` and `copy` have
 * defaults; they are passed through here so that the wrapped store's own versions run).
 */
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
          Effect.andThen(
            seen("save", `${file} (${Object.keys(checkpoint.tensors).length} tensors, ${Checkpoint.byteSize(checkpoint)} bytes)`),
            inner.save(checkpoint, file, options)
          ),
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

const program = Effect.gen(function*() {
  const trainer = yield* Trainer.Trainer
  yield* trainer.fit(iris, irisData())
  const final = path.join(root, "final.ckpt")
  yield* trainer.saveCheckpoint(final)
  // trainer.checkpointIO is the custom store: this load is logged too.
  const loaded = yield* trainer.checkpointIO.load(final)
  const meta = Option.getOrThrow(loaded.meta) // None only for files other tools wrote
  console.log(`loaded ${final}: epoch ${meta.epoch}, step ${meta.globalStep}, ${Object.keys(loaded.tensors).length} tensors`)
  const kept = yield* trainer.checkpointIO.list(path.join(root, "checkpoints"))
  console.log(`kept by ModelCheckpoint: ${kept.map((e) => path.basename(e.path)).join(", ")}`)
})

const main = Effect.gen(function*() {
  // Keep the newest epoch checkpoint and a last.ckpt: that makes the callback list,
  // check, save and remove, all through the custom store.
  const checkpoint = yield* ModelCheckpoint.make({ saveTopK: 1, saveLast: true })
  const layers = Trainer.layer({
    maxEpochs: Number(values["max-epochs"]),
    defaultRootDir: root,
    seed: 1,
    logger: false,
    callbacks: [checkpoint],
    // The custom store, over the default file store. Any Layer<CheckpointIO> fits here.
    plugins: { checkpointIO: LoggingCheckpointIO(counts).pipe(Layer.provide(FileCheckpointIO.layerNode)) }
  }).pipe(
    Layer.provideMerge(Strategy.singleDevice()),
    Layer.provideMerge(Device.layerConfig)
  )
  yield* program.pipe(Effect.provide(layers))
  // The layers are closed here: every save is on disk.
  const summary = ["save", "load", "exists", "list", "remove", "copy", "flush"].map((op) => `${op}=${counts.get(op) ?? 0}`)
  console.log(`custom IO saw: ${summary.join(" ")}`)
  console.log(`files: ${root}`)
})

runMain(main.pipe(Effect.provide(NodeServices.layer)))
