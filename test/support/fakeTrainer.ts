/**
 * A `TrainerState` without tfjs, to drive checkpoint callbacks over any
 * `CheckpointIO`: `saveCheckpoint` writes a small checkpoint whose tensor holds the
 * global step and whose meta carries the callbacks' states (as the Trainer's does).
 */
import { Effect } from "effect"
import * as Callback from "../../src/Callback.ts"
import * as Checkpoint from "../../src/Checkpoint.ts"
import type { CheckpointIOShape } from "../../src/CheckpointIO.ts"

export interface FakeTrainer extends Callback.TrainerState {
  stage: Callback.Stage
  shouldStop: boolean
  sanityChecking: boolean
  batchIdx: number
  loggedMetrics: Map<string, number>
  currentEpoch: number
  globalStep: number
  callbackMetrics: Map<string, number>
  resumedFrom: string | undefined
}

export const fakeTrainer = (
  io: CheckpointIOShape,
  stateful: () => ReadonlyArray<Callback.Callback>,
  defaultRootDir = "/root"
): FakeTrainer => {
  const fake: FakeTrainer = {
    stage: "fit",
    currentEpoch: 0,
    globalStep: 0,
    batchIdx: 0,
    numTrainBatches: undefined,
    maxEpochs: 1000,
    maxSteps: -1,
    callbackMetrics: new Map(),
    loggedMetrics: new Map(),
    defaultRootDir,
    checkpointIO: io,
    sanityChecking: false,
    shouldStop: false,
    stop: () => {
      fake.shouldStop = true
    },
    saveCheckpoint: (path, options) =>
      Effect.suspend(() => {
        const callbacks: Record<string, ReturnType<NonNullable<Callback.Callback["stateDict"]>>> = {}
        for (const cb of stateful()) if (cb.stateDict !== undefined) callbacks[Callback.stateKeyOf(cb)] = cb.stateDict()
        return io.save(
          Checkpoint.make({
            tensors: { "model/w": Checkpoint.tensor("F32", [2], Float32Array.of(fake.globalStep, fake.currentEpoch)) },
            meta: { epoch: fake.currentEpoch, globalStep: fake.globalStep, weightsOnly: options?.weightsOnly ?? false, callbacks }
          }),
          path
        )
      }),
    resumedFrom: undefined
  }
  return fake
}

/** One training epoch in the fake trainer: start, then its end at `step` with `metrics`. */
export const epochEnd = (
  callback: Callback.Callback,
  trainer: FakeTrainer,
  epoch: number,
  step: number,
  metrics: Record<string, number>
) =>
  Effect.gen(function*() {
    trainer.currentEpoch = epoch
    if (callback.onTrainEpochStart !== undefined) yield* callback.onTrainEpochStart(trainer)
    trainer.globalStep = step
    trainer.callbackMetrics = new Map(Object.entries(metrics))
    if (callback.onTrainEpochEnd !== undefined) yield* callback.onTrainEpochEnd(trainer)
  })
