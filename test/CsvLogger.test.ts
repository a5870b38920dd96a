import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, FileSystem, Layer, Option, Path, PlatformError } from "effect"
import { type Callback, CallbackError, type Hook, type TrainerState } from "../src/Callback.ts"
import * as CheckpointIO from "../src/CheckpointIO.ts"
import * as CsvLogger from "../src/CsvLogger.ts"
import { interceptWrites } from "./support/interceptWrites.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

// ---------------------------------------------------------------------------
// A fake Trainer: a mutable TrainerState and Lightning's hook order for a fit of
// 2 epochs x 3 batches (sanity check first, validation inside each epoch, before
// onTrainEpochEnd). `observe` runs after every hook, with the hook's name.
// ---------------------------------------------------------------------------

type Mutable<T> = { -readonly [K in keyof T]: T[K] }

const makeState = (defaultRootDir: string): Mutable<TrainerState> => ({
  stage: "fit",
  currentEpoch: 0,
  globalStep: 0,
  batchIdx: 0,
  numTrainBatches: 3,
  maxEpochs: 2,
  maxSteps: -1,
  callbackMetrics: new Map(),
  loggedMetrics: new Map(),
  defaultRootDir,
  checkpointIO: CheckpointIO.make({
    save: () => Effect.void,
    load: (path) => Effect.fail(new CheckpointIO.CheckpointNotFound({ operation: "load", path })),
    remove: () => Effect.void,
    exists: () => Effect.succeed(false),
    list: () => Effect.succeed([])
  }),
  sanityChecking: false,
  shouldStop: false,
  stop: () => {},
  saveCheckpoint: () => Effect.void,
  resumedFrom: undefined
})

const trainLosses = [0.91234, 0.74561, 0.63219, 0.50128, 0.43891, 0.41237]
const valLosses = [0.52341, 0.38765]
const valAccs = [0.85123, 0.91345]
const epochLosses = [0.76338, 0.45085]

const call = <A extends ReadonlyArray<unknown>>(state: TrainerState, hook: Hook<A> | undefined, ...args: A) =>
  hook === undefined ? Effect.void : hook(state, ...args)

const fit = <E, R>(
  callback: Callback,
  state: Mutable<TrainerState>,
  observe: (hook: string) => Effect.Effect<void, E, R> = () => Effect.void as Effect.Effect<void, E, R>
) =>
  Effect.gen(function*() {
    const run = <A extends ReadonlyArray<unknown>>(name: keyof Callback, hook: Hook<A> | undefined, ...args: A) =>
      Effect.andThen(call(state, hook, ...args), observe(name))
    yield* run("setup", callback.setup, "fit")
    yield* run("onFitStart", callback.onFitStart)
    state.sanityChecking = true
    yield* run("onSanityCheckStart", callback.onSanityCheckStart)
    yield* run("onValidationStart", callback.onValidationStart)
    state.callbackMetrics = new Map([["val_loss", 9.99]])
    state.loggedMetrics = new Map([["val_loss", 9.99]])
    yield* run("onValidationEpochEnd", callback.onValidationEpochEnd)
    yield* run("onValidationEnd", callback.onValidationEnd)
    yield* run("onSanityCheckEnd", callback.onSanityCheckEnd)
    state.sanityChecking = false
    state.callbackMetrics = new Map()
    state.loggedMetrics = new Map()
    yield* run("onTrainStart", callback.onTrainStart)
    for (let epoch = 0; epoch < 2; epoch++) {
      state.currentEpoch = epoch
      yield* run("onTrainEpochStart", callback.onTrainEpochStart)
      for (let b = 0; b < 3; b++) {
        state.batchIdx = b
        yield* run("onTrainBatchStart", callback.onTrainBatchStart, b)
        const loss = trainLosses[epoch * 3 + b] ?? 0.1
        state.globalStep += 1
        state.callbackMetrics = new Map([...state.callbackMetrics, ["train_loss", loss]])
        state.loggedMetrics = new Map([["train_loss", loss]])
        yield* run("onTrainBatchEnd", callback.onTrainBatchEnd, { loss }, b)
      }
      state.loggedMetrics = new Map()
      yield* run("onValidationStart", callback.onValidationStart)
      const val: ReadonlyArray<[string, number]> = [["val_loss", valLosses[epoch] ?? 0.2], ["val_acc", valAccs[epoch] ?? 0.9]]
      state.callbackMetrics = new Map([...state.callbackMetrics, ...val])
      state.loggedMetrics = new Map(val)
      yield* run("onValidationEpochEnd", callback.onValidationEpochEnd)
      yield* run("onValidationEnd", callback.onValidationEnd)
      const epochLoss = epochLosses[epoch] ?? 0.3
      state.callbackMetrics = new Map([...state.callbackMetrics, ["train_loss_epoch", epochLoss]])
      state.loggedMetrics = new Map([["train_loss_epoch", epochLoss]])
      yield* run("onTrainEpochEnd", callback.onTrainEpochEnd)
      state.loggedMetrics = new Map()
    }
    yield* run("onTrainEnd", callback.onTrainEnd)
    yield* run("onFitEnd", callback.onFitEnd)
    yield* run("teardown", callback.teardown, "fit")
  })

// The rows of that fit, in order.
const trainRows = ["0,1,0.91234", "0,2,0.74561", "0,3,0.63219"]
const fullHeader = "epoch,step,train_loss,train_loss_epoch,val_acc,val_loss"
const fullRows = [
  "0,1,0.91234,,,",
  "0,2,0.74561,,,",
  "0,3,0.63219,,,",
  "0,3,,,0.85123,0.52341",
  "0,3,,0.76338,,",
  "1,4,0.50128,,,",
  "1,5,0.43891,,,",
  "1,6,0.41237,,,",
  "1,6,,,0.91345,0.38765",
  "1,6,,0.45085,,"
]
const csv = (header: string, rows: ReadonlyArray<string>) => [header, ...rows].map((line) => `${line}\n`).join("")

// The constructor's type, as the Trainer relies on it.
const makeLogger: (options?: CsvLogger.Options) => Effect.Effect<CsvLogger.CsvLogger, never, FileSystem.FileSystem | Path.Path> =
  CsvLogger.make

const tempDir = Effect.flatMap(FileSystem.FileSystem, (fs) => fs.makeTempDirectoryScoped({ prefix: "csv-logger-" }))

/** The logger's directory; fails the test when it has none. */
const logDirOf = (logger: CsvLogger.CsvLogger) => Effect.map(logger.logDir, Option.getOrThrow)

/** The metrics file's content, or undefined when there is none. */
const readMetrics = (dir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const file = path.join(dir, CsvLogger.metricsFileName)
    return (yield* fs.exists(file)) ? yield* fs.readFileString(file) : undefined
  }).pipe(Effect.orDie)

describe("CsvLogger", () => {
  it.effect("versions: version_0, then version_1 for a second logger; a given version is used", () =>
    Effect.gen(function*() {
      const path = yield* Path.Path
      const root = yield* tempDir
      const state = makeState(root)
      const first = yield* makeLogger()
      assert.strictEqual(first.name, "CsvLogger")
      assert.isTrue(Option.isNone(yield* first.logDir))
      yield* call(state, first.setup, "fit")
      assert.strictEqual(yield* logDirOf(first), path.join(root, "logs", "version_0"))
      // A second setup (e.g. a test run after fit) keeps the version.
      yield* call(state, first.setup, "test")
      assert.strictEqual(yield* logDirOf(first), path.join(root, "logs", "version_0"))

      const second = yield* CsvLogger.make({ saveDir: root })
      yield* call(state, second.setup, "fit")
      assert.strictEqual(yield* logDirOf(second), path.join(root, "logs", "version_1"))

      const given = yield* CsvLogger.make({ saveDir: root, version: 7 })
      yield* call(state, given.setup, "fit")
      assert.strictEqual(yield* logDirOf(given), path.join(root, "logs", "version_7"))
      const next = yield* CsvLogger.make({ saveDir: root })
      yield* call(state, next.setup, "fit")
      assert.strictEqual(yield* logDirOf(next), path.join(root, "logs", "version_8"))

      const named = yield* CsvLogger.make({ saveDir: path.join(root, "elsewhere"), name: "mnist" })
      yield* call(state, named.setup, "fit")
      assert.strictEqual(yield* logDirOf(named), path.join(root, "elsewhere", "mnist", "version_0"))
    }).pipe(Effect.provide(node)))

  it.effect("writes the whole run at fit end: header, one row per event, empty cells, no sanity-check row", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* tempDir
      const logger = yield* CsvLogger.make()
      const seen: Array<string | undefined> = []
      yield* fit(logger, makeState(root), (hook) =>
        Effect.gen(function*() {
          if (hook === "onFitEnd" || hook === "teardown" || hook === "onTrainEpochEnd") {
            seen.push(yield* readMetrics(yield* logDirOf(logger)))
          }
        }))
      const expected = csv(fullHeader, fullRows)
      // Six steps and four epoch rows stay under flushEvery (50): nothing written before onFitEnd.
      assert.deepStrictEqual(seen, [undefined, undefined, expected, expected])
      // No temporary file left behind; the picture of the run beside the metrics (issue 15).
      const dir = yield* logDirOf(logger)
      assert.deepStrictEqual((yield* fs.readDirectory(dir)).sort(), [CsvLogger.metricsFileName, "metrics.svg"])
      const svg = yield* fs.readFileString(`${dir}/metrics.svg`)
      for (const name of ["train_loss", "val_loss", "val_acc"]) assert.include(svg, `<title>${name}</title>`)
    }).pipe(Effect.provide(node)))

  it.effect("flushes every flushEvery rows, rewriting the file when the columns grow", () =>
    Effect.gen(function*() {
      const root = yield* tempDir
      const logger = yield* CsvLogger.make({ flushEvery: 3 })
      const seen: Array<[string, string | undefined]> = []
      yield* fit(logger, makeState(root), (hook) =>
        Effect.gen(function*() {
          if (hook === "onTrainBatchEnd" || hook.endsWith("EpochEnd") || hook === "onFitEnd" || hook === "teardown") {
            seen.push([hook, yield* readMetrics(yield* logDirOf(logger))])
          }
        }))
      const first = csv("epoch,step,train_loss", trainRows)
      const six = csv(fullHeader, fullRows.slice(0, 6))
      const nine = csv(fullHeader, fullRows.slice(0, 9))
      const all = csv(fullHeader, fullRows)
      assert.deepStrictEqual(seen, [
        ["onValidationEpochEnd", undefined], // the sanity check: not logged
        ["onTrainBatchEnd", undefined],
        ["onTrainBatchEnd", undefined],
        ["onTrainBatchEnd", first],
        ["onValidationEpochEnd", first],
        ["onTrainEpochEnd", first],
        ["onTrainBatchEnd", six],
        ["onTrainBatchEnd", six],
        ["onTrainBatchEnd", six],
        ["onValidationEpochEnd", nine],
        ["onTrainEpochEnd", nine],
        ["onFitEnd", all],
        ["teardown", all]
      ])
    }).pipe(Effect.provide(node)))

  it.effect("logs test metrics; quotes column names that need it; writes nothing without rows", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* tempDir
      const state = makeState(root)
      const empty = yield* CsvLogger.make()
      yield* call(state, empty.setup, "fit")
      yield* call(state, empty.onTrainBatchEnd, { loss: 1 }, 0) // no logged metrics: no row
      yield* call(state, empty.teardown, "fit")
      assert.isUndefined(yield* readMetrics(yield* logDirOf(empty)))

      const logger = yield* CsvLogger.make()
      state.stage = "test"
      state.globalStep = 12
      state.currentEpoch = 2
      yield* call(state, logger.setup, "test")
      state.loggedMetrics = new Map([["test_loss", 0.25], ["acc,top5", 1], ["say \"hi\"", Number.NaN]])
      yield* call(state, logger.onTestEpochEnd)
      yield* call(state, logger.teardown, "test")
      assert.strictEqual(
        yield* readMetrics(yield* logDirOf(logger)),
        "epoch,step,\"acc,top5\",\"say \"\"hi\"\"\",test_loss\n2,12,1,NaN,0.25\n"
      )
      assert.isTrue(yield* fs.exists(root))
    }).pipe(Effect.provide(node)))

  it.effect("a directory that cannot be created: a CallbackError naming it", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const root = yield* tempDir
      const plainFile = path.join(root, "plain")
      yield* fs.writeFileString(plainFile, "not a directory")
      const logger = yield* CsvLogger.make({ saveDir: path.join(plainFile, "under") })
      const error = yield* Effect.flip(call(makeState(root), logger.setup, "fit"))
      assert.instanceOf(error, CallbackError)
      assert.strictEqual(error._tag, "CallbackError")
      if (error._tag !== "CallbackError") return
      assert.strictEqual(error.callback, "CsvLogger")
      assert.include(error.reason, path.join(plainFile, "under", "logs"))
      assert.include(error.message, "callback CsvLogger: cannot create log directory")
      assert.isTrue(Option.isNone(yield* logger.logDir))
    }).pipe(Effect.provide(node)))

  it.effect("a file that cannot be written: a CallbackError naming it; rows are kept; best effort after a crash", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const root = yield* tempDir
      const state = makeState(root)
      const logger = yield* CsvLogger.make({ flushEvery: 2 })
      yield* call(state, logger.setup, "fit")
      const dir = yield* logDirOf(logger)
      yield* fs.remove(dir, { recursive: true })
      state.globalStep = 1
      state.loggedMetrics = new Map([["loss", 1]])
      yield* call(state, logger.onTrainBatchEnd, { loss: 1 }, 0)
      state.globalStep = 2
      state.loggedMetrics = new Map([["loss", 0.5]])
      const error = yield* Effect.flip(call(state, logger.onTrainBatchEnd, { loss: 0.5 }, 1))
      assert.strictEqual(error._tag, "CallbackError")
      if (error._tag !== "CallbackError") return
      assert.include(error.reason, `cannot write ${path.join(dir, "metrics.csv")}`)
      assert.include(error.reason, "NotFound")
      // After the run failed, flushing is best effort: it does not fail again.
      yield* call(state, logger.onException, error)
      yield* call(state, logger.teardown, "fit")
      // Nothing was lost: once the directory is back, the rows are written.
      yield* fs.makeDirectory(dir)
      yield* call(state, logger.teardown, "fit")
      assert.strictEqual(yield* readMetrics(dir), "epoch,step,loss\n0,1,1\n0,2,0.5\n")
      assert.deepStrictEqual(yield* fs.readDirectory(dir), [CsvLogger.metricsFileName])
    }).pipe(Effect.provide(node)))

  it.effect("issue 12.9: the logger appends rows, rewriting the file only when the columns change", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* tempDir
      // A file system that counts the bytes written through it.
      let written = 0
      const counting = interceptWrites(fs, () => true, (file) => ({
        write: (b) => Effect.tap(file.write(b), (n) => Effect.sync(() => void (written += Number(n)))),
        writeAll: (b) => Effect.tap(file.writeAll(b), () => Effect.sync(() => void (written += b.byteLength)))
      }))
      const logger = yield* CsvLogger.make({ flushEvery: 50 }).pipe(Effect.provideService(FileSystem.FileSystem, counting))
      const state = makeState(root)
      yield* call(state, logger.setup, "fit")
      for (let step = 1; step <= 2000; step++) {
        state.globalStep = step
        state.loggedMetrics = new Map([["train_loss", 1 / step]])
        yield* call(state, logger.onTrainBatchEnd, { loss: 1 / step }, 0)
        if (step === 1000) {
          // New columns once: one rewrite of the whole file.
          state.loggedMetrics = new Map([["val_loss", 0.5]])
          yield* call(state, logger.onValidationEpochEnd)
        }
      }
      yield* call(state, logger.onFitEnd)
      const content = (yield* readMetrics(yield* logDirOf(logger)))!
      const lines = content.trimEnd().split("\n")
      assert.strictEqual(lines.length, 1 + 2001)
      assert.strictEqual(lines[0], "epoch,step,train_loss,val_loss")
      assert.strictEqual(lines[1], "0,1,1,")
      assert.strictEqual(lines[1001], "0,1000,,0.5")
      assert.strictEqual(lines[2001], `0,2000,${1 / 2000},`)
      // Every row once, plus the first half again at the column change (rewriting every
      // flush would write about 20 times the file).
      const size = new TextEncoder().encode(content).byteLength
      assert.isAtMost(written, 2 * size, `${written} bytes written for a ${size}-byte file`)
    }).pipe(Effect.provide(node)))

  it.effect("a given version replaces the metrics of an earlier run", () =>
    Effect.gen(function*() {
      const root = yield* tempDir
      const state = makeState(root)
      for (const loss of [1, 2]) {
        const logger = yield* CsvLogger.make({ version: 3 })
        yield* call(state, logger.setup, "fit")
        state.loggedMetrics = new Map([["loss", loss]])
        yield* call(state, logger.onTrainEpochEnd)
        yield* call(state, logger.onFitEnd)
        assert.strictEqual(yield* readMetrics(yield* logDirOf(logger)), `epoch,step,loss\n0,0,${loss}\n`)
      }
    }).pipe(Effect.provide(node)))

  it.effect("issue 15: a read-only file system is reported as such (EROFS), never as NotFound", () =>
    Effect.gen(function*() {
      // Node's recursive mkdir reports ENOENT on a read-only file system; mkdir of one
      // level reports EROFS. This file system answers as Linux does under /ro (a
      // read-only mount that exists).
      const erofs = (path: string, recursive: boolean) =>
        PlatformError.systemError({
          _tag: recursive ? "NotFound" : "Unknown",
          module: "FileSystem",
          method: "makeDirectory",
          pathOrDescriptor: path,
          cause: Object.assign(new Error(recursive ? "ENOENT" : "EROFS"), { code: recursive ? "ENOENT" : "EROFS" })
        })
      const readOnly = FileSystem.makeNoop({
        exists: (path) => Effect.succeed(path === "/ro" || path === "/"),
        makeDirectory: (path, options) => Effect.fail(erofs(path, options?.recursive === true))
      })
      const logger = yield* CsvLogger.make().pipe(
        Effect.provide(Layer.mergeAll(Layer.succeed(FileSystem.FileSystem, readOnly), NodePath.layer))
      )
      const error = yield* Effect.flip(call(makeState("/ro/runs"), logger.setup, "fit"))
      assert.instanceOf(error, CallbackError)
      assert.include(error.message, "/ro/runs")
      assert.include(error.message, "(PermissionDenied, EROFS)")
      assert.notInclude(error.message, "NotFound")
    }))
})

describe("CsvLogger and URLs", () => {
  it.effect("a URL root (s3://…) is refused with a CallbackError, never a local directory named s3:", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const dir = yield* fs.makeTempDirectoryScoped()
      const cwd = process.cwd()
      process.chdir(dir)
      const result = yield* Effect.result(
        Effect.flatMap(CsvLogger.make({ saveDir: "s3://bucket/run" }), (logger) => logger.setup!(makeState("unused"), "fit"))
      ).pipe(Effect.ensuring(Effect.sync(() => process.chdir(cwd))))
      assert.isTrue(result._tag === "Failure")
      if (result._tag === "Failure") {
        assert.strictEqual(result.failure._tag, "CallbackError")
        assert.include(result.failure.message, "s3://bucket/run is a URL")
      }
      assert.deepStrictEqual(yield* fs.readDirectory(dir), [])
    }).pipe(Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))))
})
