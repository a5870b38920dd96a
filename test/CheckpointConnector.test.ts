import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import type * as tf from "@tensorflow/tfjs"
import { Context, Effect, Exit, FileSystem, Layer, Logger, Option, Result } from "effect"
import * as nodeFs from "node:fs"
import type * as Callback from "../src/Callback.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as CheckpointConnector from "../src/CheckpointConnector.ts"
import { CheckpointIO, CheckpointStorageError } from "../src/CheckpointIO.ts"
import * as Device from "../src/Device.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../src/ModelCheckpoint.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import { irisClassifier, irisData } from "./support/iris.ts"

const f32 = (shape: ReadonlyArray<number>, value: number) =>
  Checkpoint.tensor("F32", shape, new Float32Array(Checkpoint.elementCount(shape)).fill(value))

/** A model of `n` weights of shape [1] named w<i>, and Adam over them (iter, n m, n v). */
const target = (n: number): CheckpointConnector.RestoreTarget => {
  const variables = Array.from({ length: n }, (_, i) => ({ name: `w${i}`, shape: [1] }))
  return {
    model: variables,
    optimizer: {
      className: "Adam",
      variables,
      slotCount: undefined,
      state: [{ key: "accBeta1", shape: [] }, { key: "accBeta2", shape: [] }]
    }
  }
}

/** What the Strategy would stage for `target(n)`: slot i holds the value i. */
const staged = (n: number): CheckpointConnector.StagedState => ({
  model: Array.from({ length: n }, (_, i) => [`w${i}`, f32([1], i)] as const),
  optimizer: {
    slots: [
      ["iter", Checkpoint.tensor("I32", [], new Int32Array([3]))],
      ...Array.from({ length: n }, (_, i) => [`w${i}/m`, f32([1], 1 + i)] as const),
      ...Array.from({ length: n }, (_, i) => [`w${i}/v`, f32([1], 1 + n + i)] as const)
    ],
    state: [["accBeta1", f32([], 0.9)], ["accBeta2", f32([], 0.999)]]
  }
})

const dumpOf = (n: number, overrides: Partial<CheckpointConnector.DumpInput> = {}) =>
  CheckpointConnector.dump({
    staged: staged(n),
    epoch: 1,
    globalStep: 8,
    loop: { nextEpoch: 1, nextBatch: 2, globalStep: 8, rng: 7 },
    weightsOnly: false,
    callbacks: [],
    optimizer: { className: "Adam", config: { learningRate: 0.01 } },
    module: { name: "m" },
    ...overrides
  })

const withFit = (record: Checkpoint.Checkpoint, fit: Record<string, unknown>): Checkpoint.Checkpoint => {
  const meta = Option.getOrThrow(record.meta)
  return { ...record, meta: Option.some({ ...meta, loops: { ...meta.loops, fit: { ...(meta.loops["fit"] as object), ...fit } as never } }) }
}

const failure = <A>(result: Result.Result<A, CheckpointConnector.RestoreError>) => {
  assert.isTrue(Result.isFailure(result), "expected a RestoreError")
  return (result as Result.Failure<A, CheckpointConnector.RestoreError>).failure
}

describe("CheckpointConnector (pure: names, loop state, validation)", () => {
  it.effect("issue 12.1: optimizer slots above 10,000 are restored in numeric order", () =>
    Effect.gen(function*() {
      const n = 5002 // 10,005 slots, as 2,501 dense layers with Adam
      const record = yield* dumpOf(n)
      const names = Object.keys(record.tensors).filter((k) => CheckpointConnector.parseTensorName(k).section === "optimizerSlot")
      assert.strictEqual(names.length, 10_005)
      // As strings, slot 10000 sorts before slot 1001: the order the old restore used.
      assert.notDeepEqual([...names].sort(), names)
      // Any order in the file (a map of names) gives the same plan.
      const shuffled = { ...record, tensors: Object.fromEntries(Object.entries(record.tensors).reverse()) }
      const plan = Result.getOrThrow(CheckpointConnector.plan(shuffled, "/big.ckpt", target(n)))
      const slots = plan.optimizer!.slots
      assert.strictEqual(slots.length, 10_005)
      assert.strictEqual(slots[0]!.name, "iter")
      for (let i = 0; i < n; i++) {
        assert.strictEqual(slots[1 + i]!.name, `w${i}/m`)
        assert.strictEqual(slots[1 + i]!.tensor.data[0], 1 + i)
        assert.strictEqual(slots[1 + n + i]!.name, `w${i}/v`)
        assert.strictEqual(slots[1 + n + i]!.tensor.data[0], 1 + n + i)
      }
      assert.deepStrictEqual(plan.optimizer!.state.map((s) => s.key), ["accBeta1", "accBeta2"])
    }))

  it("tensor names: one encoding, read with any zero padding, malformed ones refused", () => {
    assert.strictEqual(CheckpointConnector.modelTensorName("hidden/kernel"), "model/hidden/kernel")
    assert.strictEqual(CheckpointConnector.optimizerSlotName(1, "hidden/kernel/m"), "optimizer/0001/hidden/kernel/m")
    assert.strictEqual(CheckpointConnector.optimizerSlotName(10_004, "x/v"), "optimizer/10004/x/v")
    assert.strictEqual(CheckpointConnector.optimizerStateName("accBeta1"), "optimizer/state/accBeta1")
    assert.deepStrictEqual(CheckpointConnector.parseTensorName("optimizer/0012/a/m"), { section: "optimizerSlot", index: 12, slot: "a/m" })
    assert.deepStrictEqual(CheckpointConnector.parseTensorName("optimizer/12/a/m"), { section: "optimizerSlot", index: 12, slot: "a/m" })
    assert.deepStrictEqual(CheckpointConnector.parseTensorName("optimizer/state/accBeta2"), { section: "optimizerState", key: "accBeta2" })
    assert.deepStrictEqual(CheckpointConnector.parseTensorName("model/out/bias"), { section: "model", variable: "out/bias" })
    assert.deepStrictEqual(CheckpointConnector.parseTensorName("extra/thing"), { section: "other" })
    assert.strictEqual(CheckpointConnector.parseTensorName("optimizer/x1/m").section, "malformed")
    const twice = failure(CheckpointConnector.orderedSlots("/a.ckpt", ["optimizer/0000/iter", "optimizer/0001/a", "optimizer/1/b"]))
    assert.match(twice.field, /^optimizer\/0{0,3}1\//)
    assert.include(twice.reason, "twice")
    const gap = failure(CheckpointConnector.orderedSlots("/a.ckpt", ["optimizer/0000/iter", "optimizer/0002/a"]))
    assert.strictEqual(gap.field, "optimizer/0002/a")
    assert.strictEqual(gap.path, "/a.ckpt")
  })

  it.effect("issue 12.8: the loop state is decoded; bad values are refused naming the file and the field", () =>
    Effect.gen(function*() {
      const record = yield* dumpOf(2)
      const plan = (r: Checkpoint.Checkpoint) => CheckpointConnector.plan(r, "/run/mid.ckpt", target(2), { numTrainBatches: 6 })
      const ok = Result.getOrThrow(plan(record))
      assert.deepStrictEqual(ok.loop, {
        nextEpoch: 1,
        nextBatch: 2,
        globalStep: 8,
        rng: 7,
        lrSchedulers: undefined,
        timeElapsedMs: 0,
        accumulatedGrads: [],
        accumulatedBatches: 0
      })
      const cases: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
        [{ nextEpoch: "x" }, "meta.loops.fit.nextEpoch"],
        [{ nextEpoch: -3 }, "meta.loops.fit.nextEpoch"],
        [{ nextEpoch: 1.5 }, "meta.loops.fit.nextEpoch"],
        [{ nextBatch: 1e9 }, "meta.loops.fit.nextBatch"],
        [{ nextBatch: 7 }, "meta.loops.fit.nextBatch"],
        [{ rng: 2 ** 33 }, "meta.loops.fit.rng"],
        [{ globalStep: 9 }, "meta.loops.fit.globalStep"]
      ]
      for (const [fit, field] of cases) {
        const error = failure(plan(withFit(record, fit)))
        assert.strictEqual(error._tag, "RestoreError")
        assert.strictEqual(error.path, "/run/mid.ckpt")
        assert.strictEqual(error.field, field, JSON.stringify(fit))
        assert.include(error.message, "/run/mid.ckpt")
      }
      // The end of an epoch is a valid position (the checkpoint after the last batch).
      assert.isTrue(Result.isSuccess(plan(withFit(record, { nextBatch: 6 }))))
      // Unknown epoch length: no bound on the batch.
      assert.isTrue(Result.isSuccess(CheckpointConnector.plan(withFit(record, { nextBatch: 1e9 }), "/x", target(2))))
    }))

  it.effect("issue 12.8: missing or wrong-shaped optimizer tensors are refused before anything is applied", () =>
    Effect.gen(function*() {
      const record = yield* dumpOf(2)
      const without = (pred: (name: string) => boolean) => ({
        ...record,
        tensors: Object.fromEntries(Object.entries(record.tensors).filter(([k]) => !pred(k)))
      })
      // The meta says Adam was saved, the tensors are gone: not a silent fresh optimizer.
      const missing = failure(CheckpointConnector.plan(without((k) => k.startsWith("optimizer/")), "/a.ckpt", target(2)))
      assert.strictEqual(missing.field, "optimizer")
      assert.include(missing.reason, "Adam")
      // A stepped optimizer and a checkpoint without optimizer state (a foreign file).
      const foreign = { ...without((k) => k.startsWith("optimizer/")), meta: Option.none() }
      const stepped = { ...target(2), optimizer: { ...target(2).optimizer!, slotCount: 5 } }
      assert.strictEqual(failure(CheckpointConnector.plan(foreign, "/a.ckpt", stepped)).field, "optimizer")
      // The same file into a fresh optimizer: weights only, the optimizer starts fresh.
      assert.isUndefined(Result.getOrThrow(CheckpointConnector.plan(foreign, "/a.ckpt", target(2))).optimizer)
      // A slot of another shape than its variable.
      const wrongShape = { ...record, tensors: { ...record.tensors, "optimizer/0002/w1/m": f32([3], 0) } }
      const shaped = failure(CheckpointConnector.plan(wrongShape, "/a.ckpt", target(2)))
      assert.strictEqual(shaped.field, "optimizer/0002/w1/m")
      assert.include(shaped.reason, "w1")
      // A slot too few: the slots no longer divide among the variables.
      assert.strictEqual(
        failure(CheckpointConnector.plan(without((k) => k === "optimizer/0004/w1/v"), "/a.ckpt", target(2))).path,
        "/a.ckpt"
      )
      // Another optimizer's state, a step count that is not a scalar, an unknown state variable.
      const sgd = { ...target(2), optimizer: { ...target(2).optimizer!, className: "SGD" } }
      assert.strictEqual(failure(CheckpointConnector.plan(record, "/a.ckpt", sgd)).field, "meta.optimizer.className")
      const iter = { ...record, tensors: { ...record.tensors, "optimizer/0000/iter": Checkpoint.tensor("I32", [2], new Int32Array(2)) } }
      assert.strictEqual(failure(CheckpointConnector.plan(iter, "/a.ckpt", target(2))).field, "optimizer/0000/iter")
      const unknown = { ...record, tensors: { ...record.tensors, "optimizer/state/nope": f32([], 0) } }
      assert.strictEqual(failure(CheckpointConnector.plan(unknown, "/a.ckpt", target(2))).field, "optimizer/state/nope")
      // Model weights: by name and shape.
      const model = { ...record, tensors: { ...record.tensors, "model/w0": f32([2], 0) } }
      assert.strictEqual(failure(CheckpointConnector.plan(model, "/a.ckpt", target(2))).field, "model/w0")
      assert.strictEqual(failure(CheckpointConnector.plan(record, "/a.ckpt", target(3))).field, "model")
    }))

  it.effect("issue 12.9: stateDict, onSaveCheckpoint, loadStateDict and onLoadCheckpoint throwing are typed CallbackErrors", () =>
    Effect.gen(function*() {
      const boom = () => {
        throw new Error("boom")
      }
      const throwingState: Callback.Callback = { name: "Throwing", stateDict: boom }
      const stateErr = yield* Effect.flip(dumpOf(1, { callbacks: [throwingState] }))
      assert.strictEqual(stateErr._tag, "CallbackError")
      assert.strictEqual(stateErr.callback, "Throwing")
      const saveErr = yield* Effect.flip(dumpOf(1, { module: { name: "mod", onSaveCheckpoint: boom } }))
      assert.strictEqual(saveErr.callback, "mod")
      assert.include(saveErr.reason, "onSaveCheckpoint")
      // Weights only: no user code runs.
      assert.isTrue(
        Exit.isSuccess(
          yield* Effect.exit(dumpOf(1, { weightsOnly: true, callbacks: [throwingState], module: { name: "m", onSaveCheckpoint: boom } }))
        )
      )
      const meta = Checkpoint.makeMeta({ epoch: 0, globalStep: 0, callbacks: { Throwing: 1 } })
      const loadErr = yield* Effect.flip(
        CheckpointConnector.restoreUserState(meta, [{ name: "Throwing", loadStateDict: boom }], { name: "m" })
      )
      assert.strictEqual(loadErr._tag, "CallbackError")
      const userErr = yield* Effect.flip(CheckpointConnector.restoreUserState(meta, [], { name: "mod", onLoadCheckpoint: boom }))
      assert.strictEqual(userErr._tag, "CallbackError")
      assert.include((userErr as Callback.CallbackError).reason, "onLoadCheckpoint")
    }))

  it.effect("issue 15: a checkpoint saved with other hyperparameters is refused, naming the file and each difference", () =>
    Effect.gen(function*() {
      const record = yield* dumpOf(2, { module: { name: "m", hyperParameters: { model: "cnn", lr: 0.001, hidden: 64 } } })
      const refused = failure(
        CheckpointConnector.plan(record, "/runs/last.ckpt", target(2), { hyperParameters: { model: "mlp", lr: 0.001, dropout: 0.1 } })
      )
      assert.strictEqual(refused.path, "/runs/last.ckpt")
      assert.strictEqual(refused.field, "meta.hyperParameters")
      assert.include(refused.message, "/runs/last.ckpt")
      assert.include(refused.message, `model: "cnn" in the checkpoint, "mlp" in this run`)
      assert.include(refused.message, "hidden: 64 in the checkpoint, (unset) in this run")
      assert.include(refused.message, "dropout: (unset) in the checkpoint, 0.1 in this run")
      assert.notInclude(refused.message, "lr:")
      // Equal ones, or a side without hyperparameters (another tool's file), pass.
      const same = { model: "cnn", lr: 0.001, hidden: 64 }
      assert.isTrue(Result.isSuccess(CheckpointConnector.plan(record, "/a.ckpt", target(2), { hyperParameters: same })))
      assert.isTrue(Result.isSuccess(CheckpointConnector.plan(record, "/a.ckpt", target(2), { hyperParameters: {} })))
      const bare = yield* dumpOf(2)
      assert.isTrue(Result.isSuccess(CheckpointConnector.plan(bare, "/a.ckpt", target(2), { hyperParameters: same })))
    }))
})

// ---------------------------------------------------------------------------
// With tfjs: the Strategy applies what the connector planned; the Trainer sequences.

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)
const devices = Strategy.singleDevice().pipe(Layer.provideMerge(Device.layer("wasm")), Layer.provideMerge(node))
const quiet = { enableProgressBar: false, logger: false, enableCheckpointing: false, numSanityValSteps: 0 } as const

describe("CheckpointConnector with the Strategy and the Trainer", () => {
  it.effect("issue 12.1: 2,501 dense layers with Adam (10,005 slots) restore bit-identically", () =>
    Effect.gen(function*() {
      const strategy = yield* Strategy.Strategy
      const tfjs = strategy.device.tf
      const build = () => {
        const layers = [tfjs.layers.dense({ units: 1, inputShape: [1] })]
        for (let i = 1; i < 2501; i++) layers.push(tfjs.layers.dense({ units: 1 }))
        return tfjs.sequential({ layers })
      }
      const model = build()
      const adam = tfjs.train.adam(0.01)
      // Distinct values in every slot, as a stepped Adam has.
      const vars = model.trainableWeights.map((w) => w.read() as tf.Variable)
      yield* Effect.promise(() =>
        adam.setWeights([
          { name: "iter", tensor: tfjs.scalar(3, "int32") },
          ...vars.map((v, i) => ({ name: `${v.name}/m`, tensor: tfjs.fill(v.shape, i + 0.5) })),
          ...vars.map((v, i) => ({ name: `${v.name}/v`, tensor: tfjs.fill(v.shape, -i - 0.25) }))
        ])
      )
      const record = yield* CheckpointConnector.dump({
        staged: yield* strategy.stage(model, adam),
        epoch: 0,
        globalStep: 3,
        loop: { nextEpoch: 0, nextBatch: 3, globalStep: 3 },
        weightsOnly: false,
        callbacks: [],
        optimizer: { className: "Adam", config: {} },
        module: { name: "deep" }
      })
      const fresh = build()
      const freshAdam = tfjs.train.adam(0.01)
      const described = yield* strategy.describe(fresh, freshAdam)
      const plan = yield* Effect.fromResult(CheckpointConnector.plan(record, "/deep.ckpt", described))
      assert.strictEqual(plan.optimizer!.slots.length, 10_005)
      yield* strategy.restore(fresh, freshAdam, plan)
      const back = yield* strategy.stage(fresh, freshAdam)
      const original = yield* strategy.stage(model, adam)
      assert.strictEqual(back.optimizer!.slots.length, 10_005)
      for (let i = 0; i < 10_005; i++) {
        assert.deepStrictEqual(back.optimizer!.slots[i]![1].data, original.optimizer!.slots[i]![1].data, `slot ${i}`)
      }
      for (let i = 0; i < original.model.length; i++) assert.deepStrictEqual(back.model[i]![1].data, original.model[i]![1].data)
      adam.dispose()
      freshAdam.dispose()
      tfjs.dispose([...model.weights, ...fresh.weights].map((w) => w.read()))
    }).pipe(Effect.provide(devices)))

  it.effect("issue 12.8: a bad resume state fails fit with a RestoreError before anything is applied or logged", () =>
    Effect.gen(function*() {
      const io = Layer.effect(CheckpointIO, MemoryCheckpointIO.make).pipe(Layer.provideMerge(MemoryCheckpointIO.MemoryStore.layer))
      const sharedIO = Layer.succeedContext(yield* Layer.build(io))
      const first = yield* Trainer.make({ ...quiet, maxEpochs: 1, seed: 3, plugins: { checkpointIO: sharedIO } })
      yield* first.fit(irisClassifier("first"), irisData())
      yield* first.saveCheckpoint("/good.ckpt")
      const store = first.checkpointIO
      const good = yield* store.load("/good.ckpt")
      const variants: ReadonlyArray<readonly [string, Checkpoint.Checkpoint, string]> = [
        ["/epoch-x.ckpt", withFit(good, { nextEpoch: "x" }), "meta.loops.fit.nextEpoch"],
        ["/batch-huge.ckpt", withFit(good, { nextBatch: 1e9 }), "meta.loops.fit.nextBatch"],
        ["/epoch-negative.ckpt", withFit(good, { nextEpoch: -3 }), "meta.loops.fit.nextEpoch"],
        [
          "/no-optimizer.ckpt",
          { ...good, tensors: Object.fromEntries(Object.entries(good.tensors).filter(([k]) => !k.startsWith("optimizer/"))) },
          "optimizer"
        ],
        [
          "/slot-shape.ckpt",
          { ...good, tensors: { ...good.tensors, "optimizer/0001/hidden/kernel/m": f32([16, 4], 0) } },
          "optimizer/0001/hidden/kernel/m"
        ]
      ]
      for (const [path, record, field] of variants) {
        yield* store.save(record, path)
        const module = irisClassifier(`resume${path}`)
        const logs: Array<string> = []
        const collector = Logger.make((o) => void logs.push((o.message as Array<unknown>).join(" ")))
        const trainer = yield* Trainer.make({ ...quiet, maxEpochs: 3, seed: 3, plugins: { checkpointIO: sharedIO } })
        const error = yield* Effect.flip(trainer.fit(module, irisData(), { ckptPath: path })).pipe(
          Effect.provide(Logger.layer([collector]))
        )
        assert.strictEqual(error._tag, "RestoreError", `${path}: ${error.message}`)
        const restoreError = error as CheckpointConnector.RestoreError
        assert.strictEqual(restoreError.path, path)
        assert.strictEqual(restoreError.field, field)
        assert.isFalse(logs.some((l) => l.includes("resumed from")), logs.join("\n"))
        assert.strictEqual(trainer.state.globalStep, 0, "nothing trained")
        // The weights are the freshly built ones: nothing was applied.
        const built = Option.getOrThrow(trainer.model(module))
        const pristine = module.configureModel(trainer.strategy.device.tf)
        built.weights.forEach((w, i) => assert.deepStrictEqual(w.read().dataSync(), pristine.weights[i]!.read().dataSync()))
        trainer.strategy.device.tf.dispose(pristine.weights.map((w) => w.read()))
      }
    }).pipe(Effect.provide(devices)))

  it.effect("issue 12.9: a throw in onSaveCheckpoint or onLoadCheckpoint fails fit with a typed CallbackError", () =>
    Effect.gen(function*() {
      const io = Layer.effect(CheckpointIO, MemoryCheckpointIO.make).pipe(Layer.provideMerge(MemoryCheckpointIO.MemoryStore.layer))
      const sharedIO = Layer.succeedContext(yield* Layer.build(io))
      const boom = () => {
        throw new Error("boom")
      }
      const saving: Callback.Callback = { name: "saving", onTrainEpochEnd: (t) => t.saveCheckpoint("/e.ckpt") }
      const onSave = yield* Trainer.make({ ...quiet, maxEpochs: 1, callbacks: [saving], plugins: { checkpointIO: sharedIO } })
      const saveError = yield* Effect.flip(onSave.fit({ ...irisClassifier("onSave"), onSaveCheckpoint: boom }, irisData()))
      assert.strictEqual(saveError._tag, "CallbackError")
      const ok = yield* Trainer.make({ ...quiet, maxEpochs: 1, callbacks: [saving], plugins: { checkpointIO: sharedIO } })
      yield* ok.fit(irisClassifier("ok"), irisData())
      const onLoad = yield* Trainer.make({ ...quiet, maxEpochs: 2, plugins: { checkpointIO: sharedIO } })
      const loadError = yield* Effect.flip(
        onLoad.fit({ ...irisClassifier("onLoad"), onLoadCheckpoint: boom }, irisData(), { ckptPath: "/e.ckpt" })
      )
      assert.strictEqual(loadError._tag, "CallbackError")
      assert.include(loadError.message, "onLoadCheckpoint")
    }).pipe(Effect.provide(devices)))

  it.effect("ckptPath \"last\" goes on past a checkpoint that fails validation and one that does not load", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "connector-fallback-" })
      const dir = `${root}/checkpoints`
      // The file store, except that stray.ckpt fails to load with an I/O error.
      const flaky = Layer.effect(
        CheckpointIO,
        Effect.gen(function*() {
          const inner = Context.get(yield* Layer.build(FileCheckpointIO.layerNode), CheckpointIO)
          return {
            ...inner,
            load: (path: string, options?: Parameters<typeof inner.load>[1]) =>
              path.endsWith("/stray.ckpt")
                ? Effect.fail(new CheckpointStorageError({ operation: "load", path, reason: "IO", cause: new Error("EIO") }))
                : inner.load(path, options)
          }
        })
      )
      const fit = (maxEpochs: number, ckptPath?: string) =>
        Effect.scoped(Effect.gen(function*() {
          const checkpoint = yield* ModelCheckpoint.make({ dirpath: dir, monitor: "loss", saveTopK: 3, saveLast: true })
          const trainer = yield* Trainer.make({
            ...quiet,
            enableCheckpointing: true,
            maxEpochs,
            seed: 3,
            defaultRootDir: root,
            callbacks: [checkpoint],
            plugins: { checkpointIO: flaky }
          })
          const logs: Array<string> = []
          const collector = Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))
          const exit = yield* Effect.exit(trainer.fit(irisClassifier("fallback"), irisData(), ckptPath === undefined ? {} : { ckptPath }))
            .pipe(
              Effect.provide(Logger.layer([collector]))
            )
          return { exit, trainer, logs }
        }))
      assert.isTrue(Exit.isSuccess((yield* fit(3)).exit))
      const byAge = () =>
        nodeFs.readdirSync(dir).filter((n) => n.endsWith(".ckpt") && n !== "last.ckpt")
          .map((n) => ({ path: `${dir}/${n}`, mtime: nodeFs.statSync(`${dir}/${n}`).mtimeMs }))
          .sort((a, b) => b.mtime - a.mtime)
      const [newest] = byAge()
      // last.ckpt: a position no epoch has; a newer checkpoint that fails to load.
      const io = Context.get(yield* Layer.build(FileCheckpointIO.layerNode), CheckpointIO)
      const last = yield* io.load(`${dir}/last.ckpt`)
      yield* io.save(withFit(last, { nextBatch: 1e9 }), `${dir}/last.ckpt`)
      nodeFs.copyFileSync(newest!.path, `${dir}/stray.ckpt`)
      const later = newest!.mtime / 1000 + 60
      nodeFs.utimesSync(`${dir}/stray.ckpt`, later, later)
      const resumed = yield* fit(4, "last")
      assert.isTrue(Exit.isSuccess(resumed.exit), String(Exit.isFailure(resumed.exit) ? resumed.exit.cause : ""))
      assert.strictEqual(resumed.trainer.state.resumedFrom, newest!.path)
      assert.isTrue(
        resumed.logs.some((l) => l.startsWith("Warn") && l.includes("last.ckpt") && l.includes("meta.loops.fit.nextBatch")),
        resumed.logs.join("\n")
      )
      assert.isTrue(
        resumed.logs.some((l) => l.startsWith("Warn") && l.includes("stray.ckpt") && l.includes("does not load")),
        resumed.logs.join("\n")
      )
    }).pipe(Effect.provide(devices)))
})
