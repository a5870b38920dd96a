import { assert, describe, it } from "@effect/vitest"
import { runCorruptionFuzz } from "./fuzz.ts"
import { quick } from "./runner.ts"
import { formatFailures } from "./support.ts"

// The quick version of the corruption fuzzer (see fuzz-cases.ts for the oracle).
describe("reliability: corrupted checkpoint files", () => {
  it("load as a typed error or exactly what they hold; never a defect, a hang or a large allocation", async () => {
    const result = await runCorruptionFuzz({ cases: quick.fuzzCases, seed: 1 })
    assert.strictEqual(result.trials, quick.fuzzCases)
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
    assert.isAtMost(Number(result.notes["worst bytes allocated / file size"]), 8)
  }, 120_000)

  it("absurd shapes and sizes are refused before any allocation", async () => {
    const result = await runCorruptionFuzz({ mode: "crafted" })
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
  }, 120_000)
})
