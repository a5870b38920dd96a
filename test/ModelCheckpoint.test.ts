import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Exit, FileSystem, Layer, Logger, Option, type Scope } from "effect"
import { TestClock } from "effect/testing"
import * as posix from "node:path/posix"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import * as Callback from "../src/Callback.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO, type CheckpointIOShape } from "../src/CheckpointIO.ts"
import type * as DataModule from "../src/DataModule.ts"
import * as Device from "../src/Device.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../src/ModelCheckpoint.ts"
import * as Random from "../src/Random.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { StepContext, TrainingModule } from "../src/TrainingModule.ts"
import { countingIO } from "./support/countingIO.ts"
import { epochEnd, fakeTrainer } from "./support/fakeTrainer.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

// ---------------------------------------------------------------------------
// Stacks (as in Trainer.test.ts)

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

const quiet: Trainer.TrainerOptions = { enableProgressBar: false, logger: false }

/** Strategy, Device and the Node services: `Trainer.make` runs inside. */
const devices = (strategy: Layer.Layer<Strategy.Strategy, unknown, Device.Device> = Strategy.singleDevice()) =>
  strategy.pipe(Layer.provideMerge(Device.layer("wasm")), Layer.provideMerge(node))

/** Builds a store layer once, so that several Trainers share it. */
const shared = <E>(layer: Layer.Layer<CheckpointIO, E>) => Effect.map(Layer.build(layer), (context) => Layer.succeedContext(context))

const names = (io: CheckpointIOShape, dir: string) => Effect.map(io.list(dir), (entries) => entries.map((e) => posix.basename(e.path)))

const stepOf = (io: CheckpointIOShape, path: string) => Effect.map(io.load(path), (c) => Option.getOrThrow(c.meta).globalStep)

/** Records the metrics each epoch ended with (runs before checkpoint callbacks). */
const epochRecorder = () => {
  const epochs: Array<{ epoch: number; step: number; metrics: Map<string, number> }> = []
  const callback: Callback.Callback = {
    name: "epochRecorder",
    onTrainEpochEnd: (t) =>
      Effect.sync(() => void epochs.push({ epoch: t.currentEpoch, step: t.globalStep, metrics: new Map(t.callbackMetrics) }))
  }
  return { callback, epochs }
}

const make = (options: ModelCheckpoint.Options) => ModelCheckpoint.make(options)

// ---------------------------------------------------------------------------
// A fake Trainer: drives the callback directly over any CheckpointIO, no tfjs

/** A fresh memory store over a map the test can read. */
const memoryIO = (files: Map<string, MemoryCheckpointIO.StoredFile>) =>
  Effect.provideService(MemoryCheckpointIO.make, MemoryCheckpointIO.MemoryStore, { files })

const filesUnder = (files: Map<string, unknown>, dir: string) =>
  [...files.keys()].filter((p) => posix.dirname(p) === dir).map((p) => posix.basename(p)).sort()

// ---------------------------------------------------------------------------

describe("ModelCheckpoint", () => {
  describe("options", () => {
    it.effect("contradictory options are a typed error at construction", () =>
      Effect.gen(function*() {
        const cases: Array<[ModelCheckpoint.Options, string]> = [
          [{ everyNTrainSteps: 5, everyNEpochs: 1 }, "everyNTrainSteps / everyNEpochs / trainTimeInterval"],
          [{ everyNTrainSteps: 5, trainTimeInterval: 1000 }, "everyNTrainSteps / everyNEpochs / trainTimeInterval"],
          [{ everyNEpochs: 2, trainTimeInterval: "1 hour" }, "everyNTrainSteps / everyNEpochs / trainTimeInterval"],
          [{ saveTopK: 2 }, "saveTopK"],
          [{ saveTopK: -2, monitor: "x" }, "saveTopK"],
          [{ saveTopK: 1.5, monitor: "x" }, "saveTopK"],
          [{ mode: "up" as "min" }, "mode"],
          [{ everyNEpochs: -1 }, "everyNEpochs"],
          [{ trainTimeInterval: -1 }, "trainTimeInterval"],
          [{ filename: "{epoch" }, "filename"],
          [{ filename: "{val_loss:q}" }, "filename"],
          [{ saveLast: "symlink" as "link" }, "saveLast"]
        ]
        for (const [options, option] of cases) {
          const error = yield* Effect.flip(make(options))
          assert.strictEqual(error._tag, "ModelCheckpointConfigError", JSON.stringify(options))
          assert.strictEqual(error.option, option, JSON.stringify(options))
        }
        // Lightning's defaults: every epoch; another trigger turns the epoch trigger off.
        const plain = yield* make({})
        assert.deepStrictEqual([plain.everyNEpochs, plain.everyNTrainSteps, plain.saveTopK, plain.mode], [1, 0, 1, "min"])
        const steps = yield* make({ everyNTrainSteps: 5, everyNEpochs: 0 })
        assert.deepStrictEqual([steps.everyNEpochs, steps.everyNTrainSteps], [0, 5])
        assert.strictEqual(
          (yield* make({ monitor: "val_loss", mode: "min" })).stateKey,
          "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'everyNTrainSteps': 0, 'everyNEpochs': 1, 'trainTimeInterval': None}"
        )
        assert.strictEqual(
          (yield* make({ trainTimeInterval: "2 seconds", mode: "max" })).stateKey,
          "ModelCheckpoint{'monitor': None, 'mode': 'max', 'everyNTrainSteps': 0, 'everyNEpochs': 0, 'trainTimeInterval': 2000}"
        )
      }))

    it.effect("file names: Lightning's templates, format specs and version suffixes", () =>
      Effect.gen(function*() {
        const metrics = new Map([["epoch", 2], ["step", 40], ["val_loss", 0.123456], ["acc", 1], ["tiny", 1e-5]])
        const name = (filename: string | undefined, extra: Partial<ModelCheckpoint.Options> = {}, ver?: number) =>
          Effect.map(make({ dirpath: "/ck/", filename, ...extra }), (cb) => cb.formatCheckpointName(metrics, { ver }))
        assert.strictEqual(yield* name(undefined), "/ck/epoch=2-step=40.ckpt")
        assert.strictEqual(yield* name("{epoch:03d}"), "/ck/epoch=002.ckpt")
        assert.strictEqual(yield* name("{epoch}-{val_loss:.2f}"), "/ck/epoch=2-val_loss=0.12.ckpt")
        assert.strictEqual(yield* name("{missing:d}"), "/ck/missing=0.ckpt")
        assert.strictEqual(yield* name("{val_loss}-{acc}-{tiny}"), "/ck/val_loss=0.123456-acc=1.0-tiny=1e-05.ckpt")
        assert.strictEqual(
          yield* name("epoch={epoch}-validation_loss={val_loss:.2f}", { autoInsertMetricName: false }),
          "/ck/epoch=2-validation_loss=0.12.ckpt"
        )
        assert.strictEqual(yield* name("{epoch}-{step}", {}, 3), "/ck/epoch=2-step=40-v3.ckpt")
        assert.strictEqual(yield* name("{{x}}-{val_loss:+08.3f}"), "/ck/{x}-val_loss=+000.123.ckpt")
      }))

    it.effect("no template or metric name can place a file outside dirpath", () =>
      Effect.gen(function*() {
        const hostile = new Map([["epoch", 1], ["step", 2], ["val/loss", 0.5], ["..", 3], ["a/../../b", 4], ["/etc/passwd", 5]])
        const templates = [
          "{val/loss}",
          "{val/loss:.2f}",
          "../{epoch}",
          "../../{step}",
          "/abs/{epoch}",
          "..",
          ".",
          "{..}",
          "{a/../../b:.1f}",
          "{/etc/passwd}",
          "x/../../y",
          "\\..\\..\\{epoch}",
          "{epoch}\u0000/..",
          "./{epoch}/./.."
        ]
        for (const auto of [true, false]) {
          for (const filename of templates) {
            const cb = yield* make({ dirpath: "/ckpt/run", filename, autoInsertMetricName: auto })
            for (const path of [cb.formatCheckpointName(hostile), cb.formatCheckpointName(hostile, { ver: 2 })]) {
              assert.strictEqual(posix.dirname(path), "/ckpt/run", `${filename} → ${path}`)
              assert.strictEqual(posix.normalize(path), path, `${filename} → ${path}`)
              const base = posix.basename(path)
              assert.notInclude(base, "/")
              assert.notInclude(base, "\\")
              assert.isFalse(base.startsWith("."), base)
              assert.isTrue(base.endsWith(".ckpt"), base)
            }
          }
        }
        // Saved through real stores (memory and disk) by the callback itself.
        const fs = yield* FileSystem.FileSystem
        const root = yield* fs.makeTempDirectoryScoped({ prefix: "mc-names-" })
        const file = yield* FileCheckpointIO.make
        const files = new Map<string, MemoryCheckpointIO.StoredFile>()
        const memory = yield* memoryIO(files)
        for (const [io, dir] of [[memory, "/ckpt/run"], [file, posix.join(root, "deep", "run")]] as const) {
          for (const filename of ["../{val/loss:.2f}", "{a/../../b}/..", "/abs/{epoch}/{step}", ".."]) {
            const cb = yield* make({ dirpath: dir, filename, monitor: "val/loss", saveTopK: -1, saveLast: true })
            const t = fakeTrainer(io, () => [cb])
            yield* cb.setup(t, "fit")
            yield* epochEnd(cb, t, 0, 3, { "val/loss": 0.5, "a/../../b": 1 })
            yield* epochEnd(cb, t, 1, 6, { "val/loss": 0.25, "a/../../b": 2 })
          }
        }
        for (const key of files.keys()) assert.strictEqual(posix.dirname(key), "/ckpt/run", key)
        assert.deepStrictEqual(yield* fs.readDirectory(root), ["deep"])
        assert.deepStrictEqual(yield* fs.readDirectory(posix.join(root, "deep")), ["run"])
        const onDisk = (yield* fs.readDirectory(posix.join(root, "deep", "run"))).sort()
        assert.deepStrictEqual(onDisk, filesUnder(files, "/ckpt/run"))
        assert.include(onDisk, "___val_loss=0.25.ckpt")
        assert.include(onDisk, "_abs_epoch=1_step=6.ckpt")
      }).pipe(Effect.provide(node)))
  })

  // -------------------------------------------------------------------------
  describe("in a Trainer", () => {
    const fileSets = (where: "plugins" | "strategy") => {
      const custom = countingIO()
      return Effect.gen(function*() {
        const plugin = where === "plugins" ? yield* shared(custom.layer) : undefined
        const run = Effect.gen(function*() {
          const checkpoint = yield* make({ saveLast: true })
          const trainer = yield* Trainer.make({
            ...quiet,
            maxEpochs: 2,
            defaultRootDir: "/mem/run",
            callbacks: [checkpoint],
            ...(plugin === undefined ? {} : { plugins: { checkpointIO: plugin } })
          })
          yield* trainer.fit(irisClassifier(), irisData())
          return { checkpoint, trainer }
        })
        const first = yield* run
        assert.strictEqual(custom.counts.list, 1, "one listing of dirpath at setup, nothing else")
        const io = first.trainer.checkpointIO
        const dir = "/mem/run/checkpoints"
        assert.strictEqual(first.checkpoint.dirpath, dir)
        assert.strictEqual(first.trainer.state.globalStep, 12, "6 batches per epoch")
        // Epoch 0 saved epoch=0-step=6 and last; epoch 1 replaced both (rotating epoch 0 out).
        assert.deepStrictEqual(yield* names(io, dir), ["epoch=1-step=12.ckpt", "last.ckpt"])
        assert.strictEqual(custom.counts.save, 4)
        assert.strictEqual(custom.counts.remove, 1)
        assert.strictEqual(custom.counts.copy, 0)
        assert.strictEqual(first.checkpoint.bestModelPath, `${dir}/epoch=1-step=12.ckpt`)
        assert.strictEqual(first.checkpoint.lastModelPath, `${dir}/last.ckpt`)
        assert.strictEqual(yield* stepOf(io, `${dir}/last.ckpt`), 12)

        // A second run into the same dirpath: existing names get -v1.
        const second = yield* run
        assert.strictEqual(custom.counts.list, 3, "the test's own listing, then one at the second setup")
        assert.deepStrictEqual(yield* names(io, dir), ["epoch=1-step=12-v1.ckpt", "epoch=1-step=12.ckpt", "last-v1.ckpt", "last.ckpt"])
        assert.strictEqual(custom.counts.save, 8)
        assert.strictEqual(custom.counts.remove, 2)
        assert.strictEqual(second.checkpoint.bestModelPath, `${dir}/epoch=1-step=12-v1.ckpt`)
        assert.strictEqual(second.checkpoint.lastModelPath, `${dir}/last-v1.ckpt`)
      }).pipe(Effect.provide(devices(where === "strategy" ? Strategy.singleDevice({ checkpointIO: custom.layer }) : undefined)))
    }

    it.effect("Lightning's file sets with a custom IO given to the Trainer (plugins)", () => fileSets("plugins"))
    it.effect("Lightning's file sets with a custom IO given to the Strategy", () => fileSets("strategy"))

    it.effect("top-k by val_loss (min) and val_acc (max): exactly the k best are kept", () =>
      Effect.gen(function*() {
        const recorder = epochRecorder()
        const byLoss = yield* make({
          dirpath: "/mem/loss",
          monitor: "val_loss",
          mode: "min",
          saveTopK: 2,
          filename: "{epoch}-{val_loss:.4f}"
        })
        const byAcc = yield* make({ dirpath: "/mem/acc", monitor: "val_acc", mode: "max", saveTopK: 3 })
        const trainer = yield* Trainer.make({
          ...quiet,
          maxEpochs: 7,
          callbacks: [byLoss, byAcc, recorder.callback],
          plugins: { checkpointIO: MemoryCheckpointIO.layer }
        })
        yield* trainer.fit(irisClassifier("noisy", 0.3), irisData())
        const io = trainer.checkpointIO
        assert.strictEqual(recorder.epochs.length, 7)

        // val_loss: the two smallest, by exact name.
        const losses = recorder.epochs.map((e) => ({ ...e, value: e.metrics.get("val_loss")! }))
        const bestLosses = [...losses].sort((a, b) => a.value - b.value).slice(0, 2)
        const nameOf = (e: { epoch: number; value: number }) => `epoch=${e.epoch}-val_loss=${e.value.toFixed(4)}.ckpt`
        assert.deepStrictEqual(yield* names(io, "/mem/loss"), bestLosses.map(nameOf).sort())
        assert.strictEqual(byLoss.bestModelPath, `/mem/loss/${nameOf(bestLosses[0]!)}`)
        assert.strictEqual(byLoss.bestModelScore, bestLosses[0]!.value)
        assert.strictEqual(byLoss.kthBestModelPath, `/mem/loss/${nameOf(bestLosses[1]!)}`)
        assert.strictEqual(byLoss.kthValue, bestLosses[1]!.value)
        for (const e of bestLosses) assert.strictEqual(yield* stepOf(io, `/mem/loss/${nameOf(e)}`), e.step)

        // val_acc (ties are likely on 30 samples): the three largest values.
        const accs = recorder.epochs.map((e) => e.metrics.get("val_acc")!)
        const top3 = [...accs].sort((a, b) => b - a).slice(0, 3)
        assert.deepStrictEqual([...byAcc.bestKModels.values()].sort((a, b) => b - a), top3)
        assert.deepStrictEqual(yield* names(io, "/mem/acc"), [...byAcc.bestKModels.keys()].map((p) => posix.basename(p)).sort())
        assert.strictEqual(byAcc.bestModelScore, top3[0])
        assert.strictEqual(byAcc.bestKModels.get(byAcc.bestModelPath!), top3[0])
        assert.strictEqual(byAcc.bestKModels.get(byAcc.kthBestModelPath!), top3[2])
        for (const [path, score] of byAcc.bestKModels) {
          const step = yield* stepOf(io, path)
          assert.strictEqual(recorder.epochs.find((e) => e.step === step)!.metrics.get("val_acc"), score, path)
        }
      }).pipe(Effect.provide(devices())))

    const behaviour = (
      io: Layer.Layer<CheckpointIO, unknown>,
      root: (fs: FileSystem.FileSystem) => Effect.Effect<string, unknown, Scope.Scope>
    ) =>
      Effect.gen(function*() {
        const fs = yield* FileSystem.FileSystem
        const dir = yield* root(fs)
        const checkpoint = yield* make({ monitor: "val_loss", saveTopK: 2, saveLast: "link", filename: "{epoch}-{step}-{val_loss:.3f}" })
        const trainer = yield* Trainer.make({
          ...quiet,
          maxEpochs: 4,
          defaultRootDir: dir,
          callbacks: [checkpoint],
          plugins: { checkpointIO: io }
        })
        yield* trainer.fit(irisClassifier("io"), irisData())
        const store = trainer.checkpointIO
        const kept = [...checkpoint.bestKModels.keys()].map((p) => posix.basename(p))
        const listed = yield* names(store, `${dir}/checkpoints`)
        assert.deepStrictEqual(listed, [...kept, "last.ckpt"].sort())
        assert.strictEqual(yield* stepOf(store, checkpoint.lastModelPath!), 24)
        assert.strictEqual(checkpoint.bestKModels.size, 2)
        return { listed, best: checkpoint.bestModelScore }
      })

    it.effect("the same behaviour over FileCheckpointIO, MemoryCheckpointIO and AsyncCheckpointIO", () =>
      Effect.gen(function*() {
        const temp = (fs: FileSystem.FileSystem) => fs.makeTempDirectoryScoped({ prefix: "mc-io-" })
        const memory = yield* behaviour(MemoryCheckpointIO.layer, () => Effect.succeed("/mem"))
        const file = yield* behaviour(FileCheckpointIO.layerNode, temp)
        const asyncMemory = yield* behaviour(AsyncCheckpointIO.layer().pipe(Layer.provide(MemoryCheckpointIO.layer)), () =>
          Effect.succeed("/mem"))
        const asyncFile = yield* behaviour(AsyncCheckpointIO.layerNode(), temp)
        // Training is deterministic, so every store ends with the same files.
        assert.deepStrictEqual(file, memory)
        assert.deepStrictEqual(asyncMemory, memory)
        assert.deepStrictEqual(asyncFile, memory)

        // On disk: nothing outside dirpath, no temporary files left, "last" a full file.
        const fs = yield* FileSystem.FileSystem
        const dir = yield* temp(fs)
        yield* behaviour(FileCheckpointIO.layerNode, () =>
          Effect.succeed(dir))
        assert.deepStrictEqual(yield* fs.readDirectory(dir), ["checkpoints"])
        assert.deepStrictEqual((yield* fs.readDirectory(`${dir}/checkpoints`)).sort(), memory.listed)
      }).pipe(Effect.provide(devices())))

    it.effect("resume with ckptPath \"last\": a new Trainer continues the run; nothing there: a warning and a fresh start", () =>
      Effect.gen(function*() {
        const io = yield* shared(MemoryCheckpointIO.layer)
        const fit = (maxEpochs: number, root: string, ckptPath?: string, options: ModelCheckpoint.Options = { saveLast: true }) =>
          Effect.gen(function*() {
            const checkpoint = yield* make(options)
            const trainer = yield* Trainer.make({
              ...quiet,
              maxEpochs,
              defaultRootDir: root,
              callbacks: [checkpoint],
              plugins: { checkpointIO: io }
            })
            const exit = yield* Effect.exit(trainer.fit(irisClassifier(), irisData(), ckptPath === undefined ? undefined : { ckptPath }))
            return { checkpoint, trainer, exit }
          })
        const first = yield* fit(1, "/r")
        assert.strictEqual(first.trainer.state.globalStep, 6)
        const store = first.trainer.checkpointIO
        assert.deepStrictEqual(yield* names(store, "/r/checkpoints"), ["epoch=0-step=6.ckpt", "last.ckpt"])

        const second = yield* fit(2, "/r", "last")
        assert.isTrue(Exit.isSuccess(second.exit))
        assert.strictEqual(second.trainer.state.resumedFrom, "/r/checkpoints/last.ckpt")
        assert.strictEqual(second.trainer.state.globalStep, 12, "the global step continues")
        // The restored state keeps writing last.ckpt (no -v1) and rotates epoch 0 out.
        assert.deepStrictEqual(yield* names(store, "/r/checkpoints"), ["epoch=1-step=12.ckpt", "last.ckpt"])
        assert.strictEqual(yield* stepOf(store, "/r/checkpoints/last.ckpt"), 12)

        // A third run resumes again from the newest last.
        const third = yield* fit(3, "/r", "last")
        assert.strictEqual(third.trainer.state.globalStep, 18)

        // Nothing to resume from: a warning, then training from scratch.
        const logs: Array<string> = []
        const collector = Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))
        const fresh = yield* fit(1, "/empty", "last").pipe(Effect.provide(Logger.layer([collector])))
        assert.isTrue(Exit.isSuccess(fresh.exit))
        assert.strictEqual(fresh.trainer.state.resumedFrom, undefined)
        assert.strictEqual(fresh.trainer.state.globalStep, 6)
        assert.isTrue(logs.some((l) => l.startsWith("Warn") && l.includes("ckptPath: \"last\"") && l.includes("HINT")), logs.join("\n"))

        // A missing explicit path is a typed error.
        const missing = yield* fit(1, "/r", "/r/checkpoints/nope.ckpt")
        assert.isTrue(Exit.isFailure(missing.exit))
        const error = Exit.isFailure(missing.exit) ? missing.exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
        assert.strictEqual((error as { error: { _tag: string } } | undefined)?.error._tag, "CheckpointNotFound")
      }).pipe(Effect.provide(devices())))

    it.effect("retention never deletes the checkpoint the run resumed from", () =>
      Effect.gen(function*() {
        const custom = countingIO()
        const io = yield* shared(custom.layer)
        const fit = (maxEpochs: number, ckptPath?: string) =>
          Effect.gen(function*() {
            const checkpoint = yield* make({})
            const trainer = yield* Trainer.make({
              ...quiet,
              maxEpochs,
              defaultRootDir: "/p",
              callbacks: [checkpoint],
              plugins: { checkpointIO: io }
            })
            yield* trainer.fit(irisClassifier(), irisData(), ckptPath === undefined ? undefined : { ckptPath })
            return { checkpoint, trainer }
          })
        const first = yield* fit(1)
        assert.deepStrictEqual(yield* names(first.trainer.checkpointIO, "/p/checkpoints"), ["epoch=0-step=6.ckpt"])
        const resumedFrom = "/p/checkpoints/epoch=0-step=6.ckpt"
        const second = yield* fit(3, resumedFrom)
        assert.strictEqual(second.trainer.state.resumedFrom, resumedFrom)
        // saveTopK 1: epoch 1 would rotate epoch 0 out, but that is the resumed-from file.
        assert.deepStrictEqual(yield* names(second.trainer.checkpointIO, "/p/checkpoints"), ["epoch=0-step=6.ckpt", "epoch=2-step=18.ckpt"])
        assert.strictEqual(custom.counts.remove, 1, "only epoch=1-step=12 was removed")
        assert.strictEqual(second.checkpoint.bestModelPath, "/p/checkpoints/epoch=2-step=18.ckpt")
      }).pipe(Effect.provide(devices())))

    it.effect("when it saves: epoch ends, after validations inside an epoch, every N epochs of validation, or at validation end", () =>
      Effect.gen(function*() {
        const run = (root: string, trainerOptions: Trainer.TrainerOptions, options: ModelCheckpoint.Options = {}) =>
          Effect.gen(function*() {
            const checkpoint = yield* make({ monitor: "val_loss", saveTopK: -1, ...options })
            const trainer = yield* Trainer.make({
              ...quiet,
              defaultRootDir: root,
              callbacks: [checkpoint],
              plugins: { checkpointIO: MemoryCheckpointIO.layer },
              ...trainerOptions
            })
            yield* trainer.fit(irisClassifier(), irisData())
            return yield* names(trainer.checkpointIO, `${root}/checkpoints`)
          })
        // Validation at each epoch end: one save per epoch, after it.
        assert.deepStrictEqual(yield* run("/a", { maxEpochs: 2 }), ["epoch=0-step=6.ckpt", "epoch=1-step=12.ckpt"])
        // Validation twice per epoch: a save after each (the mid-epoch one before the next batch).
        assert.deepStrictEqual(yield* run("/b", { maxEpochs: 1, valCheckInterval: 0.5 }), ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt"])
        // Validation every 2 epochs: epochs without validation are not saved once validation has run.
        assert.deepStrictEqual(yield* run("/c", { maxEpochs: 4, checkValEveryNEpoch: 2 }), ["epoch=1-step=12.ckpt", "epoch=3-step=24.ckpt"])
        // saveOnTrainEpochEnd false: at the end of each validation; true: at epoch ends only.
        assert.deepStrictEqual(yield* run("/d", { maxEpochs: 1, valCheckInterval: 0.5 }, { saveOnTrainEpochEnd: false }), [
          "epoch=0-step=3.ckpt",
          "epoch=0-step=6.ckpt"
        ])
        assert.deepStrictEqual(yield* run("/e", { maxEpochs: 1, valCheckInterval: 0.5 }, { saveOnTrainEpochEnd: true }), [
          "epoch=0-step=6.ckpt"
        ])
        // everyNEpochs: top-k every 2 epochs; last at every epoch end.
        assert.deepStrictEqual(yield* run("/f", { maxEpochs: 4 }, { everyNEpochs: 2, saveLast: true }), [
          "epoch=1-step=12.ckpt",
          "epoch=3-step=24.ckpt",
          "last.ckpt"
        ])
        // Two checkpoint callbacks with the same state key cannot be told apart on resume.
        const twins = yield* Effect.flip(
          Trainer.make({ ...quiet, callbacks: [yield* make({ monitor: "a" }), yield* make({ monitor: "a", saveTopK: 3 })] })
        )
        assert.strictEqual(twins._tag, "TrainerConfigError")
      }).pipe(Effect.provide(devices())))

    it.effect("issue 15: an exception checkpoint is named by epoch and step, never by a stale or missing metric", () =>
      Effect.gen(function*() {
        const base = irisClassifier("fails-mid-epoch")
        let steps = 0
        const failing: TrainingModule<DataModule.XY> = {
          ...base,
          trainingStep: (model: tf.LayersModel, batch: DataModule.XY, ctx: StepContext) => {
            if (++steps === 3) throw new Error("boom")
            return base.trainingStep(model, batch, ctx)
          }
        }
        // val_acc is logged at the epoch's end: at step 2 there is none yet.
        const checkpoint = yield* make({ saveOnException: true, monitor: "val_acc", mode: "max", filename: "{epoch}-{step}-{val_acc:.4f}" })
        const trainer = yield* Trainer.make({
          ...quiet,
          maxEpochs: 2,
          numSanityValSteps: 0,
          defaultRootDir: "/x",
          callbacks: [checkpoint],
          plugins: { checkpointIO: MemoryCheckpointIO.layer }
        })
        yield* Effect.flip(trainer.fit(failing, irisData()))
        assert.deepStrictEqual(yield* names(trainer.checkpointIO, "/x/checkpoints"), ["exception-epoch=0-step=2.ckpt"])
      }).pipe(Effect.provide(devices())))

    it.effect("saveOnException saves exception-<name>.ckpt and last, and the fit still fails with its own error", () =>
      Effect.gen(function*() {
        const failing = (failAt: number): TrainingModule<DataModule.XY> => {
          const base = irisClassifier(`fails-at-${failAt}`)
          let steps = 0
          return {
            ...base,
            trainingStep: (model: tf.LayersModel, batch: DataModule.XY, ctx: StepContext) => {
              if (++steps === failAt) throw new Error("boom")
              return base.trainingStep(model, batch, ctx)
            }
          }
        }
        const checkpoint = yield* make({ saveOnException: true, saveLast: "link" })
        const trainer = yield* Trainer.make({
          ...quiet,
          maxEpochs: 2,
          defaultRootDir: "/x",
          callbacks: [checkpoint],
          plugins: { checkpointIO: MemoryCheckpointIO.layer }
        })
        const error = yield* Effect.flip(trainer.fit(failing(9), irisData()))
        assert.include(error.message, "boom")
        const io = trainer.checkpointIO
        assert.deepStrictEqual(yield* names(io, "/x/checkpoints"), ["epoch=0-step=6.ckpt", "exception-epoch=1-step=8.ckpt", "last.ckpt"])
        assert.strictEqual(yield* stepOf(io, "/x/checkpoints/last.ckpt"), 8)

        // A store that refuses the exception save: the original error still comes back.
        let refuse = false
        const refusing = Layer.effect(
          CheckpointIO,
          Effect.map(MemoryCheckpointIO.make, (inner): CheckpointIOShape => ({
            ...inner,
            save: (c, p, o) => (refuse ? Effect.die(new Error("disk on fire")) : inner.save(c, p, o))
          }))
        ).pipe(Layer.provide(MemoryCheckpointIO.MemoryStore.layer))
        const guarded = yield* make({ saveOnException: true })
        const tripping: Callback.Callback = { name: "trip", onTrainBatchEnd: (t) => Effect.sync(() => void (refuse = t.globalStep >= 3)) }
        const other = yield* Trainer.make({ ...quiet, maxEpochs: 1, callbacks: [tripping, guarded], plugins: { checkpointIO: refusing } })
        const original = yield* Effect.flip(other.fit(failing(5), irisData()))
        assert.include(original.message, "boom")
      }).pipe(Effect.provide(devices())))
  })

  // -------------------------------------------------------------------------
  describe("driven directly", () => {
    it.effect("everyNTrainSteps and trainTimeInterval (TestClock); never during the sanity check or outside fit", () =>
      Effect.gen(function*() {
        const files = new Map<string, MemoryCheckpointIO.StoredFile>()
        const io = yield* memoryIO(files)
        const steps = yield* make({ dirpath: "/s", everyNTrainSteps: 3, saveTopK: -1 })
        const t = fakeTrainer(io, () => [steps])
        yield* steps.setup(t, "fit")
        yield* steps.onTrainStart(t)
        for (let step = 1; step <= 7; step++) {
          t.globalStep = step
          yield* steps.onTrainBatchEnd(t, { loss: 0 }, step - 1)
        }
        yield* steps.onTrainEpochEnd(t) // everyNEpochs is 0 with a step trigger: no top-k save
        assert.deepStrictEqual(filesUnder(files, "/s"), ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt"])
        t.sanityChecking = true
        t.globalStep = 9
        yield* steps.onTrainBatchEnd(t, { loss: 0 }, 8)
        t.sanityChecking = false
        t.stage = "validate"
        yield* steps.onValidationEnd(t)
        assert.strictEqual(filesUnder(files, "/s").length, 2)

        const timed = yield* make({ dirpath: "/time", trainTimeInterval: "10 seconds", saveTopK: -1 })
        const u = fakeTrainer(io, () => [timed])
        yield* timed.setup(u, "fit")
        yield* timed.onTrainStart(u)
        for (let step = 1; step <= 6; step++) {
          u.globalStep = step
          yield* TestClock.adjust("4 seconds")
          yield* timed.onTrainBatchEnd(u, { loss: 0 }, step - 1)
        }
        // 12 s after the start at step 3, 24 s at step 6.
        assert.deepStrictEqual(filesUnder(files, "/time"), ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt"])
      }))

    it.effect("state: round trip with non-finite scores; into another dirpath only bestModelPath is kept", () =>
      Effect.gen(function*() {
        const files = new Map<string, MemoryCheckpointIO.StoredFile>()
        const io = yield* memoryIO(files)
        const a = yield* make({ dirpath: "/a", monitor: "m", saveTopK: 2, saveLast: true })
        const t = fakeTrainer(io, () => [a])
        yield* a.setup(t, "fit")
        yield* epochEnd(a, t, 0, 1, { m: NaN })
        yield* epochEnd(a, t, 1, 2, { m: 0.5 })
        const state = JSON.parse(JSON.stringify(a.stateDict()))
        assert.deepStrictEqual(state.bestKModels, { "/a/epoch=0-step=1.ckpt": "inf", "/a/epoch=1-step=2.ckpt": 0.5 })

        const same = yield* make({ dirpath: "/a", monitor: "m", saveTopK: 2, saveLast: true })
        yield* same.setup(t, "fit")
        yield* same.loadStateDict(state)
        assert.deepStrictEqual([...same.bestKModels], [...a.bestKModels])
        assert.deepStrictEqual([same.bestModelPath, same.bestModelScore, same.kthBestModelPath, same.kthValue, same.lastModelPath], [
          a.bestModelPath,
          a.bestModelScore,
          a.kthBestModelPath,
          Infinity,
          "/a/last.ckpt"
        ])

        const moved = yield* make({ dirpath: "/b", monitor: "m", saveTopK: 2, saveLast: true })
        yield* moved.setup(t, "fit")
        yield* moved.loadStateDict(state)
        assert.strictEqual(moved.bestModelPath, "/a/epoch=1-step=2.ckpt")
        assert.strictEqual(moved.bestKModels.size, 0)
        assert.strictEqual(moved.bestModelScore, undefined)
        assert.strictEqual(moved.lastModelPath, undefined)
        // It never touches /a.
        const before = filesUnder(files, "/a")
        yield* epochEnd(moved, t, 2, 3, { m: 0.1 })
        yield* epochEnd(moved, t, 3, 4, { m: 0.05 })
        yield* epochEnd(moved, t, 4, 5, { m: 0.01 })
        assert.deepStrictEqual(filesUnder(files, "/a"), before)
        assert.deepStrictEqual(filesUnder(files, "/b"), ["epoch=3-step=4.ckpt", "epoch=4-step=5.ckpt", "last.ckpt"])

        const bad = yield* Effect.flip(same.loadStateDict([1, 2]))
        assert.strictEqual(bad._tag, "CallbackError")
      }))

    it.effect("a monitor that is never logged: a warning before any validation, a typed error after one", () =>
      Effect.gen(function*() {
        const io = yield* memoryIO(new Map())
        const cb = yield* make({ dirpath: "/m", monitor: "val_los" })
        const t = fakeTrainer(io, () => [cb])
        yield* cb.setup(t, "fit")
        yield* epochEnd(cb, t, 0, 1, { val_loss: 1 })
        t.globalStep = 2
        t.callbackMetrics = new Map([["val_loss", 0.5]])
        yield* cb.onValidationEnd(t)
        const error = yield* Effect.flip(cb.onTrainEpochEnd(t))
        assert.strictEqual(error._tag, "CallbackError")
        assert.include(error.message, "val_los")
      }))

    // -----------------------------------------------------------------------
    // The property: thousands of random metric sequences × configurations

    const topKs = [-1, 0, 1, 2, 3] as const
    const lasts = [false, true, "link"] as const
    const modes = ["min", "max"] as const

    interface Case {
      readonly topK: number
      readonly saveLast: boolean | "link"
      readonly mode: "min" | "max"
      readonly monitor: string | undefined
    }

    /**
     * Runs one random case and checks, after every epoch end, every rule. `io` is the
     * store the callback sees; `files` the committed files; `violations` collects
     * what the store wrappers saw go wrong.
     */
    const runCase = (
      seed: number,
      config: Case,
      io: CheckpointIOShape,
      files: Map<string, MemoryCheckpointIO.StoredFile>,
      ops: { violations: Array<string>; lastWritten: string | undefined; resumedFrom: string | undefined },
      settle: Effect.Effect<void, unknown> = Effect.void
    ) =>
      Effect.gen(function*() {
        let rng = seed >>> 0
        const rand = () => {
          const [s, r] = Random.next(rng)
          rng = s
          return r
        }
        const int = (n: number) => Math.floor(rand() * n)
        const dir = "/ckpt/run"
        const label = `seed ${seed} ${JSON.stringify(config)}`
        const options: ModelCheckpoint.Options = {
          dirpath: dir,
          monitor: config.monitor,
          mode: config.mode,
          saveTopK: config.topK,
          saveLast: config.saveLast
        }
        const length = 1 + int(12)
        const stepsPerEpoch = 1 + int(4)
        // Foreign files: a sibling directory with a prefix of dirpath, the parent, and
        // another run's files inside dirpath, one of them on a name this run will want.
        const foreign = ["/ckpt/run-other/epoch=0-step=3.ckpt", "/ckpt/elsewhere.ckpt", `${dir}/other-run.ckpt`]
        if (rand() < 0.3) {
          const e = int(length)
          foreign.push(`${dir}/epoch=${e}-step=${(e + 1) * stepsPerEpoch}.ckpt`)
        }
        if (rand() < 0.2) foreign.push(`${dir}/last.ckpt`)
        const foreignIO = yield* memoryIO(files)
        for (const path of foreign) {
          yield* foreignIO.save(
            Checkpoint.make({
              tensors: { "model/w": Checkpoint.tensor("F32", [1], Float32Array.of(-1)) },
              meta: { epoch: 0, globalStep: 0 }
            }),
            path
          )
        }
        const foreignBytes = new Map(foreign.map((p) => [p, files.get(p)]))

        const values: Array<number> = []
        const valueAtStep = new Map<number, number>()
        const noMonitorPaths = new Set<string>()
        const resumeAt = config.topK === 0 && config.saveLast === false ? -1 : rand() < 0.5 ? 1 + int(Math.max(1, length - 1)) : -1
        let cb = yield* make(options)
        let t = fakeTrainer(io, () => [cb])
        yield* cb.setup(t, "fit")
        yield* cb.onTrainStart(t)
        const worst = config.mode === "min" ? Infinity : -Infinity
        const rank = (a: number, b: number) => (config.mode === "min" ? (a < b ? -1 : a > b ? 1 : 0) : a > b ? -1 : a < b ? 1 : 0)

        for (let event = 0; event < length; event++) {
          if (event === resumeAt && ops.lastWritten !== undefined) {
            // Resume in a new callback from the newest checkpoint, as the Trainer does.
            const from = ops.lastWritten
            const record = yield* io.load(from)
            const meta = Option.getOrThrow(record.meta)
            cb = yield* make(options)
            t = fakeTrainer(io, () => [cb])
            t.resumedFrom = from
            ops.resumedFrom = from
            yield* cb.setup(t, "fit")
            yield* cb.loadStateDict(meta.callbacks[cb.stateKey]!)
            yield* cb.onLoadCheckpoint(t, meta)
            yield* cb.onTrainStart(t)
          }
          const roll = rand()
          const value = roll < 0.15
            ? NaN
            : roll < 0.3 && values.length > 0
            ? values[int(values.length)]!
            : roll < 0.33
            ? (rand() < 0.5 ? Infinity : -Infinity)
            : Math.round(rand() * 1000) / 100
          const step = (event + 1) * stepsPerEpoch
          values.push(value)
          valueAtStep.set(step, value)
          yield* epochEnd(cb, t, event, step, { val_loss: value, other: rand() })
          yield* settle
          if (config.monitor === undefined && cb.bestModelPath !== undefined) noMonitorPaths.add(cb.bestModelPath)

          // 1. What the wrappers saw (outside dirpath, protected files, order).
          assert.deepStrictEqual(ops.violations, [], label)
          // 2. Foreign files untouched.
          for (const [path, bytes] of foreignBytes) assert.strictEqual(files.get(path), bytes, `${label}: ${path}`)
          // 3. Exactly the kept set in dirpath.
          const expected = new Set<string>()
          if (config.monitor !== undefined) { for (const p of cb.bestKModels.keys()) expected.add(p) }
          else if (config.topK === 1 && cb.bestModelPath !== undefined) expected.add(cb.bestModelPath)
          else if (config.topK === -1) { for (const p of noMonitorPaths) expected.add(p) }
          if (config.saveLast !== false) expected.add(cb.lastModelPath!)
          for (const p of foreign) if (posix.dirname(p) === dir) expected.add(p)
          if (ops.resumedFrom !== undefined) expected.add(ops.resumedFrom)
          assert.deepStrictEqual(
            filesUnder(files, dir),
            [...expected].map((p) => posix.basename(p)).sort(),
            `${label} after event ${event}`
          )
          // 4. The top k by the rules: the k best values (NaN as the worst), as a multiset.
          if (config.monitor !== undefined) {
            const all = values.map((v) => (Number.isNaN(v) ? worst : v)).sort(rank)
            const best = config.topK === -1 ? all : all.slice(0, config.topK)
            const kept = [...cb.bestKModels.values()].sort(rank)
            assert.deepStrictEqual(kept, best, `${label} after event ${event}`)
            if (kept.length > 0) {
              assert.strictEqual(cb.bestModelScore, best[0], label)
              assert.strictEqual(cb.bestKModels.get(cb.bestModelPath!), best[0], label)
              if (config.topK === -1 || kept.length === config.topK) {
                assert.strictEqual(cb.bestKModels.get(cb.kthBestModelPath!), best[best.length - 1], label)
              }
            }
          }
          // 5. The newest checkpoint is there, and last holds this step.
          if (ops.lastWritten !== undefined) assert.isTrue(files.has(ops.lastWritten), `${label}: newest ${ops.lastWritten}`)
          if (config.saveLast !== false) {
            assert.strictEqual(yield* stepOf(io, cb.lastModelPath!), step, `${label}: last at event ${event}`)
          }
        }
        // 6. Every kept file holds the step its score came from.
        for (const [path, score] of cb.bestKModels) {
          const value = valueAtStep.get(yield* stepOf(io, path))!
          assert.strictEqual(Number.isNaN(value) ? worst : value, score, `${label}: ${path}`)
        }
      })

    const configOf = (i: number): Case => {
      const topK = topKs[i % 5]!
      const saveLast = lasts[Math.floor(i / 5) % 3]!
      const mode = modes[Math.floor(i / 15) % 2]!
      const monitor = Math.floor(i / 30) % 4 === 3 && topK <= 1 ? undefined : "val_loss"
      return { topK, saveLast, mode, monitor }
    }

    /** Wraps a store: checks every write and removal against the rules as it happens. */
    const watched = (
      io: CheckpointIOShape,
      committed: (path: string) => boolean,
      ops: { violations: Array<string>; lastWritten: string | undefined; resumedFrom: string | undefined },
      dir: string
    ): CheckpointIOShape => {
      const inside = (op: string, path: string) => {
        if (posix.dirname(path) !== dir) ops.violations.push(`${op} outside dirpath: ${path}`)
      }
      return {
        ...io,
        save: (c, p, o) => Effect.suspend(() => (inside("save", p), ops.lastWritten = p, io.save(c, p, o))),
        copy: (s, p) => Effect.suspend(() => (inside("copy", p), ops.lastWritten = p, io.copy(s, p))),
        remove: (p) =>
          Effect.suspend(() => {
            inside("remove", p)
            if (p === ops.resumedFrom) ops.violations.push(`removed the resumed-from ${p}`)
            if (p === ops.lastWritten) ops.violations.push(`removed the newest ${p}`)
            if (ops.lastWritten !== undefined && !committed(ops.lastWritten)) {
              ops.violations.push(`removed ${p} before its replacement ${ops.lastWritten} was committed`)
            }
            return io.remove(p)
          })
      }
    }

    it.effect(
      "property: 2000 random metric sequences (with NaN) × saveTopK × saveLast × mode over MemoryCheckpointIO",
      () =>
        Effect.gen(function*() {
          const cases = 2000
          let removals = 0
          for (let i = 0; i < cases; i++) {
            const files = new Map<string, MemoryCheckpointIO.StoredFile>()
            const ops = {
              violations: [] as Array<string>,
              lastWritten: undefined as string | undefined,
              resumedFrom: undefined as string | undefined
            }
            const base = yield* memoryIO(files)
            const counted: CheckpointIOShape = { ...base, remove: (p) => Effect.suspend(() => (removals++, base.remove(p))) }
            const io = watched(counted, (p) => files.has(MemoryCheckpointIO.normalize(p)), ops, "/ckpt/run")
            yield* runCase(Random.mix(1, i), configOf(i), io, files, ops)
          }
          assert.isAbove(removals, 1000, "the cases exercise rotation")
        }),
      120_000
    )

    it.effect(
      "property over AsyncCheckpointIO with slow commits: a rotated-out file goes only after its replacement is committed",
      () =>
        Effect.gen(function*() {
          for (let i = 0; i < 300; i++) {
            yield* Effect.scoped(Effect.gen(function*() {
              const files = new Map<string, MemoryCheckpointIO.StoredFile>()
              const ops = {
                violations: [] as Array<string>,
                lastWritten: undefined as string | undefined,
                resumedFrom: undefined as string | undefined
              }
              const memory = yield* memoryIO(files)
              // Commits land several scheduler turns after the background write starts.
              const slow: CheckpointIOShape = {
                ...memory,
                save: (c, p, o) =>
                  Effect.gen(function*() {
                    for (let k = 0; k < 8; k++) yield* Effect.yieldNow
                    yield* memory.save(c, p, o)
                  }),
                remove: (p) =>
                  Effect.suspend(() => {
                    // Checked where it matters: when the store really deletes.
                    if (
                      ops.lastWritten !== undefined && p !== ops.lastWritten && !files.has(MemoryCheckpointIO.normalize(ops.lastWritten))
                    ) {
                      ops.violations.push(`store removed ${p} before ${ops.lastWritten} was committed`)
                    }
                    return memory.remove(p)
                  })
              }
              const pool = yield* AsyncCheckpointIO.make({ checksumWorker: false }).pipe(Effect.provideService(CheckpointIO, slow))
              // The wrapper in front records what the callback asked for; commits are checked in `slow`.
              const io = watched(pool, () => true, ops, "/ckpt/run")
              yield* runCase(Random.mix(2, i), configOf(i), io, files, ops, pool.flush)
            }))
          }
        }),
      120_000
    )
  })
})
