/**
 * How a test swaps the storage: the code under test asks for a `CheckpointIO` and
 * never names a store, so each test provides the Layer it needs:
 *
 * - `MemoryCheckpointIO.layerWithStore`: checkpoints in memory, with the stored bytes
 *   at hand (`MemoryStore`) to look at or to damage;
 * - `FileCheckpointIO.layer` over `FaultyFileSystem.layer`: the real file store on a
 *   file system that fails on command (here: the disk is full at the rename).
 *
 * Written as a program so that it runs anywhere; in a test file each `test(...)` below
 * is an `it.effect(...)` of `@effect/vitest`, with its `assert`.
 *
 *   node examples/memory-io-in-tests.ts
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, FileSystem, Layer, Option, type Scope } from "effect"
import { Checkpoint, CheckpointIO, FaultyFileSystem, FileCheckpointIO, MemoryCheckpointIO } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import * as assert from "node:assert/strict"

// ---------------------------------------------------------------------------
// The code under test: storage-agnostic, it only needs a CheckpointIO.

const weightsAt = (epoch: number) =>
  Checkpoint.make({
    tensors: { "model/dense/kernel": Checkpoint.tensor("F32", [2, 2], Float32Array.of(epoch, epoch + 0.5, -epoch, 1)) },
    meta: { epoch, globalStep: 100 * epoch }
  })

/** Saves the checkpoint of `epoch` in `dir` and keeps the newest `keep` there. */
const saveAndRotate = (dir: string, epoch: number, keep: number) =>
  Effect.gen(function*() {
    const io = yield* CheckpointIO.CheckpointIO
    yield* io.save(weightsAt(epoch), `${dir}/epoch-${String(epoch).padStart(3, "0")}.ckpt`)
    const entries = yield* io.list(dir) // sorted by path: oldest epoch first
    for (const old of entries.slice(0, Math.max(0, entries.length - keep))) yield* io.remove(old.path)
  })

// ---------------------------------------------------------------------------
// The tests. Each gets a fresh Layer, as `it.effect` with `Effect.provide` would.

const test = <ROut, E, R extends ROut | Scope.Scope>(name: string, layer: Layer.Layer<ROut>, body: Effect.Effect<void, E, R>) =>
  body.pipe(
    Effect.scoped,
    Effect.provide(layer),
    Effect.tap(() => Effect.sync(() => console.log(`ok - ${name}`)))
  )

const rotation = test(
  "rotation keeps the newest two checkpoints (in memory)",
  MemoryCheckpointIO.layerWithStore,
  Effect.gen(function*() {
    for (let epoch = 0; epoch < 4; epoch++) yield* saveAndRotate("ckpts", epoch, 2)
    const { files } = yield* MemoryCheckpointIO.MemoryStore
    console.log(`  stored: ${[...files.keys()].sort().join(", ")}`)
    assert.deepEqual([...files.keys()].sort(), ["ckpts/epoch-002.ckpt", "ckpts/epoch-003.ckpt"])
    const io = yield* CheckpointIO.CheckpointIO
    const newest = yield* io.load("ckpts/epoch-003.ckpt")
    assert.equal(Option.getOrThrow(newest.meta).epoch, 3)
    assert.deepEqual([...newest.tensors["model/dense/kernel"]!.data], [3, 3.5, -3, 1])
  })
)

const corruption = test(
  "a damaged checkpoint fails to load with a typed CheckpointCorrupt (in memory)",
  MemoryCheckpointIO.layerWithStore,
  Effect.gen(function*() {
    yield* saveAndRotate("ckpts", 7, 2)
    // Flip the last byte of the file: the last byte of the tensor data.
    const { files } = yield* MemoryCheckpointIO.MemoryStore
    const stored = files.get("ckpts/epoch-007.ckpt")!
    const damaged = stored.bytes.slice()
    damaged[damaged.length - 1]! ^= 0x01
    files.set("ckpts/epoch-007.ckpt", { ...stored, bytes: damaged })
    const io = yield* CheckpointIO.CheckpointIO
    const error = yield* Effect.flip(io.load("ckpts/epoch-007.ckpt"))
    console.log(`  ${error._tag}: ${error.message}`)
    assert.equal(error._tag, "CheckpointCorrupt")
  })
)

// The real file store, on a file system that fails on command, on Node's.
const faultyFiles = FileCheckpointIO.layer.pipe(
  Layer.provideMerge(FaultyFileSystem.layer),
  Layer.provide(NodeServices.layer)
)

const diskFull = test(
  "disk full at the rename: a typed CheckpointStorageError, and the previous checkpoint intact",
  faultyFiles,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const faults = yield* FaultyFileSystem.FaultInjector
    const io = yield* CheckpointIO.CheckpointIO
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "faulty-" })
    const file = `${dir}/model.ckpt`
    yield* io.save(weightsAt(1), file)

    faults.reset()
    faults.inject({ at: "rename", code: "ENOSPC" })
    const error = yield* Effect.flip(io.save(weightsAt(2), file))
    assert.ok(error instanceof CheckpointIO.CheckpointStorageError)
    console.log(`  ${error._tag} (operation ${error.operation}, reason ${error.reason}): ${error.message}`)
    console.log(`  the save's steps: ${faults.operations().map((o) => o.op).join(", ")}`)
    assert.equal(error.operation, "save")
    assert.equal(error.reason, "NoSpace")

    // The previous checkpoint, whole; no temporary file left behind.
    const previous = yield* io.load(file)
    assert.equal(Option.getOrThrow(previous.meta).epoch, 1)
    assert.deepEqual([...previous.tensors["model/dense/kernel"]!.data], [1, 1.5, -1, 1])
    const names = yield* fs.readDirectory(dir)
    console.log(`  directory after the failure: ${names.join(", ")}`)
    assert.deepEqual(names, ["model.ckpt"])
  })
)

runMain(Effect.all([rotation, corruption, diskFull], { discard: true }))
