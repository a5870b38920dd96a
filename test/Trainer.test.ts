import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type * as tf from "@tensorflow/tfjs"
import { Deferred, Effect, Exit, Fiber, FileSystem, Layer, Option } from "effect"
import * as Callback from "../src/Callback.ts"
import * as CheckpointConnector from "../src/CheckpointConnector.ts"
import { CheckpointIO } from "../src/CheckpointIO.ts"
import type * as DataModule from "../src/DataModule.ts"
import * as Device from "../src/Device.ts"
import * as LRScheduler from "../src/LRScheduler.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { StepContext, TrainingModule } from "../src/TrainingModule.ts"
import { countingIO } from "./support/countingIO.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

const quiet: Trainer.TrainerOptions = { enableProgressBar: false, logger: false, enableCheckpointing: false }

const stack = (
  options: Trainer.TrainerOptions<never, never> = {},
  strategy: Layer.Layer<Strategy.Strategy, unknown, Device.Device> = Strategy.singleDevice(),
  backend: Device.BackendChoice = "wasm"
) =>
  Trainer.layer({ ...quiet, ...options }).pipe(
    Layer.provideMerge(strategy),
    Layer.provideMerge(Device.layer(backend)),
    Layer.provideMerge(node)
  )

/** Records every hook call as a line. */
const recorder = (log: Array<string>): Callback.Callback => {
  const hooks = [
    "setup",
    "teardown",
    "onFitStart",
    "onFitEnd",
    "onSanityCheckStart",
    "onSanityCheckEnd",
    "onTrainStart",
    "onTrainEnd",
    "onTrainEpochStart",
    "onTrainEpochEnd",
    "onTrainBatchStart",
    "onTrainBatchEnd",
    "onValidationStart",
    "onValidationEnd",
    "onValidationEpochStart",
    "onValidationEpochEnd",
    "onValidationBatchStart",
    "onValidationBatchEnd",
    "onTestStart",
    "onTestEnd",
    "onException"
  ] as const
  const cb: Record<string, unknown> = { name: "recorder" }
  for (const hook of hooks) {
    cb[hook] = (t: Callback.TrainerState, ...args: Array<unknown>) =>
      Effect.sync(() => {
        const arg = typeof args[args.length - 1] === "number"
          ? `(${args[args.length - 1]})`
          : hook === "setup" || hook === "teardown"
          ? `(${args[0]})`
          : ""
        log.push(`${hook}${arg} e${t.currentEpoch} s${t.globalStep}`)
      })
  }
  return cb as unknown as Callback.Callback
}

describe("Trainer", () => {
  it.effect("a model learns: loss falls, accuracy well above chance, test and predict work", () =>
    Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      const module = irisClassifier()
      const data = irisData()
      yield* trainer.fit(module, data)
      const metrics = trainer.state.callbackMetrics
      assert.isAbove(metrics.get("val_acc")!, 0.85, `val_acc ${metrics.get("val_acc")}`)
      const test = yield* trainer.test(module, data)
      assert.isAbove(test.get("test_acc")!, 0.85)
      const predictions = yield* trainer.predict(module, data)
      assert.strictEqual(predictions.reduce((n, p) => n + p.shape[0]!, 0), 30)
      assert.deepStrictEqual(predictions[0]!.shape.slice(1), [3])
      assert.strictEqual(trainer.state.globalStep, 30 * data.numTrainBatches!)
    }).pipe(Effect.provide(stack({ maxEpochs: 30 }))))

  it.effect("progress bar and CSV metrics are on by default; the CSV lands in <defaultRootDir>/logs/version_N", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "trainer-logs-" })
      const trainer = yield* Trainer.make({ maxEpochs: 2, defaultRootDir: root, numSanityValSteps: 0 })
      // And a default ModelCheckpoint (issue 13.7), last: checkpoint callbacks run after the others.
      assert.deepStrictEqual(trainer.callbacks.map((c) => c.name), ["ProgressBar", "CsvLogger", "ModelCheckpoint"])
      yield* trainer.fit(irisClassifier(), irisData())
      const csv = yield* fs.readFileString(`${root}/logs/version_0/metrics.csv`)
      const [header, ...rows] = csv.trim().split("\n")
      assert.deepStrictEqual(header!.split(","), ["epoch", "step", "loss", "train_loss", "val_acc", "val_loss"])
      // 6 step rows, one validation row and one epoch row per epoch.
      assert.strictEqual(rows.length, 2 * (6 + 2))
      const again = yield* Trainer.make({ maxEpochs: 1, defaultRootDir: root, enableProgressBar: false })
      yield* again.fit(irisClassifier("again"), irisData())
      assert.isTrue(yield* fs.exists(`${root}/logs/version_1/metrics.csv`))
    }).pipe(Effect.provide(stack())))

  it.effect("loss falls over epochs", () =>
    Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      const losses: Array<number> = []
      const watch: Callback.Callback = {
        name: "watch",
        onTrainEpochEnd: (t) => Effect.sync(() => void losses.push(t.callbackMetrics.get("train_loss")!))
      }
      void watch
      const module = irisClassifier()
      const data = irisData()
      const t2 = yield* Trainer.make({ ...quiet, maxEpochs: 8, callbacks: [watch] })
      yield* t2.fit(module, data)
      assert.strictEqual(losses.length, 8)
      assert.isBelow(losses[7]!, losses[0]! * 0.7, `losses ${losses.map((l) => l.toFixed(3)).join(" ")}`)
      void trainer
    }).pipe(Effect.provide(stack())))

  it.effect("callbacks fire in Lightning's order", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const trainer = yield* Trainer.make({
        ...quiet,
        maxEpochs: 2,
        limitTrainBatches: 2,
        limitValBatches: 1,
        numSanityValSteps: 1,
        callbacks: [recorder(log)]
      })
      yield* trainer.fit(irisClassifier(), irisData())
      assert.deepStrictEqual(log, [
        "setup(fit) e0 s0",
        "onFitStart e0 s0",
        "onSanityCheckStart e0 s0",
        "onValidationStart e0 s0",
        "onValidationEpochStart e0 s0",
        "onValidationBatchStart(0) e0 s0",
        "onValidationBatchEnd(0) e0 s0",
        "onValidationEpochEnd e0 s0",
        "onValidationEnd e0 s0",
        "onSanityCheckEnd e0 s0",
        "onTrainStart e0 s0",
        "onTrainEpochStart e0 s0",
        "onTrainBatchStart(0) e0 s0",
        "onTrainBatchEnd(0) e0 s1",
        "onTrainBatchStart(1) e0 s1",
        "onTrainBatchEnd(1) e0 s2",
        "onValidationStart e0 s2",
        "onValidationEpochStart e0 s2",
        "onValidationBatchStart(0) e0 s2",
        "onValidationBatchEnd(0) e0 s2",
        "onValidationEpochEnd e0 s2",
        "onValidationEnd e0 s2",
        "onTrainEpochEnd e0 s2",
        "onTrainEpochStart e1 s2",
        "onTrainBatchStart(0) e1 s2",
        "onTrainBatchEnd(0) e1 s3",
        "onTrainBatchStart(1) e1 s3",
        "onTrainBatchEnd(1) e1 s4",
        "onValidationStart e1 s4",
        "onValidationEpochStart e1 s4",
        "onValidationBatchStart(0) e1 s4",
        "onValidationBatchEnd(0) e1 s4",
        "onValidationEpochEnd e1 s4",
        "onValidationEnd e1 s4",
        "onTrainEpochEnd e1 s4",
        "onTrainEnd e2 s4",
        "onFitEnd e2 s4",
        "teardown(fit) e2 s4"
      ])
    }).pipe(Effect.provide(stack())))

  it.effect("validation every fraction of an epoch, every N epochs; maxSteps stops mid-epoch", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const twice = yield* Trainer.make({ ...quiet, maxEpochs: 2, valCheckInterval: 0.5, numSanityValSteps: 0, callbacks: [recorder(log)] })
      yield* twice.fit(irisClassifier(), irisData())
      assert.strictEqual(log.filter((l) => l.startsWith("onValidationEnd")).length, 4)

      log.length = 0
      const everyOther = yield* Trainer.make({
        ...quiet,
        maxEpochs: 4,
        checkValEveryNEpoch: 2,
        numSanityValSteps: 0,
        callbacks: [recorder(log)]
      })
      yield* everyOther.fit(irisClassifier("other"), irisData())
      assert.deepStrictEqual(log.filter((l) => l.startsWith("onValidationEnd")).map((l) => l.split(" ")[1]), ["e1", "e3"])

      const steps = yield* Trainer.make({ ...quiet, maxSteps: 7, numSanityValSteps: 0 })
      yield* steps.fit(irisClassifier("steps"), irisData())
      assert.strictEqual(steps.state.globalStep, 7)
      assert.strictEqual(steps.state.currentEpoch, 1, "stopped in the second epoch (6 batches per epoch)")
    }).pipe(Effect.provide(stack())))

  it.effect("gradient clipping by norm and by value bounds the update", () =>
    Effect.gen(function*() {
      const run = (clip: Partial<Trainer.TrainerOptions>) =>
        Effect.gen(function*() {
          const module = irisClassifier(`clip-${JSON.stringify(clip)}`, 0.5)
          const t = yield* Trainer.make({ ...quiet, maxSteps: 1, numSanityValSteps: 0, ...clip })
          const sgd = { ...module, configureOptimizers: (tfjs: typeof tf) => tfjs.train.sgd(1) }
          yield* t.fit(sgd, irisData())
          const model = Option.getOrThrow(t.model(sgd))
          const kernel = model.getWeights()[0]!.dataSync()
          const init = sgd.configureModel(t.strategy.device.tf).getWeights()[0]!.dataSync()
          let maxDelta = 0
          kernel.forEach((v, i) => (maxDelta = Math.max(maxDelta, Math.abs(v - init[i]!))))
          return maxDelta
        })
      const free = yield* run({})
      const byValue = yield* run({ gradientClipVal: 1e-3, gradientClipAlgorithm: "value" })
      const byNorm = yield* run({ gradientClipVal: 1e-3, gradientClipAlgorithm: "norm" })
      assert.isAbove(free, 1e-2)
      assert.isAtMost(byValue, 1e-3 + 1e-7, "SGD(lr=1) moves each weight by at most the clipped gradient")
      assert.isAtMost(byNorm, 1e-3 + 1e-7)
    }).pipe(Effect.provide(stack())))

  it.effect("no tensor leaks: the count is flat across epochs and back to the baseline after release", () =>
    Effect.gen(function*() {
      const tfjs = yield* Effect.promise(() => import("@tensorflow/tfjs"))
      const baseline = tfjs.memory().numTensors
      yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(stack())
        const trainer = yield* Trainer.make({ ...quiet, maxEpochs: 1 }).pipe(Effect.provide(context))
        const module = irisClassifier()
        const data = irisData()
        yield* trainer.fit(module, data)
        const afterOne = tfjs.memory().numTensors
        const more = yield* Trainer.make({ ...quiet, maxEpochs: 5 }).pipe(Effect.provide(context))
        yield* more.fit(module, data)
        // The second Trainer builds its own model and optimizer: that is all that may grow.
        const second = Option.getOrThrow(more.model(module))
        const growth = tfjs.memory().numTensors - afterOne
        assert.strictEqual(growth, second.weights.length * 3 + 2, "weights, Adam's m and v, accBeta1 and 2: nothing per batch")
        yield* trainer.saveCheckpoint("/tmp/unused-leak-check.ckpt").pipe(Effect.ignore)
      }))
      assert.strictEqual(tfjs.memory().numTensors, baseline)
    }))

  describe("CheckpointIO resolution", () => {
    it.effect("given to the Trainer (plugins)", () => {
      const custom = countingIO()
      return Effect.gen(function*() {
        const trainer = yield* Trainer.Trainer
        yield* trainer.fit(irisClassifier(), irisData())
        yield* trainer.saveCheckpoint("/ckpt/a.ckpt")
        assert.strictEqual(custom.counts.save, 1)
        assert.isTrue(yield* trainer.checkpointIO.exists("/ckpt/a.ckpt"))
      }).pipe(Effect.provide(stack({ maxEpochs: 1, plugins: { checkpointIO: custom.layer } })))
    })

    it.effect("given to the Strategy", () => {
      const custom = countingIO()
      return Effect.gen(function*() {
        const trainer = yield* Trainer.Trainer
        assert.isDefined(trainer.strategy.checkpointIO)
        yield* trainer.fit(irisClassifier(), irisData())
        yield* trainer.saveCheckpoint("/ckpt/a.ckpt")
        assert.strictEqual(custom.counts.save, 1)
      }).pipe(Effect.provide(stack({ maxEpochs: 1 }, Strategy.singleDevice({ checkpointIO: custom.layer }))))
    })

    it.effect("given to both: a typed configuration error when the layer is built", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(Layer.build(
          stack({ plugins: { checkpointIO: countingIO().layer } }, Strategy.singleDevice({ checkpointIO: countingIO().layer }))
        ))
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
        assert.strictEqual((error as { error: { _tag: string } } | undefined)?.error._tag, "TrainerConfigError")
      }))

    it.effect("a strategy that owns its checkpoint logic refuses a custom IO, from itself or the Trainer", () =>
      Effect.gen(function*() {
        const refusing = (io?: Layer.Layer<CheckpointIO>) =>
          Strategy.layer({ name: "OwnCheckpointsStrategy", acceptsCustomCheckpointIO: false, checkpointIO: io })
        const own = yield* Effect.exit(Layer.build(stack({}, refusing(countingIO().layer))))
        assert.isTrue(Exit.isFailure(own))
        assert.include(String(Exit.isFailure(own) ? own.cause.reasons[0] : ""), "StrategyConfigError")
        const viaTrainer = yield* Effect.exit(Layer.build(stack({ plugins: { checkpointIO: countingIO().layer } }, refusing())))
        assert.isTrue(Exit.isFailure(viaTrainer))
        assert.include(String(Exit.isFailure(viaTrainer) ? viaTrainer.cause.reasons[0] : ""), "TrainerConfigError")
      }))
  })

  it.effect("a custom Checkpoint callback is recognised, runs last, and saves through the CheckpointIO", () => {
    const custom = countingIO()
    const order: Array<string> = []
    class EveryThreeSteps extends Callback.Checkpoint {
      readonly name = "EveryThreeSteps"
      readonly onTrainBatchEnd: Callback.Hook<[Callback.TrainStepOutput, number]> = (t) =>
        Effect.gen(function*() {
          order.push("checkpoint")
          if (t.globalStep % 3 === 0) yield* t.saveCheckpoint(`/ckpt/step=${t.globalStep}.ckpt`)
        })
    }
    const plain: Callback.Callback = { name: "plain", onTrainBatchEnd: () => Effect.sync(() => void order.push("plain")) }
    const ckpt = new EveryThreeSteps()
    return Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      assert.deepStrictEqual(trainer.checkpointCallbacks, [ckpt])
      assert.strictEqual(trainer.callbacks[trainer.callbacks.length - 1], ckpt)
      yield* trainer.fit(irisClassifier(), irisData())
      assert.deepStrictEqual(order.slice(0, 4), ["plain", "checkpoint", "plain", "checkpoint"])
      assert.strictEqual(custom.counts.save, 2)
      assert.deepStrictEqual((yield* trainer.checkpointIO.list("/ckpt")).map((e) => e.path), ["/ckpt/step=3.ckpt", "/ckpt/step=6.ckpt"])
    }).pipe(
      Effect.provide(stack({ maxEpochs: 1, enableCheckpointing: true, callbacks: [ckpt, plain], plugins: { checkpointIO: custom.layer } }))
    )
  })

  it.effect("saveCheckpoint round-trips weights and Adam's slots and step into a fresh model", () =>
    Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      const module = irisClassifier()
      yield* trainer.fit(module, irisData())
      yield* trainer.saveCheckpoint("/ckpt/full.ckpt")
      yield* trainer.saveCheckpoint("/ckpt/weights.ckpt", { weightsOnly: true })
      const full = yield* trainer.checkpointIO.load("/ckpt/full.ckpt")
      const names = Object.keys(full.tensors)
      assert.deepStrictEqual(names.filter((n) => n.startsWith("model/")).sort(), [
        "model/hidden/bias",
        "model/hidden/kernel",
        "model/out/bias",
        "model/out/kernel"
      ])
      assert.strictEqual(names.filter((n) => n.startsWith("optimizer/")).length, 11, "Adam: iter, 4 m, 4 v, accBeta1 and 2")
      const meta = Option.getOrThrow(full.meta)
      assert.deepStrictEqual(meta.optimizer?.className, "Adam")
      assert.strictEqual(meta.globalStep, trainer.state.globalStep)
      assert.deepStrictEqual(meta.hyperParameters, { hidden: 16, lr: 0.05 })
      const weightsOnly = yield* trainer.checkpointIO.load("/ckpt/weights.ckpt")
      assert.isTrue(Object.keys(weightsOnly.tensors).every((n) => n.startsWith("model/")))

      // Into a fresh model and optimizer (another module instance, built anew).
      const strategy = trainer.strategy
      const tfjs = strategy.device.tf
      const fresh = module.configureModel(tfjs)
      const adam = LRScheduler.optimizerOf(module.configureOptimizers(tfjs, fresh))
      const plan = yield* Effect.fromResult(CheckpointConnector.plan(full, "/ckpt/full.ckpt", yield* strategy.describe(fresh, adam)))
      yield* strategy.restore(fresh, adam, plan)
      const restored = CheckpointConnector.encodeTensors(yield* strategy.stage(fresh, adam))
      const original = CheckpointConnector.encodeTensors(yield* strategy.stage(Option.getOrThrow(trainer.model(module)), undefined))
      for (const name of Object.keys(original)) {
        assert.deepStrictEqual(restored[name]!.data, original[name]!.data, name)
      }
      const slots = Object.keys(full.tensors).filter((n) => n.startsWith("optimizer/"))
      for (const name of slots) assert.deepStrictEqual(restored[name]!.data, full.tensors[name]!.data, name)
      tfjs.dispose(fresh.weights.map((w) => w.read()))
    }).pipe(Effect.provide(stack({ maxEpochs: 2, plugins: { checkpointIO: MemoryCheckpointIO.layer } }))))

  it.effect("seed: unseeded initializers and dropout repeat exactly under one seed", () =>
    Effect.gen(function*() {
      const withDropout = (name: string) => {
        const base = irisClassifier(name)
        return {
          ...base,
          configureModel: (tfjs: typeof tf) =>
            tfjs.sequential({
              layers: [
                tfjs.layers.dense({ units: 16, activation: "relu", inputShape: [4], name: "hidden" }),
                tfjs.layers.dropout({ rate: 0.5, name: "drop" }),
                tfjs.layers.dense({ units: 3, activation: "softmax", name: "out" })
              ]
            }),
          trainingStep: (model: tf.LayersModel, batch: DataModule.XY, ctx: StepContext) => {
            const p = model.apply(ctx.tensor(batch.x), { training: true }) as tf.Tensor
            return ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), p) as tf.Scalar
          }
        }
      }
      const run = (seed: number, name: string) =>
        Effect.gen(function*() {
          const module = withDropout(name)
          const t = yield* Trainer.make({ ...quiet, maxEpochs: 2, seed, numSanityValSteps: 0 })
          yield* t.fit(module, irisData())
          return Option.getOrThrow(t.model(module)).getWeights().map((w) => [...w.dataSync()])
        })
      const a = yield* run(5, "a")
      const b = yield* run(5, "b")
      const c = yield* run(6, "c")
      assert.deepStrictEqual(a, b)
      assert.notDeepEqual(a, c)
    }).pipe(Effect.provide(stack())))

  it.effect("resume: stateful callbacks, module state, and the loop continue exactly (also mid-epoch)", () =>
    Effect.gen(function*() {
      const counter = () => {
        let batches = 0
        const loaded: Array<unknown> = []
        const cb: Callback.Callback = {
          name: "Counter",
          stateKey: "Counter{v1}",
          stateDict: () => ({ batches }),
          loadStateDict: (state) =>
            Effect.sync(() => {
              loaded.push(state)
              batches = (state as { batches: number }).batches
            }),
          onTrainBatchEnd: () => Effect.sync(() => void batches++)
        }
        return {
          cb,
          loaded,
          get batches() {
            return batches
          }
        }
      }
      const userState: Array<unknown> = []
      const module = (name: string) => ({
        ...irisClassifier(name),
        onSaveCheckpoint: () => ({ note: "kept" }),
        onLoadCheckpoint: (user: unknown) => void userState.push(user)
      })
      const weightsOf = (t: Trainer.TrainerShape, m: TrainingModule<DataModule.XY>) =>
        Option.getOrThrow(t.model(m)).getWeights().map((w) => [...w.dataSync()])

      // Straight: 3 epochs.
      const straightModule = module("straight")
      const straight = yield* Trainer.make({
        ...quiet,
        maxEpochs: 3,
        seed: 11,
        numSanityValSteps: 0,
        plugins: { checkpointIO: MemoryCheckpointIO.layer }
      })
      yield* straight.fit(straightModule, irisData())

      // Stopped at step 8 (mid-epoch: 6 batches per epoch), saved, then resumed in a new Trainer.
      const first = counter()
      const stopAt8: Callback.Callback = {
        name: "stopAt8",
        onTrainBatchEnd: (t) => t.globalStep === 8 ? Effect.andThen(t.saveCheckpoint("/ckpt/mid.ckpt"), Effect.sync(t.stop)) : Effect.void
      }
      const io = Layer.effect(CheckpointIO, MemoryCheckpointIO.make).pipe(Layer.provideMerge(MemoryCheckpointIO.MemoryStore.layer))
      const shared = yield* Layer.build(io)
      const sharedIO = Layer.succeedContext(shared)
      const part1 = yield* Trainer.make({
        ...quiet,
        maxEpochs: 3,
        seed: 11,
        numSanityValSteps: 0,
        callbacks: [first.cb, stopAt8],
        plugins: { checkpointIO: sharedIO }
      })
      yield* part1.fit(module("part1"), irisData())
      assert.strictEqual(part1.state.globalStep, 8)

      const second = counter()
      const resumedModule = module("part2")
      const part2 = yield* Trainer.make({
        ...quiet,
        maxEpochs: 3,
        seed: 999,
        numSanityValSteps: 0,
        callbacks: [second.cb],
        plugins: { checkpointIO: sharedIO }
      })
      yield* part2.fit(resumedModule, irisData(), { ckptPath: "/ckpt/mid.ckpt" })
      assert.deepStrictEqual(second.loaded, [{ batches: 8 }])
      assert.strictEqual(second.batches, 18)
      assert.deepStrictEqual(userState, [{ note: "kept" }])
      assert.strictEqual(part2.state.globalStep, 18)
      assert.strictEqual(part2.state.resumedFrom, "/ckpt/mid.ckpt")
      assert.deepStrictEqual(weightsOf(part2, resumedModule), weightsOf(straight, straightModule), "bit-identical weights")

      const missing = yield* Effect.flip(part2.fit(module("missing"), irisData(), { ckptPath: "/ckpt/nope.ckpt" }))
      assert.strictEqual(missing._tag, "CheckpointNotFound")
    }).pipe(Effect.provide(stack())))

  describe("exact resume: stopped at any step, resumed, bit-identical weights and optimizer state", () => {
    for (const backend of ["wasm", "cpu"] as const) {
      it.effect(`on ${backend}, stopping at steps 1, 6 (an epoch end), 8 and 17`, () =>
        Effect.gen(function*() {
          const withDropout = (name: string): TrainingModule<DataModule.XY> => ({
            ...irisClassifier(name),
            configureModel: (tfjs) =>
              tfjs.sequential({
                layers: [
                  tfjs.layers.dense({ units: 16, activation: "relu", inputShape: [4], name: "hidden" }),
                  tfjs.layers.dropout({ rate: 0.3, name: "drop" }),
                  tfjs.layers.dense({ units: 3, name: "out" })
                ]
              })
          })
          const options = { ...quiet, maxEpochs: 3, seed: 3, numSanityValSteps: 1 }
          /** Weights and optimizer state, through a checkpoint of the final state. */
          const stateOf = (t: Trainer.TrainerShape) =>
            Effect.gen(function*() {
              yield* t.saveCheckpoint("/final.ckpt")
              const saved = yield* t.checkpointIO.load("/final.ckpt")
              // Slots are keyed by position; their names carry tfjs's per-process variable suffixes.
              return Object.fromEntries(
                Object.entries(saved.tensors).map(([k, v]) => [k.replace(/^(optimizer\/\d{4})\/.*$/, "$1"), [...v.data].map(Number)])
              ) as Record<string, Array<number>>
            })
          const straightModule = withDropout("straight")
          const straight = yield* Trainer.make({ ...options, plugins: { checkpointIO: MemoryCheckpointIO.layer } })
          yield* straight.fit(straightModule, irisData())
          const expected = yield* stateOf(straight)
          for (const stopAt of [1, 6, 8, 17]) {
            const io = Layer.succeedContext(yield* Layer.build(MemoryCheckpointIO.layer))
            const stop: Callback.Callback = {
              name: "stop",
              onTrainBatchEnd: (t) =>
                t.globalStep === stopAt ? Effect.andThen(t.saveCheckpoint("/stop.ckpt"), Effect.sync(t.stop)) : Effect.void
            }
            const a = yield* Trainer.make({ ...options, callbacks: [stop], plugins: { checkpointIO: io } })
            yield* a.fit(withDropout(`a${stopAt}`), irisData())
            const resumedModule = withDropout(`b${stopAt}`)
            const b = yield* Trainer.make({ ...options, seed: 1234, plugins: { checkpointIO: io } })
            yield* b.fit(resumedModule, irisData(), { ckptPath: "/stop.ckpt" })
            assert.strictEqual(b.state.globalStep, 18)
            const actual = yield* stateOf(b)
            assert.deepStrictEqual(Object.keys(actual).sort(), Object.keys(expected).sort())
            for (const name of Object.keys(expected)) {
              assert.deepStrictEqual(actual[name], expected[name], `${backend}, stopped at ${stopAt}: ${name}`)
            }
          }
        }).pipe(Effect.provide(stack({}, Strategy.singleDevice(), backend))))
    }
  })

  it.effect("interrupting fit runs onException and releases the device", () =>
    Effect.gen(function*() {
      const tfjs = yield* Effect.promise(() => import("@tensorflow/tfjs"))
      const baseline = tfjs.memory().numTensors
      const third = yield* Deferred.make<void>()
      const log: Array<string> = []
      const signal: Callback.Callback = {
        name: "signal",
        onTrainBatchEnd: (t) => (t.globalStep === 3 ? Deferred.succeed(third, undefined) : Effect.void)
      }
      const program = Effect.gen(function*() {
        const trainer = yield* Trainer.Trainer
        yield* trainer.fit(irisClassifier(), irisData())
      }).pipe(Effect.provide(stack({ maxEpochs: 1000, callbacks: [signal, recorder(log)] })))
      const fiber = yield* Effect.forkChild(program)
      yield* Deferred.await(third)
      yield* Fiber.interrupt(fiber)
      assert.isTrue(log.some((l) => l.startsWith("onException")), "onException ran")
      assert.isTrue(log.some((l) => l.startsWith("teardown(fit)")), "teardown ran")
      assert.strictEqual(tfjs.memory().numTensors, baseline, "every tensor of the run disposed")
      // The device is free again.
      yield* Effect.scoped(Layer.build(Device.layer("cpu")))
    }))
})
