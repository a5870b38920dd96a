/**
 * `RecordingCheckpointIO`: a store that records every call it receives, then passes
 * it to the `CheckpointIO` it wraps. For tests that check which store a program
 * uses and what it asks of it ("two saves, one remove, nothing loaded"), and for
 * seeing what a checkpoint callback does on any store.
 *
 * @example
 * ```ts
 * const { calls, layer } = RecordingCheckpointIO.make()
 * const io = layer.pipe(Layer.provide(MemoryCheckpointIO.layer))
 * // … run the program with `io`, then:
 * assert.deepStrictEqual(calls.map((c) => c.operation), ["exists", "save"])
 * ```
 *
 * @since 0.2.0
 */
import { Effect, Layer } from "effect"
import { CheckpointIO, type CheckpointIOShape, type Operation } from "../CheckpointIO.ts"

/**
 * One call the store received: the operation and its path (`source -> target` for
 * `copy`, the directory for `list`, empty for `flush`).
 *
 * @since 0.2.0
 */
export interface Call {
  readonly operation: Operation
  readonly path: string
}

/**
 * Wraps `inner`, appending each call to `calls` before running it.
 *
 * @since 0.2.0
 */
export const wrap = (inner: CheckpointIOShape, calls: Array<Call>): CheckpointIOShape => {
  const record = (operation: Operation, path: string) => Effect.sync(() => void calls.push({ operation, path }))
  return {
    ...inner,
    save: (checkpoint, path, options) => Effect.andThen(record("save", path), inner.save(checkpoint, path, options)),
    load: (path, options) => Effect.andThen(record("load", path), inner.load(path, options)),
    remove: (path) => Effect.andThen(record("remove", path), inner.remove(path)),
    exists: (path) => Effect.andThen(record("exists", path), inner.exists(path)),
    list: (dir) => Effect.andThen(record("list", dir), inner.list(dir)),
    copy: (source, target) => Effect.andThen(record("copy", `${source} -> ${target}`), inner.copy(source, target)),
    flush: Effect.andThen(record("flush", ""), inner.flush)
  }
}

/**
 * A recording store over the `CheckpointIO` its layer is provided with, and the
 * array it records into (shared by every build of the layer).
 *
 * @since 0.2.0
 */
export const make = (): {
  readonly calls: Array<Call>
  readonly layer: Layer.Layer<CheckpointIO, never, CheckpointIO>
} => {
  const calls: Array<Call> = []
  return { calls, layer: Layer.effect(CheckpointIO, Effect.map(Effect.service(CheckpointIO), (inner) => wrap(inner, calls))) }
}

/**
 * How many calls of each operation were recorded.
 *
 * @since 0.2.0
 */
export const counts = (calls: ReadonlyArray<Call>): Record<Operation, number> => {
  const out: Record<Operation, number> = { save: 0, load: 0, remove: 0, exists: 0, list: 0, flush: 0, copy: 0 }
  for (const call of calls) out[call.operation]++
  return out
}
