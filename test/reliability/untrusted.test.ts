import { assert, describe, it } from "@effect/vitest"
import { quick } from "./runner.ts"
import { formatFailures } from "./support.ts"
import { runFilenameFuzz, runPrototypeCases } from "./untrusted.ts"

// The quick version of the untrusted-input category (see untrusted.ts; absurd sizes: fuzz.test.ts).
describe("reliability: untrusted input", () => {
  it("loading runs no code and pollutes no prototype", async () => {
    const result = await runPrototypeCases()
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
  })

  it("no template, metric name or resumed state makes ModelCheckpoint write or remove outside dirpath", async () => {
    const result = await runFilenameFuzz({ cases: quick.filenameCases, seed: 1 })
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
  }, 120_000)
})
