/**
 * `EarlyStopping`: stops a fit when a monitored metric stops improving (Lightning's
 * `EarlyStopping` callback, same options and decisions).
 *
 * The decision is a pure function (`evaluate`) from the callback's state and the
 * metric's new value to the next state, whether to stop and why, in Lightning's
 * order: a non-finite value (`checkFinite`), the `stoppingThreshold`, the
 * `divergenceThreshold`, an improvement by more than `minDelta` (the wait count goes
 * back to 0), else one more record without improvement (stop once the wait count
 * reaches `patience`). The callback is stateful: its wait count, best score and
 * stopped epoch go into every checkpoint, so a resumed run stops at the same epoch.
 *
 * When it checks: after each validation (`onValidationEnd`), or at the end of each
 * training epoch with `checkOnTrainEpochEnd: true`. Left unset, it checks after each
 * validation and, in an epoch that ran none, at the epoch's end (with Lightning's
 * defaults both land on the same point: after the epoch's validation; an epoch cut
 * short by a stop request is not checked at its end then). Never during
 * the sanity check nor outside `fit`. A stop request before `minEpochs` / `minSteps`
 * is deferred by the Trainer (Lightning's rule).
 *
 * @example
 * ```ts
 * Trainer.layer({ callbacks: [EarlyStopping.make({ monitor: "val_loss", patience: 3 })] })
 * ```
 *
 * @since 0.3.0
 */
import { Effect, Result, Schema } from "effect"
import type { Json } from "effect/Schema"
import * as Callback from "./Callback.ts"

/**
 * Options, with Lightning's names and defaults.
 *
 * @since 0.3.0
 */
export interface EarlyStoppingOptions {
  /** The metric to watch (a key of `callbackMetrics`, e.g. `"val_loss"`). */
  readonly monitor: string
  /** The least change that counts as an improvement (default 0; its sign is ignored). */
  readonly minDelta?: number | undefined
  /** Checks without improvement before stopping (default 3); 0 stops at the first one. */
  readonly patience?: number | undefined
  /** `"min"`: lower is better (default); `"max"`: higher is better. */
  readonly mode?: "min" | "max" | undefined
  /** Fail when the metric is missing at a check (default true); otherwise skip the check. */
  readonly strict?: boolean | undefined
  /** Stop when the metric is NaN or infinite (default true). */
  readonly checkFinite?: boolean | undefined
  /** Stop at once when the metric is better than this. */
  readonly stoppingThreshold?: number | undefined
  /** Stop at once when the metric is worse than this. */
  readonly divergenceThreshold?: number | undefined
  /** Check at the end of each training epoch instead of after each validation (see the module doc for the default). */
  readonly checkOnTrainEpochEnd?: boolean | undefined
  /** Log every check's outcome, not only the stop (default false). */
  readonly verbose?: boolean | undefined
  /** The state key in checkpoints (default `EarlyStopping{monitor=<monitor>, mode=<mode>}`, Lightning's). */
  readonly stateKey?: string | undefined
}

/**
 * The callback's state, as saved in checkpoints. `bestScore` is null before the
 * first finite check (Lightning's ±infinity, which JSON cannot hold).
 *
 * @since 0.3.0
 */
export const EarlyStoppingState = Schema.Struct({
  waitCount: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  stoppedEpoch: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  bestScore: Schema.NullOr(Schema.Number),
  patience: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
})

/** @since 0.3.0 */
export type EarlyStoppingState = typeof EarlyStoppingState.Type

/**
 * The options with their defaults filled in.
 *
 * @since 0.3.0
 */
export interface Resolved {
  readonly monitor: string
  readonly minDelta: number
  readonly mode: "min" | "max"
  readonly checkFinite: boolean
  readonly stoppingThreshold: number | undefined
  readonly divergenceThreshold: number | undefined
}

/**
 * The initial state for a patience.
 *
 * @since 0.3.0
 */
export const initialState = (patience = 3): EarlyStoppingState => ({ waitCount: 0, stoppedEpoch: 0, bestScore: null, patience })

/**
 * One check's outcome: the next state, whether to stop, and the reason (a log line).
 *
 * @since 0.3.0
 */
export interface Decision {
  readonly state: EarlyStoppingState
  readonly shouldStop: boolean
  readonly reason: string | undefined
}

const fmt = (x: number) => x.toFixed(3)

/**
 * Lightning's `_evaluate_stopping_criteria`, as a pure function. Comparisons with
 * NaN are false, so with `checkFinite: false` a NaN counts as no improvement.
 *
 * @since 0.3.0
 */
export const evaluate = (options: Resolved, state: EarlyStoppingState, current: number): Decision => {
  const better = options.mode === "min" ? (a: number, b: number) => a < b : (a: number, b: number) => a > b
  const best = state.bestScore ?? (options.mode === "min" ? Infinity : -Infinity)
  // Lightning flips minDelta's sign for "min": an improvement is current - delta beyond best.
  const delta = options.mode === "min" ? -Math.abs(options.minDelta) : Math.abs(options.minDelta)
  const { monitor } = options
  const op = options.mode === "min" ? "<" : ">"
  if (options.checkFinite && !Number.isFinite(current)) {
    return {
      state,
      shouldStop: true,
      reason: `Monitored metric ${monitor} = ${current} is not finite. Previous best value was ${fmt(best)}. Signaling Trainer to stop.`
    }
  }
  if (options.stoppingThreshold !== undefined && better(current, options.stoppingThreshold)) {
    return {
      state,
      shouldStop: true,
      reason: `Stopping threshold reached: ${monitor} = ${current} ${op} ${options.stoppingThreshold}. Signaling Trainer to stop.`
    }
  }
  if (options.divergenceThreshold !== undefined && better(-current, -options.divergenceThreshold)) {
    return {
      state,
      shouldStop: true,
      reason: `Divergence threshold reached: ${monitor} = ${current} ${
        options.mode === "min" ? ">" : "<"
      } ${options.divergenceThreshold}. Signaling Trainer to stop.`
    }
  }
  if (better(current - delta, best)) {
    const reason = Number.isFinite(best)
      ? `Metric ${monitor} improved by ${fmt(Math.abs(best - current))} >= min_delta = ${Math.abs(options.minDelta)}. New best score: ${
        fmt(current)
      }`
      : `Metric ${monitor} improved. New best score: ${fmt(current)}`
    return { state: { ...state, bestScore: current, waitCount: 0 }, shouldStop: false, reason }
  }
  const waitCount = state.waitCount + 1
  const shouldStop = waitCount >= state.patience
  return {
    state: { ...state, waitCount },
    shouldStop,
    reason: shouldStop
      ? `Monitored metric ${monitor} did not improve in the last ${waitCount} records. Best score: ${fmt(best)}. Signaling Trainer to stop.`
      : undefined
  }
}

/**
 * The EarlyStopping callback, with its live state.
 *
 * @since 0.3.0
 */
export interface EarlyStopping extends Callback.Callback {
  /** The state now (wait count, best score, stopped epoch). */
  readonly state: EarlyStoppingState
}

/**
 * Builds an EarlyStopping callback. A negative or fractional patience fails the fit
 * at its `setup` with a `CallbackError`.
 *
 * @since 0.3.0
 */
export const make = (options: EarlyStoppingOptions): EarlyStopping => {
  const mode = options.mode ?? "min"
  const patience = options.patience ?? 3
  const resolved: Resolved = {
    monitor: options.monitor,
    minDelta: options.minDelta ?? 0,
    mode,
    checkFinite: options.checkFinite ?? true,
    stoppingThreshold: options.stoppingThreshold,
    divergenceThreshold: options.divergenceThreshold
  }
  const strict = options.strict ?? true
  const verbose = options.verbose ?? false
  let state = initialState(patience)
  let validatedThisEpoch = false
  const name = "EarlyStopping"

  const check = (trainer: Callback.TrainerState): Effect.Effect<void, Callback.HookError> =>
    Effect.gen(function*() {
      if (trainer.stage !== "fit" || trainer.sanityChecking) return
      const current = trainer.callbackMetrics.get(resolved.monitor)
      if (current === undefined) {
        const available = [...trainer.callbackMetrics.keys()].join(", ")
        const reason = `Early stopping conditioned on metric \`${resolved.monitor}\` which is not available. ` +
          `Pass in or modify your EarlyStopping callback to use any of the following: ${available || "(none)"}`
        if (strict) return yield* new Callback.CallbackError({ callback: name, reason })
        if (verbose) yield* Effect.logWarning(`EarlyStopping: ${reason}`)
        return
      }
      const decision = evaluate(resolved, state, current)
      state = decision.state
      if (decision.shouldStop) {
        state = { ...state, stoppedEpoch: trainer.currentEpoch }
        trainer.stop()
        yield* Effect.logInfo(`EarlyStopping: stopping at epoch ${trainer.currentEpoch}, step ${trainer.globalStep}: ${decision.reason}`)
      } else if (verbose && decision.reason !== undefined) {
        yield* Effect.logInfo(`EarlyStopping: ${decision.reason}`)
      }
    })

  return {
    name,
    stateKey: options.stateKey ?? `EarlyStopping{monitor=${options.monitor}, mode=${mode}}`,
    get state() {
      return state
    },
    stateDict: (): Json => ({ ...state }),
    loadStateDict: (saved) =>
      Result.match(Schema.decodeUnknownResult(EarlyStoppingState)(saved), {
        onFailure: (error) =>
          Effect.fail(
            new Callback.CallbackError({
              callback: name,
              reason: `a saved state that is not EarlyStopping's: ${error.message}`,
              cause: error
            })
          ),
        onSuccess: (decoded) =>
          Effect.sync(() => {
            state = decoded
          })
      }),
    setup: () =>
      Number.isInteger(patience) && patience >= 0
        ? Effect.void
        : Effect.fail(new Callback.CallbackError({ callback: name, reason: `patience must be an integer ≥ 0, got ${patience}` })),
    onTrainEpochStart: () =>
      Effect.sync(() => {
        validatedThisEpoch = false
      }),
    onValidationEnd: (trainer) =>
      Effect.suspend(() => {
        if (trainer.sanityChecking) return Effect.void
        validatedThisEpoch = true
        return options.checkOnTrainEpochEnd === true ? Effect.void : check(trainer)
      }),
    onTrainEpochEnd: (trainer) =>
      options.checkOnTrainEpochEnd === true ||
        (options.checkOnTrainEpochEnd === undefined && !validatedThisEpoch && !trainer.shouldStop)
        ? check(trainer)
        : Effect.void
  }
}
