/**
 * Pending (needs the ModelCheckpoint change "a failed or interrupted save event puts
 * the bookkeeping back"): ModelCheckpoint records a new top-k checkpoint in its state
 * before saving it (so that the file records itself). When that save is interrupted
 * (Ctrl-C) or fails, the path stays in the state, and `saveOnException` then writes
 * that state into `exception-….ckpt` and `last.ckpt`: the resumed run tracks a file
 * that was never written, and its rotation keeps fewer than `saveTopK` real
 * checkpoints. Seen by interrupt.ts in about 1 run in 7 (reported there as a known
 * defect).
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Fiber, Option } from "effect"
import type { CheckpointIOShape } from "../../src/CheckpointIO.ts"
import * as MemoryCheckpointIO from "../../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import { epochEnd, fakeTrainer } from "../support/fakeTrainer.ts"
import { runInterruptTrials } from "./interrupt.ts"
import { formatFailures } from "./support.ts"

describe("an interrupted save never enters the saved ModelCheckpoint state", () => {
  it.effect("interrupt a top-k save, save on exception, resume: every tracked checkpoint exists", () =>
    Effect.gen(function*() {
      const io = yield* Effect.provide(MemoryCheckpointIO.make, MemoryCheckpointIO.MemoryStore.layer)
      const blocked = yield* Deferred.make<void>()
      // The top-k save at step 30 never finishes (the process gets SIGINT meanwhile).
      const store: CheckpointIOShape = {
        ...io,
        save: (c, p, o) =>
          Option.getOrUndefined(c.meta)?.globalStep === 30 && !p.includes("last") && !p.includes("exception")
            ? Effect.andThen(Deferred.succeed(blocked, undefined), Effect.never)
            : io.save(c, p, o)
      }
      const callback = yield* ModelCheckpoint.make({
        dirpath: "/ckpt",
        monitor: "loss",
        saveTopK: 2,
        saveLast: true,
        saveOnException: true
      })
      const trainer = fakeTrainer(store, () => [callback], "/root")
      yield* callback.setup(trainer, "fit")
      yield* epochEnd(callback, trainer, 0, 10, { loss: 5 })
      yield* epochEnd(callback, trainer, 1, 20, { loss: 4 })
      const fiber = yield* Effect.forkChild(epochEnd(callback, trainer, 2, 30, { loss: 3 }))
      yield* Deferred.await(blocked)
      yield* Fiber.interrupt(fiber)
      yield* callback.onException(trainer, Cause.interrupt())

      const last = yield* io.load("/ckpt/last.ckpt")
      const state = Option.getOrThrow(last.meta).callbacks[callback.stateKey]!
      const resumed = yield* ModelCheckpoint.make({ dirpath: "/ckpt", monitor: "loss", saveTopK: 2, saveLast: true })
      yield* resumed.loadStateDict(state)
      for (const path of [...resumed.bestKModels.keys(), resumed.bestModelPath, resumed.kthBestModelPath]) {
        if (path !== undefined) assert.isTrue(yield* io.exists(path), `last.ckpt's state tracks ${path}, which was never written`)
      }
    }))

  it("SIGINT / SIGTERM runs: the resumed run keeps saveTopK checkpoints", async () => {
    const result = await runInterruptTrials({ trials: 16, seed: 1, followUpEvery: 1, strict: true })
    assert.deepStrictEqual(result.failures, [], formatFailures(result))
  }, 300_000)
})
