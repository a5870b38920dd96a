/**
 * Callbacks: code the Trainer runs at named points of its loops, with Lightning's
 * hook vocabulary (`onTrainEpochEnd`, `onValidationBatchEnd`, …).
 *
 * A callback is a plain object of optional hooks. Each hook gets the `TrainerState`
 * (epoch, step, metrics, the storage, `saveCheckpoint`, `stop`) and returns an Effect,
 * so a hook can do I/O, fail with a typed error, and be interrupted. A callback with
 * a `stateKey` and `stateDict` / `loadStateDict` is *stateful*: its state goes into
 * every checkpoint under that key and comes back on resume.
 *
 * Order: the Trainer runs the callbacks in the order given, except that checkpoint
 * callbacks (`Checkpoint`, e.g. `ModelCheckpoint`) run after all the others, so
 * that they see the metrics the others logged.
 *
 * @since 0.1.0
 */
import { Data, type Effect } from "effect"
import type { Json } from "effect/Schema"
import type { CheckpointMeta } from "./Checkpoint.ts"
import type { CheckpointIOError, CheckpointIOShape } from "./CheckpointIO.ts"

/** What the Trainer is doing. */
export type Stage = "fit" | "validate" | "test" | "predict"

/** A callback (or a user hook) failed; the Trainer stops and reports it. */
export class CallbackError extends Data.TaggedError("CallbackError")<{
  readonly callback: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `callback ${this.callback}: ${this.reason}`
  }
}

/** What a hook may fail with. */
export type HookError = CallbackError | CheckpointIOError

/** A callback hook: an effect run with the live `TrainerState` and the hook's arguments; its typed error stops the run. */
export type Hook<Args extends ReadonlyArray<unknown> = []> = (
  trainer: TrainerState,
  ...args: Args
) => Effect.Effect<void, HookError>

/** Options of `saveCheckpoint` (Lightning's `weights_only`). */
export interface SaveCheckpointOptions {
  /** Save the model weights only (no optimizer state, no callback states). */
  readonly weightsOnly?: boolean | undefined
}

/**
 * The Trainer as its callbacks see it. Values are read at the moment of the call.
 */
export interface TrainerState {
  readonly stage: Stage
  /** Epochs completed before the current one (0-based current epoch). */
  readonly currentEpoch: number
  /** Optimizer steps taken so far. */
  readonly globalStep: number
  /** Index of the current batch within its epoch. */
  readonly batchIdx: number
  /** Train batches per epoch, when the data says so. */
  readonly numTrainBatches: number | undefined
  readonly maxEpochs: number
  /** -1: no limit. */
  readonly maxSteps: number
  /** The latest value of every metric logged (epoch means for epoch metrics). */
  readonly callbackMetrics: ReadonlyMap<string, number>
  /** Metrics of the latest step or epoch, as sent to loggers. */
  readonly loggedMetrics: ReadonlyMap<string, number>
  readonly defaultRootDir: string
  /** The storage in use: callbacks never touch the file system themselves. */
  readonly checkpointIO: CheckpointIOShape
  /** True while the sanity-check validation before training runs. */
  readonly sanityChecking: boolean
  /** True once a callback asked to stop (or maxSteps was reached). */
  readonly shouldStop: boolean
  /** Asks the Trainer to stop after the current batch. */
  readonly stop: () => void
  /** Saves a checkpoint of the current state through `checkpointIO`. */
  readonly saveCheckpoint: (path: string, options?: SaveCheckpointOptions) => Effect.Effect<void, HookError>
  /** The path the current fit resumed from, if any. */
  readonly resumedFrom: string | undefined
  /** The learning rate of each optimizer, by its class name (`Adam`, `SGD`); set by the Trainer. */
  readonly learningRates?: ReadonlyMap<string, number> | undefined
  /** Records a metric from a callback into `callbackMetrics` and `loggedMetrics` (Lightning's `pl_module.log`); set by the Trainer. */
  readonly log?: ((name: string, value: number) => void) | undefined
  /** Batches per loop under `fastDevRun` (Lightning's `fast_dev_run`); 0 or absent: off. Checkpoint callbacks do not save then. */
  readonly fastDevRun?: number | undefined
}

/** Outputs of a training step, as `onTrainBatchEnd` sees them. */
export interface TrainStepOutput {
  readonly loss: number
}

/**
 * The hooks. All are optional; implement the ones you need.
 */
export interface Callback {
  /** A name for errors and logs. */
  readonly name: string
  /** Where the state of a stateful callback goes in a checkpoint (default: `name`). */
  readonly stateKey?: string | undefined
  readonly stateDict?: (() => Json) | undefined
  readonly loadStateDict?: ((state: Json) => Effect.Effect<void, HookError>) | undefined

  readonly setup?: Hook<[stage: Stage]> | undefined
  readonly teardown?: Hook<[stage: Stage]> | undefined
  readonly onFitStart?: Hook | undefined
  readonly onFitEnd?: Hook | undefined
  readonly onSanityCheckStart?: Hook | undefined
  readonly onSanityCheckEnd?: Hook | undefined
  readonly onTrainStart?: Hook | undefined
  readonly onTrainEnd?: Hook | undefined
  readonly onTrainEpochStart?: Hook | undefined
  readonly onTrainEpochEnd?: Hook | undefined
  readonly onTrainBatchStart?: Hook<[batchIdx: number]> | undefined
  readonly onTrainBatchEnd?: Hook<[output: TrainStepOutput, batchIdx: number]> | undefined
  readonly onValidationStart?: Hook | undefined
  readonly onValidationEnd?: Hook | undefined
  readonly onValidationEpochStart?: Hook | undefined
  readonly onValidationEpochEnd?: Hook | undefined
  readonly onValidationBatchStart?: Hook<[batchIdx: number]> | undefined
  readonly onValidationBatchEnd?: Hook<[batchIdx: number]> | undefined
  readonly onTestStart?: Hook | undefined
  readonly onTestEnd?: Hook | undefined
  readonly onTestEpochStart?: Hook | undefined
  readonly onTestEpochEnd?: Hook | undefined
  readonly onTestBatchStart?: Hook<[batchIdx: number]> | undefined
  readonly onTestBatchEnd?: Hook<[batchIdx: number]> | undefined
  readonly onPredictStart?: Hook | undefined
  readonly onPredictEnd?: Hook | undefined
  readonly onPredictBatchEnd?: Hook<[batchIdx: number]> | undefined
  /** The run failed or was interrupted; `cause` says how (an Effect `Cause`). */
  readonly onException?: Hook<[cause: unknown]> | undefined
  /** A checkpoint is being made; its meta is final except for what hooks add. */
  readonly onSaveCheckpoint?: Hook<[meta: CheckpointMeta]> | undefined
  /** A checkpoint was loaded to resume from. */
  readonly onLoadCheckpoint?: Hook<[meta: CheckpointMeta]> | undefined
}

/** Brand of checkpoint callbacks. */
export const CheckpointTypeId: unique symbol = Symbol.for("effect-trainer/Callback/Checkpoint")

/**
 * The base of checkpoint callbacks (Lightning's `Checkpoint`). The Trainer
 * recognises them (`Trainer.checkpointCallbacks`), runs them after every other
 * callback, and looks for `lastModelPath` / `bestModelPath` on them to resume from
 * `"last"` / `"best"`.
 *
 * @example
 * ```ts
 * class EveryTenSteps extends Callback.Checkpoint {
 *   readonly name = "EveryTenSteps"
 *   readonly onTrainBatchEnd: Callback.Hook<[Callback.TrainStepOutput, number]> = (trainer) =>
 *     trainer.globalStep % 10 === 0 ? trainer.saveCheckpoint(`ckpt/step=${trainer.globalStep}.ckpt`) : Effect.void
 * }
 * ```
 */
export abstract class Checkpoint implements Callback {
  readonly [CheckpointTypeId] = CheckpointTypeId
  abstract readonly name: string
  /** The newest "last" checkpoint this callback wrote, for `ckptPath: "last"`. */
  get lastModelPath(): string | undefined {
    return undefined
  }
  /** The best checkpoint this callback knows, for `ckptPath: "best"`. */
  get bestModelPath(): string | undefined {
    return undefined
  }
}

/** Is this callback a checkpoint callback? */
export const isCheckpoint = (callback: Callback): callback is Checkpoint & Callback =>
  typeof callback === "object" && callback !== null && CheckpointTypeId in callback

/** The key a stateful callback's state is saved under. */
export const stateKeyOf = (callback: Callback): string => callback.stateKey ?? callback.name

/** Callbacks in the order the Trainer runs them: checkpoint callbacks last. */
export const ordered = (callbacks: ReadonlyArray<Callback>): ReadonlyArray<Callback> => [
  ...callbacks.filter((c) => !isCheckpoint(c)),
  ...callbacks.filter(isCheckpoint)
]
