import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer, Option, Result } from "effect"
import { TestClock } from "effect/testing"
import type * as Callback from "../src/Callback.ts"
import type * as DataModule from "../src/DataModule.ts"
import * as Device from "../src/Device.ts"
import * as EarlyStopping from "../src/EarlyStopping.ts"
import * as LRScheduler from "../src/LRScheduler.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as ModelSummary from "../src/ModelSummary.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { TrainingModule } from "../src/TrainingModule.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

const quiet: Trainer.TrainerOptions = { enableProgressBar: false, logger: false, enableModelSummary: false }
const stack = (backend: Device.BackendChoice = "wasm") =>
  Strategy.singleDevice().pipe(
    Layer.provideMerge(Device.layer(backend)),
    Layer.provideMerge(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))
  )

/** A module whose validation logs `val_metric = sequence[epoch]`. */
const scripted = (sequence: ReadonlyArray<number>): TrainingModule<DataModule.XY> => ({
  ...irisClassifier("scripted"),
  validationStep: (_model, _batch, ctx) => ctx.log("val_metric", sequence[Math.min(ctx.epoch, sequence.length - 1)]!)
})

describe("EarlyStopping", () => {
  // The epoch Lightning 2.6 stops at (`stopped_epoch`) for a metric sequence, one check per epoch.
  const table: ReadonlyArray<{
    readonly name: string
    readonly options: Omit<EarlyStopping.EarlyStoppingOptions, "monitor">
    readonly sequence: ReadonlyArray<number>
    readonly stoppedAt: number
    readonly extra?: Trainer.TrainerOptions
  }> = [
    { name: "patience 3, plateau", options: { patience: 3 }, sequence: [5, 4, 4, 4, 4, 4, 4], stoppedAt: 4 },
    { name: "patience 0 stops at the first non-improvement", options: { patience: 0 }, sequence: [5, 4, 3, 3, 2], stoppedAt: 3 },
    { name: "NaN with checkFinite", options: { patience: 5 }, sequence: [5, 4, NaN, 3], stoppedAt: 2 },
    {
      name: "NaN without checkFinite counts as no improvement",
      options: { patience: 1, checkFinite: false },
      sequence: [5, NaN, 3],
      stoppedAt: 1
    },
    { name: "Infinity with checkFinite", options: {}, sequence: [5, Infinity], stoppedAt: 1 },
    { name: "stoppingThreshold", options: { stoppingThreshold: 2.5 }, sequence: [5, 4, 3, 2, 1], stoppedAt: 3 },
    { name: "divergenceThreshold", options: { divergenceThreshold: 10 }, sequence: [5, 4, 11, 3], stoppedAt: 2 },
    { name: "minDelta: small gains do not count", options: { patience: 2, minDelta: 0.5 }, sequence: [5, 4.8, 4.6, 4.0], stoppedAt: 2 },
    { name: "mode max", options: { patience: 1, mode: "max" }, sequence: [0.5, 0.6, 0.6, 0.7], stoppedAt: 2 },
    {
      name: "minEpochs defers the stop",
      options: { patience: 3 },
      sequence: [5, 4, 4, 4, 4, 4, 4, 4],
      stoppedAt: 5,
      extra: { minEpochs: 6 }
    }
  ]
  for (const row of table) {
    it.effect(`stops where Lightning does: ${row.name}`, () =>
      Effect.gen(function*() {
        const es = EarlyStopping.make({ monitor: "val_metric", ...row.options })
        let epochs = 0
        const counter: Callback.Callback = { name: "counter", onTrainEpochEnd: () => Effect.sync(() => void epochs++) }
        const trainer = yield* Trainer.make({
          ...quiet,
          maxEpochs: 20,
          limitTrainBatches: 1,
          limitValBatches: 1,
          numSanityValSteps: 0,
          callbacks: [es, counter],
          plugins: { checkpointIO: MemoryCheckpointIO.layer },
          ...row.extra
        })
        yield* trainer.fit(scripted(row.sequence), irisData())
        assert.strictEqual(es.state.stoppedEpoch, row.stoppedAt)
        assert.strictEqual(epochs, row.stoppedAt + 1, "the epoch it stopped in is the last")
      }).pipe(Effect.provide(stack())))
  }

  it.effect("a missing monitor fails the fit when strict, is skipped otherwise", () =>
    Effect.gen(function*() {
      const make = (strict: boolean) =>
        Trainer.make({
          ...quiet,
          maxEpochs: 2,
          limitTrainBatches: 1,
          numSanityValSteps: 0,
          callbacks: [EarlyStopping.make({ monitor: "nope", strict })],
          plugins: { checkpointIO: MemoryCheckpointIO.layer }
        })
      const error = yield* Effect.flip((yield* make(true)).fit(irisClassifier(), irisData()))
      assert.strictEqual(error._tag, "CallbackError")
      yield* (yield* make(false)).fit(irisClassifier(), irisData())
    }).pipe(Effect.provide(stack())))
})

describe("LRScheduler: PyTorch's values", () => {
  const run = (scheduler: LRScheduler.Scheduler, steps: number, metrics: ReadonlyArray<number> = []) => {
    let state = scheduler.init(1)
    const lrs = [state.lr]
    for (let i = 0; i < steps; i++) {
      state = scheduler.step(state, metrics[i])
      lrs.push(state.lr)
    }
    return lrs
  }
  const close = (actual: ReadonlyArray<number>, expected: ReadonlyArray<number>) =>
    actual.forEach((a, i) => assert.closeTo(a, expected[i]!, 1e-12, `step ${i}: ${actual.join(", ")}`))

  it("step, multiStep, exponential, cosineAnnealing, linearWarmup, oneCycle, reduceOnPlateau", () => {
    close(run(LRScheduler.step({ stepSize: 2, gamma: 0.5 }), 4), [1, 1, 0.5, 0.5, 0.25])
    close(run(LRScheduler.multiStep({ milestones: [2, 4] }), 4), [1, 1, 0.1, 0.1, 0.01])
    close(run(LRScheduler.exponential({ gamma: 0.5 }), 2), [1, 0.5, 0.25])
    close(run(LRScheduler.cosineAnnealing({ tMax: 4 }), 4), [1, 0.8535533905932737, 0.5, 0.14644660940672627, 0])
    close(run(LRScheduler.linearWarmup({ warmupSteps: 3, startFactor: 0.25 }), 4), [0.25, 0.5, 0.75, 1, 1])
    const cycle = run(LRScheduler.oneCycle({ maxLr: 1, totalSteps: 10 }), 9)
    close([cycle[0]!, cycle[2]!, cycle[9]!], [0.04, 1, 0.04 / 1e4])
    close(run(LRScheduler.reduceOnPlateau({ patience: 1, factor: 0.5 }), 6, [1, 1, 1, 0.5, 0.5, 0.5]), [1, 1, 1, 0.5, 0.5, 0.5, 0.25])
  })

  it("an optimizer whose rate cannot be set is refused with a typed error", () => {
    const custom = { getClassName: () => "MyOptimizer" } as unknown as tf.Optimizer
    const refused = LRScheduler.getLearningRate(custom, "StepLR")
    assert.isTrue(Result.isFailure(refused) && refused.failure.reason === "unsupported-optimizer")
  })
})

describe("ModelSummary", () => {
  it.effect("layers, parameters and size of a model", () =>
    Effect.gen(function*() {
      const strategy = yield* Strategy.Strategy
      const summary = ModelSummary.summarize(irisClassifier().configureModel(strategy.device.tf))
      assert.deepStrictEqual(summary.layers.map((l) => [l.name, l.type, l.params]), [["hidden", "Dense", 80], ["out", "Dense", 51]])
      assert.strictEqual(summary.totalParams, 131)
      assert.closeTo(summary.sizeMB, 131 * 4 / 1e6, 1e-12)
      assert.include(ModelSummary.format(summary), "Total params")
    }).pipe(Effect.provide(stack())))
})

describe("maxTime, minSteps (TestClock)", () => {
  it.effect("stops when the time is up, not before minSteps; time before a resume counts", () =>
    Effect.gen(function*() {
      const tick: Callback.Callback = { name: "tick", onTrainBatchEnd: () => TestClock.adjust("1 second") }
      const options = { ...quiet, maxEpochs: 10, numSanityValSteps: 0, maxTime: "3500 millis" as const }
      const a = yield* Trainer.make({ ...options, callbacks: [tick], plugins: { checkpointIO: MemoryCheckpointIO.layer } })
      yield* a.fit(irisClassifier(), irisData())
      assert.strictEqual(a.state.globalStep, 4)
      const b = yield* Trainer.make({ ...options, minSteps: 7, callbacks: [tick], plugins: { checkpointIO: MemoryCheckpointIO.layer } })
      yield* b.fit(irisClassifier(), irisData())
      assert.strictEqual(b.state.globalStep, 7)
      // Stopped after 2 s, saved, resumed: 2 more seconds.
      const io = Layer.succeedContext(yield* Layer.build(MemoryCheckpointIO.layer))
      const stop: Callback.Callback = {
        name: "stop",
        onTrainBatchEnd: (t) => (t.globalStep === 2 ? Effect.andThen(t.saveCheckpoint("/t.ckpt"), Effect.sync(t.stop)) : Effect.void)
      }
      yield* (yield* Trainer.make({ ...options, callbacks: [tick, stop], plugins: { checkpointIO: io } })).fit(irisClassifier(), irisData())
      const c = yield* Trainer.make({ ...options, callbacks: [tick], plugins: { checkpointIO: io } })
      yield* c.fit(irisClassifier(), irisData(), { ckptPath: "/t.ckpt" })
      assert.strictEqual(c.state.globalStep, 4)
    }).pipe(Effect.provide(stack())))
})

describe("issue 14: exact resume with schedulers, accumulation and EarlyStopping", () => {
  const withDropout = (name: string, lrScheduler: LRScheduler.LRSchedulerConfig): TrainingModule<DataModule.XY> => ({
    ...irisClassifier(name),
    configureModel: (tfjs) =>
      tfjs.sequential({
        layers: [
          tfjs.layers.dense({ units: 16, activation: "relu", inputShape: [4], name: "hidden" }),
          tfjs.layers.dropout({ rate: 0.3, name: "drop" }),
          tfjs.layers.dense({ units: 3, name: "out" })
        ]
      }),
    configureOptimizers: (tfjs) => ({ optimizer: tfjs.train.adam(0.05), lrScheduler })
  })
  type Stop = { readonly hook: "batch"; readonly batches: number } | { readonly hook: "epoch"; readonly epoch: number }
  const variants: ReadonlyArray<
    { readonly name: string; readonly scheduler: LRScheduler.LRSchedulerConfig; readonly stops: ReadonlyArray<Stop> }
  > = [
    {
      // 6 batches an epoch, windows of 2: batch 3 is inside a window, batch 4 right after a step and a scheduler step.
      name: "step-interval exponential",
      scheduler: { scheduler: LRScheduler.exponential({ gamma: 0.9 }), interval: "step" },
      stops: [{ hook: "batch", batches: 3 }, { hook: "batch", batches: 4 }, { hook: "batch", batches: 9 }, { hook: "epoch", epoch: 0 }]
    },
    {
      name: "epoch-interval reduceOnPlateau",
      scheduler: { scheduler: LRScheduler.reduceOnPlateau({ patience: 0, factor: 0.5 }), monitor: "val_loss" },
      stops: [{ hook: "batch", batches: 7 }, { hook: "epoch", epoch: 1 }]
    }
  ]
  for (const backend of ["wasm", "cpu"] as const) {
    for (const variant of variants) {
      it.effect(`on ${backend}, ${variant.name}: stopped, resumed with another seed, bit-identical`, () =>
        Effect.gen(function*() {
          // minDelta so large that nothing improves after the first check: a patience count runs.
          const early = () => EarlyStopping.make({ monitor: "val_loss", patience: 50, minDelta: 100 })
          const options = { ...quiet, maxEpochs: 3, seed: 3, numSanityValSteps: 0, accumulateGradBatches: 2 }
          const stateOf = (t: Trainer.TrainerShape) =>
            Effect.gen(function*() {
              yield* t.saveCheckpoint("/final.ckpt")
              const saved = yield* t.checkpointIO.load("/final.ckpt")
              const meta = Option.getOrThrow(saved.meta)
              return {
                tensors: Object.fromEntries(
                  Object.entries(saved.tensors).map(([k, v]) => [k.replace(/^(optimizer\/\d{4})\/.*$/, "$1"), [...v.data].map(Number)])
                ),
                lr: t.state.learningRates,
                schedulers: (meta.loops["fit"] as { lrSchedulers: unknown }).lrSchedulers,
                callbacks: meta.callbacks,
                step: t.state.globalStep
              }
            })
          const straight = yield* Trainer.make({ ...options, callbacks: [early()], plugins: { checkpointIO: MemoryCheckpointIO.layer } })
          yield* straight.fit(withDropout("straight", variant.scheduler), irisData())
          const expected = yield* stateOf(straight)
          assert.strictEqual(expected.step, 9, "3 epochs of 6 batches in windows of 2")
          for (const stop of variant.stops) {
            const io = Layer.succeedContext(yield* Layer.build(MemoryCheckpointIO.layer))
            let batches = 0
            const stopper: Callback.Callback = stop.hook === "batch"
              ? {
                name: "stop",
                onTrainBatchEnd: (t) =>
                  ++batches === stop.batches ? Effect.andThen(t.saveCheckpoint("/stop.ckpt"), Effect.sync(t.stop)) : Effect.void
              }
              : {
                name: "stop",
                onTrainEpochEnd: (t) =>
                  t.currentEpoch === stop.epoch ? Effect.andThen(t.saveCheckpoint("/stop.ckpt"), Effect.sync(t.stop)) : Effect.void
              }
            const a = yield* Trainer.make({ ...options, callbacks: [early(), stopper], plugins: { checkpointIO: io } })
            yield* a.fit(withDropout("a", variant.scheduler), irisData())
            const b = yield* Trainer.make({ ...options, seed: 1234, callbacks: [early()], plugins: { checkpointIO: io } })
            yield* b.fit(withDropout("b", variant.scheduler), irisData(), { ckptPath: "/stop.ckpt" })
            const actual = yield* stateOf(b)
            const at = `${backend}, ${variant.name}, stopped at ${JSON.stringify(stop)}`
            assert.deepStrictEqual(Object.keys(actual.tensors).sort(), Object.keys(expected.tensors).sort(), at)
            for (const name of Object.keys(expected.tensors)) {
              assert.deepStrictEqual(actual.tensors[name], expected.tensors[name], `${at}: ${name}`)
            }
            assert.deepStrictEqual(actual.lr, expected.lr, `${at}: learning rate`)
            assert.deepStrictEqual(actual.schedulers, expected.schedulers, `${at}: scheduler state`)
            assert.deepStrictEqual(actual.callbacks, expected.callbacks, `${at}: EarlyStopping state`)
            assert.strictEqual(actual.step, 9, at)
          }
        }).pipe(Effect.provide(stack(backend))))
    }
  }
})
