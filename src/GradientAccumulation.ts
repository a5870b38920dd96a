/**
 * `GradientAccumulation`: `accumulateGradBatches` (Lightning's), the schedule and
 * the running sum of one window.
 *
 * The Trainer computes each batch's gradients of `loss / N` (`Strategy.computeGradients`),
 * adds them to the window's sum, and at the window's end (every N batches of an
 * epoch, or its last batch) takes one optimizer step with the sum
 * (`Strategy.applyGradients`, which clips it). A checkpoint taken inside a window
 * holds the partial sum as tensors (`CheckpointConnector.accumulatedGradName`) and
 * the number of batches in it: a resumed run adds the remaining batches to the same
 * sum, so it ends bit-identical to an uninterrupted one (the window is not replayed,
 * so callbacks never see a batch twice).
 *
 * @since 0.3.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Result } from "effect"

/**
 * A number of batches, or a schedule by epoch: a function, or Lightning's
 * `GradientAccumulationScheduler` mapping (`{ 0: 8, 4: 4 }`: 8 from epoch 0, 4 from
 * epoch 4).
 *
 * @since 0.3.0
 */
export type AccumulateGradBatches = number | ((epoch: number) => number) | Readonly<Record<number, number>>

const valid = (n: number) => Number.isInteger(n) && n >= 1

/**
 * The schedule as a function of the epoch; an error message for a number or mapping
 * that is not an integer ≥ 1. A function's result is floored and clamped to ≥ 1.
 *
 * @since 0.3.0
 */
export const resolve = (value: AccumulateGradBatches | undefined): Result.Result<(epoch: number) => number, string> => {
  if (value === undefined) return Result.succeed(() => 1)
  if (typeof value === "number") {
    return valid(value) ? Result.succeed(() => value) : Result.fail(`accumulateGradBatches must be an integer ≥ 1, got ${value}`)
  }
  if (typeof value === "function") return Result.succeed((epoch) => Math.max(1, Math.floor(value(epoch))))
  const entries = Object.entries(value).map(([k, v]) => [Number(k), v] as const).sort((a, b) => a[0] - b[0])
  for (const [epoch, n] of entries) {
    if (!Number.isInteger(epoch) || epoch < 0 || !valid(n)) {
      return Result.fail(`accumulateGradBatches: {${epoch}: ${n}} is not an epoch ≥ 0 mapped to an integer ≥ 1`)
    }
  }
  return Result.succeed((epoch) => {
    let n = 1
    for (const [from, value] of entries) if (from <= epoch) n = value
    return n
  })
}

/**
 * Whether the batch at `index` (0-based in its epoch) ends a window of `n` in an
 * epoch of `perEpoch` batches.
 *
 * @since 0.3.0
 */
export const endsWindow = (index: number, n: number, perEpoch: number): boolean => (index + 1) % n === 0 || index + 1 >= perEpoch

/**
 * The running gradient sum of a window: one tensor per trainable weight, and the
 * batches summed.
 *
 * @since 0.3.0
 */
export interface Window {
  readonly grads: ReadonlyArray<tf.Tensor>
  readonly batches: number
}

/**
 * Adds one batch's gradients to the window (or starts it); frees what it replaces.
 *
 * @since 0.3.0
 */
export const add = (tfjs: typeof tf, window: Window | undefined, grads: ReadonlyArray<tf.Tensor>): Window => {
  if (window === undefined) return { grads, batches: 1 }
  const summed = tfjs.tidy(() => window.grads.map((g, i) => tfjs.add(g, grads[i]!)))
  tfjs.dispose([...window.grads, ...grads])
  return { grads: summed, batches: window.batches + 1 }
}

/**
 * Frees a window's tensors; returns undefined.
 *
 * @since 0.3.0
 */
export const dispose = (tfjs: typeof tf, window: Window | undefined): undefined => {
  if (window !== undefined) tfjs.dispose([...window.grads])
  return undefined
}
