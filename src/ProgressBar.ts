/**
 * `ProgressBar`: the Trainer's default progress display (Lightning's
 * `TQDMProgressBar`, without the bar).
 *
 * One line per training epoch: the epoch (0-based, as Lightning counts), the batch
 * `i/N` (`N` from `trainer.numTrainBatches`, `?` when unknown), the training speed in
 * batches per second, and every metric in `trainer.callbackMetrics`:
 *
 * ```text
 * Epoch 1: 3/3 12.5 it/s train_loss=0.412 val_loss=0.388 val_acc=0.913
 * ```
 *
 * - On a terminal (`output.isTTY`) the line is redrawn in place (`\r` and
 *   clear-line) every `refreshRate` batches, but never more often than every
 *   `minRedrawIntervalMillis` (about 10 redraws a second), and finished with a
 *   newline at the end of the epoch. Redraws are cut to the terminal width so they
 *   never wrap.
 * - Anywhere else (CI logs, pipes, files) it writes plain lines only, one at the
 *   end of each epoch, with no control characters.
 *
 * Validation shows up on the epoch line when it runs inside the epoch (Lightning's
 * order: validation before `onTrainEpochEnd`); a validation that runs outside a
 * training epoch (`trainer.validate`, or a Trainer that validates after the epoch
 * ended) gets a `Validation: …` line, a test run a `Test: …` line. Sanity-check
 * validation prints nothing.
 *
 * Time comes from Effect's `Clock`, so `TestClock` drives the speed and the redraw
 * limit in tests; output goes through a `ProgressOutput`, so tests can capture it.
 *
 * @since 0.1.0
 */
import { Clock, Effect } from "effect"
import type { Callback, TrainerState } from "./Callback.ts"

/**
 * Where the progress display goes. `stdout` is the default; tests pass their own to
 * capture the text.
 */
export interface ProgressOutput {
  /** Is this an interactive terminal? Only then are lines redrawn in place. */
  readonly isTTY: boolean
  /** The terminal width, when known: in-place redraws are cut to fit, so they never wrap. */
  readonly columns?: number | undefined
  readonly write: (text: string) => Effect.Effect<void>
}

/** The process's standard output; `isTTY` and `columns` are read when used. */
export const stdout: ProgressOutput = {
  get isTTY() {
    return process.stdout.isTTY === true
  },
  get columns() {
    return process.stdout.isTTY === true ? process.stdout.columns : undefined
  },
  write: (text) =>
    Effect.sync(() => {
      process.stdout.write(text)
    })
}

/** Options of the progress bar. */
export interface Options {
  /**
   * Redraw the line every `refreshRate` batches on a terminal (default 1; the
   * redraw limit of `minRedrawIntervalMillis` applies on top). `0` turns the
   * redraws off: only the finished line at each epoch end is written. Ignored when
   * the output is not a terminal.
   */
  readonly refreshRate?: number | undefined
  readonly output?: ProgressOutput | undefined
}

/** The shortest time between two in-place redraws (so at most ~10 per second). */
export const minRedrawIntervalMillis = 100

/** Carriage return and ANSI "erase the whole line". */
const clearLine = "\r\u001b[2K"

/**
 * Formats a metric for display with 3 significant digits: `0.412`, `12.5`, `0.5`,
 * `1234`, `1.23e-4`. Integers below a million are printed whole.
 */
export const formatNumber = (value: number): string => {
  if (!Number.isFinite(value)) return String(value)
  if (value === 0) return "0"
  const magnitude = Math.abs(value)
  if (Number.isInteger(value) && magnitude < 1e6) return String(value)
  if (magnitude >= 1e6 || magnitude < 1e-3) return value.toExponential(2)
  if (magnitude >= 100) return String(Math.round(value))
  const fixed = value.toPrecision(3)
  return fixed.includes(".") ? fixed.replace(/\.?0+$/, "") : fixed
}

const formatMetrics = (metrics: ReadonlyMap<string, number>): string =>
  Array.from(metrics, ([name, value]) => `${name}=${formatNumber(value)}`).join(" ")

/** The progress of the training epoch in course. */
interface EpochProgress {
  readonly epoch: number
  readonly startedAt: number
  /** Batches finished in this epoch by this run (a resumed epoch starts past 0). */
  batchesSeen: number
  /** `batchIdx + 1` of the latest finished batch. */
  position: number
  lastBatchAt: number
  lastDrawAt: number
}

/**
 * Builds the progress display. The Trainer adds one by default; a user who wants
 * none turns it off at the Trainer.
 *
 * @example
 * ```ts
 * ProgressBar.make({ refreshRate: 10 })
 * ```
 */
export const make = (options: Options = {}): Callback => {
  const output = options.output ?? stdout
  const refreshRate = Math.max(0, Math.floor(options.refreshRate ?? 1)) || 0
  let progress: EpochProgress | undefined
  /** A redrawn line is on screen without its newline. */
  let lineOpen = false

  const redraws = () => output.isTTY && refreshRate > 0

  const epochLine = (trainer: TrainerState, p: EpochProgress): string => {
    const elapsed = (p.lastBatchAt - p.startedAt) / 1000
    const speed = p.batchesSeen > 0 && elapsed > 0 ? formatNumber(p.batchesSeen / elapsed) : "?"
    const metrics = formatMetrics(trainer.callbackMetrics)
    const line = `Epoch ${p.epoch}: ${p.position}/${trainer.numTrainBatches ?? "?"} ${speed} it/s`
    return metrics.length > 0 ? `${line} ${metrics}` : line
  }

  const draw = (line: string, now: number, p: EpochProgress) =>
    Effect.suspend(() => {
      const width = output.columns
      const fitted = width !== undefined && width > 1 && line.length >= width ? line.slice(0, width - 1) : line
      p.lastDrawAt = now
      lineOpen = true
      return output.write(clearLine + fitted)
    })

  /** Writes a finished line: over the redrawn one on a terminal, plain otherwise. */
  const writeLine = (line: string) =>
    Effect.suspend(() => {
      const text = lineOpen ? `${clearLine}${line}\n` : `${line}\n`
      lineOpen = false
      return output.write(text)
    })

  /** Ends a redrawn line with a newline, so that what follows starts on a fresh line. */
  const finishLine = Effect.suspend(() => {
    if (!lineOpen) return Effect.void
    lineOpen = false
    return output.write("\n")
  })

  const startEpoch = (trainer: TrainerState, now: number): EpochProgress => ({
    epoch: trainer.currentEpoch,
    startedAt: now,
    batchesSeen: 0,
    position: 0,
    lastBatchAt: now,
    lastDrawAt: Number.NEGATIVE_INFINITY
  })

  const onTrainEpochStart = Effect.fnUntraced(function*(trainer: TrainerState) {
    yield* finishLine
    const now = yield* Clock.currentTimeMillis
    const p = startEpoch(trainer, now)
    progress = p
    if (redraws()) yield* draw(epochLine(trainer, p), now, p)
  })

  const onTrainBatchEnd = Effect.fnUntraced(function*(trainer: TrainerState, _output: unknown, batchIdx: number) {
    const now = yield* Clock.currentTimeMillis
    // Without an `onTrainEpochStart` (a Trainer that skipped it), the epoch starts here.
    const p = progress ?? (progress = startEpoch(trainer, now))
    p.batchesSeen += 1
    p.position = batchIdx + 1
    p.lastBatchAt = now
    if (redraws() && p.position % refreshRate === 0 && now - p.lastDrawAt >= minRedrawIntervalMillis) {
      yield* draw(epochLine(trainer, p), now, p)
    }
  })

  const onTrainEpochEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    const now = yield* Clock.currentTimeMillis
    const p = progress ?? startEpoch(trainer, now)
    progress = undefined
    yield* writeLine(epochLine(trainer, p))
  })

  const onValidationEpochEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    // Inside a training epoch the epoch line shows the validation metrics.
    if (trainer.sanityChecking || progress !== undefined) return
    yield* finishLine
    yield* writeLine(`Validation: ${formatMetrics(trainer.callbackMetrics)}`.trimEnd())
  })

  const onTestEpochEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    yield* finishLine
    yield* writeLine(`Test: ${formatMetrics(trainer.callbackMetrics)}`.trimEnd())
  })

  const onException = Effect.fnUntraced(function*() {
    progress = undefined
    yield* finishLine
  })

  return {
    name: "ProgressBar",
    onTrainEpochStart,
    onTrainBatchEnd,
    onTrainEpochEnd,
    onValidationEpochEnd,
    onTestEpochEnd,
    onException
  }
}
