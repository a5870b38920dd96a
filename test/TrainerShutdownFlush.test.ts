/**
 * Issue 12.9: the flush after a failed or interrupted fit is bounded
 * (`shutdownFlushTimeout`, TestClock here) and, after a failure, interruptible.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type * as tf from "@tensorflow/tfjs"
import { Deferred, Effect, Fiber, Layer, Logger } from "effect"
import { TestClock } from "effect/testing"
import { CheckpointIO, type CheckpointIOShape } from "../src/CheckpointIO.ts"
import type * as DataModule from "../src/DataModule.ts"
import * as Device from "../src/Device.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { StepContext, TrainingModule } from "../src/TrainingModule.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

const devices = Strategy.singleDevice().pipe(
  Layer.provideMerge(Device.layer("wasm")),
  Layer.provideMerge(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))
)

const failing = (failAt: number): TrainingModule<DataModule.XY> => {
  const base = irisClassifier(`shutdown-fails-at-${failAt}`)
  let steps = 0
  return {
    ...base,
    trainingStep: (model: tf.LayersModel, batch: DataModule.XY, ctx: StepContext) => {
      if (++steps === failAt) throw new Error("boom")
      return base.trainingStep(model, batch, ctx)
    }
  }
}

/** The memory store whose flush never returns (a hung write); `flushing` completes when it is called. */
const hungFlush = (flushing: Deferred.Deferred<void>) =>
  Layer.effect(
    CheckpointIO,
    Effect.map(MemoryCheckpointIO.make, (inner): CheckpointIOShape => ({
      ...inner,
      flush: Effect.andThen(Deferred.succeed(flushing, undefined), Effect.never)
    }))
  ).pipe(Layer.provide(MemoryCheckpointIO.MemoryStore.layer))

describe("Trainer: the flush after a failed fit", () => {
  it.effect("issue 12.9: a hung flush after a failure is given up after shutdownFlushTimeout, logged, and the error returned", () => {
    const logs: Array<string> = []
    const logger = Logger.layer([Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))])
    return Effect.gen(function*() {
      const flushing = yield* Deferred.make<void>()
      const trainer = yield* Trainer.make({
        enableProgressBar: false,
        logger: false,
        maxEpochs: 1,
        numSanityValSteps: 0,
        shutdownFlushTimeout: "30 seconds",
        plugins: { checkpointIO: hungFlush(flushing) }
      })
      const fit = yield* Effect.forkChild(Effect.flip(trainer.fit(failing(2), irisData())))
      yield* Deferred.await(flushing)
      yield* TestClock.adjust("31 seconds")
      const error = yield* Fiber.join(fit)
      assert.include(error.message, "boom")
      assert.isTrue(logs.some((l) => l.includes("gave up waiting for pending checkpoint saves after 30s")), logs.join("\n"))
    }).pipe(Effect.provide(Layer.merge(devices, logger)))
  })

  it.effect("issue 12.9: after a failure, an interrupt stops the flush at once", () =>
    Effect.gen(function*() {
      const flushing = yield* Deferred.make<void>()
      const trainer = yield* Trainer.make({
        enableProgressBar: false,
        logger: false,
        maxEpochs: 1,
        numSanityValSteps: 0,
        plugins: { checkpointIO: hungFlush(flushing) }
      })
      const fit = yield* Effect.forkChild(trainer.fit(failing(2), irisData()))
      yield* Deferred.await(flushing)
      // No clock moves: the interrupt alone ends the wait.
      yield* Fiber.interrupt(fit)
      assert.isDefined(fit.pollUnsafe())
    }).pipe(Effect.provide(devices)))
})
