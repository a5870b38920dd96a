/**
 * `AsyncCheckpointIO`: saves that run in the background while training goes on (the
 * Effect counterpart of Lightning's `Trainer(plugins=[AsyncCheckpointIO()])`).
 *
 * Part 1 wraps the default file store (`AsyncCheckpointIO.layerNode()`): `save`
 * returns before the file is on disk, `flush` waits for it, and the caller may reuse
 * its arrays at once (the pool took a copy).
 * Part 2 wraps a custom store (a slow one over memory, built here) with
 * `AsyncCheckpointIO.layer().pipe(Layer.provide(customLayer))`, and shows the other
 * guarantees: a `load` waits for its path's pending save, at most `maxPending`
 * checkpoints wait in memory, a failed background save is reported once, and closing
 * the layer's scope writes what is still queued.
 *
 * In a Trainer: `Trainer.layer({ plugins: { checkpointIO: AsyncCheckpointIO.layerNode() } })`.
 *
 *   node examples/async-io.ts [--root <dir>]
 */
import { Clock, Effect, Layer, Option } from "effect"
import { AsyncCheckpointIO, Checkpoint, CheckpointIO, MemoryCheckpointIO } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"

const { values } = parseArgs({ options: { root: { type: "string" } } })
const root = path.resolve(values.root ?? fs.mkdtempSync(path.join(os.tmpdir(), "effect-trainer-async-io-")))

/** Prints a line with the milliseconds since `start`. */
const stamp = (start: number, message: string) =>
  Effect.map(Clock.currentTimeMillis, (now) => console.log(`${String(now - start).padStart(5)} ms  ${message}`))

const small = (epoch: number) =>
  Checkpoint.make({
    tensors: { "model/dense/kernel": Checkpoint.tensor("F32", [2, 2], Float32Array.of(epoch, 1, 2, 3)) },
    meta: { epoch, globalStep: epoch * 10 }
  })

// ---------------------------------------------------------------------------
// Part 1: over the default file store

const overFiles = Effect.gen(function*() {
  const io = yield* CheckpointIO.CheckpointIO
  const file = path.join(root, "big.ckpt")
  // 64 MB of weights: big enough that writing and fsyncing it takes a while.
  const weights = new Float32Array(16 * 1024 * 1024).fill(1.5)
  const checkpoint = Checkpoint.make({
    tensors: { "model/big/kernel": Checkpoint.tensor("F32", [4096, 4096], weights) },
    meta: { epoch: 0, globalStep: 0 }
  })
  const start = yield* Clock.currentTimeMillis
  yield* io.save(checkpoint, file)
  yield* stamp(start, `save returned; ${path.basename(file)} on disk: ${fs.existsSync(file) ? "yes" : "no"}`)
  // The pool holds its own copy: training may overwrite these weights at once.
  weights.fill(0)
  yield* io.flush
  yield* stamp(start, `flush returned; ${path.basename(file)} on disk: ${fs.existsSync(file) ? "yes" : "no"}`)
  const loaded = yield* io.load(file)
  console.log(`written value: ${loaded.tensors["model/big/kernel"]!.data[0]} (the caller's array now holds ${weights[0]})`)
})

// ---------------------------------------------------------------------------
// Part 2: over a custom store

/**
 * A custom store: the memory store, made slow (each save takes 200 ms) and read-only
 * under `readonly/`. Any `Layer<CheckpointIO>` can sit under AsyncCheckpointIO.
 */
const SlowStore = (start: number): Layer.Layer<CheckpointIO.CheckpointIO> =>
  Layer.effect(
    CheckpointIO.CheckpointIO,
    Effect.gen(function*() {
      const inner = yield* CheckpointIO.CheckpointIO
      return {
        ...inner,
        save: (checkpoint, file, options) =>
          Effect.gen(function*() {
            yield* stamp(start, `[store] writing ${file}`)
            yield* Effect.sleep("200 millis")
            if (file.startsWith("readonly/")) {
              return yield* new CheckpointIO.CheckpointStorageError({
                operation: "save",
                path: file,
                reason: "PermissionDenied",
                cause: new Error("a read-only volume")
              })
            }
            yield* inner.save(checkpoint, file, options)
            yield* stamp(start, `[store] committed ${file}`)
          })
      } satisfies CheckpointIO.CheckpointIOShape
    })
  ).pipe(Layer.provide(MemoryCheckpointIO.layer))

const overCustom = (start: number) =>
  Effect.gen(function*() {
    const io = yield* CheckpointIO.CheckpointIO

    // A load right after a save waits for that path's pending save, and finds it.
    yield* io.save(small(1), "a.ckpt")
    yield* stamp(start, "save a.ckpt returned")
    const a = yield* io.load("a.ckpt")
    yield* stamp(start, `load a.ckpt returned epoch ${Option.getOrThrow(a.meta).epoch}`)

    // Backpressure: with maxPending 2, a third save waits for room.
    for (const name of ["b.ckpt", "c.ckpt", "d.ckpt"]) {
      yield* io.save(small(2), name)
      yield* stamp(start, `save ${name} returned`)
    }
    yield* io.flush
    yield* stamp(start, "flush returned")

    // A failed background save is reported by the next call or by flush, once.
    yield* io.save(small(3), "readonly/e.ckpt")
    yield* stamp(start, "save readonly/e.ckpt returned")
    const failure = yield* Effect.flip(io.flush)
    yield* stamp(start, `flush failed: ${failure._tag}: ${failure.message}`)
    yield* io.flush
    yield* stamp(start, "flush again: ok (the failure was reported once)")

    // Closing the layer's scope flushes: this save is written before the store closes.
    yield* io.save(small(4), "z.ckpt")
    yield* stamp(start, "save z.ckpt returned; closing the scope")
  })

const main = Effect.gen(function*() {
  console.log("Part 1: AsyncCheckpointIO.layerNode(), over the file store")
  yield* overFiles.pipe(Effect.provide(AsyncCheckpointIO.layerNode()))

  console.log("Part 2: AsyncCheckpointIO.layer({ maxPending: 2 }), over a custom store")
  const start = yield* Clock.currentTimeMillis
  yield* overCustom(start).pipe(Effect.provide(AsyncCheckpointIO.layer({ maxPending: 2 }).pipe(Layer.provide(SlowStore(start)))))
  yield* stamp(start, "scope closed")
  console.log(`files: ${root}`)
})

runMain(main)
