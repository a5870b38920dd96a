/**
 * `AsyncCheckpointIO`: saves in the background while training goes on.
 *
 * A scoped Layer that wraps any `CheckpointIO` (the one it is provided with: the file
 * store, the memory store, your own) and runs its saves on a bounded pool of fibers.
 * It keeps Lightning's `AsyncCheckpointIO` idea and leaves out its known defects:
 *
 * - `save` returns once the pool owns a snapshot of the checkpoint (a copy, or the
 *   caller's buffers with `snapshot: "transfer"`); changing the caller's arrays
 *   afterwards never changes what is written.
 * - At most `maxPending` checkpoints are held in memory (default 2); a further
 *   `save` waits for room instead of growing memory. At most `concurrency` saves
 *   write at once (default 1).
 * - Operations on one path keep their order: `load`, `exists` and `remove` of a
 *   path wait for its pending saves, so a save followed by a remove leaves no file
 *   and a load right after a save finds it. Two saves of one path commit in order.
 *   "One path" is the wrapped store's `identify`: a relative and an absolute
 *   spelling, or a directory reached through a symlink, are one path on the file
 *   store. `list` shows committed checkpoints only.
 * - A failed background save never fails an unrelated call: every operation fails
 *   only for itself (an `exists` of the failed path answers `false`). The failures
 *   are handed out exactly once, by `takeFailures` (at once, as a list naming each
 *   file and reason; what `ModelCheckpoint` calls at each save event) or by `flush`
 *   (after waiting, as `BackgroundSaveFailed`); the saves after one work as usual.
 * - `flush` waits for everything accepted so far. Closing the Layer's scope refuses
 *   new saves (`CheckpointInvalidArgument`: the pool is closed), flushes for at most
 *   `closeTimeout` (default 60 s; then it logs and interrupts the writes left), then
 *   the wrapped store's own scope closes (its teardown runs). A save is atomic in the
 *   wrapped store, so an interrupted one leaves no file under its final name. A save
 *   that fails before it is queued (a bad snapshot, a closed pool, an interruption
 *   while waiting for room) gives its room back and leaves no pending entry.
 * - Checksums run on a worker thread (`ChecksumWorker`), so the main thread, where
 *   training runs, only orchestrates I/O that itself runs off-thread.
 * - Each background save is a span (`AsyncCheckpointIO.write`, with the path, bytes
 *   and time queued) and updates the metrics `checkpoint_async_queued_ms`,
 *   `checkpoint_async_write_ms` and `checkpoint_async_bytes`.
 *
 * @example
 * ```ts
 * const io = AsyncCheckpointIO.layer({ maxPending: 2 }).pipe(Layer.provide(FileCheckpointIO.layerNode))
 * ```
 *
 * @since 0.1.0
 */
import { Cause, Clock, Deferred, Duration, Effect, FiberSet, Layer, Metric, Option, Semaphore } from "effect"
import { arrayConstructor, type Checkpoint, type HostTensor, type TensorData } from "./Checkpoint.ts"
import {
  type BackgroundFailure,
  BackgroundSaveFailed,
  checkPath,
  CheckpointInvalidArgument,
  CheckpointIO,
  type CheckpointIOError,
  type CheckpointIOShape,
  CheckpointStorageError,
  type SaveOptions
} from "./CheckpointIO.ts"
import * as ChecksumWorker from "./ChecksumWorker.ts"
import * as FileCheckpointIO from "./FileCheckpointIO.ts"
import * as SafeTensors from "./SafeTensors.ts"

/** Options of the background pool. */
export interface Options {
  /** Saves that write at the same time (default 1). */
  readonly concurrency?: number | undefined
  /** Checkpoints held in memory at most, queued or writing (default 2). */
  readonly maxPending?: number | undefined
  /** Checksum on a worker thread (default true). */
  readonly checksumWorker?: boolean | undefined
  /**
   * How long closing the Layer's scope waits for pending saves (default 60 seconds):
   * after that it logs an error and interrupts the writes left (each leaves no file
   * under its final name), so a hung write cannot hang the program's exit.
   */
  readonly closeTimeout?: Duration.Input | undefined
}

const queuedMs = Metric.histogram("checkpoint_async_queued_ms", {
  description: "Time a background checkpoint save waited before writing",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 16 })
})
const writeMs = Metric.histogram("checkpoint_async_write_ms", {
  description: "Time a background checkpoint save spent writing",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 16 })
})
const bytesSaved = Metric.counter("checkpoint_async_bytes", {
  description: "Bytes of tensor data saved in the background"
})

/** Takes the tensors out of the caller's hands: copied, or their buffers transferred. */
const snapshotTensors = (
  tensors: Readonly<Record<string, HostTensor>>,
  mode: "copy" | "transfer"
): Record<string, HostTensor> => {
  const out: Record<string, HostTensor> = Object.create(null)
  // Offsets first: a view of a transferred buffer reads as empty afterwards.
  const views = Object.entries(tensors).map(([name, t]) => ({ name, t, offset: t.data.byteOffset, length: t.data.length }))
  const moved = new Map<ArrayBufferLike, ArrayBuffer | undefined>()
  if (mode === "transfer") {
    for (const { t } of views) {
      const buffer = t.data.buffer
      if (moved.has(buffer)) continue
      let target: ArrayBuffer | undefined
      if (buffer instanceof ArrayBuffer && (buffer as { detached?: boolean }).detached !== true) {
        try {
          target = (buffer as ArrayBuffer & { transfer: () => ArrayBuffer }).transfer()
        } catch {
          target = undefined // not transferable (a pooled Buffer, wasm memory): copied below
        }
      }
      moved.set(buffer, target)
    }
  }
  for (const { length, name, offset, t } of views) {
    const target = moved.get(t.data.buffer)
    const data: TensorData = target !== undefined
      ? new arrayConstructor[t.dtype](target, offset, length)
      : t.data.slice()
    out[name] = { ...t, data } as HostTensor
  }
  return out
}

const tensorBytes = (tensors: Readonly<Record<string, HostTensor>>) => {
  let n = 0
  for (const name in tensors) n += tensors[name]!.data.byteLength
  return n
}

/** The pool over the `CheckpointIO` in context. */
export const make = (options?: Options) =>
  Effect.gen(function*() {
    const base = yield* CheckpointIO
    const concurrency = options?.concurrency ?? 1
    const maxPending = options?.maxPending ?? 2
    for (const [name, value] of [["concurrency", concurrency], ["maxPending", maxPending]] as const) {
      if (!Number.isInteger(value) || value < 1) {
        return yield* new CheckpointInvalidArgument({
          operation: "save",
          path: "",
          reason: `AsyncCheckpointIO option ${name} must be a positive integer, got ${value}`
        })
      }
    }
    const closeTimeout = Duration.fromInput(options?.closeTimeout ?? "60 seconds")
    if (Option.isNone(closeTimeout)) {
      return yield* new CheckpointInvalidArgument({
        operation: "flush",
        path: "",
        reason: `AsyncCheckpointIO option closeTimeout must be a duration, got ${String(options?.closeTimeout)}`
      })
    }
    const writers = yield* Semaphore.make(concurrency)
    const memory = yield* Semaphore.make(maxPending)
    const fibers = yield* FiberSet.make<void, never>()
    const checksums = options?.checksumWorker === false ? undefined : yield* ChecksumWorker.make
    /** Per path identity (`base.identify`): completes when its newest accepted save has finished. */
    const pending = new Map<string, Deferred.Deferred<void>>()
    let failures: Array<BackgroundFailure> = []
    /** Set when the Layer's scope begins to close: no save is accepted after that. */
    let closed = false

    const take = Effect.sync((): ReadonlyArray<BackgroundFailure> => {
      const taken = failures
      failures = []
      return taken
    })

    const takeFailures: CheckpointIOShape["takeFailures"] = Effect.gen(function*() {
      const own = yield* take
      const inner = yield* base.takeFailures
      return inner.length === 0 ? own : [...own, ...inner]
    })

    /** Waits for the pending saves of `path`, whatever its spelling. */
    const settled = (path: string) =>
      Effect.flatMap(base.identify(path), (id) =>
        Effect.suspend(() => {
          const done = pending.get(id)
          return done === undefined ? Effect.void : Deferred.await(done)
        }))

    const record = (path: string) => (cause: Cause.Cause<CheckpointIOError>) =>
      Effect.sync(() => {
        if (Cause.hasInterruptsOnly(cause)) return
        const error = cause.reasons.find(Cause.isFailReason)?.error ??
          new CheckpointStorageError({ operation: "save", path, reason: "Other", cause: Cause.squash(cause) })
        failures.push({ path, error })
      })

    const refuseClosed = (operation: "save" | "copy", path: string) =>
      Effect.suspend(() =>
        closed || fibers.state._tag === "Closed"
          ? Effect.fail(
            new CheckpointInvalidArgument({
              operation,
              path,
              reason: "AsyncCheckpointIO is closed (its Layer's scope has ended): build a new one to save"
            })
          )
          : Effect.void
      )

    const write = (snapshot: Checkpoint, path: string, options: SaveOptions | undefined, queuedAt: number) =>
      Effect.gen(function*() {
        const startedAt = yield* Clock.currentTimeMillis
        const bytes = tensorBytes(snapshot.tensors)
        yield* Effect.annotateCurrentSpan({ path, bytes, queuedMs: startedAt - queuedAt })
        const tensors = checksums === undefined ? snapshot.tensors : yield* checksums.checksum(snapshot.tensors)
        yield* base.save({ ...snapshot, tensors }, path, { durable: options?.durable })
        const finishedAt = yield* Clock.currentTimeMillis
        yield* Metric.update(queuedMs, startedAt - queuedAt)
        yield* Metric.update(writeMs, finishedAt - startedAt)
        yield* Metric.update(bytesSaved, bytes)
      }).pipe(Effect.withSpan("AsyncCheckpointIO.write"))

    const save: CheckpointIOShape["save"] = Effect.fn("AsyncCheckpointIO.save")(function*(checkpoint, path, options) {
      yield* refuseClosed("save", path)
      // A checkpoint that can never be written fails now, not in the background.
      yield* checkPath("save", path)
      yield* SafeTensors.validate(checkpoint, path)
      const id = yield* base.identify(path)
      // Backpressure: wait for room before taking anything into memory. From the
      // permit on, every way out (a failure, a defect, a closed pool) gives it back,
      // and the per-path entry is settled by the job or not made at all.
      yield* Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          yield* restore(memory.take(1))
          yield* Effect.gen(function*() {
            yield* refuseClosed("save", path)
            const tensors = yield* Effect.try({
              try: () => snapshotTensors(checkpoint.tensors, options?.snapshot ?? "copy"),
              catch: (cause) =>
                new CheckpointInvalidArgument({
                  operation: "save",
                  path,
                  reason: `could not take a snapshot of the tensors: ${String(cause)}`
                })
            })
            const snapshot: Checkpoint = { ...checkpoint, tensors }
            const queuedAt = yield* Clock.currentTimeMillis
            const previous = pending.get(id)
            const done = Deferred.makeUnsafe<void>()
            const job = Effect.gen(function*() {
              // A second save of one path commits after the first.
              if (previous !== undefined) yield* Deferred.await(previous)
              yield* writers.withPermits(1)(write(snapshot, path, options, queuedAt))
            }).pipe(
              Effect.catchCause(record(path)),
              Effect.ensuring(Effect.gen(function*() {
                yield* memory.release(1)
                if (pending.get(id) === done) pending.delete(id)
                yield* Deferred.succeed(done, undefined)
              }))
            )
            pending.set(id, done)
            yield* FiberSet.run(fibers, job, { startImmediately: true }).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  // Not forked (a defect): the job will never settle the entry.
                  if (exit._tag === "Failure" && pending.get(id) === done) {
                    if (previous === undefined) pending.delete(id)
                    else pending.set(id, previous)
                  }
                })
              )
            )
          }).pipe(Effect.onExit((exit) => exit._tag === "Failure" ? memory.release(1) : Effect.void))
        })
      )
    })

    const load: CheckpointIOShape["load"] = Effect.fn("AsyncCheckpointIO.load")(function*(path, options) {
      yield* settled(path)
      return yield* base.load(path, options)
    })

    const remove: CheckpointIOShape["remove"] = Effect.fn("AsyncCheckpointIO.remove")(function*(path) {
      yield* settled(path)
      yield* base.remove(path)
    })

    const exists: CheckpointIOShape["exists"] = Effect.fn("AsyncCheckpointIO.exists")(function*(path) {
      yield* settled(path)
      return yield* base.exists(path)
    })

    const list: CheckpointIOShape["list"] = Effect.fn("AsyncCheckpointIO.list")(function*(dir) {
      return yield* base.list(dir)
    })

    const copy: CheckpointIOShape["copy"] = Effect.fn("AsyncCheckpointIO.copy")(function*(source, target) {
      yield* refuseClosed("copy", target)
      // The source's pending save first, then the target's (so an older save cannot land on top).
      yield* settled(source)
      yield* settled(target)
      yield* base.copy(source, target)
    })

    const flush: CheckpointIOShape["flush"] = Effect.gen(function*() {
      yield* FiberSet.awaitEmpty(fibers)
      yield* base.flush
      const taken = yield* take
      if (taken.length > 0) return yield* new BackgroundSaveFailed({ failures: taken })
    }).pipe(Effect.withSpan("AsyncCheckpointIO.flush"))

    // Closing the scope: no new save is accepted; everything accepted is written
    // (for at most `closeTimeout`, then the writes left are interrupted) before the
    // wrapped store closes.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        return flush.pipe(
          Effect.interruptible,
          Effect.timeout(closeTimeout.value),
          Effect.catchTag("TimeoutError", () =>
            Effect.logError(
              `AsyncCheckpointIO: gave up waiting for pending saves after ${Duration.format(closeTimeout.value)} ` +
                `while closing; the saves not yet committed are interrupted (no partial file is left)`
            )),
          Effect.catch((error) => Effect.logError(`AsyncCheckpointIO: ${error.message}`)),
          Effect.withSpan("AsyncCheckpointIO.close")
        )
      })
    )

    return { save, load, remove, exists, list, flush, copy, takeFailures, identify: base.identify } satisfies CheckpointIOShape
  })

/**
 * Background saves over the `CheckpointIO` this layer is provided with.
 *
 * @example
 * ```ts
 * AsyncCheckpointIO.layer().pipe(Layer.provide(MemoryCheckpointIO.layer))
 * ```
 */
export const layer = (options?: Options): Layer.Layer<CheckpointIO, CheckpointInvalidArgument, CheckpointIO> =>
  Layer.effect(CheckpointIO, make(options))

/** Background saves over the default file store on Node's file system. */
export const layerNode = (options?: Options): Layer.Layer<CheckpointIO, CheckpointInvalidArgument> =>
  layer(options).pipe(Layer.provide(FileCheckpointIO.layerNode))
