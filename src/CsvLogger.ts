/**
 * `CsvLogger`: the Trainer's default logger (Lightning's `CSVLogger`), as a callback.
 *
 * It writes `<saveDir>/<name>/version_<n>/metrics.csv`: a header
 * `epoch,step,<metrics…>` (metric columns sorted by name, as Lightning does) and one
 * row per logged event, from `trainer.loggedMetrics`:
 * - every training step (`onTrainBatchEnd`),
 * - the end of each training epoch (`onTrainEpochEnd`),
 * - the end of each validation (`onValidationEpochEnd`, not during the sanity check),
 * - the end of a test run (`onTestEpochEnd`).
 * An event with no logged metrics writes no row. Each row carries
 * `trainer.currentEpoch` and `trainer.globalStep`.
 *
 * When new metrics appear (validation metrics after the first validation), the file
 * gets the union of the columns and earlier rows get empty cells, like Lightning.
 *
 * At the end of fit it also draws the curves (`Plot`) into `metrics.svg` beside the
 * file (best effort: a plot that cannot be written is a warning).
 *
 * Rows are buffered in memory and written every `flushEvery` rows, on `onFitEnd`,
 * `teardown` and `onException`, so logging a step costs no I/O. A flush appends the
 * new rows (and fsyncs), so the bytes written over a run are the size of the file.
 * Only when the columns change (or at the first write) is the whole file rewritten,
 * atomically (a temporary file in the same directory, fsynced, renamed over
 * `metrics.csv`). A crash during an append can leave a partial last row; a reader
 * never sees earlier rows change except at a column change.
 *
 * The version directory is chosen at the first `setup` (the default `saveDir` is
 * the Trainer's `defaultRootDir`, known only then): the version given, or the next
 * free one after the existing `version_*` directories, claimed by creating it, so
 * two loggers never share one. A file that cannot be written fails the hook with a
 * `CallbackError` naming the file and the reason.
 *
 * @since 0.1.0
 */
import { Effect, Exit, FileSystem, Option, Path, type PlatformError } from "effect"
import { type Callback, CallbackError, type TrainerState } from "./Callback.ts"
import { storageReason } from "./CheckpointIO.ts"
import * as Plot from "./Plot.ts"

/** Options of the CSV metrics logger. */
export interface Options {
  /** The root of the logs (default: the Trainer's `defaultRootDir`). */
  readonly saveDir?: string | undefined
  /** The experiment name, a directory under `saveDir` (default `"logs"`). */
  readonly name?: string | undefined
  /**
   * The version number (default: the next free `version_<n>`). An existing
   * directory is reused and its `metrics.csv` replaced.
   */
  readonly version?: number | undefined
  /** Write the file every `flushEvery` rows (default 50). */
  readonly flushEvery?: number | undefined
}

/** A `CsvLogger` is a callback that also says where its files are. */
export interface CsvLogger extends Callback {
  /**
   * The version directory, `<saveDir>/<name>/version_<n>`: `None` until the first
   * `setup` chose it. A checkpoint callback may put its files under it, as
   * Lightning's `ModelCheckpoint` does (it runs after this logger).
   */
  readonly logDir: Effect.Effect<Option.Option<string>>
}

/** The name of the metrics file in the version directory. */
export const metricsFileName = "metrics.csv"

const callbackName = "CsvLogger"

/** A failed file operation as a `CallbackError`: what failed, on which path, and why. */
const failure = (what: string, path: string) => (error: PlatformError.PlatformError): CallbackError => {
  const kind = storageReason(error)
  const cause = error.reason.cause
  const code = typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : undefined
  const why = [kind === "Other" ? undefined : kind, code].filter((w) => w !== undefined).join(", ")
  return new CallbackError({
    callback: callbackName,
    reason: `${what} ${path}${why === "" ? "" : ` (${why})`}: ${error.message}`,
    cause: error
  })
}

/** A CSV field: quoted when it holds a comma, a quote or a line break. */
const csvField = (text: string): string => /[",\r\n]/.test(text) ? `"${text.replaceAll("\"", "\"\"")}"` : text

const versionPattern = /^version_(\d+)$/

/**
 * Builds a CSV logger over the `FileSystem` and `Path` in context.
 *
 * @example
 * ```ts
 * const logger = yield* CsvLogger.make({ name: "mnist" })
 * // after fit: <defaultRootDir>/mnist/version_0/metrics.csv
 * ```
 */
export const make = Effect.fn("CsvLogger.make")(function*(options: Options = {}) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const name = options.name ?? "logs"
  const flushEvery = Math.max(1, Math.floor(options.flushEvery ?? 50) || 1)
  const encoder = new TextEncoder()

  let directory: string | undefined
  /** Metric columns (after `epoch,step`), sorted. */
  let columns: ReadonlyArray<string> = []
  /** Every row so far, serialised for `columns`, each ending in a newline. */
  let body = ""
  /** Rows not yet in the file. */
  let pending = 0
  /** Those rows, serialised for `columns` (what an append writes). */
  let pendingText = ""
  /** The file holds a header for `columns` and every row before `pending`: appends suffice. */
  let appendable = false
  /** The run failed: later flushes are best effort, so they never hide that failure. */
  let crashed = false

  /**
   * Creates `dir` and its missing parents one level at a time: Node's recursive mkdir
   * reports ENOENT for a read-only file system and loops forever under /proc.
   */
  const makeDirectories = (dir: string): Effect.Effect<void, PlatformError.PlatformError> =>
    Effect.gen(function*() {
      const missing: Array<string> = []
      for (let d = dir; !(yield* fs.exists(d)); d = path.dirname(d)) {
        missing.push(d)
        if (path.dirname(d) === d) break
      }
      for (const d of missing.reverse()) {
        yield* fs.makeDirectory(d).pipe(Effect.catchIf((error) => error.reason._tag === "AlreadyExists", () => Effect.void))
      }
    })

  /** Creates `root/version_<n>` for the first free `n`; mkdir is the claim. */
  const claimNextVersion = (root: string) =>
    Effect.gen(function*() {
      yield* makeDirectories(root).pipe(Effect.mapError(failure("cannot create log directory", root)))
      const names = yield* fs.readDirectory(root).pipe(Effect.mapError(failure("cannot read log directory", root)))
      let next = 0
      for (const entry of names) {
        const match = versionPattern.exec(entry)
        if (match) next = Math.max(next, Number(match[1]) + 1)
      }
      // Another logger may claim a version between the scan and the mkdir: try the next.
      for (let attempt = 0;; attempt++) {
        const candidate = path.join(root, `version_${next + attempt}`)
        const claimed = yield* fs.makeDirectory(candidate).pipe(
          Effect.as(true),
          Effect.catchIf(
            (error) => attempt < 100 && error.reason._tag === "AlreadyExists",
            () => Effect.succeed(false)
          ),
          Effect.mapError(failure("cannot create log directory", candidate))
        )
        if (claimed) return candidate
      }
    })

  const useVersion = (root: string, version: number) =>
    Effect.gen(function*() {
      const candidate = path.join(root, `version_${version}`)
      yield* makeDirectories(candidate).pipe(Effect.mapError(failure("cannot create log directory", candidate)))
      const file = path.join(candidate, metricsFileName)
      if (yield* fs.exists(file).pipe(Effect.orElseSucceed(() => false))) {
        yield* Effect.logWarning(`${callbackName}: ${file} exists and will be replaced`)
      }
      return candidate
    })

  /** The version directory, chosen (and created) on first use. */
  const ensureDirectory = (trainer: TrainerState) =>
    Effect.suspend(() => {
      if (directory !== undefined) return Effect.succeed(directory)
      const saveDir = options.saveDir ?? trainer.defaultRootDir
      // A URL (`defaultRootDir: "s3://bucket/run"`) would become a local directory named
      // `s3:`: the logger writes local files only. (A drive letter is not a scheme.)
      if (/^[a-z][a-z0-9+.-]+:\/\//i.test(saveDir)) {
        return Effect.fail(
          new CallbackError({
            callback: "CsvLogger",
            reason: `${saveDir} is a URL and the CSV logger writes local files: give it a local saveDir, or logger: false`
          })
        )
      }
      const root = path.join(saveDir, name)
      return (options.version === undefined ? claimNextVersion(root) : useVersion(root, options.version)).pipe(
        Effect.tap((chosen) => Effect.sync(() => void (directory = chosen)))
      )
    })

  /** Re-lays the rows out for a larger set of columns (new cells empty). */
  const widen = (next: ReadonlyArray<string>) => {
    const from = next.map((column) => columns.indexOf(column))
    const rows = body.length === 0 ? [] : body.slice(0, -1).split("\n")
    // Cells are numbers or empty, never quoted: splitting on commas is exact.
    body = rows.map((row) => {
      const cells = row.split(",")
      return [cells[0], cells[1], ...from.map((i) => i < 0 ? "" : cells[i + 2])].join(",") + "\n"
    }).join("")
    columns = next
    // The header changed: the next flush rewrites the whole file.
    appendable = false
    pendingText = ""
  }

  const addRow = (trainer: TrainerState) => {
    const metrics = trainer.loggedMetrics
    if (metrics.size === 0) return false
    const added = Array.from(metrics.keys()).filter((key) => !columns.includes(key))
    if (added.length > 0) widen([...columns, ...added].sort())
    const cells = columns.map((column) => {
      const value = metrics.get(column)
      return value === undefined ? "" : String(value)
    })
    const row = [String(trainer.currentEpoch), String(trainer.globalStep), ...cells].join(",") + "\n"
    body += row
    pendingText += row
    pending += 1
    return true
  }

  /** Replaces `file` with `content` through a temporary file in the same directory. */
  const replaceFile = (file: string, content: string) => {
    const temporary = path.join(
      path.dirname(file),
      `.${path.basename(file)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`
    )
    return Effect.scoped(Effect.gen(function*() {
      const handle = yield* fs.open(temporary, { flag: "w" })
      yield* handle.writeAll(encoder.encode(content))
      yield* handle.sync
    })).pipe(
      Effect.andThen(fs.rename(temporary, file)),
      Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : Effect.ignore(fs.remove(temporary, { force: true }))),
      Effect.uninterruptible,
      Effect.mapError(failure("cannot write", file))
    )
  }

  /** Appends `content` to `file` and fsyncs it. */
  const appendFile = (file: string, content: string) =>
    Effect.scoped(Effect.gen(function*() {
      const handle = yield* fs.open(file, { flag: "a" })
      yield* handle.writeAll(encoder.encode(content))
      yield* handle.sync
    })).pipe(Effect.uninterruptible, Effect.mapError(failure("cannot write", file)))

  const flush = Effect.fn("CsvLogger.flush")(function*(trainer: TrainerState) {
    if (pending === 0) return
    const dir = yield* ensureDirectory(trainer)
    const file = path.join(dir, metricsFileName)
    const written = pending
    const text = pendingText
    if (appendable) {
      // A failed append may have written part of the rows: rewrite the file next time.
      yield* appendFile(file, text).pipe(Effect.tapError(() => Effect.sync(() => void (appendable = false))))
    } else {
      const header = ["epoch", "step", ...columns].map(csvField).join(",") + "\n"
      yield* replaceFile(file, header + body)
      appendable = true
    }
    pending -= written
    pendingText = pendingText.slice(text.length)
  })

  /** After a failure of the run, a flush is best effort: its error is only logged. */
  const flushAtEnd = (trainer: TrainerState) =>
    crashed
      ? flush(trainer).pipe(Effect.catch((error) => Effect.logWarning(`${callbackName}: ${error.message}`)))
      : flush(trainer)

  /**
   * The picture of the run (`Plot`), next to the metrics: best effort, so a plot that
   * cannot be written costs a warning, never the fit.
   */
  const writePlot = Effect.suspend(() => {
    if (directory === undefined || body.length === 0) return Effect.void
    const header = ["epoch", "step", ...columns].map(csvField).join(",") + "\n"
    const file = path.join(directory, Plot.svgFileName)
    const title = `${name}/${path.basename(directory)}`
    return replaceFile(file, Plot.fromCsv(header + body, { title })).pipe(
      Effect.catch((error) => Effect.logWarning(`${callbackName}: ${error.message}`))
    )
  })

  const logRow = (trainer: TrainerState) => Effect.suspend(() => addRow(trainer) && pending >= flushEvery ? flush(trainer) : Effect.void)

  const logger: CsvLogger = {
    name: callbackName,
    logDir: Effect.sync(() => Option.fromNullishOr(directory)),
    setup: Effect.fn("CsvLogger.setup")(function*(trainer: TrainerState) {
      crashed = false
      yield* ensureDirectory(trainer)
    }),
    onTrainBatchEnd: logRow,
    onTrainEpochEnd: logRow,
    onValidationEpochEnd: (trainer) => trainer.sanityChecking ? Effect.void : logRow(trainer),
    onTestEpochEnd: logRow,
    onFitEnd: (trainer) => Effect.andThen(flush(trainer), writePlot),
    teardown: flushAtEnd,
    onException: (trainer) =>
      Effect.suspend(() => {
        crashed = true
        return flushAtEnd(trainer)
      })
  }
  return logger
})
