/**
 * EarlyStopping, a learning-rate schedule, gradient accumulation, minEpochs and the
 * model summary on iris, then an exact resume: a run stopped in the middle of an
 * accumulation window, saved and resumed by a new Trainer ends with the same weights
 * as the uninterrupted run.
 *
 *   node examples/schedules.ts
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Effect, Layer, Option } from "effect"
import {
  type Callback,
  Device,
  EarlyStopping,
  LRScheduler,
  MemoryCheckpointIO,
  Strategy,
  Trainer,
  type TrainingModule
} from "effect-trainer"
import type { DataModule } from "effect-trainer"
import { iris, irisData } from "./iris.ts"

/** The iris module with a cosine schedule stepped every optimizer step. */
const scheduled: TrainingModule.TrainingModule<DataModule.XY> = {
  ...iris,
  validationStep: (model, batch, ctx) => {
    iris.validationStep!(model, batch, ctx)
    ctx.log("val_loss", ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as never) as never)
  },
  configureOptimizers: (t) => ({
    optimizer: t.train.adam(0.05),
    lrScheduler: { scheduler: LRScheduler.cosineAnnealing({ tMax: 30, etaMin: 0.001 }), interval: "step" }
  })
}

const options: Trainer.TrainerOptions = {
  maxEpochs: 10,
  minEpochs: 3,
  accumulateGradBatches: 2,
  seed: 1,
  numSanityValSteps: 0,
  enableProgressBar: false,
  logger: false
}

const run = (extra: Trainer.TrainerOptions, ckptPath?: string) =>
  Effect.gen(function*() {
    const trainer = yield* Trainer.make({ ...options, ...extra })
    yield* trainer.fit(scheduled, irisData(), ckptPath === undefined ? {} : { ckptPath })
    const weights = Option.getOrThrow(trainer.model(scheduled)).getWeights().map((w) => [...w.dataSync()])
    return { trainer, weights }
  })

const main = Effect.gen(function*() {
  const early = EarlyStopping.make({ monitor: "val_loss", patience: 2, minDelta: 0.01 })
  const straight = yield* run({
    callbacks: [early, LRScheduler.learningRateMonitor()],
    plugins: { checkpointIO: MemoryCheckpointIO.layer }
  })
  console.log(`straight: ${straight.trainer.state.currentEpoch} epochs, ${straight.trainer.state.globalStep} optimizer steps`)
  console.log(`early stopping: stopped epoch ${early.state.stoppedEpoch}, best val_loss ${early.state.bestScore?.toFixed(4)}`)
  console.log(`learning rate at the end: ${straight.trainer.state.callbackMetrics.get("lr-Adam")?.toExponential(3)}`)

  // The same run, stopped after 9 batches (inside a window of 2), saved, resumed.
  const io = Layer.succeedContext(yield* Layer.build(MemoryCheckpointIO.layer))
  let batches = 0
  const stop: Callback.Callback = {
    name: "stop",
    onTrainBatchEnd: (t) => (++batches === 9 ? Effect.andThen(t.saveCheckpoint("/mid.ckpt"), Effect.sync(t.stop)) : Effect.void)
  }
  const earlyA = EarlyStopping.make({ monitor: "val_loss", patience: 2, minDelta: 0.01 })
  // minEpochs would defer this stop request too (Lightning's rule): lift it for the stopped run.
  const stopped = yield* run({ callbacks: [earlyA, stop], minEpochs: 0, enableModelSummary: false, plugins: { checkpointIO: io } })
  console.log(`stopped at step ${stopped.trainer.state.globalStep}, inside an accumulation window`)
  const earlyB = EarlyStopping.make({ monitor: "val_loss", patience: 2, minDelta: 0.01 })
  const resumed = yield* run({ callbacks: [earlyB], enableModelSummary: false, seed: 99, plugins: { checkpointIO: io } }, "/mid.ckpt")
  const same = JSON.stringify(resumed.weights) === JSON.stringify(straight.weights)
  console.log(`resumed from inside an accumulation window: ${same ? "bit-identical" : "DIFFERENT"} weights`)
  if (!same) return yield* Effect.fail(new Error("the resumed run differs"))
})

NodeRuntime.runMain(
  main.pipe(
    Effect.scoped,
    Effect.provide(Strategy.singleDevice().pipe(Layer.provideMerge(Device.layerConfig), Layer.provideMerge(NodeServices.layer)))
  )
)
