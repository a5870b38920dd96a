import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, FileSystem, Layer } from "effect"
import { CheckpointIO } from "../src/CheckpointIO.ts"
import { type FaultCode, FaultInjector, type FaultPoint } from "../src/FaultyFileSystem.ts"
import * as FaultyFileSystem from "../src/FaultyFileSystem.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import { assertSameTensors } from "../src/testing/CheckpointIOSuite.ts"
import { sample } from "./support/checkpoints.ts"
import { interceptWrites } from "./support/interceptWrites.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

/** The file store over a fault-injecting file system over Node's. */
const faulty = () =>
  FileCheckpointIO.layer.pipe(
    Layer.provideMerge(FaultyFileSystem.layer),
    Layer.provideMerge(node)
  )

const tempDir = Effect.flatMap(FileSystem.FileSystem, (fs) => fs.makeTempDirectoryScoped({ prefix: "ckpt-file-" }))

const entries = (dir: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readDirectory(dir)).pipe(
    Effect.map((names) => names.sort())
  )

describe("FileCheckpointIO", () => {
  it.effect("follows the protocol: temp file, writes, fsync, rename, directory fsync", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const faults = yield* FaultInjector
      const dir = yield* tempDir
      yield* io.save(sample(1), `${dir}/a.ckpt`)
      faults.reset()
      yield* io.save(sample(2), `${dir}/a.ckpt`)
      const ops = faults.operations().filter((o) => o.op !== "stat" && o.op !== "read")
      const kinds = ops.map((o) => o.op)
      const first = (op: FaultPoint) => kinds.indexOf(op)
      assert.isTrue(FileCheckpointIO.isTemporaryName(ops[first("open")]!.path.split("/").pop()!), "writes a temp file")
      assert.isTrue(first("open") < first("write"))
      assert.isTrue(kinds.lastIndexOf("write") < first("sync"), "fsync after the last write")
      assert.isTrue(first("sync") < first("rename"), "rename after fsync")
      assert.strictEqual(ops[first("rename")]!.path, `${dir}/a.ckpt`)
      assert.isTrue(first("rename") < first("syncDirectory"), "directory fsync after rename")
      assert.strictEqual(ops[first("syncDirectory")]!.path, dir)
      assert.deepStrictEqual(yield* entries(dir), ["a.ckpt"], "no temporary file or backup left")
    }).pipe(Effect.provide(faulty())))

  const steps: ReadonlyArray<FaultPoint> = ["makeDirectory", "open", "write", "sync", "rename", "syncDirectory"]
  const codes: ReadonlyArray<[FaultCode, string]> = [["ENOSPC", "NoSpace"], ["EACCES", "PermissionDenied"], ["EIO", "IO"]]

  for (const step of steps) {
    for (const [code, reason] of codes) {
      it.effect(`${code} at ${step}: a typed storage error, the previous checkpoint intact, nothing half-written`, () =>
        Effect.gen(function*() {
          const io = yield* CheckpointIO
          const faults = yield* FaultInjector
          const dir = yield* tempDir
          const target = `${dir}/sub/a.ckpt`
          const fresh = `${dir}/sub/b.ckpt`
          yield* io.save(sample(1), target)

          // Overwriting an existing checkpoint.
          faults.inject({ at: step, code })
          const error = yield* Effect.flip(io.save(sample(2), target))
          assert.strictEqual(faults.fired(), 1)
          assert.strictEqual(error._tag, "CheckpointStorageError")
          if (error._tag === "CheckpointStorageError") {
            assert.strictEqual(error.reason, reason)
            assert.strictEqual(error.path, target)
            assert.include(error.message, target)
          }
          assertSameTensors((yield* io.load(target)).tensors, sample(1).tensors)

          // A first save of a new name.
          faults.inject({ at: step, code })
          yield* Effect.flip(io.save(sample(2), fresh))
          assert.isFalse(yield* io.exists(fresh), "no file under the final name")
          assert.deepStrictEqual(yield* entries(`${dir}/sub`), ["a.ckpt"], "no temporary file left")

          // And the store works again afterwards.
          yield* io.save(sample(3), fresh)
          assertSameTensors((yield* io.load(fresh)).tensors, sample(3).tensors)
        }).pipe(Effect.provide(faulty())))
    }
  }

  it.effect("saves where hard links are refused (no backup), and loses nothing", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const faults = yield* FaultInjector
      const dir = yield* tempDir
      yield* io.save(sample(1), `${dir}/a.ckpt`)
      faults.inject({ at: "link", code: "EPERM", persistent: true })
      yield* io.save(sample(2), `${dir}/a.ckpt`)
      assertSameTensors((yield* io.load(`${dir}/a.ckpt`)).tensors, sample(2).tensors)
      // The directory fsync fails with no backup to restore: the new, complete file stays.
      faults.inject({ at: "syncDirectory", code: "EIO" })
      const error = yield* Effect.flip(io.save(sample(3), `${dir}/a.ckpt`))
      assert.strictEqual(error._tag, "CheckpointStorageError")
      assertSameTensors((yield* io.load(`${dir}/a.ckpt`)).tensors, sample(3).tensors)
      assert.deepStrictEqual(yield* entries(dir), ["a.ckpt"])
    }).pipe(Effect.provide(faulty())))

  it.effect("a failure reading a checkpoint is a typed storage error", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const faults = yield* FaultInjector
      const dir = yield* tempDir
      yield* io.save(sample(1), `${dir}/a.ckpt`)
      faults.inject({ at: "read", code: "EIO", after: 2 })
      const error = yield* Effect.flip(io.load(`${dir}/a.ckpt`))
      assert.strictEqual(error._tag, "CheckpointStorageError")
      faults.inject({ at: "open", code: "EACCES" })
      const denied = yield* Effect.flip(io.load(`${dir}/a.ckpt`))
      assert.strictEqual(denied._tag === "CheckpointStorageError" && denied.reason, "PermissionDenied")
    }).pipe(Effect.provide(faulty())))

  it.effect("cleans temporary files of dead writers, keeps live ones, never lists them", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const fs = yield* FileSystem.FileSystem
      const dir = yield* tempDir
      const id = FileCheckpointIO.writerIdentity
      const dead = `.0badcafe.${id}.999999999.abc123.tmp-ckpt`
      // A live writer in another process (our parent); one of our own pid that this
      // process did not create is stale (an earlier process with the same pid left it).
      const live = `.0badcafe.${id}.${process.ppid}.def456.tmp-ckpt`
      yield* fs.writeFile(`${dir}/${dead}`, new Uint8Array(10))
      yield* fs.writeFile(`${dir}/${live}`, new Uint8Array(10))
      assert.deepStrictEqual(yield* io.list(dir), [])
      yield* io.save(sample(1), `${dir}/b.ckpt`)
      assert.deepStrictEqual(yield* entries(dir), [live, "b.ckpt"].sort())
      assert.deepStrictEqual((yield* io.list(dir)).map((e) => e.path), [`${dir}/b.ckpt`])
    }).pipe(Effect.provide(FileCheckpointIO.layer.pipe(Layer.provideMerge(node)))))

  it.effect("creates missing directories and resolves relative paths", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const dir = yield* tempDir
      yield* io.save(sample(1), `${dir}/x/y/z/a.ckpt`)
      assert.isTrue(yield* io.exists(`${dir}/x/y/../y/z/a.ckpt`))
      const error = yield* Effect.flip(io.load(`${dir}/x`))
      assert.strictEqual(error._tag, "CheckpointInvalidArgument")
      const removeDir = yield* Effect.flip(io.remove(`${dir}/x`))
      assert.strictEqual(removeDir._tag, "CheckpointInvalidArgument")
    }).pipe(Effect.provide(FileCheckpointIO.layer.pipe(Layer.provideMerge(node)))))

  it.effect("interrupting a save mid-write leaves the previous checkpoint and no temporary file", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* tempDir
      const writing = yield* Deferred.make<void>()
      // A file system whose writes to temporary files hang after the first chunk.
      const hanging = interceptWrites(fs, (path) => FileCheckpointIO.isTemporaryName(path.split("/").pop()!), (file) => ({
        writeAll: (b) => Effect.flatMap(file.writeAll(b), () => Effect.andThen(Deferred.succeed(writing, undefined), Effect.never))
      }))
      const io = yield* FileCheckpointIO.make.pipe(Effect.provideService(FileSystem.FileSystem, hanging))
      const plain = yield* FileCheckpointIO.make
      yield* plain.save(sample(1), `${dir}/a.ckpt`)
      const fiber = yield* Effect.forkChild(io.save(sample(2), `${dir}/a.ckpt`))
      yield* Deferred.await(writing)
      assert.strictEqual((yield* entries(dir)).filter(FileCheckpointIO.isTemporaryName).length, 1, "mid-write")
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(yield* entries(dir), ["a.ckpt"])
      assertSameTensors((yield* plain.load(`${dir}/a.ckpt`)).tensors, sample(1).tensors)
    }).pipe(Effect.provide(node)))
})
