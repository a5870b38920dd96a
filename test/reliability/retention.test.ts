/**
 * Pending (needs the ModelCheckpoint change "remove rotated-out checkpoints only after
 * last.ckpt is written"): whatever operation a crash stops a run at, the
 * ModelCheckpoint state saved in `last.ckpt` (what a resume restores) tracks only
 * checkpoints that are still in storage. Today a crash between the removal of a
 * rotated-out top-k file and the save of `last.ckpt` leaves a `last.ckpt` whose state
 * still tracks the removed file (crash.ts counts these as a note), so after the
 * resume `bestModelPath` / `ckptPath: "best"` can name a deleted checkpoint. On
 * AsyncCheckpointIO the removal must also wait for last.ckpt's background write.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Option } from "effect"
import { type CheckpointIOShape, CheckpointStorageError } from "../../src/CheckpointIO.ts"
import * as MemoryCheckpointIO from "../../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import { epochEnd, fakeTrainer } from "../support/fakeTrainer.ts"
import { runCrashTrials } from "./crash.ts"
import { formatFailures } from "./support.ts"

/** A store that "crashes" (every later write fails) after `n` writes. */
const crashingAfter = (base: CheckpointIOShape, n: number): CheckpointIOShape => {
  let writes = 0
  const gate = <A, E>(path: string, effect: Effect.Effect<A, E>): Effect.Effect<A, E | CheckpointStorageError> =>
    Effect.suspend((): Effect.Effect<A, E | CheckpointStorageError> =>
      writes++ < n ? effect : Effect.fail(new CheckpointStorageError({ operation: "save", path, reason: "IO", cause: "crash" }))
    )
  return {
    ...base,
    save: (c, p, o) => gate(p, base.save(c, p, o)),
    remove: (p) => gate(p, base.remove(p)),
    copy: (s, t) => gate(t, base.copy(s, t))
  }
}

describe("a crash never leaves last.ckpt tracking a removed checkpoint", () => {
  it.effect("at every crash point of a run with rotations", () =>
    Effect.gen(function*() {
      const losses = [5, 4, 3, 2, 6, 1, 0.5]
      for (let n = 0; n < 40; n++) {
        const io = yield* Effect.provide(MemoryCheckpointIO.make, MemoryCheckpointIO.MemoryStore.layer)
        const crashing = crashingAfter(io, n)
        const callback = yield* ModelCheckpoint.make({ dirpath: "/ckpt", monitor: "loss", saveTopK: 2, saveLast: true })
        const trainer = fakeTrainer(crashing, () => [callback], "/root")
        yield* callback.setup(trainer, "fit")
        yield* Effect.exit(Effect.forEach(losses, (loss, e) => epochEnd(callback, trainer, e, (e + 1) * 10, { loss }), { discard: true }))
        const last = yield* Effect.exit(io.load("/ckpt/last.ckpt"))
        if (Exit.isFailure(last)) continue
        const state = Option.getOrThrow(last.value.meta).callbacks[callback.stateKey] as {
          bestKModels: Record<string, number>
          bestModelPath: string | null
        }
        const resumed = yield* ModelCheckpoint.make({ dirpath: "/ckpt", monitor: "loss", saveTopK: 2, saveLast: true })
        yield* resumed.loadStateDict(state)
        for (const path of [...resumed.bestKModels.keys(), resumed.bestModelPath, resumed.kthBestModelPath]) {
          if (path === undefined) continue
          assert.isTrue(yield* io.exists(path), `crash after ${n} writes: last.ckpt tracks ${path}, which is gone`)
        }
      }
    }))
})

describe("kill -9 never leaves last.ckpt tracking a removed checkpoint", () => {
  it("over 20 seeded kills, sync and async", async () => {
    const result = await runCrashTrials({ kills: 20, seed: 3, strictTracking: true })
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
  }, 180_000)
})
