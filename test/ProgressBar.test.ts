import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import type { Callback, Hook, TrainerState } from "../src/Callback.ts"
import * as CheckpointIO from "../src/CheckpointIO.ts"
import * as ProgressBar from "../src/ProgressBar.ts"

// ---------------------------------------------------------------------------
// A fake Trainer: a mutable TrainerState and Lightning's hook order for a fit of
// 2 epochs x 3 batches (sanity check first, validation inside each epoch, before
// onTrainEpochEnd).
// ---------------------------------------------------------------------------

type Mutable<T> = { -readonly [K in keyof T]: T[K] }

const makeState = (): Mutable<TrainerState> => ({
  stage: "fit",
  currentEpoch: 0,
  globalStep: 0,
  batchIdx: 0,
  numTrainBatches: 3,
  maxEpochs: 2,
  maxSteps: -1,
  callbackMetrics: new Map(),
  loggedMetrics: new Map(),
  defaultRootDir: "unused",
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

/** Runs a fit; `batchTime` passes on the clock during each training batch. */
const fit = (callback: Callback, state: Mutable<TrainerState>, batchTime: number, epochs = 2) =>
  Effect.gen(function*() {
    const batches = state.numTrainBatches ?? 3
    yield* call(state, callback.setup, "fit")
    yield* call(state, callback.onFitStart)
    state.sanityChecking = true
    yield* call(state, callback.onSanityCheckStart)
    yield* call(state, callback.onValidationStart)
    yield* call(state, callback.onValidationEpochStart)
    state.callbackMetrics = new Map([["val_loss", 9.99]])
    state.loggedMetrics = new Map([["val_loss", 9.99]])
    yield* call(state, callback.onValidationEpochEnd)
    yield* call(state, callback.onValidationEnd)
    yield* call(state, callback.onSanityCheckEnd)
    state.sanityChecking = false
    state.callbackMetrics = new Map()
    state.loggedMetrics = new Map()
    yield* call(state, callback.onTrainStart)
    for (let epoch = 0; epoch < epochs; epoch++) {
      state.currentEpoch = epoch
      yield* call(state, callback.onTrainEpochStart)
      for (let b = 0; b < batches; b++) {
        state.batchIdx = b
        yield* call(state, callback.onTrainBatchStart, b)
        yield* TestClock.adjust(batchTime)
        const loss = trainLosses[epoch * batches + b] ?? 0.1
        state.globalStep += 1
        state.callbackMetrics = new Map([...state.callbackMetrics, ["train_loss", loss]])
        state.loggedMetrics = new Map([["train_loss", loss]])
        yield* call(state, callback.onTrainBatchEnd, { loss }, b)
      }
      state.loggedMetrics = new Map()
      yield* call(state, callback.onValidationStart)
      yield* call(state, callback.onValidationEpochStart)
      const val: ReadonlyArray<[string, number]> = [["val_loss", valLosses[epoch] ?? 0.2], ["val_acc", valAccs[epoch] ?? 0.9]]
      state.callbackMetrics = new Map([...state.callbackMetrics, ...val])
      state.loggedMetrics = new Map(val)
      yield* call(state, callback.onValidationEpochEnd)
      yield* call(state, callback.onValidationEnd)
      const epochLoss = epochLosses[epoch] ?? 0.3
      state.callbackMetrics = new Map([...state.callbackMetrics, ["train_loss_epoch", epochLoss]])
      state.loggedMetrics = new Map([["train_loss_epoch", epochLoss]])
      yield* call(state, callback.onTrainEpochEnd)
      state.loggedMetrics = new Map()
    }
    yield* call(state, callback.onTrainEnd)
    yield* call(state, callback.onFitEnd)
    yield* call(state, callback.teardown, "fit")
  })

const capture = (isTTY: boolean, columns?: number) => {
  const writes: Array<string> = []
  const output: ProgressBar.ProgressOutput = {
    isTTY,
    columns,
    write: (text) => Effect.sync(() => void writes.push(text))
  }
  return { writes, output }
}

const clear = "\r\u001b[2K"
const metrics0 = "train_loss=0.632 val_loss=0.523 val_acc=0.851 train_loss_epoch=0.763"
const metrics1 = "train_loss=0.412 val_loss=0.388 val_acc=0.913 train_loss_epoch=0.451"
const epoch0 = `Epoch 0: 100% 3/3 [00:00<00:00, 10 it/s] ${metrics0}`
const epoch1 = `Epoch 1: 100% 3/3 [00:00<00:00, 10 it/s] ${metrics1}`
const bar0 = `Epoch 0: 100%|██████████| 3/3 [00:00<00:00, 10 it/s] ${metrics0}`

describe("ProgressBar", () => {
  it("formats numbers with 3 significant digits", () => {
    const cases: ReadonlyArray<[number, string]> = [
      [0.41237, "0.412"],
      [0.5, "0.5"],
      [12.53, "12.5"],
      [10.000000000000002, "10"],
      [123.456, "123"],
      [1234.5, "1235"],
      [3, "3"],
      [0, "0"],
      [-0.0123456, "-0.0123"],
      [0.00012345, "1.23e-4"],
      [2.5e7, "2.50e+7"],
      [Number.NaN, "NaN"],
      [Number.POSITIVE_INFINITY, "Infinity"]
    ]
    for (const [value, text] of cases) assert.strictEqual(ProgressBar.formatNumber(value), text, String(value))
  })

  it.effect("not a terminal: one plain line per epoch, nothing else, no control characters", () =>
    Effect.gen(function*() {
      const { writes, output } = capture(false)
      const bar = ProgressBar.make({ output })
      assert.strictEqual(bar.name, "ProgressBar")
      yield* fit(bar, makeState(), 100)
      assert.deepStrictEqual(writes, [`${epoch0}\n`, `${epoch1}\n`, "fit stopped: maxEpochs=2 reached (step 6)\n"])
      assert.notMatch(writes.join(""), /[\r\u001b]/)
    }))

  it.effect("issue 15: not a terminal: validate prints its metrics, a test run a table of the test metrics only; unknown sizes show ?", () =>
    Effect.gen(function*() {
      const { writes, output } = capture(false)
      const bar = ProgressBar.make({ output })
      const state = makeState()
      state.stage = "validate"
      state.callbackMetrics = new Map([["val_loss", 0.25], ["val_acc", 0.9134]])
      yield* call(state, bar.onValidationEpochEnd)
      state.stage = "test"
      // Training and validation metrics are still in callbackMetrics: the table leaves them out.
      state.callbackMetrics = new Map([["train_loss", 0.4], ["val_acc", 0.9], ["test_loss", 0.3012], ["test_acc", 0.95]])
      state.loggedMetrics = new Map([["test_loss", 0.3012], ["test_acc", 0.95]])
      yield* call(state, bar.onTestEpochEnd)
      state.loggedMetrics = new Map()
      state.stage = "fit"
      state.numTrainBatches = undefined
      state.callbackMetrics = new Map()
      yield* call(state, bar.onTrainEpochStart)
      yield* call(state, bar.onTrainBatchEnd, { loss: 1 }, 0)
      yield* call(state, bar.onTrainEpochEnd)
      assert.deepStrictEqual(writes, [
        "Validation: val_loss=0.25 val_acc=0.913\n",
        [
          "┌─────────────┬────────┐",
          "│ Test metric │ Value  │",
          "├─────────────┼────────┤",
          "│ test_loss   │ 0.3012 │",
          "│ test_acc    │   0.95 │",
          "└─────────────┴────────┘"
        ].join("\n") + "\n",
        "Epoch 0: 1/? [00:00, ? it/s]\n"
      ])
    }))

  it.effect("issue 15: a terminal: a bar, percentage, elapsed<remaining and it/s, redrawn at most every 100 ms, a newline at each epoch end", () =>
    Effect.gen(function*() {
      const { writes, output } = capture(true)
      // 50 ms a batch: the limit lets every other batch through.
      yield* fit(ProgressBar.make({ output }), makeState(), 50)
      assert.deepStrictEqual(writes, [
        `${clear}Epoch 0:   0%|          | 0/3 [00:00, ? it/s]`, // t=0, epoch start
        // t=50: batch 1 is within 100 ms of the last draw: skipped
        `${clear}Epoch 0:  67%|██████▋   | 2/3 [00:00<00:00, 20 it/s] train_loss=0.746`, // t=100
        // t=150: batch 3 skipped
        `${clear}Epoch 0: 100%|██████████| 3/3 [00:00<00:00, 20 it/s] ${metrics0}\n`,
        `${clear}Epoch 1:   0%|          | 0/3 [00:00, ? it/s] ${metrics0}`, // t=150
        `${clear}Epoch 1:  67%|██████▋   | 2/3 [00:00<00:00, 20 it/s] train_loss=0.439 val_loss=0.523 val_acc=0.851 train_loss_epoch=0.763`, // t=250
        `${clear}Epoch 1: 100%|██████████| 3/3 [00:00<00:00, 20 it/s] ${metrics1}\n`,
        "fit stopped: maxEpochs=2 reached (step 6)\n"
      ])
    }))

  it.effect("a terminal: redraws every refreshRate batches; refreshRate 0 writes the epoch lines only", () =>
    Effect.gen(function*() {
      const every2 = capture(true)
      yield* fit(ProgressBar.make({ output: every2.output, refreshRate: 2 }), makeState(), 1000, 1)
      assert.deepStrictEqual(every2.writes, [
        `${clear}Epoch 0:   0%|          | 0/3 [00:00, ? it/s]`,
        `${clear}Epoch 0:  67%|██████▋   | 2/3 [00:02<00:01, 1 it/s] train_loss=0.746`,
        `${clear}Epoch 0: 100%|██████████| 3/3 [00:03<00:00, 1 it/s] ${metrics0}\n`,
        "fit stopped: maxEpochs=2 reached (step 3)\n"
      ])
      const off = capture(true)
      yield* fit(ProgressBar.make({ output: off.output, refreshRate: 0 }), makeState(), 100, 1)
      assert.deepStrictEqual(off.writes, [`${bar0}\n`, "fit stopped: maxEpochs=2 reached (step 3)\n"])
    }))

  it.effect("a terminal: redraws are cut to the terminal width, the finished line is not", () =>
    Effect.gen(function*() {
      const { writes, output } = capture(true, 20)
      yield* fit(ProgressBar.make({ output }), makeState(), 100, 1)
      assert.deepStrictEqual(writes.slice(0, 2), [`${clear}Epoch 0:   0%|     `, `${clear}Epoch 0:  33%|███▍ `])
      assert.strictEqual(writes.at(-2), `${clear}${bar0}\n`)
    }))

  it.effect("a failure finishes the redrawn line so that the error starts on a fresh line", () =>
    Effect.gen(function*() {
      const { writes, output } = capture(true)
      const bar = ProgressBar.make({ output })
      const state = makeState()
      yield* call(state, bar.onTrainEpochStart)
      yield* TestClock.adjust(100)
      yield* call(state, bar.onTrainBatchEnd, { loss: 1 }, 0)
      yield* call(state, bar.onException, new Error("boom"))
      assert.deepStrictEqual(writes, [
        `${clear}Epoch 0:   0%|          | 0/3 [00:00, ? it/s]`,
        `${clear}Epoch 0:  33%|███▍      | 1/3 [00:00<00:00, 10 it/s]`,
        "\n"
      ])
      // Nothing open: nothing to finish.
      yield* call(state, bar.onException, new Error("again"))
      assert.strictEqual(writes.length, 3)
      // Not a terminal: never any newline of its own.
      const plain = capture(false)
      const plainBar = ProgressBar.make({ output: plain.output })
      yield* call(state, plainBar.onTrainEpochStart)
      yield* call(state, plainBar.onTrainBatchEnd, { loss: 1 }, 0)
      yield* call(state, plainBar.onException, new Error("boom"))
      assert.deepStrictEqual(plain.writes, [])
    }))

  it.effect("a validation outside the training epoch gets its own line; the sanity check none", () =>
    Effect.gen(function*() {
      const { writes, output } = capture(true)
      const bar = ProgressBar.make({ output })
      const state = makeState()
      state.sanityChecking = true
      state.callbackMetrics = new Map([["val_loss", 1]])
      yield* call(state, bar.onValidationEpochEnd)
      state.sanityChecking = false
      yield* call(state, bar.onTrainEpochStart)
      yield* TestClock.adjust(100)
      yield* call(state, bar.onTrainBatchEnd, { loss: 1 }, 0)
      yield* call(state, bar.onTrainEpochEnd)
      yield* call(state, bar.onValidationEpochEnd)
      assert.deepStrictEqual(writes, [
        `${clear}Epoch 0:   0%|          | 0/3 [00:00, ? it/s] val_loss=1`,
        `${clear}Epoch 0:  33%|███▍      | 1/3 [00:00<00:00, 10 it/s] val_loss=1`,
        `${clear}Epoch 0:  33%|███▍      | 1/3 [00:00<00:00, 10 it/s] val_loss=1\n`,
        "Validation: val_loss=1\n"
      ])
    }))

  it("stdout reads the terminal state of process.stdout", () => {
    assert.strictEqual(ProgressBar.stdout.isTTY, process.stdout.isTTY === true)
  })
})
