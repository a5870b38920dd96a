import { assert, describe, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import * as DataModule from "../src/DataModule.ts"
import * as Random from "../src/Random.ts"

const rows = (n: number): DataModule.XY => ({
  x: { dtype: "F32", shape: [n, 2], data: Float32Array.from({ length: n * 2 }, (_, i) => Math.floor(i / 2)) },
  y: { dtype: "I32", shape: [n], data: Int32Array.from({ length: n }, (_, i) => i) }
})

const ids = (stream: Stream.Stream<DataModule.XY, DataModule.DataError>) =>
  Effect.map(Stream.runCollect(stream), (c) => c.map((b) => [...(b.y.data as Int32Array)]))

describe("DataModule", () => {
  it.effect("splits deterministically into disjoint train / val / test sets", () =>
    Effect.gen(function*() {
      const dm = DataModule.fromArrays(rows(100), { batchSize: 8, seed: 3, valFraction: 0.2, testFraction: 0.1 })
      const train = (yield* ids(dm.train!(0))).flat()
      const val = (yield* ids(dm.val!())).flat()
      const test = (yield* ids(dm.test!())).flat()
      assert.deepStrictEqual([train.length, val.length, test.length], [70, 20, 10])
      assert.deepStrictEqual([...train, ...val, ...test].sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i))
      assert.deepStrictEqual([dm.numTrainBatches, dm.numValBatches, dm.numTestBatches], [9, 3, 2])
      const again = DataModule.fromArrays(rows(100), { batchSize: 8, seed: 3, valFraction: 0.2, testFraction: 0.1 })
      assert.deepStrictEqual((yield* ids(again.val!())).flat(), val)
    }))

  it.effect("shuffles per epoch from the seed: the same epoch always gives the same batches", () =>
    Effect.gen(function*() {
      const dm = DataModule.fromArrays(rows(64), { batchSize: 10, seed: 1 })
      const e0 = yield* ids(dm.train!(0))
      assert.deepStrictEqual(yield* ids(dm.train!(0)), e0)
      assert.notDeepEqual(yield* ids(dm.train!(1)), e0)
      // Rows stay paired with their targets.
      const batch = (yield* Stream.runCollect(dm.train!(2)))[0]!
      const y = batch.y.data as Int32Array
      const x = batch.x.data as Float32Array
      y.forEach((id, i) => assert.deepStrictEqual([x[2 * i], x[2 * i + 1]], [id, id]))
      const fixed = DataModule.fromArrays(rows(64), { batchSize: 10, seed: 1, shuffle: false })
      assert.deepStrictEqual(yield* ids(fixed.train!(0)), yield* ids(fixed.train!(5)))
      const dropped = DataModule.fromArrays(rows(64), { batchSize: 10, seed: 1, dropLast: true, valFraction: 0 })
      assert.deepStrictEqual((yield* ids(dropped.train!(0))).map((b) => b.length), [10, 10, 10, 10, 10, 10])
    }))

  it("permutations are permutations, and the seeded Math.random is scoped", () => {
    const p = Random.permutation(1000, 42)
    assert.deepStrictEqual([...p].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i))
    assert.deepStrictEqual(Random.permutation(1000, 42), p)
    assert.notDeepEqual(Random.permutation(1000, 43), p)
    const real = Math.random
    const a = { value: 9 }
    const b = { value: 9 }
    const xs = Random.withSeeded(a, () => [Math.random(), Math.random()])
    const ys = Random.withSeeded(b, () => [Math.random(), Math.random()])
    assert.deepStrictEqual(xs, ys)
    assert.strictEqual(a.value, b.value)
    assert.strictEqual(Math.random, real)
    assert.throws(() =>
      Random.withSeeded(a, () => {
        throw new Error("boom")
      })
    )
    assert.strictEqual(Math.random, real, "restored after a throw too")
  })
})
