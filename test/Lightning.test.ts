/**
 * Issue 13: the Trainer and ModelCheckpoint measured against Lightning 2.6's own
 * expectations (each test named after the issue's item).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer, Logger, Option, Result } from "effect"
import * as posix from "node:path/posix"
import type * as Callback from "../src/Callback.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as CheckpointConnector from "../src/CheckpointConnector.ts"
import type { CheckpointIOShape } from "../src/CheckpointIO.ts"
import * as CheckpointRetention from "../src/CheckpointRetention.ts"
import type * as DataModule from "../src/DataModule.ts"
import * as Device from "../src/Device.ts"
import * as Inference from "../src/Inference.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../src/ModelCheckpoint.ts"
import * as OnExceptionCheckpoint from "../src/OnExceptionCheckpoint.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { StepContext, TrainingModule } from "../src/TrainingModule.ts"
import { epochEnd, fakeTrainer } from "./support/fakeTrainer.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)
const devices = Strategy.singleDevice().pipe(Layer.provideMerge(Device.layer("wasm")), Layer.provideMerge(node))
const quiet: Trainer.TrainerOptions = { enableProgressBar: false, logger: false, plugins: { checkpointIO: MemoryCheckpointIO.layer } }

const capture = () => {
  const warnings: Array<string> = []
  const layer = Logger.layer([
    Logger.make((o) => {
      if (o.logLevel === "Warn") warnings.push([o.message].flat().map(String).join(" "))
    })
  ])
  return { warnings, layer }
}

const memoryIO = (files: Map<string, MemoryCheckpointIO.StoredFile>) =>
  Effect.provideService(MemoryCheckpointIO.make, MemoryCheckpointIO.MemoryStore, { files })

/** A store that counts its saves. */
const counting = (io: CheckpointIOShape) => {
  const saved: Array<string> = []
  const shape: CheckpointIOShape = {
    ...io,
    save: (c, p, o) => Effect.andThen(Effect.sync(() => void saved.push(posix.basename(p))), io.save(c, p, o))
  }
  return { io: shape, saved }
}

const filesUnder = (files: Map<string, unknown>, dir: string) =>
  [...files.keys()].filter((p) => posix.dirname(p) === dir).map((p) => posix.basename(p)).sort()

/** Counts the validations of a fit (not the sanity check) and the checkpoint names. */
const validationCounter = () => {
  const at: Array<number> = []
  const callback: Callback.Callback = {
    name: "validationCounter",
    onValidationEnd: (t) => Effect.sync(() => void (t.stage === "fit" && !t.sanityChecking && at.push(t.globalStep)))
  }
  return { callback, at }
}

const names = (io: CheckpointIOShape, dir: string) =>
  Effect.map(io.list(dir), (entries) => entries.map((e) => posix.basename(e.path)).sort())

describe("issue 13: Lightning 2.6 semantics", () => {
  it.effect("issue 13.1: a fractional valCheckInterval validates only every floor(n × f) batches, never also at the epoch's end", () =>
    Effect.gen(function*() {
      assert.isTrue(Trainer.isValCheckBatch(63, 21))
      assert.isFalse(Trainer.isValCheckBatch(64, 21))
      assert.isFalse(Trainer.isValCheckBatch(5, Infinity))
      // 64 batches with 1/3: three validations per epoch (after 21, 42, 63).
      const counter = validationCounter()
      const trainer = yield* Trainer.make({
        ...quiet,
        enableCheckpointing: false,
        maxEpochs: 1,
        limitTrainBatches: 64,
        limitValBatches: 1,
        numSanityValSteps: 0,
        valCheckInterval: 1 / 3,
        callbacks: [counter.callback]
      })
      yield* trainer.fit(irisClassifier(), irisData({ batchSize: 1 }))
      assert.deepStrictEqual(counter.at, [21, 42, 63])
      // 10 batches with 0.8 and saveTopK -1: epoch=0-step=8 only.
      const checkpoint = yield* ModelCheckpoint.make({ monitor: "val_loss", saveTopK: -1, dirpath: "/ck" })
      const other = yield* Trainer.make({
        ...quiet,
        maxEpochs: 1,
        limitTrainBatches: 10,
        limitValBatches: 1,
        numSanityValSteps: 0,
        valCheckInterval: 0.8,
        callbacks: [checkpoint]
      })
      yield* other.fit(irisClassifier(), irisData({ batchSize: 1 }))
      assert.deepStrictEqual(yield* names(other.checkpointIO, "/ck"), ["epoch=0-step=8.ckpt"])
    }).pipe(Effect.provide(devices)))

  it.effect("issue 13.1: saveTopK with valCheckInterval 0.3 over 2 epochs of 10 batches saves 6 times", () =>
    Effect.gen(function*() {
      const checkpoint = yield* ModelCheckpoint.make({ monitor: "val_loss", saveTopK: -1, dirpath: "/ck" })
      const trainer = yield* Trainer.make({
        ...quiet,
        maxEpochs: 2,
        limitTrainBatches: 10,
        limitValBatches: 1,
        numSanityValSteps: 0,
        valCheckInterval: 0.3,
        callbacks: [checkpoint]
      })
      yield* trainer.fit(irisClassifier(), irisData({ batchSize: 1 }))
      assert.strictEqual((yield* names(trainer.checkpointIO, "/ck")).length, 6)
    }).pipe(Effect.provide(devices)))

  it.effect("issue 13.2: a step-triggered save of a validation metric waits for the next validation and ranks its fresh value", () =>
    Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* memoryIO(files)
      const checkpoint = yield* ModelCheckpoint.make({
        dirpath: "/d",
        monitor: "auroc",
        mode: "max",
        saveTopK: 1,
        everyNTrainSteps: 2,
        everyNEpochs: 0,
        saveOnTrainEpochEnd: false
      })
      const t = fakeTrainer(io, () => [checkpoint])
      yield* checkpoint.setup(t, "fit")
      yield* checkpoint.onTrainStart(t)
      const aurocs = [0.1, 0.5, 1.0]
      for (let epoch = 0; epoch < 3; epoch++) {
        t.currentEpoch = epoch
        yield* checkpoint.onTrainEpochStart(t)
        for (let batch = 0; batch < 2; batch++) {
          t.globalStep = epoch * 2 + batch + 1
          t.loggedMetrics = new Map([["loss", 1]])
          yield* checkpoint.onTrainBatchEnd(t, { loss: 1 }, batch)
        }
        t.callbackMetrics = new Map([["auroc", aurocs[epoch]!]])
        t.loggedMetrics = new Map([["auroc", aurocs[epoch]!]])
        yield* checkpoint.onValidationEnd(t)
        yield* checkpoint.onTrainEpochEnd(t)
      }
      yield* checkpoint.onTrainEnd(t)
      assert.strictEqual(checkpoint.bestModelScore, 1.0)
      assert.deepStrictEqual(filesUnder(files, "/d"), ["epoch=2-step=6.ckpt"])
      // A trainTimeInterval of zero is accepted, as in Lightning.
      assert.isTrue(Result.isSuccess(yield* Effect.result(ModelCheckpoint.make({ trainTimeInterval: 0 }))))
    }))

  it.effect("issue 13.3: last.ckpt with no epoch trigger is written once, at train end; with saves at validation ends and no validation, at train end", () =>
    Effect.gen(function*() {
      for (const everyNEpochs of [0, 5]) {
        const files = new Map<string, MemoryCheckpointIO.StoredFile>()
        const io = counting(yield* memoryIO(files))
        const checkpoint = yield* ModelCheckpoint.make({
          dirpath: "/l",
          everyNEpochs,
          saveLast: true,
          saveTopK: 0,
          saveOnTrainEpochEnd: true
        })
        const t = fakeTrainer(io.io, () => [checkpoint])
        yield* checkpoint.setup(t, "fit")
        yield* epochEnd(checkpoint, t, 0, 6, {})
        yield* epochEnd(checkpoint, t, 1, 12, {})
        yield* checkpoint.onTrainEnd(t)
        assert.deepStrictEqual(io.saved, ["last.ckpt"], `everyNEpochs ${everyNEpochs}`)
      }
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* memoryIO(files)
      const checkpoint = yield* ModelCheckpoint.make({ dirpath: "/v", saveLast: true, saveOnTrainEpochEnd: false })
      const t = fakeTrainer(io, () => [checkpoint])
      yield* checkpoint.setup(t, "fit")
      yield* epochEnd(checkpoint, t, 0, 6, {})
      assert.deepStrictEqual(filesUnder(files, "/v"), [])
      yield* checkpoint.onTrainEnd(t)
      assert.deepStrictEqual(filesUnder(files, "/v"), ["last.ckpt"])
    }))

  it.effect("issue 13.4: ckptPath \"best\" with no best checkpoint fails clearly; \"last\" with nothing saved warns with a hint", () =>
    Effect.gen(function*() {
      const none = yield* Trainer.make({ ...quiet, enableCheckpointing: false, maxEpochs: 1 })
      const noCallback = yield* Effect.flip(none.fit(irisClassifier(), irisData(), { ckptPath: "best" }))
      assert.strictEqual(noCallback._tag, "TrainerConfigError")
      assert.include(noCallback.message, "ModelCheckpoint is not configured")
      const topZero = yield* Trainer.make({
        ...quiet,
        maxEpochs: 1,
        callbacks: [yield* ModelCheckpoint.make({ saveTopK: 0, dirpath: "/z" })]
      })
      const noBest = yield* Effect.flip(topZero.fit(irisClassifier(), irisData(), { ckptPath: "best" }))
      assert.include(noBest.message, "not configured to save the best model")
      const log = capture()
      const fresh = yield* Trainer.make({ ...quiet, maxEpochs: 1, limitTrainBatches: 1, numSanityValSteps: 0 })
      yield* fresh.fit(irisClassifier(), irisData(), { ckptPath: "last" }).pipe(Effect.provide(log.layer))
      assert.isTrue(
        log.warnings.some((w) => w.includes("no last checkpoint available") && w.includes("saveLast: true")),
        log.warnings.join("\n")
      )
    }).pipe(Effect.provide(devices)))

  it.effect("issue 13.5: resume warns about callback states the Trainer has no callback for; \"best\" with two checkpoint callbacks says which it used", () =>
    Effect.gen(function*() {
      const meta = Option.getOrThrow(
        Checkpoint.make({
          tensors: {},
          meta: { epoch: 0, globalStep: 1, weightsOnly: false, callbacks: { EarlyStopping: { wait: 1 }, Known: 1 } }
        }).meta
      )
      const known: Callback.Callback = { name: "Known", stateDict: () => 1, loadStateDict: () => Effect.void }
      assert.deepStrictEqual(CheckpointConnector.unknownCallbackStates(meta, [known]), ["EarlyStopping"])
      const log = capture()
      yield* CheckpointConnector.restoreUserState(meta, [known], { name: "m" }).pipe(Effect.provide(log.layer))
      assert.isTrue(log.warnings.some((w) => w.includes("Please add the following callbacks") && w.includes("EarlyStopping")))
      const decided = Trainer.resolveBest("fit", ["/a/best.ckpt", "/b/best.ckpt"])
      assert.isTrue(Result.isSuccess(decided))
      if (Result.isSuccess(decided)) {
        assert.strictEqual(decided.success.path, "/a/best.ckpt")
        assert.include(decided.success.warning ?? "", "multiple ModelCheckpoint callbacks")
      }
    }))

  it.effect("issue 13.6: filename \"exception\" saves exception.ckpt", () =>
    Effect.gen(function*() {
      const checkpoint = yield* ModelCheckpoint.make({ dirpath: "/e", filename: "exception" })
      assert.strictEqual(checkpoint.formatCheckpointName(new Map(), { prefix: "exception" }), "/e/exception.ckpt")
      assert.strictEqual(
        checkpoint.formatCheckpointName(new Map(), { prefix: "exception", filename: "{epoch}" }),
        "/e/exception-epoch=0.ckpt"
      )
    }))

  it.effect("issue 13.7: a Trainer without a checkpoint callback has a default ModelCheckpoint; enableCheckpointing false has none", () =>
    Effect.gen(function*() {
      const trainer = yield* Trainer.make({ ...quiet, maxEpochs: 2, defaultRootDir: "/run", numSanityValSteps: 0 })
      assert.strictEqual(trainer.checkpointCallbacks.length, 1)
      yield* trainer.fit(irisClassifier(), irisData())
      assert.deepStrictEqual(yield* names(trainer.checkpointIO, "/run/checkpoints"), ["epoch=1-step=12.ckpt"])
      const off = yield* Trainer.make({ ...quiet, enableCheckpointing: false })
      assert.strictEqual(off.checkpointCallbacks.length, 0)
      // Lightning refuses a checkpoint callback with enableCheckpointing false.
      const refused = yield* Effect.flip(Trainer.make({ ...quiet, enableCheckpointing: false, callbacks: [yield* ModelCheckpoint.make()] }))
      assert.strictEqual(refused._tag, "TrainerConfigError")
      const own = yield* Trainer.make({ ...quiet, callbacks: [yield* ModelCheckpoint.make({ saveLast: true })] })
      assert.strictEqual(own.checkpointCallbacks.length, 1)
      assert.strictEqual((own.checkpointCallbacks[0] as ModelCheckpoint.ModelCheckpoint).saveLast, true)
    }).pipe(Effect.provide(devices)))

  it.effect("issue 13.8: limits of 0 disable their loop", () =>
    Effect.gen(function*() {
      assert.strictEqual(Trainer.resolveLimit(0, 10), 0)
      assert.strictEqual(Trainer.resolveLimit(0.0, undefined), 0)
      const counter = validationCounter()
      const trainer = yield* Trainer.make({
        ...quiet,
        enableCheckpointing: false,
        maxEpochs: 1,
        limitValBatches: 0,
        callbacks: [counter.callback]
      })
      yield* trainer.fit(irisClassifier(), irisData())
      assert.deepStrictEqual(counter.at, [])
      assert.strictEqual(trainer.state.globalStep, 6)
      assert.strictEqual((yield* trainer.validate(irisClassifier(), irisData())).size, 0)
      const noTrain = yield* Trainer.make({
        ...quiet,
        enableCheckpointing: false,
        maxEpochs: 3,
        limitTrainBatches: 0,
        numSanityValSteps: 0
      })
      yield* noTrain.fit(irisClassifier(), irisData())
      assert.strictEqual(noTrain.state.globalStep, 0)
      const noTest = yield* Trainer.make({ ...quiet, enableCheckpointing: false, limitTestBatches: 0, limitPredictBatches: 0 })
      assert.strictEqual((yield* noTest.test(irisClassifier(), irisData())).size, 0)
      assert.strictEqual((yield* noTest.predict(irisClassifier(), irisData())).length, 0)
    }).pipe(Effect.provide(devices)))

  it.effect("issue 13.9: dirpath \"\" is no dirpath, \"~/x\" is expanded", () =>
    Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* memoryIO(files)
      const empty = yield* ModelCheckpoint.make({ dirpath: "" })
      yield* empty.setup(fakeTrainer(io, () => [empty], "/root"), "fit")
      assert.strictEqual(empty.dirpath, "/root/checkpoints")
      const home = process.env["HOME"]
      if (home !== undefined) {
        const tilde = yield* ModelCheckpoint.make({ dirpath: "~/x" })
        yield* tilde.setup(fakeTrainer(io, () => [tilde]), "validate")
        assert.strictEqual(tilde.dirpath, posix.join(home, "x"))
      }
    }))

  it.effect("issue 13.10: trainer.strategy.checkpointIO is the store in use (the plugin)", () =>
    Effect.gen(function*() {
      const trainer = yield* Trainer.make(quiet)
      assert.strictEqual(trainer.strategy.checkpointIO, trainer.checkpointIO)
      assert.isUndefined((yield* Strategy.Strategy).checkpointIO, "the Strategy service keeps its own (none)")
    }).pipe(Effect.provide(devices)))

  it.effect("issue 13.11: the last name template, extension, join and equals characters and starting version can be set", () =>
    Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* memoryIO(files)
      const options: ModelCheckpoint.Options = {
        dirpath: "/c",
        saveLast: true,
        lastName: "last-{epoch}",
        fileExtension: ".pt",
        joinChar: "_",
        equalsChar: ":",
        startingVersion: 0
      }
      for (let run = 0; run < 2; run++) {
        const checkpoint = yield* ModelCheckpoint.make(options)
        const t = fakeTrainer(io, () => [checkpoint])
        yield* checkpoint.setup(t, "fit")
        yield* epochEnd(checkpoint, t, 0, 6, {})
        if (run === 1) assert.strictEqual(checkpoint.lastModelPath, "/c/last-epoch:0_v0.pt")
      }
      assert.deepStrictEqual(filesUnder(files, "/c"), [
        "epoch:0_step:6.pt",
        "epoch:0_step:6_v0.pt",
        "last-epoch:0.pt",
        "last-epoch:0_v0.pt"
      ])
      // A fresh callback offers the newest last checkpoint found in dirpath for ckptPath "last".
      const fresh = yield* ModelCheckpoint.make(options)
      yield* fresh.setup(fakeTrainer(io, () => [fresh]), "fit")
      assert.match(fresh.lastModelPath ?? "", /^\/c\/last-epoch:0(_v0)?\.pt$/)
    }))
})

/** The same classifier with one more layer: two weights the iris checkpoints lack. */
const widerClassifier = (): TrainingModule<DataModule.XY> => {
  const base = irisClassifier("wider")
  return {
    ...base,
    configureModel: (tfjs) =>
      tfjs.sequential({
        layers: [
          tfjs.layers.dense({ units: 16, activation: "relu", inputShape: [4], name: "hidden" }),
          tfjs.layers.dense({ units: 3, name: "out" }),
          tfjs.layers.dense({ units: 3, name: "extra" })
        ]
      })
  }
}

const weightsOf = (model: tf.LayersModel) => model.getWeights().map((w) => Array.from(w.dataSync()))

/** A store in context, shared by the Trainer and `Inference`. */
const withMemoryStore = MemoryCheckpointIO.layer.pipe(Layer.provideMerge(devices))

describe("issue 13: the missing pieces", () => {
  it.effect("validate, test and predict with ckptPath \"best\" evaluate the best checkpoint's weights", () =>
    Effect.gen(function*() {
      const module = irisClassifier()
      const checkpoint = yield* ModelCheckpoint.make({ dirpath: "/best", monitor: "val_loss", saveTopK: 1 })
      const trainer = yield* Trainer.make({
        enableProgressBar: false,
        logger: false,
        maxEpochs: 3,
        numSanityValSteps: 0,
        callbacks: [checkpoint]
      })
      yield* trainer.fit(module, irisData())
      const best = checkpoint.bestModelPath!
      const { model: expected } = yield* Inference.loadFromCheckpoint(irisClassifier(), best)
      // After test(ckptPath: "best") the module's model holds the best weights.
      const metrics = yield* trainer.test(module, irisData(), { ckptPath: "best" })
      assert.isTrue(metrics.has("test_acc"))
      const model = Option.getOrThrow(trainer.model(module))
      assert.deepStrictEqual(weightsOf(model), weightsOf(expected))
      assert.isTrue((yield* trainer.validate(module, irisData(), { ckptPath: best })).has("val_loss"))
      assert.isAbove((yield* trainer.predict(module, irisData(), { ckptPath: "last" })).length, 0)
      // "best" of a Trainer with no checkpoint callback is a typed error.
      const bare = yield* Trainer.make({ enableProgressBar: false, logger: false, enableCheckpointing: false })
      const error = yield* Effect.flip(bare.test(module, irisData(), { ckptPath: "best" }))
      assert.include(error.message, ".test(ckptPath: \"best\")")
    }).pipe(Effect.provide(withMemoryStore)))

  it.effect("loadFromCheckpoint: strict loads every weight; a mismatch names the missing tensors; non-strict loads the rest", () =>
    Effect.gen(function*() {
      const module = irisClassifier()
      const trainer = yield* Trainer.make({ enableProgressBar: false, logger: false, enableCheckpointing: false, maxEpochs: 1 })
      yield* trainer.fit(module, irisData())
      yield* trainer.saveCheckpoint("/w/final.ckpt")
      const loaded = yield* Inference.loadFromCheckpoint(irisClassifier(), "/w/final.ckpt")
      assert.deepStrictEqual(weightsOf(loaded.model), weightsOf(Option.getOrThrow(trainer.model(module))))
      assert.deepStrictEqual([loaded.missing, loaded.unexpected], [[], []])
      const mismatch = yield* Effect.flip(Inference.loadFromCheckpoint(widerClassifier(), "/w/final.ckpt"))
      assert.strictEqual(mismatch._tag, "WeightsMismatch")
      if (mismatch._tag === "WeightsMismatch") {
        assert.deepStrictEqual(mismatch.missing, ["model/extra/kernel", "model/extra/bias"])
        assert.deepStrictEqual(mismatch.unexpected, [])
        assert.include(mismatch.message, "missing key(s): model/extra/kernel, model/extra/bias")
      }
      const partial = yield* Inference.loadFromCheckpoint(widerClassifier(), "/w/final.ckpt", { strict: false })
      assert.deepStrictEqual(partial.missing, ["model/extra/kernel", "model/extra/bias"])
      assert.deepStrictEqual(weightsOf(partial.model).slice(0, 4), weightsOf(loaded.model))
      // The other way round: the checkpoint's extra tensors are unexpected.
      const wide = yield* Trainer.make({
        enableProgressBar: false,
        logger: false,
        enableCheckpointing: false,
        maxEpochs: 1,
        limitTrainBatches: 1
      })
      yield* wide.fit(widerClassifier(), irisData())
      yield* wide.saveCheckpoint("/w/wide.ckpt")
      const narrow = yield* Effect.flip(Inference.loadFromCheckpoint(irisClassifier(), "/w/wide.ckpt"))
      assert.strictEqual(narrow._tag, "WeightsMismatch")
      if (narrow._tag === "WeightsMismatch") assert.deepStrictEqual(narrow.unexpected, ["model/extra/kernel", "model/extra/bias"])
    }).pipe(Effect.provide(withMemoryStore)))

  it.effect("OnExceptionCheckpoint saves <dirpath>/on_exception.ckpt when the fit fails; a fit that ends well removes it", () =>
    Effect.gen(function*() {
      let failAt = 4
      const base = irisClassifier()
      let steps = 0
      const failing: TrainingModule<DataModule.XY> = {
        ...base,
        trainingStep: (model: tf.LayersModel, batch: DataModule.XY, ctx: StepContext) => {
          if (++steps === failAt) throw new Error("boom")
          return base.trainingStep(model, batch, ctx)
        }
      }
      const onException = yield* OnExceptionCheckpoint.make({ dirpath: "/x" })
      assert.strictEqual(onException.ckptPath, "/x/on_exception.ckpt")
      const trainer = yield* Trainer.make({ ...quiet, maxEpochs: 1, numSanityValSteps: 0, callbacks: [onException] })
      assert.strictEqual(trainer.checkpointCallbacks.length, 1, "no default ModelCheckpoint next to it")
      const error = yield* Effect.flip(trainer.fit(failing, irisData()))
      assert.include(error.message, "boom")
      const saved = yield* trainer.checkpointIO.load("/x/on_exception.ckpt")
      assert.strictEqual(Option.getOrThrow(saved.meta).globalStep, 3)
      failAt = -1
      yield* trainer.fit(failing, irisData())
      assert.isFalse(yield* trainer.checkpointIO.exists("/x/on_exception.ckpt"))
      const bad = yield* Effect.flip(OnExceptionCheckpoint.make({ dirpath: "/x", filename: "" }))
      assert.strictEqual(bad.option, "filename")
    }).pipe(Effect.provide(devices)))

  it.effect("fastDevRun: n batches of every loop, one epoch, no checkpoint and no logger", () =>
    Effect.gen(function*() {
      const batches: Array<string> = []
      const counter: Callback.Callback = {
        name: "counter",
        onTrainBatchEnd: () => Effect.sync(() => void batches.push("train")),
        onValidationBatchEnd: () => Effect.sync(() => void batches.push("val"))
      }
      const checkpoint = yield* ModelCheckpoint.make({ dirpath: "/fast", saveLast: true })
      const trainer = yield* Trainer.make({ ...quiet, logger: true, maxEpochs: 5, fastDevRun: 2, callbacks: [counter, checkpoint] })
      assert.notInclude(trainer.callbacks.map((c) => c.name), "CsvLogger")
      yield* trainer.fit(irisClassifier(), irisData())
      assert.strictEqual(trainer.state.globalStep, 2)
      assert.deepStrictEqual(batches, ["train", "train", "val", "val"])
      assert.deepStrictEqual(yield* names(trainer.checkpointIO, "/fast"), [])
      const error = yield* Effect.flip(trainer.test(irisClassifier(), irisData(), { ckptPath: "best" }))
      assert.include(error.message, "fastDevRun")
      assert.deepStrictEqual(Trainer.withFastDevRun({ fastDevRun: true }).limitTestBatches, 1)
    }).pipe(Effect.provide(devices)))

  it("CheckpointRetention: pure decisions, the next state only in the result", () => {
    const policy = { mode: "min" as const, saveTopK: 2 }
    const empty = CheckpointRetention.empty("min")
    const a = CheckpointRetention.admit(policy, empty, "/a", 0.5)
    const b = CheckpointRetention.admit(policy, a.state, "/b", 0.3)
    assert.deepStrictEqual(b.rotatedOut, [])
    assert.strictEqual(b.state.kthBestModelPath, "/a")
    assert.isTrue(CheckpointRetention.wouldKeep(policy, b.state, 0.4))
    assert.isFalse(CheckpointRetention.wouldKeep(policy, b.state, 0.5), "a tie never replaces")
    assert.isFalse(CheckpointRetention.wouldKeep(policy, b.state, NaN))
    assert.strictEqual(CheckpointRetention.replaced(policy, b.state), "/a")
    const c = CheckpointRetention.admit(policy, b.state, "/c", 0.1)
    assert.deepStrictEqual(c.rotatedOut, ["/a"])
    assert.deepStrictEqual([...c.state.models.keys()], ["/b", "/c"])
    assert.strictEqual(c.state.bestModelPath, "/c")
    assert.deepStrictEqual([...b.state.models.keys()], ["/a", "/b"], "the input state is untouched")
    const forgotten = CheckpointRetention.forget({ ...policy, monitored: true }, c.state, new Set(["/c"]))
    assert.strictEqual(forgotten.bestModelPath, "/b")
    assert.deepStrictEqual(CheckpointRetention.admitNewest({ mode: "min", saveTopK: 1 }, forgotten, "/d").rotatedOut, ["/b"])
  })
})
