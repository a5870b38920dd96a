/**
 * Which CheckpointIO a Trainer uses: one test per row of the precedence table in
 * docs/concepts.md. Every row checks where the bytes land (the chosen store has the
 * file, the others and the disk have nothing) and what was logged.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, FileSystem, Layer, Logger, Path, Result } from "effect"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import type { CheckpointIO } from "../src/CheckpointIO.ts"
import * as Device from "../src/Device.ts"
import * as FaultyFileSystem from "../src/FaultyFileSystem.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import { countingIO } from "./support/countingIO.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

const quiet = { enableProgressBar: false, logger: false, enableCheckpointing: false, maxEpochs: 1, numSanityValSteps: 0 } as const

/** The warnings a program logs. */
const capture = () => {
  const warnings: Array<string> = []
  const layer = Logger.layer([
    Logger.make((o) => {
      if (o.logLevel === "Warn") warnings.push([o.message].flat().map(String).join(" "))
    })
  ])
  return { warnings, layer }
}

/** Trains one epoch and saves `<root>/final.ckpt` through the Trainer's store. */
const trainAndSave = (root: string) =>
  Effect.gen(function*() {
    const trainer = yield* Trainer.Trainer
    yield* trainer.fit(irisClassifier(), irisData())
    yield* trainer.saveCheckpoint(`${root}/final.ckpt`)
    yield* trainer.checkpointIO.flush
    return trainer
  })

const devices = (strategy: Layer.Layer<Strategy.Strategy, unknown, Device.Device> = Strategy.singleDevice()) =>
  strategy.pipe(Layer.provideMerge(Device.layer("wasm")))

/** Whether anything was written under `root` on the real disk. */
const onDisk = (root: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    return (yield* fs.exists(root)) ? yield* fs.readDirectory(root) : []
  }).pipe(Effect.provide(NodeFileSystem.layer))

const tempRoot = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const dir = yield* fs.makeTempDirectoryScoped()
  return path.join(dir, "run")
}).pipe(Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)))

describe("CheckpointIO precedence", () => {
  it("the decision, row by row", () => {
    const row = (plugins: boolean, strategy: boolean, context: boolean, strategyAccepts = true) =>
      Result.match(
        Trainer.checkpointIOSource({ plugins, strategy, context, strategyAccepts, strategyName: "S" }),
        {
          onFailure: (e) => `error: ${e.reason}`,
          onSuccess: (d) => `${d.source}${d.shadowed ? " (shadows context)" : ""}`
        }
      )
    assert.strictEqual(row(false, false, false), "default")
    assert.strictEqual(row(false, false, true), "context")
    assert.strictEqual(row(false, true, false), "strategy")
    assert.strictEqual(row(false, true, true), "strategy (shadows context)")
    assert.strictEqual(row(true, false, false), "plugins")
    assert.strictEqual(row(true, false, true), "plugins (shadows context)")
    assert.include(row(true, true, false), "both to the Trainer (plugins) and to the strategy")
    assert.include(row(true, true, true), "both to the Trainer (plugins) and to the strategy")
    assert.include(row(true, false, false, false), "accepts no custom CheckpointIO")
  })

  it.effect("nothing given: the default file store, on the FileSystem in context", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      // A FileSystem provided in context is the one the default store writes through:
      // a fault armed on it fails the save.
      const result = yield* Effect.gen(function*() {
        const injector = yield* FaultyFileSystem.FaultInjector
        injector.inject({ at: "rename", code: "ENOSPC", path: (p) => p.endsWith("final.ckpt") })
        return yield* Effect.result(trainAndSave(root))
      }).pipe(
        Effect.provide(Trainer.layer(quiet).pipe(Layer.provideMerge(devices()))),
        Effect.provide(FaultyFileSystem.layer.pipe(Layer.provideMerge(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))))
      )
      assert.isTrue(Result.isFailure(result))
      if (Result.isFailure(result)) assert.strictEqual(result.failure._tag, "CheckpointStorageError")
      // Without the fault, the file is on disk.
      yield* trainAndSave(root).pipe(
        Effect.provide(Trainer.layer(quiet).pipe(Layer.provideMerge(devices()))),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))
      )
      assert.deepStrictEqual(yield* onDisk(root), ["final.ckpt"])
    }))

  it.effect("a CheckpointIO provided in context: used, nothing on disk", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const memory = countingIO()
      const log = capture()
      // The program: layers provided first, the store from outside.
      const program = trainAndSave(root)
      yield* program.pipe(
        Effect.provide(Trainer.layer(quiet).pipe(Layer.provideMerge(devices()))),
        Effect.provide(memory.layer),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, log.layer))
      )
      assert.strictEqual(memory.counts.save, 1)
      assert.deepStrictEqual(yield* onDisk(root), [])
      assert.deepStrictEqual(log.warnings, [])
    }))

  it.effect("given to the strategy: used; a store in context is shadowed with a warning", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const strategyIO = countingIO()
      const contextIO = countingIO()
      const log = capture()
      yield* trainAndSave(root).pipe(
        Effect.provide(Trainer.layer(quiet).pipe(Layer.provideMerge(devices(Strategy.singleDevice({ checkpointIO: strategyIO.layer }))))),
        Effect.provide(contextIO.layer),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, log.layer))
      )
      assert.strictEqual(strategyIO.counts.save, 1)
      assert.strictEqual(contextIO.counts.save, 0)
      assert.deepStrictEqual(yield* onDisk(root), [])
      assert.strictEqual(log.warnings.length, 1)
      assert.include(log.warnings[0], "the strategy SingleDeviceStrategy, not to the CheckpointIO provided in context")
    }))

  it.effect("given to the strategy alone: used, no warning", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const strategyIO = countingIO()
      const log = capture()
      const trainer = yield* trainAndSave(root).pipe(
        Effect.provide(Trainer.layer(quiet).pipe(Layer.provideMerge(devices(Strategy.singleDevice({ checkpointIO: strategyIO.layer }))))),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, log.layer))
      )
      assert.strictEqual(trainer.checkpointIO, trainer.strategy.checkpointIO)
      assert.strictEqual(strategyIO.counts.save, 1)
      assert.deepStrictEqual(log.warnings, [])
    }))

  it.effect("given to the Trainer (plugins) alone: used, no warning", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const plugin = countingIO()
      const log = capture()
      yield* trainAndSave(root).pipe(
        Effect.provide(Trainer.layer({ ...quiet, plugins: { checkpointIO: plugin.layer } }).pipe(Layer.provideMerge(devices()))),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, log.layer))
      )
      assert.strictEqual(plugin.counts.save, 1)
      assert.deepStrictEqual(yield* onDisk(root), [])
      assert.deepStrictEqual(log.warnings, [])
    }))

  it.effect("plugins and a store in context: the plugin is used, with a warning", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const plugin = countingIO()
      const contextIO = countingIO()
      const log = capture()
      yield* trainAndSave(root).pipe(
        Effect.provide(Trainer.layer({ ...quiet, plugins: { checkpointIO: plugin.layer } }).pipe(Layer.provideMerge(devices()))),
        Effect.provide(contextIO.layer),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, log.layer))
      )
      assert.strictEqual(plugin.counts.save, 1)
      assert.strictEqual(contextIO.counts.save, 0)
      assert.strictEqual(log.warnings.length, 1)
      assert.include(log.warnings[0], "plugins.checkpointIO")
    }))

  it.effect("a plugin built from context wraps the store in context: AsyncCheckpointIO.layer() over memory, nothing on disk", () =>
    Effect.gen(function*() {
      const root = yield* tempRoot
      const contextIO = countingIO()
      yield* trainAndSave(root).pipe(
        Effect.provide(
          Trainer.layer({ ...quiet, plugins: { checkpointIO: AsyncCheckpointIO.layer({ checksumWorker: false }) } }).pipe(
            Layer.provideMerge(devices())
          )
        ),
        Effect.provide(contextIO.layer),
        Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))
      )
      assert.strictEqual(contextIO.counts.save, 1)
      assert.deepStrictEqual(yield* onDisk(root), [])
    }))

  it.effect("plugins and strategy both: a TrainerConfigError when the layer is built, whatever the context holds", () =>
    Effect.gen(function*() {
      const build = (withContext: boolean) =>
        Effect.exit(Layer.build(
          Trainer.layer({ ...quiet, plugins: { checkpointIO: countingIO().layer } }).pipe(
            Layer.provideMerge(devices(Strategy.singleDevice({ checkpointIO: countingIO().layer }))),
            Layer.provideMerge(
              withContext
                ? Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, countingIO().layer as Layer.Layer<CheckpointIO>)
                : Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)
            )
          )
        ))
      for (const withContext of [false, true]) {
        const exit = yield* build(withContext)
        assert.isTrue(Exit.isFailure(exit))
        assert.include(String(Exit.isFailure(exit) ? exit.cause.reasons[0] : ""), "TrainerConfigError")
      }
    }))
})
