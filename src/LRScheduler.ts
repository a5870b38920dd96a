/**
 * `LRScheduler`: learning-rate schedules (PyTorch's `torch.optim.lr_scheduler`, with
 * Lightning's scheduler configuration), as pure functions of their state.
 *
 * A `Scheduler` is a value: `init(baseLr)` gives its first state, `step(state,
 * metric)` the next one; the rate is `state.lr`. Nothing is mutated, so the state is
 * plain JSON that goes into checkpoints (`meta.loops.fit.lrSchedulers`, validated
 * with `SchedulerState` before anything is applied) and a resumed run continues the
 * same sequence bit for bit.
 *
 * `TrainingModule.configureOptimizers` may return an optimizer alone, or Lightning's
 * shape `{ optimizer, lrScheduler: { scheduler, interval, frequency, monitor } }`.
 * The Trainer steps a scheduler after every `frequency` optimizer steps
 * (`interval: "step"`) or epochs (`interval: "epoch"`, the default; after
 * `onTrainEpochEnd`), and writes the rate into the tfjs optimizer
 * (`setLearningRate` on SGD / Momentum, the `learningRate` field of Adam, Adamax,
 * RMSProp, Adagrad and Adadelta); any other optimizer is refused with an
 * `LRSchedulerError` when the model is built.
 *
 * @example
 * ```ts
 * configureOptimizers: (tf) => ({
 *   optimizer: tf.train.adam(0.01),
 *   lrScheduler: { scheduler: LRScheduler.cosineAnnealing({ tMax: 10 }), interval: "epoch" }
 * })
 * ```
 *
 * @since 0.3.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Data, Effect, Result, Schema } from "effect"
import * as Callback from "./Callback.ts"

/**
 * A learning rate cannot be read or set, or a scheduler is misconfigured.
 *
 * @since 0.3.0
 */
export class LRSchedulerError extends Data.TaggedError("LRSchedulerError")<{
  readonly scheduler: string
  readonly reason: "unsupported-optimizer" | "invalid-config" | "missing-monitor"
  readonly detail: string
}> {
  override get message(): string {
    return `learning-rate scheduler ${this.scheduler}: ${this.detail}`
  }
}

/**
 * A scheduler's state, as saved in checkpoints: the steps taken (PyTorch's
 * `last_epoch`), the base and current rate, and ReduceLROnPlateau's bookkeeping.
 *
 * @since 0.3.0
 */
export const SchedulerState = Schema.Struct({
  kind: Schema.String,
  stepCount: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  baseLr: Schema.Finite,
  lr: Schema.Finite,
  /** ReduceLROnPlateau: the best metric so far (null before the first). */
  best: Schema.optional(Schema.NullOr(Schema.Finite)),
  numBadEpochs: Schema.optional(Schema.Int),
  cooldownCounter: Schema.optional(Schema.Int)
})

/** @since 0.3.0 */
export type SchedulerState = typeof SchedulerState.Type

/**
 * A learning-rate schedule: pure functions of its state.
 *
 * @since 0.3.0
 */
export interface Scheduler {
  /** The kind (`"StepLR"`, `"CosineAnnealingLR"`, …), checked on restore. */
  readonly kind: string
  /** Whether `step` needs the monitored metric (ReduceLROnPlateau). */
  readonly needsMetric: boolean
  readonly init: (baseLr: number) => SchedulerState
  readonly step: (state: SchedulerState, metric: number | undefined) => SchedulerState
}

const closedForm = (kind: string, lrAt: (baseLr: number, n: number) => number): Scheduler => ({
  kind,
  needsMetric: false,
  init: (baseLr) => ({ kind, stepCount: 0, baseLr, lr: lrAt(baseLr, 0) }),
  step: (state) => ({ ...state, stepCount: state.stepCount + 1, lr: lrAt(state.baseLr, state.stepCount + 1) })
})

/**
 * PyTorch's `StepLR`: the rate times `gamma` every `stepSize` steps.
 *
 * @since 0.3.0
 */
export const step = (options: { readonly stepSize: number; readonly gamma?: number | undefined }): Scheduler => {
  const gamma = options.gamma ?? 0.1
  return closedForm("StepLR", (base, n) => base * gamma ** Math.floor(n / options.stepSize))
}

/**
 * PyTorch's `MultiStepLR`: the rate times `gamma` at each milestone.
 *
 * @since 0.3.0
 */
export const multiStep = (options: { readonly milestones: ReadonlyArray<number>; readonly gamma?: number | undefined }): Scheduler => {
  const gamma = options.gamma ?? 0.1
  return closedForm("MultiStepLR", (base, n) => base * gamma ** options.milestones.filter((m) => m <= n).length)
}

/**
 * PyTorch's `ExponentialLR`: the rate times `gamma` every step.
 *
 * @since 0.3.0
 */
export const exponential = (options: { readonly gamma: number }): Scheduler =>
  closedForm("ExponentialLR", (base, n) => base * options.gamma ** n)

/**
 * PyTorch's `CosineAnnealingLR` (closed form): from the base rate down to `etaMin`
 * over `tMax` steps along half a cosine (and back up after, as PyTorch's).
 *
 * @since 0.3.0
 */
export const cosineAnnealing = (options: { readonly tMax: number; readonly etaMin?: number | undefined }): Scheduler => {
  const etaMin = options.etaMin ?? 0
  return closedForm("CosineAnnealingLR", (base, n) => etaMin + ((base - etaMin) * (1 + Math.cos((Math.PI * n) / options.tMax))) / 2)
}

/**
 * Linear warm-up (PyTorch's `LinearLR` with `endFactor` 1): the rate grows from
 * `startFactor` × base to base over `warmupSteps` steps, then stays.
 *
 * @since 0.3.0
 */
export const linearWarmup = (options: { readonly warmupSteps: number; readonly startFactor?: number | undefined }): Scheduler => {
  const start = options.startFactor ?? 1 / 3
  return closedForm("LinearLR", (base, n) => base * (start + ((1 - start) * Math.min(n, options.warmupSteps)) / options.warmupSteps))
}

/**
 * PyTorch's `OneCycleLR` (two phases, cosine annealing): from `maxLr / divFactor` up
 * to `maxLr` over `pctStart` of `totalSteps`, then down to `maxLr / divFactor /
 * finalDivFactor`. It ignores the optimizer's own rate, as PyTorch's does.
 *
 * @since 0.3.0
 */
export const oneCycle = (options: {
  readonly maxLr: number
  readonly totalSteps: number
  readonly pctStart?: number | undefined
  readonly divFactor?: number | undefined
  readonly finalDivFactor?: number | undefined
}): Scheduler => {
  const initial = options.maxLr / (options.divFactor ?? 25)
  const min = initial / (options.finalDivFactor ?? 1e4)
  const upEnd = (options.pctStart ?? 0.3) * options.totalSteps - 1
  const downEnd = options.totalSteps - 1
  const cos = (start: number, end: number, pct: number) => end + ((start - end) / 2) * (1 + Math.cos(Math.PI * pct))
  return closedForm("OneCycleLR", (_base, n) =>
    n <= upEnd
      ? cos(initial, options.maxLr, upEnd <= 0 ? 1 : n / upEnd)
      : cos(options.maxLr, min, Math.min(1, (n - upEnd) / (downEnd - upEnd))))
}

/**
 * PyTorch's `ReduceLROnPlateau`: the rate times `factor` once the monitored metric
 * has not improved for more than `patience` steps (relative or absolute
 * `threshold`), then `cooldown` steps of rest; never below `minLr`. Needs `monitor`
 * in its configuration.
 *
 * @since 0.3.0
 */
export const reduceOnPlateau = (options: {
  readonly mode?: "min" | "max" | undefined
  readonly factor?: number | undefined
  readonly patience?: number | undefined
  readonly threshold?: number | undefined
  readonly thresholdMode?: "rel" | "abs" | undefined
  readonly cooldown?: number | undefined
  readonly minLr?: number | undefined
  readonly eps?: number | undefined
} = {}): Scheduler => {
  const mode = options.mode ?? "min"
  const factor = options.factor ?? 0.1
  const patience = options.patience ?? 10
  const threshold = options.threshold ?? 1e-4
  const rel = (options.thresholdMode ?? "rel") === "rel"
  const cooldown = options.cooldown ?? 0
  const minLr = options.minLr ?? 0
  const eps = options.eps ?? 1e-8
  const better = (a: number, best: number | null) => {
    if (best === null) return Number.isFinite(a)
    if (mode === "min") return a < (rel ? best * (1 - threshold) : best - threshold)
    return a > (rel ? best * (threshold + 1) : best + threshold)
  }
  const kind = "ReduceLROnPlateau"
  return {
    kind,
    needsMetric: true,
    init: (baseLr) => ({ kind, stepCount: 0, baseLr, lr: baseLr, best: null, numBadEpochs: 0, cooldownCounter: 0 }),
    step: (state, metric) => {
      const current = metric ?? NaN
      let best = state.best ?? null
      let bad = state.numBadEpochs ?? 0
      let cool = state.cooldownCounter ?? 0
      let lr = state.lr
      if (better(current, best)) {
        best = current
        bad = 0
      } else {
        bad += 1
      }
      if (cool > 0) {
        cool -= 1
        bad = 0
      }
      if (bad > patience) {
        const reduced = Math.max(lr * factor, minLr)
        if (lr - reduced > eps) lr = reduced
        cool = cooldown
        bad = 0
      }
      return { ...state, stepCount: state.stepCount + 1, lr, best, numBadEpochs: bad, cooldownCounter: cool }
    }
  }
}

/**
 * Lightning's scheduler configuration.
 *
 * @since 0.3.0
 */
export interface LRSchedulerConfig {
  readonly scheduler: Scheduler
  /** Step per optimizer step or per epoch (default `"epoch"`). */
  readonly interval?: "epoch" | "step" | undefined
  /** Step every N intervals (default 1). */
  readonly frequency?: number | undefined
  /** The metric ReduceLROnPlateau watches (a key of `callbackMetrics`). */
  readonly monitor?: string | undefined
  /** Fail when `monitor` is missing at a step (default true); otherwise skip that step with a warning. */
  readonly strict?: boolean | undefined
}

/**
 * What `configureOptimizers` returns: an optimizer alone, or with a scheduler
 * (a bare `Scheduler` is `{ scheduler, interval: "epoch" }`).
 *
 * @since 0.3.0
 */
export type OptimizerConfiguration =
  | tf.Optimizer
  | { readonly optimizer: tf.Optimizer; readonly lrScheduler?: Scheduler | LRSchedulerConfig | undefined }

/**
 * A scheduler configuration with its defaults filled in.
 *
 * @since 0.3.0
 */
export interface ResolvedConfig {
  readonly scheduler: Scheduler
  readonly interval: "epoch" | "step"
  readonly frequency: number
  readonly monitor: string | undefined
  readonly strict: boolean
}

const isScheduler = (x: Scheduler | LRSchedulerConfig): x is Scheduler => "step" in x && typeof x.step === "function"

/**
 * Splits what `configureOptimizers` returned into the optimizer and the resolved
 * scheduler configurations, checking them.
 *
 * @since 0.3.0
 */
export const normalize = (
  configured: OptimizerConfiguration
): Result.Result<{ readonly optimizer: tf.Optimizer; readonly schedulers: ReadonlyArray<ResolvedConfig> }, LRSchedulerError> => {
  if (!("optimizer" in configured) || typeof (configured as { optimizer?: unknown }).optimizer !== "object") {
    return Result.succeed({ optimizer: configured as tf.Optimizer, schedulers: [] })
  }
  const { optimizer, lrScheduler } = configured as Exclude<OptimizerConfiguration, tf.Optimizer>
  if (lrScheduler === undefined) return Result.succeed({ optimizer, schedulers: [] })
  const config: LRSchedulerConfig = isScheduler(lrScheduler) ? { scheduler: lrScheduler } : lrScheduler
  const frequency = config.frequency ?? 1
  const kind = config.scheduler.kind
  if (!Number.isInteger(frequency) || frequency < 1) {
    return Result.fail(
      new LRSchedulerError({ scheduler: kind, reason: "invalid-config", detail: `frequency must be an integer ≥ 1, got ${frequency}` })
    )
  }
  if (config.scheduler.needsMetric && config.monitor === undefined) {
    return Result.fail(
      new LRSchedulerError({ scheduler: kind, reason: "missing-monitor", detail: `${kind} needs a monitor in its configuration` })
    )
  }
  return Result.succeed({
    optimizer,
    schedulers: [{
      scheduler: config.scheduler,
      interval: config.interval ?? "epoch",
      frequency,
      monitor: config.monitor,
      strict: config.strict ?? true
    }]
  })
}

/**
 * The optimizer of what `configureOptimizers` returned (for code that calls it
 * directly, e.g. to build a fresh optimizer to restore into).
 *
 * @since 0.3.0
 */
export const optimizerOf = (configured: OptimizerConfiguration): tf.Optimizer =>
  "optimizer" in configured && typeof (configured as { optimizer?: unknown }).optimizer === "object"
    ? (configured as Exclude<OptimizerConfiguration, tf.Optimizer>).optimizer
    : configured as tf.Optimizer

/** Optimizers whose rate is read in every `applyGradients` from a field. */
const fieldRate = new Set(["Adam", "Adamax", "RMSProp", "Adagrad", "Adadelta"])
/** Optimizers that cache the rate in a tensor, updated by `setLearningRate`. */
const setterRate = new Set(["SGD", "Momentum"])

/**
 * The optimizer's learning rate; an `LRSchedulerError` for an optimizer whose rate
 * the Trainer does not know how to set.
 *
 * @since 0.3.0
 */
export const getLearningRate = (optimizer: tf.Optimizer, scheduler = "LearningRate"): Result.Result<number, LRSchedulerError> => {
  const className = optimizer.getClassName()
  const lr = (optimizer as unknown as { learningRate?: unknown }).learningRate
  if ((!fieldRate.has(className) && !setterRate.has(className)) || typeof lr !== "number") {
    return Result.fail(
      new LRSchedulerError({
        scheduler,
        reason: "unsupported-optimizer",
        detail: `the learning rate of ${className} cannot be set (supported: ${[...setterRate, ...fieldRate].join(", ")})`
      })
    )
  }
  return Result.succeed(lr)
}

/**
 * Writes a rate into the optimizer (checked by `getLearningRate` first).
 *
 * @since 0.3.0
 */
export const setLearningRate = (optimizer: tf.Optimizer, lr: number): void => {
  if (setterRate.has(optimizer.getClassName())) (optimizer as unknown as tf.SGDOptimizer).setLearningRate(lr)
  else (optimizer as unknown as { learningRate: number }).learningRate = lr
}

/**
 * Whether a scheduler of this configuration steps now: after the `index`-th (0-based)
 * batch or epoch of its interval, every `frequency`.
 *
 * @since 0.3.0
 */
export const isDue = (config: ResolvedConfig, interval: "epoch" | "step", index: number): boolean =>
  config.interval === interval && (index + 1) % config.frequency === 0

/**
 * Steps the schedulers due now (`interval`, the 0-based batch or epoch `index`),
 * reading a monitored metric from `metrics`: the next states, or the states as they
 * were for a scheduler skipped (its monitor missing, `strict: false`; named in
 * `skipped`). A missing monitor with `strict` is an `LRSchedulerError`.
 *
 * @since 0.3.0
 */
export const stepDue = (
  configs: ReadonlyArray<ResolvedConfig>,
  states: ReadonlyArray<SchedulerState>,
  interval: "epoch" | "step",
  index: number,
  metrics: ReadonlyMap<string, number>
): Result.Result<{ readonly states: ReadonlyArray<SchedulerState>; readonly skipped: ReadonlyArray<string> }, LRSchedulerError> => {
  const next: Array<SchedulerState> = []
  const skipped: Array<string> = []
  for (let i = 0; i < configs.length; i++) {
    const config = configs[i]!
    const state = states[i]!
    if (!isDue(config, interval, index)) {
      next.push(state)
      continue
    }
    let metric: number | undefined = undefined
    if (config.scheduler.needsMetric) {
      metric = metrics.get(config.monitor!)
      if (metric === undefined) {
        if (config.strict) {
          return Result.fail(
            new LRSchedulerError({
              scheduler: config.scheduler.kind,
              reason: "missing-monitor",
              detail: `the monitored metric ${config.monitor} is not available (have: ${[...metrics.keys()].join(", ") || "none"})`
            })
          )
        }
        skipped.push(`${config.scheduler.kind}: ${config.monitor} not available`)
        next.push(state)
        continue
      }
    }
    next.push(config.scheduler.step(state, metric))
  }
  return Result.succeed({ states: next, skipped })
}

/**
 * The `LearningRateMonitor` callback (Lightning's): logs each optimizer's rate as
 * `lr-<OptimizerClass>` into the metrics loggers see, at every training batch start
 * (`loggingInterval: "step"`, default) or epoch start (`"epoch"`).
 *
 * @since 0.3.0
 */
export const learningRateMonitor = (options: { readonly loggingInterval?: "step" | "epoch" | undefined } = {}): Callback.Callback => {
  const logRates = (trainer: Callback.TrainerState) =>
    Effect.sync(() => {
      for (const [name, lr] of trainer.learningRates ?? new Map()) trainer.log?.(`lr-${name}`, lr)
    })
  return (options.loggingInterval ?? "step") === "step"
    ? { name: "LearningRateMonitor", onTrainBatchStart: logRates }
    : { name: "LearningRateMonitor", onTrainEpochStart: logRates }
}
