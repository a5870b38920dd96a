/**
 * `ProgressBar`: the Trainer's default progress display (Lightning's
 * `TQDMProgressBar`).
 *
 * One line per training epoch: the epoch (0-based, as Lightning counts), a bar and
 * the percentage (when the number of batches is known), the batch `i/N`, the
 * elapsed and remaining time, the speed in batches per second, and the metrics in
 * `trainer.callbackMetrics` (the Trainer's own `loss` is left out when the module
 * logs its training loss itself: it is the same number):
 *
 * ```text
 * Epoch 1: 100%|██████████| 125/125 [00:02<00:00, 58.5 it/s] train_loss=0.268 val_loss=0.295 val_acc=0.913
 * ```
 *
 * - On a terminal (`output.isTTY`) the line is redrawn in place (`\r` and
 *   clear-line) every `refreshRate` batches, but never more often than every
 *   `minRedrawIntervalMillis` (about 10 redraws a second), and finished with a
 *   newline at the end of the epoch. A validation inside the epoch shows its
 *   progress on the same line (`validating 5`). Redraws are cut to the terminal
 *   width so they never wrap.
 * - Anywhere else (CI logs, pipes, files) it writes plain lines only, one at the
 *   end of each epoch, without the bar and with no control characters.
 *
 * Validation shows up on the epoch line when it runs inside the epoch (Lightning's
 * order: validation before `onTrainEpochEnd`); a validation that runs outside a
 * training epoch (`trainer.validate`, or a Trainer that validates after the epoch
 * ended) gets a `Validation: …` line. A test run ends with a table of the test
 * metrics (only those the test logged). Sanity-check validation prints nothing. At
 * the end of fit, one line says why it stopped (`fit stopped: maxEpochs=3 reached`,
 * or that a resumed run had nothing left to train).
 *
 * Time comes from Effect's `Clock`, so `TestClock` drives the speed, the times and
 * the redraw limit in tests; output goes through a `ProgressOutput`, so tests can
 * capture it.
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

/** `mm:ss`, or `h:mm:ss` from an hour on. */
export const formatDuration = (millis: number): string => {
  if (!Number.isFinite(millis) || millis < 0) return "?"
  const total = Math.round(millis / 1000)
  const h = Math.floor(total / 3600)
  const m = Math.floor((total % 3600) / 60)
  const sec = total % 60
  const mmss = `${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`
  return h > 0 ? `${h}:${mmss}` : mmss
}

/** Rounded like tqdm's percentage, but 100 only when done. */
const percent = (position: number, total: number): number => position >= total ? 100 : Math.min(99, Math.round((position / total) * 100))

const barWidth = 10
const partials = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]

/** A 10-character bar for a fraction in [0, 1], in eighths of a character. */
export const bar = (fraction: number): string => {
  const eighths = Math.round(Math.min(1, Math.max(0, fraction)) * barWidth * 8)
  const full = Math.floor(eighths / 8)
  const partial = full < barWidth ? partials[eighths % 8]! : ""
  return "█".repeat(full) + partial + " ".repeat(barWidth - full - (partial === "" ? 0 : 1))
}

/**
 * The metrics to show: all of them, but the Trainer's `loss` when the module logs
 * its own training loss (a `*loss*` metric that is not validation or test).
 */
const shownMetrics = (metrics: ReadonlyMap<string, number>): string => {
  const ownLoss = [...metrics.keys()].some((k) => k !== "loss" && k.includes("loss") && !/^(val|test)_/.test(k))
  return Array.from(metrics)
    .filter(([name]) => !(ownLoss && name === "loss"))
    .map(([name, value]) => `${name}=${formatNumber(value)}`)
    .join(" ")
}

/** A two-column table of the test metrics, Lightning's end-of-test summary. */
export const metricsTable = (title: string, metrics: ReadonlyMap<string, number>): string => {
  const rows = Array.from(metrics, ([name, value]) => [name, String(Number(value.toPrecision(6)))] as const)
  const left = Math.max(title.length, ...rows.map((r) => r[0].length))
  const right = Math.max("Value".length, ...rows.map((r) => r[1].length))
  const line = (l: string, m: string, r: string) => `${l}${"─".repeat(left + 2)}${m}${"─".repeat(right + 2)}${r}`
  return [
    line("┌", "┬", "┐"),
    `│ ${title.padEnd(left)} │ ${"Value".padEnd(right)} │`,
    line("├", "┼", "┤"),
    ...rows.map(([name, value]) => `│ ${name.padEnd(left)} │ ${value.padStart(right)} │`),
    line("└", "┴", "┘")
  ].join("\n")
}

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
  /** Validation batches done, while a validation runs inside the epoch. */
  validating: number | undefined
}

/** An evaluation (validation or test) outside a training epoch. */
interface EvalProgress {
  readonly startedAt: number
  batches: number
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
  let evaluation: EvalProgress | undefined
  /** Training epochs started during this fit (0 at its end: nothing was left to train). */
  let epochsStarted = 0
  /** A redrawn line is on screen without its newline. */
  let lineOpen = false

  const redraws = () => output.isTTY && refreshRate > 0

  const epochLine = (trainer: TrainerState, p: EpochProgress, tty: boolean): string => {
    const elapsedMillis = p.lastBatchAt - p.startedAt
    const rate = p.batchesSeen > 0 && elapsedMillis > 0 ? p.batchesSeen / (elapsedMillis / 1000) : undefined
    const total = trainer.numTrainBatches
    const head = total === undefined || total <= 0
      ? `Epoch ${p.epoch}: ${p.position}/?`
      : `Epoch ${p.epoch}: ${String(percent(p.position, total)).padStart(3)}%${
        tty ? `|${bar(p.position / total)}|` : ""
      } ${p.position}/${total}`
    const remaining = total === undefined || rate === undefined ? "" : `<${formatDuration(((total - p.position) / rate) * 1000)}`
    const times = `[${formatDuration(elapsedMillis)}${remaining}, ${rate === undefined ? "?" : formatNumber(rate)} it/s]`
    const validating = p.validating === undefined ? "" : ` validating ${p.validating}`
    const metrics = shownMetrics(trainer.callbackMetrics)
    return `${head} ${times}${validating}${metrics.length > 0 ? ` ${metrics}` : ""}`
  }

  const draw = (line: string, now: number, p: { lastDrawAt: number }) =>
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
    lastDrawAt: Number.NEGATIVE_INFINITY,
    validating: undefined
  })

  const onFitStart = Effect.fnUntraced(function*() {
    epochsStarted = 0
  })

  const onTrainEpochStart = Effect.fnUntraced(function*(trainer: TrainerState) {
    yield* finishLine
    const now = yield* Clock.currentTimeMillis
    const p = startEpoch(trainer, now)
    progress = p
    epochsStarted++
    if (redraws()) yield* draw(epochLine(trainer, p, true), now, p)
  })

  const onTrainBatchEnd = Effect.fnUntraced(function*(trainer: TrainerState, _output: unknown, batchIdx: number) {
    const now = yield* Clock.currentTimeMillis
    // Without an `onTrainEpochStart` (a Trainer that skipped it), the epoch starts here.
    const p = progress ?? (progress = startEpoch(trainer, now))
    p.batchesSeen += 1
    p.position = batchIdx + 1
    p.lastBatchAt = now
    if (redraws() && p.position % refreshRate === 0 && now - p.lastDrawAt >= minRedrawIntervalMillis) {
      yield* draw(epochLine(trainer, p, true), now, p)
    }
  })

  const onTrainEpochEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    const now = yield* Clock.currentTimeMillis
    const p = progress ?? startEpoch(trainer, now)
    progress = undefined
    p.validating = undefined
    yield* writeLine(epochLine(trainer, p, output.isTTY))
  })

  const onEvaluationStart = Effect.fnUntraced(function*(trainer: TrainerState) {
    if (trainer.sanityChecking) return
    if (progress !== undefined) {
      progress.validating = 0
      return
    }
    yield* finishLine
    evaluation = { startedAt: yield* Clock.currentTimeMillis, batches: 0, lastDrawAt: Number.NEGATIVE_INFINITY }
  })

  const evaluationLine = (label: string, e: EvalProgress, now: number) => {
    const elapsed = now - e.startedAt
    const rate = e.batches > 0 && elapsed > 0 ? formatNumber(e.batches / (elapsed / 1000)) : "?"
    return `${label}: ${e.batches} batches [${formatDuration(elapsed)}, ${rate} it/s]`
  }

  const onEvaluationBatchEnd = (label: string) =>
    Effect.fnUntraced(function*(trainer: TrainerState) {
      if (trainer.sanityChecking) return
      const now = yield* Clock.currentTimeMillis
      const target = progress !== undefined ? progress : evaluation
      if (target === undefined) return
      if (progress !== undefined) progress.validating = (progress.validating ?? 0) + 1
      else evaluation!.batches++
      if (!redraws() || now - target.lastDrawAt < minRedrawIntervalMillis) return
      yield* progress !== undefined
        ? draw(epochLine(trainer, progress, true), now, progress)
        : draw(evaluationLine(label, evaluation!, now), now, evaluation!)
    })

  const onValidationEpochEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    // Inside a training epoch the epoch line shows the validation metrics.
    if (trainer.sanityChecking) return
    if (progress !== undefined) {
      progress.validating = undefined
      return
    }
    const now = yield* Clock.currentTimeMillis
    const e = evaluation
    evaluation = undefined
    const metrics = shownMetrics(trainer.callbackMetrics)
    const head = e === undefined ? "Validation:" : evaluationLine("Validation", e, now)
    yield* writeLine(`${head} ${metrics}`.trimEnd())
  })

  const onTestEpochEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    const now = yield* Clock.currentTimeMillis
    const e = evaluation
    evaluation = undefined
    if (e !== undefined) yield* writeLine(evaluationLine("Testing", e, now))
    else yield* finishLine
    // Only what the test logged: `loggedMetrics` holds the test loop's means here.
    if (trainer.loggedMetrics.size > 0) yield* output.write(`${metricsTable("Test metric", trainer.loggedMetrics)}\n`)
  })

  const onFitEnd = Effect.fnUntraced(function*(trainer: TrainerState) {
    yield* finishLine
    const where = `step ${trainer.globalStep}`
    const reason = trainer.maxSteps !== -1 && trainer.globalStep >= trainer.maxSteps
      ? `maxSteps=${trainer.maxSteps} reached (${where})`
      : trainer.shouldStop
      ? `stopped by a callback (${where})`
      : epochsStarted === 0
      ? `nothing left to train: the run is at epoch ${trainer.currentEpoch}, maxEpochs=${trainer.maxEpochs} (raise maxEpochs to train on)`
      : `maxEpochs=${trainer.maxEpochs} reached (${where})`
    yield* output.write(`fit stopped: ${reason}\n`)
  })

  const onException = Effect.fnUntraced(function*() {
    progress = undefined
    evaluation = undefined
    yield* finishLine
  })

  return {
    name: "ProgressBar",
    onFitStart,
    onTrainEpochStart,
    onTrainBatchEnd,
    onTrainEpochEnd,
    onValidationStart: onEvaluationStart,
    onValidationBatchEnd: onEvaluationBatchEnd("Validation"),
    onValidationEpochEnd,
    onTestStart: onEvaluationStart,
    onTestBatchEnd: onEvaluationBatchEnd("Testing"),
    onTestEpochEnd,
    onFitEnd,
    onException
  }
}
