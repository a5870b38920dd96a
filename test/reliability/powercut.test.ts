import { assert, describe, it } from "@effect/vitest"
import { runPowerCutTrials } from "./powercut.ts"
import { quick } from "./runner.ts"
import { formatFailures } from "./support.ts"

// The quick version of the power-cut category (see powercut.ts).
describe("reliability: power cuts at every step of the save protocol", () => {
  it("leave the previous or the new checkpoint under the final name, and keep a save that returned", async () => {
    const result = await runPowerCutTrials({
      seed: 1,
      randomPerPoint: quick.powerCutRandomPerPoint,
      modelCheckpointEvents: quick.powerCutEvents
    })
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
    assert.isAbove(result.trials, 100)
  }, 120_000)
})
