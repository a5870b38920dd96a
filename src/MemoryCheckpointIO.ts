/**
 * `MemoryCheckpointIO`: a `CheckpointIO` that keeps checkpoints in memory, for tests
 * (ours and yours).
 *
 * It stores each checkpoint encoded exactly as the file store writes it, through the
 * same codec, so it has the same semantics: the same validation on save, the same
 * checks and typed errors on load, atomic replacement, `list` in path order. The
 * `MemoryStore` behind it is a service of its own, so a test can look at or tamper
 * with the stored bytes (to check corruption handling) and control modification
 * times (they come from the `Clock`, so `TestClock` drives them).
 *
 * Paths are keys; they are normalised as POSIX paths (`a/./b` and `a/b` are one
 * checkpoint, and `identify` returns that key) and `list(dir)` lists the keys
 * directly under `dir`.
 *
 * @since 0.1.0
 */
import { Clock, Context, Effect, Layer } from "effect"
import * as posix from "node:path/posix"
import {
  checkPath,
  CheckpointInvalidArgument,
  CheckpointIO,
  type CheckpointIOShape,
  CheckpointNotFound,
  make as CheckpointIOMake,
  type Operation
} from "./CheckpointIO.ts"
import * as SafeTensors from "./SafeTensors.ts"

/** One stored checkpoint: its encoded bytes and modification time (epoch millis). */
export interface StoredFile {
  readonly bytes: Uint8Array
  readonly modifiedAt: number
}

/** The bytes behind a `MemoryCheckpointIO`, by normalised path. */
export class MemoryStore extends Context.Service<MemoryStore, {
  readonly files: Map<string, StoredFile>
}>()("effect-trainer/MemoryCheckpointIO/MemoryStore") {
  /** A fresh, empty store. */
  static readonly layer: Layer.Layer<MemoryStore> = Layer.sync(MemoryStore, () => ({ files: new Map() }))
}

/** Normalises a checkpoint path the way the memory store keys it. */
export const normalize = (path: string): string => {
  const normal = posix.normalize(path)
  return normal.length > 1 && normal.endsWith("/") ? normal.slice(0, -1) : normal
}

const bytesSink = (size: number) => {
  const bytes = new Uint8Array(size)
  let position = 0
  const sink: SafeTensors.ByteSink<never> = {
    write: (chunk) =>
      Effect.sync(() => {
        bytes.set(chunk, position)
        position += chunk.byteLength
      }),
    writeAt: (at, chunk) => Effect.sync(() => bytes.set(chunk, at))
  }
  return { bytes, sink }
}

/** Builds the service over the `MemoryStore` in context. */
export const make: Effect.Effect<CheckpointIOShape, never, MemoryStore> = Effect.gen(function*() {
  const { files } = yield* MemoryStore

  const key = (operation: Operation, path: string) => {
    const normal = normalize(path)
    return normal === "." || normal === "/"
      ? Effect.fail(new CheckpointInvalidArgument({ operation, path, reason: "a checkpoint path must name a file" }))
      : Effect.as(checkPath(operation, path), normal)
  }

  const save: CheckpointIOShape["save"] = Effect.fn("MemoryCheckpointIO.save")(function*(checkpoint, path) {
    const target = yield* key("save", path)
    const planned = yield* SafeTensors.plan(checkpoint, target)
    const { bytes, sink } = bytesSink(planned.size)
    yield* SafeTensors.write(planned, sink)
    const modifiedAt = yield* Clock.currentTimeMillis
    files.set(target, { bytes, modifiedAt })
  })

  const load: CheckpointIOShape["load"] = Effect.fn("MemoryCheckpointIO.load")(function*(path, options) {
    const target = yield* key("load", path)
    const file = files.get(target)
    if (file === undefined) return yield* new CheckpointNotFound({ operation: "load", path: target })
    return yield* SafeTensors.read(SafeTensors.bytesSource(file.bytes), target, options)
  })

  const remove: CheckpointIOShape["remove"] = Effect.fn("MemoryCheckpointIO.remove")(function*(path) {
    const target = yield* key("remove", path)
    files.delete(target)
  })

  const exists: CheckpointIOShape["exists"] = Effect.fn("MemoryCheckpointIO.exists")(function*(path) {
    const target = yield* key("exists", path)
    return files.has(target)
  })

  const copy: CheckpointIOShape["copy"] = Effect.fn("MemoryCheckpointIO.copy")(function*(source, target) {
    const from = yield* key("copy", source)
    const to = yield* key("copy", target)
    const file = files.get(from)
    if (file === undefined) return yield* new CheckpointNotFound({ operation: "copy", path: from })
    // Stored bytes are never changed in place (a save replaces the entry), so sharing them is a link.
    files.set(to, file)
  })

  const list: CheckpointIOShape["list"] = Effect.fn("MemoryCheckpointIO.list")(function*(dir) {
    const target = normalize(dir)
    return [...files.entries()]
      .filter(([path]) => posix.dirname(path) === target)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([path, file]) => ({ path, modifiedAt: file.modifiedAt, size: file.bytes.byteLength }))
  })

  // The same key as every operation uses: `a/./b.ckpt` and `a/b.ckpt` are one checkpoint.
  const identify: CheckpointIOShape["identify"] = (path) => Effect.succeed(normalize(path))

  return CheckpointIOMake({ save, load, remove, exists, list, copy, identify })
})

/**
 * The memory store over the `MemoryStore` in context. Use it where a layer is built
 * for you (a Trainer's `plugins.checkpointIO`, a Strategy's `checkpointIO`) and the
 * test still wants the bytes: provide `MemoryStore.layer` to the program, and the
 * test reads the same `MemoryStore`.
 */
export const layerFromStore: Layer.Layer<CheckpointIO, never, MemoryStore> = Layer.effect(CheckpointIO, make)

/** The memory store with the `MemoryStore` exposed, for tests that inspect bytes. */
export const layerWithStore: Layer.Layer<CheckpointIO | MemoryStore> = layerFromStore.pipe(
  Layer.provideMerge(MemoryStore.layer)
)

/** A fresh, empty memory store. */
export const layer: Layer.Layer<CheckpointIO> = layerWithStore
