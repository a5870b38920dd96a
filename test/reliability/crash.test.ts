import { assert, describe, it } from "@effect/vitest"
import { runCrashTrials } from "./crash.ts"
import { quick } from "./runner.ts"
import { formatFailures } from "./support.ts"

// The quick version of `npm run test:reliability`'s crash category (see crash.ts).
describe("reliability: kill -9 during training and checkpointing", () => {
  it(
    "every final-name file loads, resume picks the newest committed checkpoint, retention loses nothing, temp files are swept",
    async () => {
      const result = await runCrashTrials({ kills: quick.kills, seed: 1 })
      assert.strictEqual(result.trials, quick.kills)
      assert.deepStrictEqual(result.failures, [], formatFailures(result))
      assert.strictEqual(result.notes["completion runs"], Math.ceil(quick.kills / 5))
    },
    180_000
  )
})
