/**
 * `Trainer`: runs a `TrainingModule` over a `DataModule`: fit, validate, test,
 * predict (Lightning's `Trainer`), as an Effect service.
 *
 * It drives the loops and the callbacks, and leaves the rest to its services: the
 * `Strategy` runs each step on the `Device` and stages state for checkpoints;
 * `CheckpointConnector` decides what a checkpoint holds and validates a restore; the
 * `CheckpointIO` stores them. Which CheckpointIO: the one given to the Trainer
 * (`plugins.checkpointIO`, Lightning's `Trainer(plugins=[...])`), or the one given to
 * the Strategy, or the one provided in the program's context, or the default file
 * store on the `FileSystem` in context (`checkpointIOSource`); plugins and strategy
 * both at once is a `TrainerConfigError` when the layer is built.
 *
 * Loop order (Lightning's): setup → onFitStart → sanity-check validation →
 * onTrainStart → per epoch: onTrainEpochStart → per batch: onTrainBatchStart, step,
 * onTrainBatchEnd, validation when due → onTrainEpochEnd → … → onTrainEnd →
 * onFitEnd → teardown. On failure or interruption: onException, then pending
 * checkpoint saves are flushed (for at most `shutdownFlushTimeout`), then teardown;
 * the error is returned as is.
 *
 * Each step runs inside `tf.tidy`; the Trainer's own loop allocates no tensor that
 * outlives a step (a test holds it to `tf.memory().numTensors`).
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Cause, Clock, Context, Data, Duration, Effect, FileSystem, Layer, Option, Path, Result, Stream } from "effect"
import type { Json } from "effect/Schema"
import * as posix from "node:path/posix"
import * as Callback from "./Callback.ts"
import type { Checkpoint, HostTensor, OptimizerConfig } from "./Checkpoint.ts"
import * as CheckpointConnector from "./CheckpointConnector.ts"
import { CheckpointIO, type CheckpointIOShape } from "./CheckpointIO.ts"
import type { CollectiveError } from "./Collective.ts"
import * as CsvLogger from "./CsvLogger.ts"
import type { DataError, DataModule } from "./DataModule.ts"
import type { DeviceError } from "./Device.ts"
import * as FileCheckpointIO from "./FileCheckpointIO.ts"
import * as GradientAccumulation from "./GradientAccumulation.ts"
import * as LRScheduler from "./LRScheduler.ts"
import * as ModelCheckpoint from "./ModelCheckpoint.ts"
import * as ModelSummary from "./ModelSummary.ts"
import * as ProgressBar from "./ProgressBar.ts"
import * as Random from "./Random.ts"
import { type RestoreError, type StepError, Strategy, type StrategyShape } from "./Strategy.ts"
import type { LogOptions, StepContext, TrainingModule } from "./TrainingModule.ts"

/** The Trainer was configured in a way that can never work. */
export class TrainerConfigError extends Data.TaggedError("TrainerConfigError")<{
  readonly reason: string
}> {
  override get message(): string {
    return `Trainer: ${this.reason}`
  }
}

/** Everything a run can fail with. */
export type TrainerError =
  | TrainerConfigError
  | StepError
  | RestoreError
  | DataError
  | DeviceError
  | Callback.HookError
  | LRScheduler.LRSchedulerError
  | CheckpointConnector.WeightsMismatch
  | CollectiveError

/** Options of the Trainer, with Lightning's names in camelCase. */
export interface TrainerOptions<E = never, R = never> {
  /** Stop after this many epochs (default 1000, Lightning's, unless `maxSteps` is set). */
  readonly maxEpochs?: number | undefined
  /** Stop after this many optimizer steps (default -1: no limit). */
  readonly maxSteps?: number | undefined
  /** Validate every N epochs (default 1). */
  readonly checkValEveryNEpoch?: number | undefined
  /**
   * Validate within an epoch: a value in (0, 1] is a fraction of the epoch (0.25:
   * four times per epoch; 1: at its end), an integer above 1 a number of batches.
   */
  readonly valCheckInterval?: number | undefined
  /** Batches per epoch / run: an integer ≥ 1 is a count, a value in (0, 1) a fraction; all when omitted. */
  readonly limitTrainBatches?: number | undefined
  readonly limitValBatches?: number | undefined
  readonly limitTestBatches?: number | undefined
  readonly limitPredictBatches?: number | undefined
  /** Validation batches run before training, to catch bugs early (default 2; 0 to skip). */
  readonly numSanityValSteps?: number | undefined
  readonly gradientClipVal?: number | undefined
  readonly gradientClipAlgorithm?: "norm" | "value" | undefined
  /**
   * Sum the gradients of N batches (each loss scaled by 1/N, Lightning's), then take
   * one optimizer step: a number, or a schedule by epoch (a function, or Lightning's
   * `{ 0: 8, 4: 4 }`). `globalStep` counts optimizer steps; clipping applies to the
   * summed gradient; an epoch's last window may be shorter. Default 1.
   */
  readonly accumulateGradBatches?: GradientAccumulation.AccumulateGradBatches | undefined
  /** Train at least this many epochs: an earlier stop request waits (default 0). */
  readonly minEpochs?: number | undefined
  /** Take at least this many optimizer steps: an earlier stop request waits (default 0). */
  readonly minSteps?: number | undefined
  /**
   * Stop after this much fit time (the Effect `Clock`; time before a resume counts),
   * checked after every batch; `minEpochs` / `minSteps` take precedence.
   */
  readonly maxTime?: Duration.Input | undefined
  /** Print a model summary at the start of fit (default true). */
  readonly enableModelSummary?: boolean | undefined
  /**
   * Seed of the random state of the user's code: every unseeded tfjs random op in
   * `configureModel` and the steps (initializers, dropout) draws from it, and the
   * state is saved in checkpoints so a resumed run continues the same stream. Data
   * shuffling has its own seed (`DataModule.fromArrays`). Unset: tfjs's own randomness.
   */
  readonly seed?: number | undefined
  /** Root of logs and checkpoints (default "runs"). */
  readonly defaultRootDir?: string | undefined
  readonly callbacks?: ReadonlyArray<Callback.Callback> | undefined
  /** The progress bar callback (default true). */
  readonly enableProgressBar?: boolean | undefined
  /**
   * A default `ModelCheckpoint` (default true, Lightning's `enable_checkpointing`):
   * when no checkpoint callback is given, one with default options saves to
   * `<defaultRootDir>/checkpoints` at every epoch end. False: none.
   */
  readonly enableCheckpointing?: boolean | undefined
  /**
   * Lightning's `fast_dev_run`: `true` (1) or `n` runs n batches of train, validation,
   * test and predict (one epoch, no sanity check) to find bugs fast, with no side
   * effects: no CSV logger, and checkpoint callbacks do not save (`fastDevRun` in the
   * state). Default false.
   */
  readonly fastDevRun?: boolean | number | undefined
  /** The CSV metrics logger callback (default true). */
  readonly logger?: boolean | undefined
  /**
   * How long a fit that failed or was interrupted waits for pending checkpoint saves
   * before it returns (default 60 seconds); then it logs an error and gives up. After
   * a failure the wait can also be interrupted.
   */
  readonly shutdownFlushTimeout?: Duration.Input | undefined
  /** Plugins; `checkpointIO` replaces the Strategy's storage (Lightning's `plugins=[...]`). */
  readonly plugins?: {
    readonly checkpointIO?: Layer.Layer<CheckpointIO, E, R> | undefined
  } | undefined
}

/** Options of `fit`. */
export interface FitOptions {
  /**
   * Resume: a checkpoint path, `"last"` (the newest last-checkpoint of the checkpoint
   * callbacks) or `"best"` (their best). Restores weights, optimizer state, loop
   * progress (epoch, step, position in the epoch) and callback states.
   */
  readonly ckptPath?: string | undefined
}

/**
 * Options of `validate`, `test` and `predict`.
 *
 * @since 0.3.0
 */
export interface EvaluateOptions {
  /**
   * The weights to evaluate: a checkpoint path, `"best"` (the first checkpoint
   * callback's best; an error when there is none) or `"last"` (a warning and the
   * current weights when there is none). Only the model's weights are loaded, matched
   * strictly (`CheckpointConnector.matchWeights`). Unset: the module's current weights.
   */
  readonly ckptPath?: string | undefined
}

/** The Trainer service's operations and live state. */
export interface TrainerShape {
  readonly fit: <B, M extends tf.LayersModel>(
    module: TrainingModule<B, M>,
    data: DataModule<B>,
    options?: FitOptions
  ) => Effect.Effect<void, TrainerError>
  /** Runs the validation loop; returns its metrics. */
  readonly validate: <B, M extends tf.LayersModel>(
    module: TrainingModule<B, M>,
    data: DataModule<B>,
    options?: EvaluateOptions
  ) => Effect.Effect<ReadonlyMap<string, number>, TrainerError>
  /** Runs the test loop; returns its metrics. */
  readonly test: <B, M extends tf.LayersModel>(
    module: TrainingModule<B, M>,
    data: DataModule<B>,
    options?: EvaluateOptions
  ) => Effect.Effect<ReadonlyMap<string, number>, TrainerError>
  /** Runs `predictStep` over the predict batches; returns host copies of the outputs. */
  readonly predict: <B, M extends tf.LayersModel>(
    module: TrainingModule<B, M>,
    data: DataModule<B>,
    options?: EvaluateOptions
  ) => Effect.Effect<ReadonlyArray<HostTensor>, TrainerError>
  /** Saves the current state (of the module trained last) through `checkpointIO`. */
  readonly saveCheckpoint: (path: string, options?: Callback.SaveCheckpointOptions) => Effect.Effect<void, TrainerError>
  /** The state callbacks see (epoch, step, metrics, …), live. */
  readonly state: Callback.TrainerState
  readonly checkpointIO: CheckpointIOShape
  /**
   * The strategy, with `checkpointIO` the store in use (Lightning's
   * `trainer.strategy.checkpoint_io`: the plugin when one was given). The `Strategy`
   * service in context keeps its own (`undefined` when it has none).
   */
  readonly strategy: StrategyShape
  /** All callbacks in run order (checkpoint callbacks last). */
  readonly callbacks: ReadonlyArray<Callback.Callback>
  readonly checkpointCallbacks: ReadonlyArray<Callback.Checkpoint & Callback.Callback>
  /** The model of a module, once a loop has built it. */
  readonly model: <B, M extends tf.LayersModel>(module: TrainingModule<B, M>) => Option.Option<M>
}

/** The Trainer service. Provide it with `Trainer.layer(options)` over a `Strategy`. */
export class Trainer extends Context.Service<Trainer, TrainerShape>()("effect-trainer/Trainer") {}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/**
 * A batch limit: integer ≥ 1 → count, (0, 1) → fraction of `total`, 0 → none (the
 * loop is disabled, Lightning's `limit_*_batches=0`), undefined → all.
 */
export const resolveLimit = (limit: number | undefined, total: number | undefined): number => {
  if (limit === undefined) return total ?? Infinity
  if (limit <= 0) return 0
  if (limit >= 1) return Math.floor(limit)
  if (total === undefined) return Infinity
  return Math.max(1, Math.floor(total * limit))
}

/**
 * Whether validation runs after the train batch that brought the epoch to
 * `batchesDone` batches (Lightning's `_should_check_val_fx`): only when `batchesDone`
 * is a multiple of the validation interval in batches (`floor(numTrainBatches × f)`
 * for a fraction `f`). The epoch's last batch is not special: 64 batches with `1/3`
 * validate after batches 21, 42 and 63, three times. An interval of `Infinity` (a
 * fraction of an epoch of unknown length) never matches here; that validation runs
 * once the epoch's batches run out.
 */
export const isValCheckBatch = (batchesDone: number, valEvery: number): boolean => Number.isFinite(valEvery) && batchesDone % valEvery === 0

interface Accumulator {
  sum: number
  count: number
}

/** Metrics logged by the steps of one loop run. */
class Metrics {
  readonly step = new Map<string, number>()
  readonly epoch = new Map<string, Accumulator>()
  /**
   * Tensors logged during the step that runs now, recorded when it ends (`withLogs`):
   * they are read with `await data()`, since `webgpu` cannot read synchronously.
   */
  readonly pending: Array<{ readonly name: string; readonly tensor: tf.Tensor; readonly options: LogOptions | undefined }> = []
  readonly training: boolean
  constructor(training: boolean) {
    this.training = training
  }
  record(name: string, value: number, options: LogOptions | undefined) {
    const onStep = options?.onStep ?? this.training
    const onEpoch = options?.onEpoch ?? !this.training
    if (onStep) this.step.set(onEpoch ? `${name}_step` : name, value)
    if (onEpoch) {
      const key = onStep ? `${name}_epoch` : name
      const acc = this.epoch.get(key) ?? { sum: 0, count: 0 }
      acc.sum += value
      acc.count += 1
      this.epoch.set(key, acc)
    }
  }
  means(): Map<string, number> {
    return new Map([...this.epoch].map(([k, a]) => [k, a.sum / a.count]))
  }
}

interface Built<M extends tf.LayersModel> {
  readonly model: M
  readonly optimizer: tf.Optimizer
  readonly schedulers: ReadonlyArray<LRScheduler.ResolvedConfig>
  /** The schedulers' states now, in configuration order. */
  lrStates: ReadonlyArray<LRScheduler.SchedulerState>
}

const toJson = (value: unknown): Json => JSON.parse(JSON.stringify(value ?? null)) as Json

/**
 * Lightning's rule for `ckptPath: "best"`, as a pure decision: the best checkpoint of
 * the first checkpoint callback (with a warning when there are several), or a
 * `TrainerConfigError` when there is no checkpoint callback or it has no best
 * checkpoint (`saveTopK: 0`, nothing saved yet, a new process).
 */
export const resolveBest = (
  fn: string,
  bestPaths: ReadonlyArray<string | undefined>
): Result.Result<{ readonly path: string; readonly warning: string | undefined }, TrainerConfigError> => {
  if (bestPaths.length === 0) {
    return Result.fail(new TrainerConfigError({ reason: `.${fn}(ckptPath: "best") is set but ModelCheckpoint is not configured` }))
  }
  const path = bestPaths[0]
  if (path === undefined) {
    return Result.fail(
      new TrainerConfigError({
        reason: `.${fn}(ckptPath: "best") is set but ModelCheckpoint is not configured to save the best model (or has not saved one yet)`
      })
    )
  }
  const warning = bestPaths.length > 1
    ? `.${fn}(ckptPath: "best") is called with Trainer configured with multiple ModelCheckpoint callbacks. ` +
      `It will use the best checkpoint path from the first checkpoint callback: ${path}`
    : undefined
  return Result.succeed({ path, warning })
}

/**
 * The options `fastDevRun` stands for (Lightning's): `n` batches of every loop, one
 * epoch, at most `n` steps, no sanity check, validation at the epoch's end, no logger.
 * Options without `fastDevRun` come back as they are.
 */
export const withFastDevRun = <E, R>(options: TrainerOptions<E, R>): TrainerOptions<E, R> => {
  const n = options.fastDevRun === true ? 1 : options.fastDevRun === false ? 0 : options.fastDevRun ?? 0
  if (n === 0 || !Number.isInteger(n) || n < 0) return options
  return {
    ...options,
    limitTrainBatches: n,
    limitValBatches: n,
    limitTestBatches: n,
    limitPredictBatches: n,
    maxEpochs: 1,
    maxSteps: n,
    numSanityValSteps: 0,
    valCheckInterval: 1,
    checkValEveryNEpoch: 1,
    logger: false
  }
}

/** Where the store of a run comes from, in order of precedence. */
export type CheckpointIOSource = "plugins" | "strategy" | "context" | "default"

/**
 * The CheckpointIO precedence, as a pure decision (documented in docs/concepts.md):
 *
 * 1. the Trainer's `plugins.checkpointIO`; refused when the strategy has its own too
 *    (Lightning's rule) or owns its checkpoint logic;
 * 2. the strategy's own (`Strategy.singleDevice({ checkpointIO })`);
 * 3. a `CheckpointIO` provided in the program's context;
 * 4. the default file store, on the `FileSystem` in context.
 *
 * `shadowed` is true when a store in context is not the one chosen: the Trainer logs
 * a warning then, so that a provided service is never ignored silently.
 */
export const checkpointIOSource = (given: {
  readonly plugins: boolean
  readonly strategy: boolean
  readonly strategyAccepts: boolean
  readonly strategyName: string
  readonly context: boolean
}): Result.Result<{ readonly source: CheckpointIOSource; readonly shadowed: boolean }, TrainerConfigError> => {
  if (given.plugins && given.strategy) {
    return Result.fail(
      new TrainerConfigError({
        reason: `a CheckpointIO was given both to the Trainer (plugins) and to the strategy ${given.strategyName}; give it to one`
      })
    )
  }
  if (given.plugins && !given.strategyAccepts) {
    return Result.fail(
      new TrainerConfigError({
        reason: `the strategy ${given.strategyName} owns its checkpoint logic and accepts no custom CheckpointIO`
      })
    )
  }
  const source: CheckpointIOSource = given.plugins
    ? "plugins"
    : given.strategy
    ? "strategy"
    : given.context
    ? "context"
    : "default"
  return Result.succeed({ source, shadowed: given.context && (source === "plugins" || source === "strategy") })
}

/** Builds the store `checkpointIOSource` chose, logging a shadowed store in context. */
const chooseCheckpointIO = <E, R>(strategy: StrategyShape, plugin: Layer.Layer<CheckpointIO, E, R> | undefined) =>
  Effect.gen(function*() {
    const inContext = yield* Effect.serviceOption(CheckpointIO)
    const decision = checkpointIOSource({
      plugins: plugin !== undefined,
      strategy: strategy.checkpointIO !== undefined,
      strategyAccepts: strategy.acceptsCustomCheckpointIO,
      strategyName: strategy.name,
      context: Option.isSome(inContext)
    })
    if (Result.isFailure(decision)) return yield* decision.failure
    const { source, shadowed } = decision.success
    // The plugin's layer is built in this context: a layer that takes its base store
    // from context (AsyncCheckpointIO.layer()) wraps the one provided there.
    const io: CheckpointIOShape = source === "plugins"
      ? Context.get(yield* Layer.build(plugin!), CheckpointIO)
      : source === "strategy"
      ? strategy.checkpointIO!
      : Option.isSome(inContext)
      ? inContext.value
      : yield* FileCheckpointIO.make // on the FileSystem in context, loads bounded by memory
    if (shadowed && Option.isSome(inContext) && io !== inContext.value) {
      yield* Effect.logWarning(
        `Trainer: checkpoints go to the CheckpointIO of ${
          source === "plugins" ? "plugins.checkpointIO" : `the strategy ${strategy.name}`
        }, not to the CheckpointIO provided in context (a layer built from context, such as AsyncCheckpointIO.layer(), may wrap it)`
      )
    }
    return io
  })

/** Builds the Trainer on the `Strategy` in context. */
export const make = <E = never, R = never>(
  given: TrainerOptions<E, R> = {}
): Effect.Effect<TrainerShape, TrainerConfigError | E, Strategy | R | FileSystem.FileSystem | Path.Path | import("effect").Scope.Scope> =>
  Effect.gen(function*() {
    const options = withFastDevRun(given)
    const strategy = yield* Strategy
    const device = strategy.device
    const tfjs = device.tf

    const chosenIO = yield* chooseCheckpointIO(strategy, options.plugins?.checkpointIO)
    // Data parallel: ranks other than 0 read checkpoints but leave writing to rank 0.
    const checkpointIO = strategy.checkpointIOForRank?.(chosenIO) ?? chosenIO
    const isGlobalZero = strategy.isGlobalZero ?? true
    /** Metrics averaged over the replicas (as they are on a single device). */
    const reduced = (metrics: ReadonlyMap<string, number>) =>
      strategy.reduceMetrics === undefined ? Effect.succeed(metrics) : strategy.reduceMetrics(metrics)
    const shard = <B>(stream: Stream.Stream<B, DataError>): Stream.Stream<B, DataError> =>
      strategy.shard === undefined ? stream : Stream.map(stream, (batch) => strategy.shard!(batch))
    const maxSteps = options.maxSteps ?? -1
    const maxEpochs = options.maxEpochs ?? (maxSteps === -1 ? 1000 : Number.MAX_SAFE_INTEGER)
    const defaultRootDir = options.defaultRootDir ?? "runs"
    for (
      const [name, value] of Object.entries({
        maxEpochs,
        checkValEveryNEpoch: options.checkValEveryNEpoch ?? 1,
        numSanityValSteps: (options.numSanityValSteps ?? 2) + 1,
        minEpochs: (options.minEpochs ?? 0) + 1,
        minSteps: (options.minSteps ?? 0) + 1
      })
    ) {
      if (!Number.isInteger(value) || value < 1) {
        return yield* new TrainerConfigError({ reason: `${name} must be a positive integer, got ${value}` })
      }
    }
    const accumulateAt = yield* Effect.fromResult(GradientAccumulation.resolve(options.accumulateGradBatches)).pipe(
      Effect.mapError((reason) => new TrainerConfigError({ reason }))
    )
    const minEpochs = options.minEpochs ?? 0
    const minSteps = options.minSteps ?? 0
    const maxTimeMs = options.maxTime === undefined ? undefined : Option.match(Duration.fromInput(options.maxTime), {
      onNone: () => undefined,
      onSome: Duration.toMillis
    })
    if (options.maxTime !== undefined && maxTimeMs === undefined) {
      return yield* new TrainerConfigError({ reason: `maxTime is not a duration: ${String(options.maxTime)}` })
    }
    const fast = options.fastDevRun === true ? 1 : options.fastDevRun === false ? 0 : options.fastDevRun ?? 0
    if (!Number.isInteger(fast) || fast < 0) {
      return yield* new TrainerConfigError({ reason: `fastDevRun must be a boolean or a non-negative integer, got ${fast}` })
    }
    const builtIn: Array<Callback.Callback> = []
    // Only rank 0 draws progress and logs (Lightning's rank-zero-only loggers).
    if (options.enableProgressBar !== false && isGlobalZero) builtIn.push(ProgressBar.make())
    if (options.logger !== false && isGlobalZero) builtIn.push(yield* CsvLogger.make())
    const userCallbacks = options.callbacks ?? []
    if (options.enableCheckpointing === false && userCallbacks.some(Callback.isCheckpoint)) {
      return yield* new TrainerConfigError({
        reason: "the Trainer was configured with enableCheckpointing: false but found a checkpoint callback in callbacks"
      })
    }
    if (options.enableCheckpointing !== false && !userCallbacks.some(Callback.isCheckpoint)) {
      builtIn.push(yield* Effect.orDie(ModelCheckpoint.make())) // default options cannot be refused
    }
    const callbacks = Callback.ordered([...builtIn, ...userCallbacks])
    const checkpointCallbacks = callbacks.filter(Callback.isCheckpoint)
    const keys = new Set<string>()
    for (const cb of callbacks) {
      if (cb.stateDict === undefined) continue
      const key = Callback.stateKeyOf(cb)
      if (keys.has(key)) return yield* new TrainerConfigError({ reason: `two stateful callbacks share the state key "${key}"` })
      keys.add(key)
    }

    // The loop state callbacks see through `state`.
    const loop = {
      stage: "fit" as Callback.Stage,
      epoch: 0,
      globalStep: 0,
      batchIdx: 0,
      /** The batch to resume from in `epoch` (set by a restore). */
      resumeBatch: 0,
      /** Where a checkpoint taken now resumes: the next batch to run. */
      next: { epoch: 0, batch: 0 },
      numTrainBatches: undefined as number | undefined,
      callbackMetrics: new Map<string, number>(),
      loggedMetrics: new Map<string, number>(),
      shouldStop: false,
      sanityChecking: false,
      resumedFrom: undefined as string | undefined,
      current: undefined as { module: TrainingModule<any, any>; built: Built<tf.LayersModel> } | undefined,
      /** The partial gradient sum of an unfinished accumulation window. */
      accumulated: undefined as GradientAccumulation.Window | undefined,
      /** Fit time before this fit started (from a checkpoint), and when this one started (Clock ms). */
      timeBaseMs: 0,
      fitStartMs: 0,
      /** True between the end of an epoch and its epoch-interval scheduler step. */
      epochEndPending: false,
      /** Metrics callbacks logged, merged into the next `loggedMetrics`. */
      pendingLogged: new Map<string, number>(),
      /** The random state of the user's code (when seeded). */
      rng: options.seed === undefined ? undefined : { value: options.seed >>> 0 } as Random.State | undefined
    }
    /** Runs user code with the seeded random state, if there is one. */
    const seeded = <A>(f: () => A): A => (loop.rng === undefined ? f() : Random.withSeeded(loop.rng, f))
    const built = new Map<TrainingModule<any, any>, Built<tf.LayersModel>>()

    const state: Callback.TrainerState = {
      get stage() {
        return loop.stage
      },
      get currentEpoch() {
        return loop.epoch
      },
      get globalStep() {
        return loop.globalStep
      },
      get batchIdx() {
        return loop.batchIdx
      },
      get numTrainBatches() {
        return loop.numTrainBatches
      },
      maxEpochs,
      maxSteps,
      get callbackMetrics() {
        return loop.callbackMetrics
      },
      get loggedMetrics() {
        return loop.loggedMetrics
      },
      defaultRootDir,
      checkpointIO,
      get sanityChecking() {
        return loop.sanityChecking
      },
      get shouldStop() {
        return loop.shouldStop
      },
      stop: () => {
        loop.shouldStop = true
      },
      saveCheckpoint: (path, saveOptions) =>
        saveCheckpoint(path, saveOptions).pipe(
          Effect.mapError((error) =>
            error._tag === "CallbackError" || error._tag === "CheckpointNotFound" || error._tag === "CheckpointCorrupt" ||
              error._tag === "CheckpointStorageError" || error._tag === "CheckpointInvalidArgument" ||
              error._tag === "BackgroundSaveFailed"
              ? error
              : new Callback.CallbackError({ callback: "saveCheckpoint", reason: error.message, cause: error })
          )
        ),
      get resumedFrom() {
        return loop.resumedFrom
      },
      get learningRates() {
        const current = loop.current?.built.optimizer
        if (current === undefined) return new Map<string, number>()
        const lr = LRScheduler.getLearningRate(current)
        return new Map(Result.isSuccess(lr) ? [[current.getClassName(), lr.success]] : [])
      },
      log: (name, value) => {
        loop.callbackMetrics.set(name, value)
        loop.pendingLogged.set(name, value)
      },
      fastDevRun: fast
    }

    type HookName = {
      [K in keyof Callback.Callback]-?: NonNullable<Callback.Callback[K]> extends Callback.Hook<infer _A> ? K : never
    }[keyof Callback.Callback]

    /** Runs one hook on every callback, in order. */
    const call = <K extends HookName>(
      hook: K,
      ...args: NonNullable<Callback.Callback[K]> extends Callback.Hook<infer A> ? A : never
    ): Effect.Effect<void, Callback.HookError> =>
      Effect.forEach(callbacks, (cb) => {
        const f = cb[hook] as Callback.Hook<ReadonlyArray<unknown>> | undefined
        return f === undefined ? Effect.void : f(state, ...args)
      }, { discard: true })

    const ensureBuilt = <B, M extends tf.LayersModel>(module: TrainingModule<B, M>) =>
      Effect.gen(function*() {
        const existing = built.get(module)
        if (existing !== undefined) {
          loop.current = { module, built: existing }
          return existing as unknown as Built<M>
        }
        const configured = yield* Effect.try({
          try: () => {
            const model = seeded(() => module.configureModel(tfjs))
            return { model, configured: module.configureOptimizers(tfjs, model) }
          },
          catch: (cause) =>
            new Callback.CallbackError({ callback: module.name, reason: `building the model failed: ${messageOf(cause)}`, cause })
        })
        const { optimizer, schedulers } = yield* Effect.fromResult(LRScheduler.normalize(configured.configured))
        const lrStates: Array<LRScheduler.SchedulerState> = []
        for (const config of schedulers) {
          const lr = yield* Effect.fromResult(LRScheduler.getLearningRate(optimizer, config.scheduler.kind))
          lrStates.push(config.scheduler.init(lr))
        }
        // A scheduler's first rate (OneCycleLR's maxLr / divFactor) applies from the first step.
        if (lrStates.length > 0) LRScheduler.setLearningRate(optimizer, lrStates[lrStates.length - 1]!.lr)
        const fresh: Built<M> = { model: configured.model, optimizer, schedulers, lrStates }
        built.set(module, fresh as unknown as Built<tf.LayersModel>)
        loop.current = { module, built: fresh as unknown as Built<tf.LayersModel> }
        return fresh
      })

    const stepContext = (metrics: Metrics): StepContext => ({
      tf: tfjs,
      log: (name, value, logOptions) => {
        if (typeof value === "number") return metrics.record(name, value, logOptions)
        // A clone kept past the step's tf.tidy, so that the step may dispose its own.
        metrics.pending.push({ name, tensor: tfjs.keep(value.clone()), options: logOptions })
      },
      tensor: (host) =>
        tfjs.tensor(
          host.data as Float32Array | Int32Array | Uint8Array,
          [...host.shape],
          host.dtype === "I32" ? "int32" : host.dtype === "BOOL" ? "bool" : "float32"
        ),
      get epoch() {
        return loop.epoch
      },
      get globalStep() {
        return loop.globalStep
      },
      get batchIdx() {
        return loop.batchIdx
      }
    })

    /**
     * Runs a step, then records the tensors it logged (read asynchronously, in the
     * order logged) and disposes them, also when the step fails.
     */
    const withLogs = <A, E>(metrics: Metrics, what: string, step: Effect.Effect<A, E>) =>
      step.pipe(
        Effect.tap(() =>
          Effect.tryPromise({
            try: () => Promise.all(metrics.pending.map(({ tensor }) => tensor.data())),
            catch: (cause) => new Callback.CallbackError({ callback: what, reason: `reading a logged value: ${messageOf(cause)}`, cause })
          }).pipe(
            Effect.map((values) =>
              metrics.pending.forEach(({ name, options }, i) => metrics.record(name, values[i]![0] as number, options))
            )
          )
        ),
        Effect.ensuring(Effect.sync(() => {
          for (const { tensor } of metrics.pending) tensor.dispose()
          metrics.pending.length = 0
        }))
      )

    const runStep = <A>(what: string, f: () => A) =>
      Effect.try({
        try: () => tfjs.tidy(() => seeded(f) as tf.TensorContainer) as A,
        catch: (cause) => new Callback.CallbackError({ callback: what, reason: messageOf(cause), cause })
      })

    // -----------------------------------------------------------------------
    // Checkpoints

    const saveCheckpoint = (path: string, saveOptions?: Callback.SaveCheckpointOptions) =>
      Effect.gen(function*() {
        const current = loop.current
        if (current === undefined) {
          return yield* new TrainerConfigError({ reason: "saveCheckpoint before any model was built (call fit first)" })
        }
        const weightsOnly = saveOptions?.weightsOnly ?? false
        const { model, optimizer } = current.built
        const optimizerConfig = weightsOnly ? null : yield* Effect.try({
          try: (): OptimizerConfig => ({
            className: optimizer.getClassName(),
            config: toJson(optimizer.getConfig()) as Record<string, Json>
          }),
          catch: (cause) =>
            new Callback.CallbackError({ callback: current.module.name, reason: `optimizer config: ${messageOf(cause)}`, cause })
        })
        const accumulated = loop.accumulated
        const accumulatedGrads = weightsOnly || accumulated === undefined ? undefined : yield* Effect.map(
          device.stage(Object.fromEntries(accumulated.grads.map((g, i) => [String(i), g]))),
          (staged) => model.trainableWeights.map((w, i) => [w.originalName, staged[String(i)]!] as const)
        )
        // Saved at the end of an epoch (onTrainEpochEnd) before its scheduler step: the
        // checkpoint resumes at the next epoch, so it holds the stepped states.
        const lrStates = !loop.epochEndPending ? current.built.lrStates : yield* Effect.map(
          Effect.fromResult(
            LRScheduler.stepDue(current.built.schedulers, current.built.lrStates, "epoch", loop.epoch, loop.callbackMetrics)
          ),
          (r) => r.states
        )
        const now = yield* Clock.currentTimeMillis
        // The connector decides what the record holds; the strategy only stages.
        const record = yield* CheckpointConnector.dump({
          staged: yield* strategy.stage(model, weightsOnly ? undefined : optimizer),
          epoch: loop.epoch,
          globalStep: loop.globalStep,
          loop: {
            nextEpoch: loop.next.epoch,
            nextBatch: loop.next.batch,
            globalStep: loop.globalStep,
            ...(loop.rng === undefined ? {} : { rng: loop.rng.value }),
            ...(current.built.schedulers.length === 0 ? {} : { lrSchedulers: lrStates }),
            ...(loop.stage === "fit" ? { timeElapsedMs: loop.timeBaseMs + Math.max(0, now - loop.fitStartMs) } : {}),
            ...(accumulated === undefined ? {} : { accumulatedBatches: accumulated.batches })
          },
          weightsOnly,
          callbacks,
          optimizer: optimizerConfig,
          accumulatedGrads,
          module: current.module
        })
        if (Option.isSome(record.meta)) yield* call("onSaveCheckpoint", record.meta.value)
        // The staged tensors are fresh copies nobody else holds: hand them over.
        yield* checkpointIO.save(record, path, { snapshot: "transfer" })
      }).pipe(Effect.withSpan("Trainer.saveCheckpoint", { attributes: { path } }))

    /**
     * `ckptPath` as Lightning 2.6 resolves it (`_parse_ckpt_path`): `"best"` with no
     * checkpoint callback, or none that has a best checkpoint, is an error; with several
     * callbacks the first one's, with a warning. `"last"` with nothing saved is a
     * warning with a hint, and nothing is loaded.
     */
    const resolveCkptPath = (ckptPath: string, fn: string = "fit") =>
      Effect.gen(function*() {
        if (ckptPath !== "last" && ckptPath !== "best") return Option.some(ckptPath)
        if (ckptPath === "best" && fast > 0) {
          return yield* new TrainerConfigError({
            reason: `you cannot execute .${fn}(ckptPath: "best") with fastDevRun: no checkpoint was saved; pass an exact checkpoint path`
          })
        }
        if (ckptPath === "best") {
          const decided = resolveBest(fn, checkpointCallbacks.map((cb) => cb.bestModelPath))
          if (Result.isFailure(decided)) return yield* decided.failure
          if (decided.success.warning !== undefined) yield* Effect.logWarning(decided.success.warning)
          return Option.some(decided.success.path)
        }
        const candidates = checkpointCallbacks
          .map((cb) => cb.lastModelPath)
          .filter((p): p is string => p !== undefined)
        if (candidates.length === 0) {
          yield* Effect.logWarning(
            `.${fn}(ckptPath: "last") is set, but there is no last checkpoint available. No checkpoint will be loaded. ` +
              `HINT: Set ModelCheckpoint.make({ ..., saveLast: true }).`
          )
          return Option.none<string>()
        }
        if (candidates.length === 1) return Option.some(candidates[0]!)
        // The newest of the callbacks' last checkpoints.
        const times = yield* Effect.forEach(candidates, (p) =>
          Effect.map(checkpointIO.list(p.slice(0, Math.max(0, p.lastIndexOf("/"))) || "."), (entries) =>
            entries.find((e) =>
              e.path.endsWith(p.slice(p.lastIndexOf("/")))
            )?.modifiedAt ?? 0))
        let newest = 0
        times.forEach((t, i) => (newest = t > times[newest]! ? i : newest))
        return Option.some(candidates[newest]!)
      })

    /**
     * Loads and validates the checkpoint to resume from (`check`: the connector's
     * plan against the model, optimizer and data). With `fallback` (`ckptPath:
     * "last"`), one that fails to load (any typed load error) or to validate is passed
     * over for the newest other checkpoint of its directory that does both (by
     * modification time; weights-only ones cannot resume a fit), with a warning; when
     * none does, the first error is the result.
     */
    const loadForResume = (
      path: string,
      fallback: boolean,
      check: (record: Checkpoint, path: string) => Result.Result<CheckpointConnector.RestorePlan, RestoreError>
    ) =>
      Effect.gen(function*() {
        const attempt = (p: string) =>
          Effect.result(Effect.flatMap(checkpointIO.load(p, { dtypes: "tfjs" }), (record) => Effect.fromResult(check(record, p))))
        const chosen = yield* attempt(path)
        if (Result.isSuccess(chosen)) return chosen.success
        const error = chosen.failure
        if (!fallback) return yield* Effect.fail(error)
        const dir = path.slice(0, Math.max(0, path.lastIndexOf("/"))) || "."
        const listed = yield* Effect.result(checkpointIO.list(dir))
        if (Result.isFailure(listed)) return yield* Effect.fail(error)
        const others = listed.success
          .filter((e) => e.path.endsWith(".ckpt") && posix.resolve(e.path) !== posix.resolve(path))
          .sort((a, b) => b.modifiedAt - a.modifiedAt)
        for (const entry of others) {
          const loaded = yield* Effect.result(checkpointIO.load(entry.path, { dtypes: "tfjs" }))
          if (Result.isFailure(loaded)) {
            yield* Effect.logWarning(`ckptPath "last": ${entry.path} does not load either (${loaded.failure.message})`)
            continue
          }
          if (Option.isSome(loaded.success.meta) && loaded.success.meta.value.weightsOnly) continue
          const planned = check(loaded.success, entry.path)
          if (Result.isFailure(planned)) {
            yield* Effect.logWarning(`ckptPath "last": ${entry.path} does not fit either (${planned.failure.message})`)
            continue
          }
          yield* Effect.logWarning(
            `ckptPath "last": ${path} cannot be resumed from (${error.message}); resuming from ${entry.path}, the newest checkpoint that loads`
          )
          return planned.success
        }
        return yield* Effect.fail(error)
      })

    const restoreFrom = (
      requested: string,
      module: TrainingModule<any, any>,
      target: Built<tf.LayersModel>,
      fallback: boolean,
      numTrainBatches: number | undefined
    ) =>
      Effect.gen(function*() {
        const described = yield* strategy.describe(target.model, target.optimizer)
        // Everything is validated before anything is applied or "resumed from" logged.
        const plan = yield* loadForResume(requested, fallback, (record, path) =>
          CheckpointConnector.plan(record, path, described, {
            numTrainBatches,
            lrSchedulers: target.schedulers.map((c) => c.scheduler.kind),
            accumulateGradBatches: accumulateAt,
            hyperParameters: module.hyperParameters
          }))
        yield* strategy.restore(target.model, target.optimizer, plan)
        if (plan.loop !== undefined) {
          if (plan.loop.rng !== undefined) loop.rng = { value: plan.loop.rng }
          loop.epoch = plan.loop.nextEpoch
          loop.resumeBatch = plan.loop.nextBatch
          loop.globalStep = plan.loop.globalStep
          loop.timeBaseMs = plan.loop.timeElapsedMs
          if (plan.loop.lrSchedulers !== undefined && plan.loop.lrSchedulers.length > 0) {
            target.lrStates = plan.loop.lrSchedulers
            LRScheduler.setLearningRate(target.optimizer, plan.loop.lrSchedulers[plan.loop.lrSchedulers.length - 1]!.lr)
          }
          loop.accumulated = GradientAccumulation.dispose(tfjs, loop.accumulated)
          if (plan.loop.accumulatedGrads.length > 0) {
            const uploaded = yield* device.upload(Object.fromEntries(plan.loop.accumulatedGrads.map((t, i) => [String(i), t])))
            loop.accumulated = {
              grads: plan.loop.accumulatedGrads.map((_, i) => uploaded[String(i)]!),
              batches: plan.loop.accumulatedBatches
            }
          }
        }
        if (Option.isSome(plan.meta)) {
          yield* CheckpointConnector.restoreUserState(plan.meta.value, callbacks, module)
          yield* call("onLoadCheckpoint", plan.meta.value)
        }
        loop.resumedFrom = plan.path
        yield* Effect.logInfo(`Trainer: resumed from ${plan.path} (epoch ${loop.epoch}, step ${loop.globalStep})`)
      })

    // -----------------------------------------------------------------------
    // Loops

    /** Validation / test loop over `stream`; returns the epoch means. */
    const evaluate = <B, M extends tf.LayersModel>(
      kind: "validation" | "test",
      module: TrainingModule<B, M>,
      model: M,
      stream: Stream.Stream<B, DataError>,
      limit: number
    ) =>
      Effect.gen(function*() {
        const step = kind === "validation" ? module.validationStep : module.testStep
        const metrics = new Metrics(false)
        const ctx = stepContext(metrics)
        const [start, epochStart, batchStart, batchEnd, epochEnd, end] = kind === "validation"
          ? [
            "onValidationStart",
            "onValidationEpochStart",
            "onValidationBatchStart",
            "onValidationBatchEnd",
            "onValidationEpochEnd",
            "onValidationEnd"
          ] as const
          : ["onTestStart", "onTestEpochStart", "onTestBatchStart", "onTestBatchEnd", "onTestEpochEnd", "onTestEnd"] as const
        const savedBatchIdx = loop.batchIdx
        yield* call(start)
        yield* call(epochStart)
        let index = 0
        if (step !== undefined && limit > 0) {
          yield* Stream.runForEachWhile(shard(stream), (batch) =>
            Effect.gen(function*() {
              loop.batchIdx = index
              yield* call(batchStart, index)
              const what = `${module.name}.${kind}Step`
              yield* withLogs(metrics, what, runStep(what, () => step(model, batch, ctx)))
              yield* call(batchEnd, index)
              index++
              return index < limit
            }))
        }
        const means = yield* reduced(metrics.means())
        if (!loop.sanityChecking) {
          for (const [k, v] of means) loop.callbackMetrics.set(k, v)
          loop.loggedMetrics = new Map(means)
        }
        yield* call(epochEnd)
        yield* call(end)
        loop.batchIdx = savedBatchIdx
        return means
      })

    // `limitValBatches: 0` disables validation: no hooks run either (Lightning's rule).
    const runValidation = <B, M extends tf.LayersModel>(module: TrainingModule<B, M>, model: M, data: DataModule<B>) =>
      data.val === undefined || module.validationStep === undefined || resolveLimit(options.limitValBatches, data.numValBatches) === 0
        ? Effect.succeed(new Map<string, number>())
        : evaluate("validation", module, model, data.val(), resolveLimit(options.limitValBatches, data.numValBatches))

    const fit: TrainerShape["fit"] = Effect.fn("Trainer.fit")(function*(module, data, fitOptions) {
      loop.stage = "fit"
      loop.shouldStop = false
      const target = yield* ensureBuilt(module)
      const { model, optimizer } = target
      if (data.train === undefined) return yield* new TrainerConfigError({ reason: "fit needs DataModule.train" })
      const train = data.train
      loop.numTrainBatches = data.numTrainBatches
      const trainLimit = resolveLimit(options.limitTrainBatches, data.numTrainBatches)
      const perEpoch = Math.min(trainLimit, data.numTrainBatches ?? Infinity)
      const interval = options.valCheckInterval ?? 1
      const valEvery = interval > 1
        ? Math.floor(interval)
        : Number.isFinite(perEpoch)
        ? Math.max(1, Math.floor(perEpoch * interval))
        : Infinity
      const checkValEveryNEpoch = options.checkValEveryNEpoch ?? 1
      const stepOptions = { gradientClipVal: options.gradientClipVal, gradientClipAlgorithm: options.gradientClipAlgorithm }
      /** Lightning's `_can_stop_early`: a stop request waits for minEpochs (completed) and minSteps. */
      const canStopEarly = (epochsDone: number) => epochsDone >= minEpochs && loop.globalStep >= minSteps
      const maxStepsReached = () => maxSteps !== -1 && loop.globalStep >= maxSteps
      let deferredLogged = false
      const stopping = (epochsDone: number) =>
        Effect.gen(function*() {
          if (!loop.shouldStop) return false
          if (maxStepsReached() || canStopEarly(epochsDone)) return true
          if (!deferredLogged) {
            deferredLogged = true
            yield* Effect.logInfo(
              `Trainer: a stop was requested but minEpochs=${minEpochs} / minSteps=${minSteps} is not met; training continues`
            )
          }
          return false
        })
      const checkTime = Effect.gen(function*() {
        if (maxTimeMs === undefined || loop.shouldStop) return
        const elapsed = loop.timeBaseMs + (yield* Clock.currentTimeMillis) - loop.fitStartMs
        if (elapsed >= maxTimeMs) {
          loop.shouldStop = true
          yield* Effect.logInfo(`Trainer: time limit reached (maxTime ${Duration.format(Duration.millis(maxTimeMs))}); signaling to stop`)
        }
      })
      const stepSchedulers = (interval: "epoch" | "step", index: number) =>
        Effect.gen(function*() {
          if (target.schedulers.length === 0) return
          const next = yield* Effect.fromResult(
            LRScheduler.stepDue(target.schedulers, target.lrStates, interval, index, loop.callbackMetrics)
          )
          for (const skipped of next.skipped) yield* Effect.logWarning(`Trainer: learning-rate scheduler skipped: ${skipped}`)
          target.lrStates = next.states
          LRScheduler.setLearningRate(optimizer, next.states[next.states.length - 1]!.lr)
        })
      const takeLogged = (metrics: ReadonlyMap<string, number>) => {
        const merged = new Map([...loop.pendingLogged, ...metrics])
        loop.pendingLogged.clear()
        return merged
      }

      const body = Effect.gen(function*() {
        loop.fitStartMs = yield* Clock.currentTimeMillis
        loop.timeBaseMs = 0
        loop.epochEndPending = false
        loop.accumulated = GradientAccumulation.dispose(tfjs, loop.accumulated)
        yield* call("setup", "fit")
        if (fitOptions?.ckptPath !== undefined) {
          const path = yield* resolveCkptPath(fitOptions.ckptPath, "fit")
          if (Option.isSome(path)) yield* restoreFrom(path.value, module, target, fitOptions.ckptPath === "last", data.numTrainBatches)
        }
        if (options.enableModelSummary !== false) {
          yield* Effect.logInfo(`Trainer: model summary of ${module.name}\n${ModelSummary.format(ModelSummary.summarize(model))}`)
        }
        yield* call("onFitStart")
        const sanitySteps = options.numSanityValSteps ?? 2
        const sanityLimit = Math.min(sanitySteps, resolveLimit(options.limitValBatches, data.numValBatches))
        if (sanityLimit > 0 && loop.resumedFrom === undefined && data.val !== undefined && module.validationStep !== undefined) {
          loop.sanityChecking = true
          yield* call("onSanityCheckStart")
          yield* evaluate("validation", module, model, data.val(), sanityLimit)
          yield* call("onSanityCheckEnd")
          loop.sanityChecking = false
        }
        yield* call("onTrainStart")
        // `limitTrainBatches: 0` disables training (Lightning's rule): no epoch runs.
        while (
          trainLimit > 0 && !(yield* stopping(loop.epoch)) && loop.epoch < maxEpochs && (maxSteps === -1 || loop.globalStep < maxSteps)
        ) {
          const metrics = new Metrics(true)
          const ctx = stepContext(metrics)
          const startBatch = loop.resumeBatch
          loop.resumeBatch = 0
          loop.batchIdx = startBatch
          yield* call("onTrainEpochStart")
          const validateThisEpoch = (loop.epoch + 1) % checkValEveryNEpoch === 0
          let validatedAtEnd = false
          let index = startBatch
          if (index < trainLimit) {
            yield* Stream.runForEachWhile(
              shard(startBatch > 0 ? Stream.drop(train(loop.epoch), startBatch) : train(loop.epoch)),
              (batch) =>
                Effect.gen(function*() {
                  loop.batchIdx = index
                  yield* call("onTrainBatchStart", index)
                  const userLoss = () => seeded(() => module.trainingStep(model, batch, ctx))
                  const n = accumulateAt(loop.epoch)
                  let loss: number
                  let stepped = true
                  if (n === 1 && loop.accumulated === undefined) {
                    loss = yield* withLogs(
                      metrics,
                      `${module.name}.trainingStep`,
                      strategy.trainingStep(model, optimizer, userLoss, { ...stepOptions, metrics: metrics.step })
                    )
                  } else {
                    // Accumulation: sum the gradients of loss / n, one optimizer step per window.
                    const computed = yield* withLogs(
                      metrics,
                      `${module.name}.trainingStep`,
                      strategy.computeGradients(model, userLoss, 1 / n)
                    )
                    loss = computed.loss
                    loop.accumulated = GradientAccumulation.add(tfjs, loop.accumulated, computed.grads)
                    stepped = GradientAccumulation.endsWindow(index, n, perEpoch)
                    if (stepped) {
                      const window = loop.accumulated
                      loop.accumulated = undefined
                      yield* strategy.applyGradients(model, optimizer, window.grads, stepOptions).pipe(
                        Effect.ensuring(Effect.sync(() => GradientAccumulation.dispose(tfjs, window)))
                      )
                    }
                  }
                  if (stepped) {
                    loop.globalStep++
                    yield* stepSchedulers("step", index)
                  }
                  metrics.step.set("loss", loss)
                  const stepMetrics = yield* reduced(metrics.step)
                  loss = stepMetrics.get("loss") ?? loss
                  for (const [k, v] of stepMetrics) loop.callbackMetrics.set(k, v)
                  loop.loggedMetrics = takeLogged(stepMetrics)
                  metrics.step.clear()
                  if (maxSteps !== -1 && loop.globalStep >= maxSteps) loop.shouldStop = true
                  const last = index + 1 >= perEpoch
                  // A checkpoint taken now resumes at the next batch.
                  loop.next = { epoch: loop.epoch, batch: index + 1 }
                  yield* call("onTrainBatchEnd", { loss }, index)
                  // Lightning's Timer checks at the end of every batch.
                  yield* checkTime
                  index++
                  if (validateThisEpoch && isValCheckBatch(index, valEvery)) {
                    if (last) validatedAtEnd = true
                    yield* runValidation(module, model, data)
                  }
                  // Let background fibers (asynchronous checkpoint saves) run.
                  yield* Effect.yieldNow
                  return !(yield* stopping(loop.epoch)) && index < trainLimit
                })
            )
          }
          // The end-of-epoch validation when the batches did not say where the end was:
          // an epoch of unknown length, or a resume from a checkpoint taken after the
          // epoch's last batch (the validation came after that save).
          const resumedAtEnd = startBatch > 0 && startBatch >= perEpoch && isValCheckBatch(perEpoch, valEvery)
          if (validateThisEpoch && !validatedAtEnd && (!Number.isFinite(perEpoch) || resumedAtEnd)) {
            yield* runValidation(module, model, data)
          }
          const stoppedEarly = yield* stopping(loop.epoch)
          const finished = !stoppedEarly || index >= Math.min(perEpoch, trainLimit)
          // An epoch of unknown length ends its last window here.
          if (finished && loop.accumulated !== undefined) {
            const window = loop.accumulated
            loop.accumulated = undefined
            yield* strategy.applyGradients(model, optimizer, window.grads, stepOptions).pipe(
              Effect.ensuring(Effect.sync(() => GradientAccumulation.dispose(tfjs, window)))
            )
            loop.globalStep++
            yield* stepSchedulers("step", index - 1)
          }
          const means = yield* reduced(metrics.means())
          for (const [k, v] of means) loop.callbackMetrics.set(k, v)
          // Loggers see exactly the epoch-level training metrics here (maybe none).
          loop.loggedMetrics = takeLogged(means)
          // Stopped mid-epoch (maxSteps, a callback): a checkpoint resumes at the next
          // batch of this epoch; otherwise at the start of the next epoch.
          loop.next = finished ? { epoch: loop.epoch + 1, batch: 0 } : { epoch: loop.epoch, batch: index }
          loop.epochEndPending = finished
          yield* call("onTrainEpochEnd")
          if (!finished) break
          // Epoch-interval schedulers step after onTrainEpochEnd (Lightning's order).
          yield* stepSchedulers("epoch", loop.epoch)
          loop.epochEndPending = false
          yield* checkTime
          loop.epoch++
          loop.batchIdx = 0
        }
        yield* call("onTrainEnd")
        yield* call("onFitEnd")
        yield* checkpointIO.flush
      })

      yield* body.pipe(
        Effect.onError((cause) =>
          Effect.gen(function*() {
            // The hooks first: the progress display ends its line before this log.
            yield* call("onException", cause).pipe(
              Effect.catchCause((c) => Effect.logError(`onException hook failed: ${Cause.pretty(c)}`))
            )
            // The error itself is returned: whoever runs the fit reports it, once; the
            // full cause is for debugging.
            yield* Cause.hasInterruptsOnly(cause)
              ? Effect.logWarning(`Trainer: fit interrupted at epoch ${loop.epoch}, step ${loop.globalStep}; flushing pending checkpoints`)
              : Effect.logDebug(`Trainer: fit failed at epoch ${loop.epoch}, step ${loop.globalStep}: ${Cause.pretty(cause)}`)
            // Bounded: a hung write must not hang the exit. After a failure (not an
            // interruption) the wait is interruptible too, so a Ctrl-C stops it.
            const limit = Option.getOrElse(Duration.fromInput(options.shutdownFlushTimeout ?? "60 seconds"), () => Duration.minutes(1))
            const bounded = checkpointIO.flush.pipe(
              Effect.interruptible,
              Effect.timeout(limit),
              Effect.catchTag("TimeoutError", () =>
                Effect.logError(
                  `Trainer: gave up waiting for pending checkpoint saves after ${Duration.format(limit)} (shutdownFlushTimeout); ` +
                    `they may not be in storage`
                ))
            )
            yield* (Cause.hasInterruptsOnly(cause) ? bounded : Effect.interruptible(bounded)).pipe(
              Effect.catchCause((c) => Effect.logError(`flushing checkpoints after a failure: ${Cause.pretty(c)}`))
            )
          })
        ),
        Effect.ensuring(call("teardown", "fit").pipe(Effect.catchCause((c) => Effect.logError(`teardown: ${Cause.pretty(c)}`))))
      )
    })

    /** Loads the weights of `ckptPath` into the module's model (validate / test / predict). */
    const loadEvalWeights = (fn: string, model: tf.LayersModel, ckptPath: string | undefined) =>
      Effect.gen(function*() {
        if (ckptPath === undefined) return
        const path = yield* resolveCkptPath(ckptPath, fn)
        if (Option.isNone(path)) return
        const record = yield* checkpointIO.load(path.value, { dtypes: "tfjs" })
        const described = yield* strategy.describe(model, undefined)
        const matched = CheckpointConnector.matchWeights(record, path.value, described.model, { strict: true })
        if (Result.isFailure(matched)) return yield* matched.failure
        yield* strategy.restore(model, undefined, { path: path.value, model: matched.success.assignments.map((a) => a.tensor) })
        yield* Effect.logInfo(`Trainer: ${fn} with the weights of ${path.value}`)
      })

    const evaluateStage =
      (kind: "validate" | "test") =>
      <B, M extends tf.LayersModel>(module: TrainingModule<B, M>, data: DataModule<B>, evalOptions?: EvaluateOptions) =>
        Effect.gen(function*() {
          loop.stage = kind
          const { model } = yield* ensureBuilt(module)
          yield* loadEvalWeights(kind, model, evalOptions?.ckptPath)
          yield* call("setup", kind)
          const stream = kind === "validate" ? data.val : data.test
          if (stream === undefined) {
            return yield* new TrainerConfigError({ reason: `${kind} needs DataModule.${kind === "validate" ? "val" : "test"}` })
          }
          const limit = kind === "validate"
            ? resolveLimit(options.limitValBatches, data.numValBatches)
            : resolveLimit(options.limitTestBatches, data.numTestBatches)
          // A limit of 0 disables the loop (Lightning's rule): no batches, no hooks.
          if (limit === 0) return new Map<string, number>()
          return yield* evaluate(kind === "validate" ? "validation" : "test", module, model, stream(), limit).pipe(
            Effect.ensuring(call("teardown", kind).pipe(Effect.catchCause((c) => Effect.logError(`teardown: ${Cause.pretty(c)}`))))
          )
        }).pipe(Effect.withSpan(`Trainer.${kind}`))

    const predict: TrainerShape["predict"] = (module, data, evalOptions) =>
      Effect.gen(function*() {
        loop.stage = "predict"
        const { model } = yield* ensureBuilt(module)
        yield* loadEvalWeights("predict", model, evalOptions?.ckptPath)
        if (data.predict === undefined || module.predictStep === undefined) {
          return yield* new TrainerConfigError({ reason: "predict needs DataModule.predict and TrainingModule.predictStep" })
        }
        const step = module.predictStep
        const metrics = new Metrics(false)
        const ctx = stepContext(metrics)
        const limit = resolveLimit(options.limitPredictBatches, undefined)
        const outputs: Array<HostTensor> = []
        if (limit === 0) return outputs
        yield* call("onPredictStart")
        let index = 0
        yield* Stream.runForEachWhile(data.predict(), (batch) =>
          Effect.gen(function*() {
            loop.batchIdx = index
            const what = `${module.name}.predictStep`
            const out = yield* withLogs(metrics, what, runStep(what, () => step(model, batch, ctx)))
            const staged = yield* device.stage({ out }).pipe(Effect.ensuring(Effect.sync(() => out.dispose())))
            outputs.push(staged["out"]!)
            yield* call("onPredictBatchEnd", index)
            index++
            return index < limit
          }))
        yield* call("onPredictEnd")
        return outputs
      }).pipe(Effect.withSpan("Trainer.predict"))

    return {
      fit,
      validate: evaluateStage("validate"),
      test: evaluateStage("test"),
      predict,
      saveCheckpoint: (path, saveOptions) => saveCheckpoint(path, saveOptions),
      state,
      checkpointIO,
      // Lightning's `trainer.strategy.checkpoint_io` is the store in use.
      strategy: { ...strategy, checkpointIO },
      callbacks,
      checkpointCallbacks,
      model: (module) => Option.map(Option.fromNullishOr(built.get(module)), (b) => b.model as never)
    } satisfies TrainerShape
  })

/**
 * The Trainer over the `Strategy` in context. The layer fails with
 * `TrainerConfigError` when the options contradict each other or the strategy.
 */
export const layer = <E = never, R = never>(
  options: TrainerOptions<E, R> = {}
): Layer.Layer<Trainer, TrainerConfigError | E, Strategy | R | FileSystem.FileSystem | Path.Path> => Layer.effect(Trainer, make(options))
