/**
 * `ModelSummary`: the table the Trainer prints at the start of `fit` (Lightning's
 * `ModelSummary` callback): each layer's name, type and parameter count, then the
 * trainable, non-trainable and total counts and the estimated size in MB (4 bytes a
 * parameter, as Lightning's float32 estimate). On by default
 * (`TrainerOptions.enableModelSummary`), written with `Effect.logInfo`.
 *
 * @since 0.3.0
 */
import type * as tf from "@tensorflow/tfjs"

/**
 * One layer's row.
 *
 * @since 0.3.0
 */
export interface LayerRow {
  readonly name: string
  readonly type: string
  readonly params: number
  readonly trainable: boolean
}

/**
 * The summary of a model: a row per layer and the totals.
 *
 * @since 0.3.0
 */
export interface Summary {
  readonly layers: ReadonlyArray<LayerRow>
  readonly trainableParams: number
  readonly nonTrainableParams: number
  readonly totalParams: number
  /** Estimated size of the parameters in MB (10^6 bytes), at 4 bytes each. */
  readonly sizeMB: number
}

const count = (weights: ReadonlyArray<{ readonly shape: ReadonlyArray<number | null> }>) =>
  weights.reduce((sum, w) => sum + w.shape.reduce<number>((p, d) => p * (d ?? 1), 1), 0)

/**
 * Summarises a model (pure: reads shapes only).
 *
 * @since 0.3.0
 */
export const summarize = (model: tf.LayersModel): Summary => {
  const layers = model.layers.map((l) => ({
    name: l.name,
    type: l.getClassName(),
    params: count(l.weights),
    trainable: l.trainable
  }))
  const trainableParams = count(model.trainableWeights)
  const nonTrainableParams = count(model.nonTrainableWeights)
  const totalParams = trainableParams + nonTrainableParams
  return { layers, trainableParams, nonTrainableParams, totalParams, sizeMB: (totalParams * 4) / 1e6 }
}

const human = (n: number): string =>
  n < 1e3 ? String(n) : n < 1e6 ? `${(n / 1e3).toFixed(1)} K` : n < 1e9 ? `${(n / 1e6).toFixed(1)} M` : `${(n / 1e9).toFixed(1)} B`

/**
 * The summary as Lightning prints it: a table, then the totals.
 *
 * @since 0.3.0
 */
export const format = (summary: Summary): string => {
  const header = ["", "Name", "Type", "Params", "Mode"]
  const rows = summary.layers.map((l, i) => [String(i), l.name, l.type, human(l.params), l.trainable ? "train" : "frozen"])
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ").trimEnd()
  const rule = "-".repeat(line(header).length)
  return [
    rule,
    line(header),
    rule,
    ...rows.map(line),
    rule,
    `${human(summary.trainableParams).padEnd(9)} Trainable params`,
    `${human(summary.nonTrainableParams).padEnd(9)} Non-trainable params`,
    `${human(summary.totalParams).padEnd(9)} Total params`,
    `${summary.sizeMB.toFixed(3).padEnd(9)} Total estimated model params size (MB)`
  ].join("\n")
}
