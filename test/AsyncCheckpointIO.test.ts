import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, FileSystem, Layer, Option, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO, type CheckpointIOError, type CheckpointIOShape, CheckpointStorageError } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import { assertSameTensors } from "../src/testing/CheckpointIOSuite.ts"
import { CheckpointIOSuite } from "../src/testing/index.ts"
import { floats, sample } from "./support/checkpoints.ts"
import { seeded } from "./support/random.ts"

// ---------------------------------------------------------------------------
// A base store the test controls: saves can be held at a gate, delayed by a number
// of scheduler yields, or failed; every call is logged.
// ---------------------------------------------------------------------------

interface SaveCall {
  readonly path: string
  readonly started: Deferred.Deferred<void>
  readonly release: Deferred.Deferred<void>
}

class Control extends Context.Service<Control, {
  readonly calls: Array<SaveCall>
  readonly log: Array<string>
  gated: boolean
  yields: () => number
  readonly failures: Map<string, CheckpointIOError>
  /** Waits until the n-th save (0-based) has reached the base store. */
  readonly started: (n: number) => Effect.Effect<SaveCall>
}>()("test/Control") {
  static readonly layer = Layer.sync(Control, () => {
    const calls: Array<SaveCall> = []
    const started = (n: number): Effect.Effect<SaveCall> =>
      Effect.suspend(() =>
        calls[n] !== undefined
          ? Effect.as(Deferred.await(calls[n].started), calls[n])
          : Effect.andThen(Effect.yieldNow, started(n))
      )
    return { calls, log: [], gated: false, yields: () => 0, failures: new Map(), started }
  })
}

const controlledBase = Layer.effect(
  CheckpointIO,
  Effect.gen(function*() {
    const control = yield* Control
    const inner = yield* MemoryCheckpointIO.make
    yield* Effect.addFinalizer(() => Effect.sync(() => control.log.push("base closed")))
    const save: CheckpointIOShape["save"] = (checkpoint, path, options) =>
      Effect.gen(function*() {
        const call: SaveCall = { path, started: yield* Deferred.make<void>(), release: yield* Deferred.make<void>() }
        control.calls.push(call)
        control.log.push(`start ${path}`)
        yield* Deferred.succeed(call.started, undefined)
        if (control.gated) yield* Deferred.await(call.release)
        for (let i = control.yields(); i > 0; i--) yield* Effect.yieldNow
        const failure = control.failures.get(path)
        if (failure !== undefined) {
          control.failures.delete(path)
          control.log.push(`fail ${path}`)
          return yield* Effect.fail(failure)
        }
        yield* inner.save(checkpoint, path, options)
        control.log.push(`done ${path}`)
      })
    return { ...inner, save }
  })
)

const env = (options?: AsyncCheckpointIO.Options) =>
  AsyncCheckpointIO.layer({ checksumWorker: false, ...options }).pipe(
    Layer.provide(controlledBase),
    Layer.provideMerge(Control.layer),
    Layer.provideMerge(MemoryCheckpointIO.MemoryStore.layer),
    Layer.orDie
  )

const committed = (path: string) => Effect.map(MemoryCheckpointIO.MemoryStore, ({ files }) => files.has(MemoryCheckpointIO.normalize(path)))

const diskFull = (path: string) =>
  new CheckpointStorageError({ operation: "save", path, reason: "NoSpace", cause: new Error("ENOSPC: injected") })

describe("AsyncCheckpointIO", () => {
  it.effect("save returns before the write; exists and load wait for the pending save", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.gated = true
      yield* io.save(sample(1), "/c/a.ckpt")
      const call = yield* control.started(0)
      assert.isFalse(yield* committed("/c/a.ckpt"), "not written yet")
      const exists = yield* Effect.forkChild(io.exists("/c/a.ckpt"))
      const load = yield* Effect.forkChild(io.load("/c/a.ckpt"))
      yield* Effect.yieldNow
      assert.isUndefined(exists.pollUnsafe(), "exists waits for the pending save")
      yield* Deferred.succeed(call.release, undefined)
      assert.isTrue(yield* Fiber.join(exists))
      assertSameTensors((yield* Fiber.join(load)).tensors, sample(1).tensors)
    }).pipe(Effect.provide(env())))

  it.effect("the snapshot is independent of the caller's arrays (copy), or takes them over (transfer)", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.gated = true
      const live = Checkpoint.tensor("F32", [3], Float32Array.of(1, 2, 3))
      const ckpt = Checkpoint.make({ tensors: { "model/w": live }, meta: { epoch: 0, globalStep: 1 } })
      yield* io.save(ckpt, "/c/copy.ckpt")
      live.data.fill(99) // the training step goes on and updates the weights
      yield* Deferred.succeed((yield* control.started(0)).release, undefined)
      assert.deepStrictEqual([...(yield* io.load("/c/copy.ckpt")).tensors["model/w"]!.data], [1, 2, 3])

      const owned = Checkpoint.tensor("F32", [3], Float32Array.of(4, 5, 6))
      yield* io.save(Checkpoint.make({ tensors: { "model/w": owned } }), "/c/transfer.ckpt", { snapshot: "transfer" })
      assert.strictEqual(owned.data.length, 0, "the caller's array is detached: it can no longer change the snapshot")
      yield* Deferred.succeed((yield* control.started(1)).release, undefined)
      assert.deepStrictEqual([...(yield* io.load("/c/transfer.ckpt")).tensors["model/w"]!.data], [4, 5, 6])
    }).pipe(Effect.provide(env())))

  it.effect("holds at most maxPending checkpoints: a further save waits for room", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.gated = true
      yield* io.save(sample(1), "/c/1.ckpt")
      yield* io.save(sample(2), "/c/2.ckpt")
      const third = yield* Effect.forkChild(io.save(sample(3), "/c/3.ckpt"))
      const first = yield* control.started(0)
      for (let i = 0; i < 20; i++) yield* Effect.yieldNow
      assert.isUndefined(third.pollUnsafe(), "the third save waits")
      assert.strictEqual(control.calls.length, 1, "concurrency 1: one write at a time")
      yield* Deferred.succeed(first.release, undefined)
      yield* Fiber.join(third)
      yield* Deferred.succeed((yield* control.started(1)).release, undefined)
      yield* Deferred.succeed((yield* control.started(2)).release, undefined)
      yield* io.flush
      assert.deepStrictEqual(control.log.filter((l) => l.startsWith("done")), ["done /c/1.ckpt", "done /c/2.ckpt", "done /c/3.ckpt"])
    }).pipe(Effect.provide(env({ maxPending: 2 }))))

  it.effect("interrupting a save that waits for room queues nothing and leaks no room", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.gated = true
      yield* io.save(sample(1), "/c/1.ckpt")
      const waiting = yield* Effect.forkChild(io.save(sample(2), "/c/2.ckpt"))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(waiting)
      yield* Deferred.succeed((yield* control.started(0)).release, undefined)
      yield* io.flush
      assert.isFalse(yield* io.exists("/c/2.ckpt"))
      control.gated = false
      yield* io.save(sample(3), "/c/3.ckpt") // room is back
      yield* io.flush
      assert.isTrue(yield* io.exists("/c/3.ckpt"))
    }).pipe(Effect.provide(env({ maxPending: 1 }))))

  it.effect("concurrency n runs n writes at once", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.gated = true
      yield* io.save(sample(1), "/c/1.ckpt")
      yield* io.save(sample(2), "/c/2.ckpt")
      const a = yield* control.started(0)
      const b = yield* control.started(1)
      assert.deepStrictEqual([a.path, b.path], ["/c/1.ckpt", "/c/2.ckpt"])
      yield* Deferred.succeed(b.release, undefined)
      yield* Deferred.succeed(a.release, undefined)
      yield* io.flush
    }).pipe(Effect.provide(env({ concurrency: 2, maxPending: 4 }))))

  it.effect("a save followed by a remove of the same path leaves no file, whatever the timing (500 seeded runs)", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      const rng = seeded(42)
      control.yields = () => rng.int(6)
      for (let run = 0; run < 500; run++) {
        const path = `/c/race-${run % 7}.ckpt`
        yield* io.save(floats(64, 2), path)
        for (let i = rng.int(4); i > 0; i--) yield* Effect.yieldNow
        if (rng.next() < 0.3) yield* io.save(floats(64, 1), path) // a second save of the same path in between
        yield* io.remove(path)
        assert.isFalse(yield* io.exists(path), `run ${run}`)
        assert.isFalse(yield* committed(path), `run ${run}: nothing resurrected it`)
      }
      yield* io.flush
      assert.deepStrictEqual(yield* io.list("/c"), [])
    }).pipe(Effect.provide(env({ concurrency: 2, maxPending: 3 }))))

  it.effect("two saves of one path commit in order, even with parallel writers", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.gated = true
      yield* io.save(sample(1), "/c/a.ckpt")
      yield* io.save(sample(2), "/c/a.ckpt")
      const first = yield* control.started(0)
      for (let i = 0; i < 10; i++) yield* Effect.yieldNow
      assert.strictEqual(control.calls.length, 1, "the second save of the path waits for the first")
      yield* Deferred.succeed(first.release, undefined)
      yield* Deferred.succeed((yield* control.started(1)).release, undefined)
      assertSameTensors((yield* io.load("/c/a.ckpt")).tensors, sample(2).tensors)
    }).pipe(Effect.provide(env({ concurrency: 2, maxPending: 4 }))))

  it.effect("issue 12.2: a failed background save never fails an unrelated call; takeFailures hands it out once", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.failures.set("/c/bad.ckpt", diskFull("/c/bad.ckpt"))
      yield* io.save(sample(1), "/c/bad.ckpt")
      yield* control.started(0)
      for (let i = 0; i < 10; i++) yield* Effect.yieldNow
      // The next save (and every other operation) succeeds and does its own work.
      yield* io.save(sample(2), "/c/next.ckpt")
      assert.isTrue(yield* io.exists("/c/next.ckpt"))
      assert.isFalse(yield* io.exists("/c/bad.ckpt"), "the failed save left nothing")
      assertSameTensors((yield* io.load("/c/next.ckpt")).tensors, sample(2).tensors)
      assert.deepStrictEqual((yield* io.list("/c")).map((e) => e.path), ["/c/next.ckpt"])
      yield* io.remove("/c/other.ckpt")
      yield* io.copy("/c/next.ckpt", "/c/copy.ckpt")
      assert.strictEqual(control.calls.length, 2, "the healthy save was queued and written")
      // The failure is handed out once, naming the file and the reason.
      const taken = yield* io.takeFailures
      assert.deepStrictEqual(taken.map((f) => f.path), ["/c/bad.ckpt"])
      assert.strictEqual(taken[0]!.error._tag, "CheckpointStorageError")
      assert.include(taken[0]!.error.message, "NoSpace")
      assert.deepStrictEqual(yield* io.takeFailures, [])
      yield* io.flush
    }).pipe(Effect.provide(env())))

  it.effect("issue 12.2: flush reports the failures takeFailures has not handed out, and only those", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.failures.set("/c/1.ckpt", diskFull("/c/1.ckpt"))
      control.failures.set("/c/2.ckpt", diskFull("/c/2.ckpt"))
      yield* io.save(sample(1), "/c/1.ckpt")
      assert.isFalse(yield* io.exists("/c/1.ckpt"))
      assert.deepStrictEqual((yield* io.takeFailures).map((f) => f.path), ["/c/1.ckpt"])
      yield* io.save(sample(2), "/c/2.ckpt")
      const error = yield* Effect.flip(io.flush)
      assert.strictEqual(error._tag, "BackgroundSaveFailed")
      if (error._tag === "BackgroundSaveFailed") assert.deepStrictEqual(error.failures.map((f) => f.path), ["/c/2.ckpt"])
      yield* io.flush
      assert.deepStrictEqual(yield* io.takeFailures, [])
    }).pipe(Effect.provide(env())))

  it.effect("issue 12.3: save after the scope closed fails with a typed error, and later calls on that path do not hang", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(env(), scope)
      const io = Context.get(context, CheckpointIO)
      const control = Context.get(context, Control)
      yield* io.save(sample(1), "/c/a.ckpt")
      yield* Scope.close(scope, Exit.void)
      const error = yield* Effect.flip(io.save(sample(2), "/c/a.ckpt"))
      assert.strictEqual(error._tag, "CheckpointInvalidArgument")
      assert.include(error.message, "closed")
      assert.strictEqual(control.calls.length, 1, "nothing queued after the close")
      // Nothing was left pending: these answer at once (before the fix they waited forever).
      const later = yield* Effect.forkChild(Effect.all([io.exists("/c/a.ckpt"), io.load("/c/a.ckpt")]))
      for (let i = 0; i < 20 && later.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
      assert.isDefined(later.pollUnsafe(), "exists and load of the path answer")
      const [exists, loaded] = yield* Fiber.join(later)
      assert.isTrue(exists)
      assertSameTensors(loaded.tensors, sample(1).tensors)
    }))

  it.effect("issue 12.3: a throw while taking the snapshot fails typed and gives back the permit and the path", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      class Unsliceable extends Float32Array {
        override slice(): Float32Array<ArrayBuffer> {
          throw new Error("slice refused")
        }
      }
      const bad = Checkpoint.make({ tensors: { "model/w": Checkpoint.tensor("F32", [2], new Unsliceable(2)) } })
      const error = yield* Effect.flip(io.save(bad, "/c/a.ckpt"))
      assert.strictEqual(error._tag, "CheckpointInvalidArgument")
      assert.include(error.message, "slice refused")
      // maxPending 1: a leaked permit would make this save wait forever.
      const next = yield* Effect.forkChild(Effect.andThen(io.save(sample(2), "/c/a.ckpt"), io.exists("/c/a.ckpt")))
      for (let i = 0; i < 20 && next.pollUnsafe() === undefined; i++) yield* Effect.yieldNow
      assert.isDefined(next.pollUnsafe(), "the next save and exists of the path go through")
      assert.isTrue(yield* Fiber.join(next))
      assert.strictEqual(control.calls.length, 1)
    }).pipe(Effect.provide(env({ maxPending: 1 }))))

  it.effect("issue 12.9: closing with a hung write gives up after closeTimeout, interrupts it and settles its path", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(env({ maxPending: 1, closeTimeout: "1 second" }), scope)
      const io = Context.get(context, CheckpointIO)
      const control = Context.get(context, Control)
      control.gated = true
      yield* io.save(sample(1), "/c/hung.ckpt")
      yield* control.started(0)
      // Closing: the hung write is given up after closeTimeout (TestClock), interrupted, and nothing hangs.
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(closing)
      assert.isFalse(Context.get(context, MemoryCheckpointIO.MemoryStore).files.has("/c/hung.ckpt"))
      assert.isTrue(control.log.includes("base closed"))
      assert.isFalse(yield* io.exists("/c/hung.ckpt"), "the path is settled")
    }))

  it.effect("flush reports a failure exactly once and waits for everything queued", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      control.failures.set("/c/2.ckpt", diskFull("/c/2.ckpt"))
      control.failures.set("/c/3.ckpt", diskFull("/c/3.ckpt"))
      control.gated = true
      yield* io.save(sample(1), "/c/1.ckpt")
      yield* io.save(sample(2), "/c/2.ckpt")
      yield* io.save(sample(3), "/c/3.ckpt")
      const flushing = yield* Effect.forkChild(Effect.flip(io.flush))
      for (let n = 0; n < 3; n++) yield* Deferred.succeed((yield* control.started(n)).release, undefined)
      const error = yield* Fiber.join(flushing)
      assert.strictEqual(error._tag, "BackgroundSaveFailed")
      if (error._tag === "BackgroundSaveFailed") {
        assert.deepStrictEqual(error.failures.map((f) => f.path), ["/c/2.ckpt", "/c/3.ckpt"])
      }
      yield* io.flush
      assert.deepStrictEqual((yield* io.list("/c")).map((e) => e.path), ["/c/1.ckpt"])
    }).pipe(Effect.provide(env({ maxPending: 3 }))))

  it.effect("an invalid checkpoint fails at save time, not in the background", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const control = yield* Control
      const bad = Checkpoint.make({ tensors: { "model/x": Checkpoint.tensor("F32", [2], new Float32Array(3)) } })
      const error = yield* Effect.flip(io.save(bad, "/c/bad.ckpt"))
      assert.strictEqual(error._tag, "CheckpointInvalidArgument")
      assert.strictEqual(control.calls.length, 0)
      const noName = yield* Effect.flip(io.save(sample(1), "/c/"))
      assert.strictEqual(noName._tag, "CheckpointInvalidArgument")
    }).pipe(Effect.provide(env())))

  it.effect("closing the scope flushes, then closes the wrapped store", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(env(), scope)
      const io = Context.get(context, CheckpointIO)
      const control = Context.get(context, Control)
      control.gated = true
      yield* io.save(sample(1), "/c/a.ckpt")
      yield* io.save(sample(2), "/c/b.ckpt")
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      yield* Deferred.succeed((yield* control.started(0)).release, undefined)
      yield* Deferred.succeed((yield* control.started(1)).release, undefined)
      yield* Fiber.join(closing)
      assert.deepStrictEqual(control.log, ["start /c/a.ckpt", "done /c/a.ckpt", "start /c/b.ckpt", "done /c/b.ckpt", "base closed"])
      const { files } = Context.get(context, MemoryCheckpointIO.MemoryStore)
      assert.deepStrictEqual([...files.keys()].sort(), ["/c/a.ckpt", "/c/b.ckpt"])
    }))

  it.effect("the checksum worker computes the same file, and an interrupted program leaves whole files only", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "async-" })
      const big = floats(12 << 20, 3) // tensors of 4 MB: large enough for the worker
      // With the worker, and without: the same bytes on disk.
      yield* Effect.scoped(Effect.gen(function*() {
        const io = yield* Layer.build(AsyncCheckpointIO.layer().pipe(Layer.provide(FileCheckpointIO.layer)))
        yield* Context.get(io, CheckpointIO).save(big, `${dir}/w.ckpt`)
      }))
      yield* Effect.scoped(Effect.gen(function*() {
        const io = yield* Layer.build(AsyncCheckpointIO.layer({ checksumWorker: false }).pipe(Layer.provide(FileCheckpointIO.layer)))
        yield* Context.get(io, CheckpointIO).save(big, `${dir}/n.ckpt`)
      }))
      const w = yield* fs.readFile(`${dir}/w.ckpt`)
      const n = yield* fs.readFile(`${dir}/n.ckpt`)
      assert.isTrue(Buffer.from(w).equals(Buffer.from(n)), "identical files")

      // A program interrupted while its save is in the background: the scope's flush
      // finishes it; the file is whole and loads.
      const started = yield* Deferred.make<void>()
      const program = Effect.scoped(Effect.gen(function*() {
        const io = Context.get(
          yield* Layer.build(AsyncCheckpointIO.layer().pipe(Layer.provide(FileCheckpointIO.layer))),
          CheckpointIO
        )
        yield* io.save(big, `${dir}/i.ckpt`, { snapshot: "transfer" })
        yield* Deferred.succeed(started, undefined)
        return yield* Effect.never
      }))
      const fiber = yield* Effect.forkChild(program)
      yield* Deferred.await(started)
      yield* Fiber.interrupt(fiber)
      const names = (yield* fs.readDirectory(dir)).sort()
      assert.deepStrictEqual(names, ["i.ckpt", "n.ckpt", "w.ckpt"], "no temporary file left")
      const loaded = yield* Effect.scoped(Effect.flatMap(FileCheckpointIO.make, (io) => io.load(`${dir}/i.ckpt`)))
      assert.strictEqual(Object.keys(loaded.tensors).length, 3)
      assert.isTrue(Option.isSome(loaded.meta))
    }).pipe(Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))))
})

// The conformance suite, through AsyncCheckpointIO, over both stores.
CheckpointIOSuite.run("AsyncCheckpointIO over MemoryCheckpointIO", () =>
  CheckpointIOSuite.layerRawMemory.pipe(
    Layer.provideMerge(AsyncCheckpointIO.layer().pipe(Layer.provide(MemoryCheckpointIO.layerFromStore))),
    Layer.provideMerge(MemoryCheckpointIO.MemoryStore.layer),
    Layer.orDie
  ))

CheckpointIOSuite.run("AsyncCheckpointIO over FileCheckpointIO", () =>
  CheckpointIOSuite.layerRawFileSystem.pipe(
    Layer.provideMerge(AsyncCheckpointIO.layer().pipe(Layer.provide(FileCheckpointIO.layer))),
    Layer.provideMerge(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)),
    Layer.orDie
  ))
