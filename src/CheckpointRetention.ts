/**
 * `CheckpointRetention`: which checkpoints `ModelCheckpoint` keeps, as pure
 * decisions (Lightning's top-k rules).
 *
 * A `TopK` is the state of the decision: the kept checkpoints and their scores (in the
 * order they were added), the worst of them (`kthBestModelPath`, the next to go once
 * k are kept) and the best. Each function takes a state and returns the next one, with
 * the files the decision rotates out: nothing here mutates, saves or deletes. The
 * callback performs the actions through its `CheckpointIO` and commits the next state
 * only once storage says they succeeded, so a failed save leaves the committed state
 * as it was, with no rollback to write.
 *
 * The rules:
 * - with a monitored metric, the `saveTopK` best by `mode` (`"min"` or `"max"`); a NaN
 *   counts as the worst value (stored as ±Infinity); a tie never replaces a kept
 *   checkpoint; `saveTopK: -1` keeps all, `0` none;
 * - without one, the newest (`saveTopK: 1`), all (`-1`) or none (`0`).
 *
 * What may actually be removed (never the newest file, the resumed-from file, a file
 * still tracked, or one outside the directory) is the callback's check, made at removal
 * time against storage; this module only says what is no longer kept.
 *
 * @since 0.3.0
 */

/**
 * Whether a lower (`"min"`) or a higher (`"max"`) value is better.
 *
 * @since 0.3.0
 */
export type Mode = "min" | "max"

/**
 * What the decision depends on.
 *
 * @since 0.3.0
 */
export interface Policy {
  readonly mode: Mode
  /** -1: all; 0: none; k ≥ 1: the k best. */
  readonly saveTopK: number
}

/**
 * The state of the top-k decision.
 *
 * @since 0.3.0
 */
export interface TopK {
  /** Kept checkpoints → score, in the order they were added. */
  readonly models: ReadonlyMap<string, number>
  /** The worst kept once k are kept (the next to go). */
  readonly kthBestModelPath: string | undefined
  readonly kthValue: number
  /** The best kept (without a monitor: the newest). */
  readonly bestModelPath: string | undefined
  readonly bestModelScore: number | undefined
  /** The score of the latest admitted checkpoint. */
  readonly currentScore: number | undefined
}

/**
 * A decision: the next state, and the checkpoints it no longer keeps (to remove once
 * the new one is committed).
 *
 * @since 0.3.0
 */
export interface Decision {
  readonly state: TopK
  readonly rotatedOut: ReadonlyArray<string>
}

/**
 * The worst possible value for `mode` (what NaN is stored as).
 *
 * @since 0.3.0
 */
export const worst = (mode: Mode): number => (mode === "min" ? Infinity : -Infinity)

/**
 * Nothing kept yet.
 *
 * @since 0.3.0
 */
export const empty = (mode: Mode): TopK => ({
  models: new Map(),
  kthBestModelPath: undefined,
  kthValue: worst(mode),
  bestModelPath: undefined,
  bestModelScore: undefined,
  currentScore: undefined
})

/**
 * Is `a` strictly better than `b`? (A comparison with NaN is false.)
 *
 * @since 0.3.0
 */
export const isBetter = (mode: Mode, a: number, b: number): boolean => (mode === "min" ? a < b : a > b)

/**
 * Would a checkpoint scoring `value` be kept (Lightning's `check_monitor_top_k`)?
 * NaN never enters a full top-k.
 *
 * @since 0.3.0
 */
export const wouldKeep = (policy: Policy, state: TopK, value: number): boolean => {
  const k = policy.saveTopK
  if (k === 0) return false
  if (k === -1 || state.models.size < k) return true
  const kth = state.kthBestModelPath === undefined ? undefined : state.models.get(state.kthBestModelPath)
  return kth === undefined || isBetter(policy.mode, value, kth)
}

/**
 * The checkpoint a new top-k checkpoint replaces (k are kept already), whose name the
 * new one may take over.
 *
 * @since 0.3.0
 */
export const replaced = (policy: Policy, state: TopK): string | undefined => {
  const k = policy.saveTopK === -1 ? state.models.size + 1 : policy.saveTopK
  return state.models.size === k && k > 0 ? state.kthBestModelPath : undefined
}

/** The best and the worst of `models` (the first of equals, like Python's max/min over a dict). */
const extremes = (mode: Mode, models: ReadonlyMap<string, number>) => {
  let best: string | undefined
  let worstPath: string | undefined
  for (const [p, s] of models) {
    if (best === undefined || isBetter(mode, s, models.get(best)!)) best = p
    if (worstPath === undefined || isBetter(mode, models.get(worstPath)!, s)) worstPath = p
  }
  return { best, worst: worstPath }
}

/**
 * Admits a monitored checkpoint at `path` scoring `value` (call it when `wouldKeep`
 * said yes): the worst kept goes when k are kept; an existing key keeps its place
 * (Python's dict assignment).
 *
 * @since 0.3.0
 */
export const admit = (policy: Policy, state: TopK, path: string, value: number): Decision => {
  const k = policy.saveTopK === -1 ? state.models.size + 1 : policy.saveTopK
  const models = new Map(state.models)
  const rotated = replaced(policy, state)
  if (rotated !== undefined) models.delete(rotated)
  const current = Number.isNaN(value) ? worst(policy.mode) : value
  models.set(path, current)
  let { kthBestModelPath, kthValue } = state
  const { best, worst: worstPath } = extremes(policy.mode, models)
  if (models.size === k) {
    kthBestModelPath = worstPath
    kthValue = models.get(worstPath!)!
  }
  return {
    state: {
      models,
      kthBestModelPath,
      kthValue,
      bestModelPath: best,
      bestModelScore: best === undefined ? undefined : models.get(best),
      currentScore: current
    },
    rotatedOut: rotated === undefined || rotated === path ? [] : [rotated]
  }
}

/**
 * Admits an unmonitored checkpoint: it is the newest, so the best; with `saveTopK: 1`
 * the previous one goes.
 *
 * @since 0.3.0
 */
export const admitNewest = (policy: Policy, state: TopK, path: string): Decision => {
  const previous = state.bestModelPath
  return {
    state: { ...state, bestModelPath: path },
    rotatedOut: policy.saveTopK === 1 && previous !== undefined && previous !== path ? [previous] : []
  }
}

/**
 * Stops tracking checkpoints that are not in storage (`missing`), recomputing the best
 * and the worst of those left.
 *
 * @since 0.3.0
 */
export const forget = (policy: Policy & { readonly monitored: boolean }, state: TopK, missing: ReadonlySet<string>): TopK => {
  const models = new Map([...state.models].filter(([p]) => !missing.has(p)))
  if (!policy.monitored) {
    return {
      ...state,
      models,
      bestModelPath: state.bestModelPath !== undefined && missing.has(state.bestModelPath) ? undefined : state.bestModelPath
    }
  }
  const { best, worst: worstPath } = extremes(policy.mode, models)
  return {
    ...state,
    models,
    bestModelPath: best,
    bestModelScore: best === undefined ? undefined : models.get(best),
    kthBestModelPath: worstPath,
    kthValue: worstPath === undefined ? worst(policy.mode) : models.get(worstPath)!
  }
}
