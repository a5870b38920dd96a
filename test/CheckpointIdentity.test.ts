/**
 * Issue 12.4: per-path order in `AsyncCheckpointIO` follows the store's identity of a
 * path (`CheckpointIO.identify`), not its spelling.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, FileSystem, Layer } from "effect"
import * as nodePath from "node:path"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import * as CheckpointIO from "../src/CheckpointIO.ts"
import type { CheckpointIOShape } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import { assertSameTensors } from "../src/testing/CheckpointIOSuite.ts"
import { sample } from "./support/checkpoints.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

/**
 * The file store whose first save waits at a gate: the pool over it, the gate, and a
 * temporary directory. Saves after the first go straight through.
 */
const gatedPool = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const root = yield* fs.realPath(yield* fs.makeTempDirectoryScoped({ prefix: "identity-" }))
  const file = yield* FileCheckpointIO.make
  const gate = yield* Deferred.make<void>()
  const reached = yield* Deferred.make<void>()
  let saves = 0
  const gated: CheckpointIOShape = {
    ...file,
    save: (checkpoint, path, options) =>
      Effect.suspend(() =>
        saves++ === 0
          ? Effect.andThen(Deferred.succeed(reached, undefined), Deferred.await(gate))
          : Effect.void
      ).pipe(Effect.andThen(file.save(checkpoint, path, options)))
  }
  const io = yield* AsyncCheckpointIO.make({ checksumWorker: false, concurrency: 2, maxPending: 4 }).pipe(
    Effect.provideService(CheckpointIO.CheckpointIO, gated)
  )
  /** Lets the gated save go once the pool has had every chance to run something else first. */
  const release = Effect.gen(function*() {
    yield* Deferred.await(reached)
    for (let i = 0; i < 50; i++) yield* Effect.yieldNow
    yield* Deferred.succeed(gate, undefined)
  })
  return { fs, root, io, release }
})

/** `abs` relative to the working directory: another spelling of the same file. */
const relative = (abs: string) => nodePath.relative(process.cwd(), abs)

describe("issue 12.4: per-path order by the store's identity of a path", () => {
  it.effect("issue 12.4: relative then absolute spelling (concurrency 2) leaves the NEWER checkpoint", () =>
    Effect.gen(function*() {
      const { io, release, root } = yield* gatedPool
      const abs = `${root}/a.ckpt`
      yield* io.save(sample(1), relative(abs))
      yield* io.save(sample(2), abs)
      yield* release
      yield* io.flush
      assertSameTensors((yield* io.load(abs)).tensors, sample(2).tensors)
    }).pipe(Effect.provide(node)))

  it.effect("issue 12.4: save then remove by another spelling leaves nothing", () =>
    Effect.gen(function*() {
      const { fs, io, release, root } = yield* gatedPool
      const abs = `${root}/sub/../b.ckpt`
      yield* io.save(sample(1), relative(`${root}/b.ckpt`))
      const removing = yield* Effect.forkChild(io.remove(abs))
      yield* release
      yield* Fiber.join(removing)
      yield* io.flush
      assert.isFalse(yield* fs.exists(`${root}/b.ckpt`))
    }).pipe(Effect.provide(node)))

  it.effect("issue 12.4: save then load by another spelling finds it", () =>
    Effect.gen(function*() {
      const { io, release, root } = yield* gatedPool
      yield* io.save(sample(3), relative(`${root}/c.ckpt`))
      const loading = yield* Effect.forkChild(io.load(`${root}/./c.ckpt`))
      yield* release
      assertSameTensors((yield* Fiber.join(loading)).tensors, sample(3).tensors)
    }).pipe(Effect.provide(node)))

  it.effect("issue 12.4: the same through a symlinked directory (save, save, remove, load)", () =>
    Effect.gen(function*() {
      const { fs, io, release, root } = yield* gatedPool
      yield* fs.makeDirectory(`${root}/real`)
      yield* fs.symlink(`${root}/real`, `${root}/link`)
      yield* io.save(sample(1), `${root}/link/d.ckpt`)
      yield* io.save(sample(2), `${root}/real/d.ckpt`)
      const loading = yield* Effect.forkChild(io.load(`${root}/link/d.ckpt`))
      yield* release
      assertSameTensors((yield* Fiber.join(loading)).tensors, sample(2).tensors)
      // The directory under the link need not exist yet: its identity is still the real one.
      const file = yield* FileCheckpointIO.make
      assert.strictEqual(yield* file.identify(`${root}/link/new/e.ckpt`), `${root}/real/new/e.ckpt`)
      assert.strictEqual(yield* file.identify(relative(`${root}/link/e.ckpt`)), `${root}/real/e.ckpt`)
      yield* io.remove(`${root}/real/d.ckpt`)
      assert.isFalse(yield* io.exists(`${root}/link/d.ckpt`))
    }).pipe(Effect.provide(node)))

  it.effect("issue 12.4: the memory store's identity is its normalised key; a store made without one keeps the path", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryCheckpointIO.make.pipe(Effect.provide(MemoryCheckpointIO.MemoryStore.layer))
      assert.strictEqual(yield* memory.identify("a/./b/../c.ckpt"), "a/c.ckpt")
      const { copy: _copy, flush: _flush, identify: _identify, takeFailures: _take, ...operations } = memory
      const custom = CheckpointIO.make(operations)
      assert.strictEqual(yield* custom.identify("/x/./y.ckpt"), "/x/./y.ckpt")
      assert.deepStrictEqual(yield* custom.takeFailures, [])
    }))
})
