import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Collective from "../src/Collective.ts"
import * as DataParallel from "../src/DataParallel.ts"
import { type Config, run } from "./support/ddpProgram.ts"

const tempRoot = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "ddp-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

const maxDiff = (a: ReadonlyArray<Float32Array>, b: ReadonlyArray<Float32Array>) => {
  let diff = 0
  a.forEach((t, i) => t.forEach((v, j) => (diff = Math.max(diff, Math.abs(v - b[i]![j]!)))))
  return diff
}

const sameBits = (a: ReadonlyArray<Float32Array>, b: ReadonlyArray<Float32Array>) =>
  a.length === b.length && a.every((t, i) => Buffer.from(t.buffer).equals(Buffer.from(b[i]!.buffer)))

const savesOf = (root: string) => fs.readFileSync(path.join(root, "saves.log"), "utf8").trim().split("\n")

const fit = (config: Omit<Config, "root">) =>
  Effect.flatMap(tempRoot, (root) => Effect.map(run({ ...config, root }), (r) => ({ ...r, root })))

describe("Collective", () => {
  it.effect("all-reduce adds in rank order: every replica gets the same bits; broadcast copies rank 0's data", () =>
    Effect.gen(function*() {
      // Three replicas as fibers of one thread over one shared group, chunked (slot of 64 bytes).
      const group = Collective.makeShared(3, 64)
      const replicas = [0, 1, 2].map((r) => Collective.fromShared(group, r))
      const inputs = replicas.map((_, r) => Float32Array.from({ length: 50 }, (_, i) => 0.1 * (r + 1) + i / 7))
      const initial = replicas.map((_, r) => Float64Array.from({ length: 20 }, (_, i) => r * 100 + i))
      yield* Effect.forEach(replicas, (c, r) => Effect.andThen(c.allReduceMean(inputs[r]!), c.broadcast(initial[r]!, 0)), {
        concurrency: "unbounded"
      })
      const expected = Float32Array.from({ length: 50 }, (_, i) => ((0.1 + i / 7 + (0.2 + i / 7)) + (0.3 + i / 7)) / 3)
      for (const out of inputs) {
        assert.isTrue(Buffer.from(out.buffer).equals(Buffer.from(inputs[0]!.buffer)))
        out.forEach((v, i) => assert.closeTo(v, expected[i]!, 1e-5))
      }
      for (const out of initial) assert.deepStrictEqual([...out], [...initial[0]!])
      assert.deepStrictEqual([...initial[2]!].slice(0, 3), [0, 1, 2])
    }))

  it.effect("an abort fails the operations that cannot complete, naming the rank that aborted", () =>
    Effect.gen(function*() {
      const group = Collective.makeShared(2, 64)
      const [a, b] = [Collective.fromShared(group, 0), Collective.fromShared(group, 1)]
      const waiting = yield* Effect.forkChild(a.barrier)
      yield* b.abort("out of memory")
      const exit = yield* Fiber.await(waiting)
      assert.isTrue(Exit.isFailure(exit))
      const error = yield* Effect.flip(a.allReduceMean(new Float32Array(4)))
      assert.strictEqual(error._tag, "CollectiveError")
      assert.strictEqual(error.rank, 1)
      assert.include(error.message, "out of memory")
    }))
})

describe("DataParallel", () => {
  it("shardRows: strided rows, padded by wrapping to equal shards", () => {
    const x = { dtype: "F32" as const, shape: [5, 2], data: Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]) }
    const y = { dtype: "I32" as const, shape: [5], data: Int32Array.from([0, 1, 2, 3, 4]) }
    const r0 = DataParallel.shardRows({ x, y }, 0, 2) as { x: typeof x; y: typeof y }
    const r1 = DataParallel.shardRows({ x, y }, 1, 2) as { x: typeof x; y: typeof y }
    assert.deepStrictEqual([...r0.y.data], [0, 2, 4])
    assert.deepStrictEqual([...r1.y.data], [1, 3, 0])
    assert.deepStrictEqual([...r1.x.data], [1, 1, 3, 3, 0, 0])
    assert.deepStrictEqual(r1.x.shape, [3, 2])
    assert.isUndefined(DataParallel.shardRows({ x: "not a tensor" }, 0, 2))
  })

  it.effect("2 replicas: bit-identical across runs, close to one device, rank 0 alone saves, no thread left", () =>
    Effect.gen(function*() {
      const a = yield* fit({ devices: 2, maxSteps: 8 })
      const b = yield* fit({ devices: 2, maxSteps: 8 })
      const single = yield* fit({ devices: 0, maxSteps: 8 })
      assert.strictEqual(a.globalStep, 8)
      assert.isTrue(sameBits(a.weights, b.weights), "same seed, same replicas: same bits")
      // The mean of the shards' gradients is the global batch's gradient, up to rounding.
      assert.isBelow(maxDiff(a.weights, single.weights), 1e-4)
      assert.isTrue(maxDiff(a.weights, single.weights) > 0 || sameBits(a.weights, single.weights))
      assert.isTrue(savesOf(a.root).length > 0)
      assert.isTrue(savesOf(a.root).every((line) => line.startsWith("0 ")), savesOf(a.root).join("; "))
      assert.closeTo(a.metrics.get("train_loss")!, single.metrics.get("train_loss")!, 1e-4)
      assert.strictEqual(DataParallel.liveWorkers(), 0)
    }))

  it.effect("a 2-replica checkpoint resumes on 1 device, and a 1-device one on 2 replicas", () =>
    Effect.gen(function*() {
      const whole = yield* fit({ devices: 0, maxSteps: 8 })
      const twoThenOne = yield* Effect.gen(function*() {
        const first = yield* fit({ devices: 2, maxSteps: 4 })
        const last = path.join(first.root, "checkpoints", "last.ckpt")
        return yield* fit({ devices: 0, maxSteps: 8, ckptPath: last })
      })
      const oneThenTwo = yield* Effect.gen(function*() {
        const first = yield* fit({ devices: 0, maxSteps: 4 })
        const last = path.join(first.root, "checkpoints", "last.ckpt")
        return yield* fit({ devices: 2, maxSteps: 8, ckptPath: last })
      })
      assert.strictEqual(twoThenOne.globalStep, 8)
      assert.strictEqual(oneThenTwo.globalStep, 8)
      assert.isBelow(maxDiff(twoThenOne.weights, whole.weights), 1e-4)
      assert.isBelow(maxDiff(oneThenTwo.weights, whole.weights), 1e-4)
      assert.strictEqual(DataParallel.liveWorkers(), 0)
    }))

  it.effect("exact resume on the same replica count: bit-identical to an uninterrupted 2-replica run", () =>
    Effect.gen(function*() {
      const whole = yield* fit({ devices: 2, maxSteps: 8 })
      const first = yield* fit({ devices: 2, maxSteps: 3 })
      const resumed = yield* fit({ devices: 2, maxSteps: 8, ckptPath: path.join(first.root, "checkpoints", "last.ckpt") })
      assert.isTrue(sameBits(resumed.weights, whole.weights))
    }))

  it.effect("a typed failure on rank 1 fails fit with a CollectiveError naming rank 1; no thread left", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(fit({ devices: 2, maxSteps: 8, failAt: { rank: 1, step: 2 } }))
      assert.strictEqual(error._tag, "CollectiveError")
      assert.strictEqual((error as Collective.CollectiveError).rank, 1)
      assert.include(error.message, "injected failure on rank 1")
      assert.strictEqual(DataParallel.liveWorkers(), 0)
    }))

  it.effect("a crash of rank 1's thread fails fit with a CollectiveError naming rank 1; no thread left", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(fit({ devices: 2, maxSteps: 8, crashAt: { rank: 1, step: 2 } }))
      assert.strictEqual(error._tag, "CollectiveError")
      assert.strictEqual((error as Collective.CollectiveError).rank, 1)
      assert.include(error.message, "injected crash on rank 1")
      assert.strictEqual(DataParallel.liveWorkers(), 0)
    }))

  it.effect("interrupting rank 0 stops every worker; the exception checkpoint is written once, by rank 0", () =>
    Effect.gen(function*() {
      const stepped = yield* Deferred.make<void>()
      const root = yield* tempRoot
      const fiber = yield* Effect.forkChild(run({ devices: 2, maxSteps: 1000, root }, [{
        name: "signal",
        onTrainBatchEnd: (state) => state.globalStep === 2 ? Deferred.succeed(stepped, undefined) : Effect.void
      }]))
      yield* Deferred.await(stepped)
      assert.strictEqual(DataParallel.liveWorkers(), 1)
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(DataParallel.liveWorkers(), 0)
      const saves = savesOf(root)
      assert.strictEqual(saves.filter((line) => line.includes("exception")).length, 1, saves.join("; "))
      assert.isTrue(saves.every((line) => line.startsWith("0 ")), saves.join("; "))
    }))
})
