/**
 * `ModelCheckpoint`: saves checkpoints while a fit runs, keeps the best `saveTopK`
 * of them by a monitored metric, and optionally a `last.ckpt` to resume from
 * (Lightning's `ModelCheckpoint`, with its options in camelCase).
 *
 * Every storage access goes through `trainer.checkpointIO` (`save` through the
 * Trainer, and `exists`, `list`, `copy`, `remove`): the callback never touches a
 * file system, so it works unchanged over `FileCheckpointIO`, `MemoryCheckpointIO`,
 * `AsyncCheckpointIO` and any custom store. Paths are POSIX-style strings,
 * `<dirpath>/<name>.ckpt`.
 *
 * What it keeps (Lightning's rules):
 * - with `monitor`: the `saveTopK` best checkpoints by that metric (`mode` `"min"`
 *   or `"max"`; a NaN value counts as the worst; a tie never replaces a kept
 *   checkpoint); `saveTopK: -1` keeps all, `0` none (`saveLast` still works);
 * - without `monitor`: `saveTopK` 1 keeps the newest, -1 all, 0 none;
 * - `saveLast: true`: also `last.ckpt`, a full save, each time; `"link"`: `last.ckpt`
 *   made by `checkpointIO.copy` from the checkpoint just saved (a hard link where the
 *   store supports one, so removing that file later leaves `last.ckpt` whole; a full
 *   save when nothing was saved at this step).
 *
 * What it never deletes: the checkpoint the run resumed from (`resumedFrom`), the
 * newest checkpoint it wrote, a checkpoint it still tracks, or anything that is not
 * directly inside its `dirpath`. A rotated-out checkpoint is removed only once its
 * replacement and the event's `last.ckpt` (whose state no longer tracks it) are
 * committed: the callback first asks `checkpointIO.exists` of both, which on
 * `AsyncCheckpointIO` waits for their pending saves (a failed one answers false),
 * and removes the old file only if both answered true. So a crash
 * at any point leaves every checkpoint the newest `last.ckpt` tracks in storage. The
 * price on `AsyncCheckpointIO`: a save event that rotates a file out waits for its own
 * writes before training goes on (events that rotate nothing stay in the background).
 * `saveLast: "link"` also waits, since `copy` needs the source committed. The
 * keep/remove decisions are pure (`CheckpointRetention`) and a save event works on a
 * draft of the bookkeeping, committed only when the event succeeds: one that fails or
 * is interrupted leaves the committed bookkeeping as it was (see `saveErrors` for going
 * on after a storage error). File names come from `CheckpointFilename`.
 *
 * Background failures (an asynchronous store): at the start of each save event the
 * callback takes the failed background saves (`checkpointIO.takeFailures`) and
 * handles them by `saveErrors`: `"stop"` fails the fit with `BackgroundSaveFailed`
 * naming each failed file, after this event's own saves; `"warn"` logs them, stops
 * tracking files that are not in storage, and goes on. At the end of the fit
 * (`onFitEnd`) it flushes the store under the same policy, so a `"warn"` run is not
 * failed by the Trainer's final flush. A rotated-out file that cannot be removed
 * (a directory, or a symlink to one, in its place) also goes by `saveErrors`.
 *
 * When it saves (by default at the end of every training epoch):
 * - `everyNTrainSteps`, `everyNEpochs` and `trainTimeInterval` are mutually
 *   exclusive (a `ModelCheckpointConfigError` from `make`); `last.ckpt` is written
 *   with each save that is due, and at the end of training when no save wrote it at
 *   the final step (Lightning 2.6); a step- or time-triggered save of a metric logged
 *   in validation waits for the end of the next validation (Lightning 2.6's deferral);
 * - `saveOnTrainEpochEnd: true`: at the end of training epochs; `false`: at the end
 *   of each validation during fit; unset (the default): at the end of training
 *   epochs, except an epoch in which no validation ran while validations run in this
 *   fit (the `checkValEveryNEpoch > 1` case); a validation inside an epoch
 *   (`valCheckInterval < 1`) is followed by a save before the next batch. So with
 *   validation at the end of each epoch, the save sees that epoch's validation and
 *   training metrics, and resumes cleanly at the next epoch. (Lightning decides this
 *   from the Trainer's `check_val_every_n_epoch` / `val_check_interval`, which the
 *   callback cannot see here; the only difference is that the first epochs before a
 *   first validation every N epochs are saved too.)
 * - never during the sanity check, outside `fit`, at step 0, or twice at one global step.
 *
 * Names: `filename` is a template (default `{epoch}-{step}`) with fields `{epoch}`,
 * `{step}` and any metric, each with an optional Python format spec
 * (`{val_loss:.2f}`, `{epoch:03d}`); with `autoInsertMetricName` (default) a field
 * `{x}` renders as `x=<value>`, so the default gives `epoch=1-step=12.ckpt`. A metric
 * that is missing renders as 0 (Lightning's rule). The rendered name is made a single
 * file name: `/`, `\` and control characters become `_` and leading dots become `_`,
 * so no template or metric (`{val/loss}`, `../x`) can place a file outside `dirpath`.
 * With `enableVersionCounter` (default) a name that already exists in storage gets
 * `-v1`, `-v2`, … (`epoch=1-step=12-v1.ckpt`, `last-v1.ckpt`).
 *
 * Resuming: `fit(..., { ckptPath: "last" })` asks the checkpoint callbacks for their
 * `lastModelPath`. A fresh `ModelCheckpoint` has not saved anything, so at `setup`
 * (which the Trainer runs before it resolves `ckptPath`) it lists its `dirpath` and
 * offers the newest `last.ckpt` / `last-vN.ckpt` found there. The callback's state
 * (best paths and scores, `dirpath`) goes into every checkpoint under its `stateKey`
 * and comes back on resume; resumed into another `dirpath`, only `bestModelPath` is
 * kept, as in Lightning. A run killed between a top-k commit and its `last.ckpt`
 * commit leaves a file the resumed state does not track: when the resumed run comes
 * to that name again, it takes the file over (overwrites and tracks it, no `-v1`
 * copy) if the file's own saved state proves it was written by this callback in this
 * `dirpath` after the resumed step; any other existing file keeps the version counter.
 *
 * @example
 * ```ts
 * const checkpoint = yield* ModelCheckpoint.make({ monitor: "val_loss", mode: "min", saveTopK: 2, saveLast: true })
 * const trainer = yield* Trainer.make({ maxEpochs: 10, callbacks: [checkpoint] })
 * yield* trainer.fit(module, data)
 * console.log(checkpoint.bestModelPath, checkpoint.bestModelScore)
 * ```
 *
 * @since 0.1.0
 */
import { Cause, Clock, Config, Data, Duration, Effect, Option } from "effect"
import type { Json } from "effect/Schema"
import * as posix from "node:path/posix"
import * as Callback from "./Callback.ts"
import type { CheckpointMeta } from "./Checkpoint.ts"
import { BackgroundSaveFailed, type CheckpointStorageError } from "./CheckpointIO.ts"
import * as CheckpointRetention from "./CheckpointRetention.ts"

/** A `ModelCheckpoint` was configured in a way that can never work. */
export class ModelCheckpointConfigError extends Data.TaggedError("ModelCheckpointConfigError")<{
  readonly option: string
  readonly reason: string
}> {
  override get message(): string {
    return `ModelCheckpoint option ${this.option}: ${this.reason}`
  }
}

/** Whether a lower (`"min"`) or a higher (`"max"`) monitored value is better. */
export type Mode = "min" | "max"

/** Options of `ModelCheckpoint`, with Lightning's names in camelCase. */
export interface Options {
  /** Where checkpoints go (default `<trainer.defaultRootDir>/checkpoints`, decided at `setup`). */
  readonly dirpath?: string | undefined
  /** File name template without the extension (default `{epoch}-{step}`). */
  readonly filename?: string | undefined
  /** The metric to rank checkpoints by; none: the newest counts as the best. */
  readonly monitor?: string | undefined
  /** `"min"` (default) or `"max"`: which values of `monitor` are better. */
  readonly mode?: Mode | undefined
  /** How many checkpoints to keep (default 1; -1: all; 0: none, `saveLast` still works). */
  readonly saveTopK?: number | undefined
  /** Also keep `last.ckpt`: `true` a full save, `"link"` a `checkpointIO.copy` (default false). */
  readonly saveLast?: boolean | "link" | undefined
  /** Save model weights only (no optimizer, loop or callback state: such a file cannot resume a fit). */
  readonly saveWeightsOnly?: boolean | undefined
  /** Render a field `{x}` as `x=<value>` (default true). */
  readonly autoInsertMetricName?: boolean | undefined
  /** Save every N optimizer steps (at the end of the training batch). */
  readonly everyNTrainSteps?: number | undefined
  /** Save top-k every N epochs (default 1 when no other trigger is set; 0 disables). */
  readonly everyNEpochs?: number | undefined
  /** Save when this much time has passed since the last such save (a number is milliseconds). */
  readonly trainTimeInterval?: Duration.Input | undefined
  /** Save at the end of training epochs (`true`) or of validations (`false`); see the module notes for unset. */
  readonly saveOnTrainEpochEnd?: boolean | undefined
  /**
   * Save `exception-<name>.ckpt` (and `last`) when the fit fails or is interrupted
   * (default false). The name keeps the template when it names only `epoch` and
   * `step`; otherwise it is `exception-epoch=E-step=S.ckpt`, since the metrics of a
   * run that broke off may be stale or not logged yet.
   */
  readonly saveOnException?: boolean | undefined
  /** Append `-v1`, `-v2`, … to a name that already exists in storage (default true); false overwrites. */
  readonly enableVersionCounter?: boolean | undefined
  /** Log each decision with `Effect.logInfo` (default false). */
  readonly verbose?: boolean | undefined
  /**
   * What a storage error while saving does (`CheckpointStorageError`, a background
   * save that failed on an asynchronous store, taken at the next save event and at
   * the end of the fit, or a rotated-out file that cannot be removed): `"stop"`
   * (default) fails the fit with it; `"warn"` logs a warning and training goes on, the
   * callback tracking only checkpoints that are in storage (the next save event tries
   * again). Other errors (an invalid checkpoint, a missing monitored metric) always stop.
   */
  readonly saveErrors?: "stop" | "warn" | undefined
  /** The last checkpoint's name, a template like `filename` (default `"last"`; Lightning's `CHECKPOINT_NAME_LAST`, e.g. `"last-{epoch}"`). */
  readonly lastName?: string | undefined
  /** The file extension, with its dot (default `".ckpt"`; Lightning's `FILE_EXTENSION`). */
  readonly fileExtension?: string | undefined
  /** Joins name parts: prefix, name, version (default `"-"`; Lightning's `CHECKPOINT_JOIN_CHAR`). */
  readonly joinChar?: string | undefined
  /** Between a metric's name and value with `autoInsertMetricName` (default `"="`; Lightning's `CHECKPOINT_EQUALS_CHAR`). */
  readonly equalsChar?: string | undefined
  /** The first version suffix (default 1: `-v1`; Lightning's `STARTING_VERSION`). */
  readonly startingVersion?: number | undefined
}

import { type FormatSpec, lastNamePattern, parseTemplate, renderTemplate, sanitizeFileName, type Segment } from "./CheckpointFilename.ts"

// The file name templates live in CheckpointFilename (pure); re-exported here as before.
export { type FormatSpec, parseTemplate, renderTemplate, sanitizeFileName, type Segment }

// ---------------------------------------------------------------------------
// State encoding (JSON has no Infinity or NaN)

type Score = number

const encodeScore = (score: Score): Json => Number.isNaN(score) ? "nan" : score === Infinity ? "inf" : score === -Infinity ? "-inf" : score

const decodeScore = (json: Json | undefined): Score | undefined =>
  typeof json === "number"
    ? json
    : json === "inf"
    ? Infinity
    : json === "-inf"
    ? -Infinity
    : json === "nan"
    ? NaN
    : undefined

const pyRepr = (value: string | number | undefined): string => {
  if (value === undefined) return "None"
  if (typeof value === "number") return String(value)
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`
}

const baseName = (path: string): string => path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1)

// ---------------------------------------------------------------------------
// The callback

interface Resolved {
  readonly dirpath: string | undefined
  readonly template: ReadonlyArray<Segment>
  readonly monitor: string | undefined
  readonly mode: Mode
  readonly saveTopK: number
  readonly saveLast: boolean | "link"
  readonly saveWeightsOnly: boolean
  readonly autoInsertMetricName: boolean
  readonly everyNTrainSteps: number
  readonly everyNEpochs: number
  readonly trainTimeIntervalMs: number | undefined
  readonly saveOnTrainEpochEnd: boolean | undefined
  readonly saveOnException: boolean
  readonly enableVersionCounter: boolean
  readonly verbose: boolean
  readonly saveErrors: "stop" | "warn"
  readonly lastName: string
  readonly fileExtension: string
  readonly joinChar: string
  readonly equalsChar: string
  readonly startingVersion: number
  /** Matches a last checkpoint's file name (any version) for discovery at setup. */
  readonly lastPattern: RegExp
}

const normalizeDir = (dir: string): string => {
  // A URL keeps its `scheme://` (posix.normalize would make `s3://b/k` into `s3:/b/k`).
  const url = /^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)(.*)$/.exec(dir)
  if (url !== null) return `${url[1]}${normalizeDir(url[2]!.length === 0 ? "." : url[2]!)}`
  const normal = posix.normalize(dir)
  return normal.length > 1 && normal.endsWith("/") ? normal.slice(0, -1) : normal
}

const joinPath = (dir: string, name: string): string => (dir.endsWith("/") ? `${dir}${name}` : `${dir}/${name}`)

/** Are two checkpoint paths the same (relative paths against the working directory)? */
const samePath = (a: string, b: string): boolean => posix.resolve(a) === posix.resolve(b)

/** What the callback keeps track of, committed once storage says a save event succeeded. */
interface Bookkeeping {
  readonly topK: CheckpointRetention.TopK
  readonly lastModelPath: string | undefined
  /** The newest checkpoint this callback wrote, and at which global step. */
  readonly newest: { readonly path: string; readonly step: number } | undefined
  readonly lastGlobalStepSaved: number
}

/**
 * Lightning's `ModelCheckpoint`. Build it with `ModelCheckpoint.make(options)` (or
 * the module's `make`), which checks the options; see the module notes for what it
 * saves, keeps and never deletes.
 */
export class ModelCheckpoint extends Callback.Checkpoint implements Callback.Callback {
  /** Joins name parts (`epoch=1-step=12`, `-v1`, `exception-…`). */
  static readonly joinChar = "-"
  /** The base name of the last checkpoint. */
  static readonly lastName = "last"
  /** The prefix of checkpoints saved on exception. */
  static readonly exceptionPrefix = "exception"
  static readonly fileExtension = ".ckpt"
  static readonly startingVersion = 1

  readonly name = "ModelCheckpoint"
  readonly #options: Resolved

  #dirpath: string | undefined
  /** The committed bookkeeping: only what storage said was saved. */
  #committed: Bookkeeping
  /**
   * The bookkeeping of the save event under way: its saves record it (a checkpoint
   * records itself); committed when the event succeeds, dropped when it fails.
   */
  #draft: Bookkeeping | undefined = undefined
  /** A last checkpoint found in `dirpath` at setup, offered for `ckptPath: "last"`. */
  #discoveredLast: string | undefined = undefined
  /** The global step of the checkpoint this fit resumed from (set by `onLoadCheckpoint`). */
  #resumedStep: number | undefined = undefined
  #lastTimeChecked: number | undefined = undefined
  #validatedThisFit = false
  /**
   * A validation ran after the epoch's last batch (at its end). Lightning saves at
   * validation ends when validation runs inside epochs, so an epoch end saves only
   * after its own end-of-epoch validation (or when no validation runs in the fit).
   */
  #validatedThisEpoch = false
  #pendingValidationSave = false
  #warnedMissingMonitor = false
  /** A step- or time-triggered save waits for the end of the next validation (Lightning 2.6). */
  #deferred = false
  /** The monitored metric came from a validation (so a train-batch save would rank a stale value). */
  #monitorFromValidation = false
  /** Top-k checkpoints rotated out at this save event: removed once `last` is written. */
  #rotatedOut: Array<{ readonly previous: string; readonly current: string }> = []

  private constructor(options: Resolved) {
    super()
    this.#options = options
    this.#dirpath = options.dirpath
    this.#committed = { topK: CheckpointRetention.empty(options.mode), lastModelPath: undefined, newest: undefined, lastGlobalStepSaved: 0 }
  }

  /** The bookkeeping in force: the event's draft while one runs. */
  get #book(): Bookkeeping {
    return this.#draft ?? this.#committed
  }

  /** Updates the bookkeeping in force (the draft while an event runs). */
  #update(patch: Partial<Bookkeeping>): void {
    const next = { ...this.#book, ...patch }
    if (this.#draft !== undefined) this.#draft = next
    else this.#committed = next
  }

  get #policy(): CheckpointRetention.Policy & { readonly monitored: boolean } {
    return { mode: this.#options.mode, saveTopK: this.#options.saveTopK, monitored: this.#options.monitor !== undefined }
  }

  /** Checks the options and builds the callback. */
  static make(options: Options = {}): Effect.Effect<ModelCheckpoint, ModelCheckpointConfigError> {
    return Effect.suspend(() => {
      const fail = (option: string, reason: string) => Effect.fail(new ModelCheckpointConfigError({ option, reason }))
      const mode = options.mode ?? "min"
      if (mode !== "min" && mode !== "max") return fail("mode", `must be "min" or "max", got ${String(mode)}`)
      const saveTopK = options.saveTopK ?? 1
      if (!Number.isInteger(saveTopK) || saveTopK < -1) return fail("saveTopK", `must be an integer >= -1, got ${saveTopK}`)
      const saveLast = options.saveLast ?? false
      if (saveLast !== true && saveLast !== false && saveLast !== "link") {
        return fail("saveLast", `must be true, false or "link", got ${String(saveLast)}`)
      }
      for (const option of ["everyNTrainSteps", "everyNEpochs"] as const) {
        const value = options[option]
        if (value !== undefined && (!Number.isInteger(value) || value < 0)) {
          return fail(option, `must be a non-negative integer, got ${value}`)
        }
      }
      let trainTimeIntervalMs: number | undefined
      if (options.trainTimeInterval !== undefined) {
        const duration = Duration.fromInput(options.trainTimeInterval)
        const ms = Option.isSome(duration) ? Duration.toMillis(duration.value) : NaN
        // Zero is accepted, as in Lightning: a save at every training batch.
        if (!(ms >= 0) || !Number.isFinite(ms)) {
          return fail("trainTimeInterval", `must be a non-negative, finite duration, got ${String(options.trainTimeInterval)}`)
        }
        trainTimeIntervalMs = ms
      }
      // Lightning's defaults: every epoch unless another trigger is given.
      const noTrigger = options.everyNTrainSteps === undefined && options.everyNEpochs === undefined &&
        trainTimeIntervalMs === undefined
      const everyNEpochs = noTrigger ? 1 : options.everyNEpochs ?? 0
      const everyNTrainSteps = noTrigger ? 0 : options.everyNTrainSteps ?? 0
      const triggers = [everyNTrainSteps >= 1, everyNEpochs >= 1, trainTimeIntervalMs !== undefined].filter(Boolean).length
      if (triggers > 1) {
        return fail(
          "everyNTrainSteps / everyNEpochs / trainTimeInterval",
          `are mutually exclusive, got everyNTrainSteps=${everyNTrainSteps}, everyNEpochs=${everyNEpochs}, trainTimeInterval=${
            trainTimeIntervalMs === undefined ? "unset" : `${trainTimeIntervalMs} ms`
          }`
        )
      }
      if (options.monitor === undefined && saveTopK !== -1 && saveTopK !== 0 && saveTopK !== 1) {
        return fail("saveTopK", `${saveTopK} needs a monitor: without one there is no quantity to rank by (use -1, 0 or 1)`)
      }
      if (options.monitor !== undefined && options.monitor.length === 0) return fail("monitor", "must not be empty")
      const saveErrors = options.saveErrors ?? "stop"
      if (saveErrors !== "stop" && saveErrors !== "warn") {
        return fail("saveErrors", `must be "stop" or "warn", got ${String(saveErrors)}`)
      }
      const joinChar = options.joinChar ?? ModelCheckpoint.joinChar
      const equalsChar = options.equalsChar ?? "="
      const fileExtension = options.fileExtension ?? ModelCheckpoint.fileExtension
      const startingVersion = options.startingVersion ?? ModelCheckpoint.startingVersion
      const lastName = options.lastName ?? ModelCheckpoint.lastName
      if (!Number.isInteger(startingVersion) || startingVersion < 0) {
        return fail("startingVersion", `must be a non-negative integer, got ${startingVersion}`)
      }
      for (const [option, value] of [["joinChar", joinChar], ["equalsChar", equalsChar], ["fileExtension", fileExtension]] as const) {
        if (/[/\\\u0000-\u001f]/.test(value)) {
          return fail(option, `must not hold a path separator or a control character, got ${JSON.stringify(value)}`)
        }
      }
      const template = options.filename === undefined || options.filename.length === 0
        ? "{epoch}" + joinChar + "{step}"
        : options.filename
      const segments = parseTemplate(template)
      if (typeof segments === "string") return fail("filename", `${JSON.stringify(template)}: ${segments}`)
      const lastSegments = parseTemplate(lastName)
      if (typeof lastSegments === "string" || lastName.length === 0) {
        return fail("lastName", `${JSON.stringify(lastName)}: ${typeof lastSegments === "string" ? lastSegments : "must not be empty"}`)
      }
      return Effect.succeed(
        new ModelCheckpoint({
          // Lightning: an empty dirpath is no dirpath (the default is decided at setup).
          dirpath: options.dirpath === undefined || options.dirpath.length === 0 ? undefined : normalizeDir(options.dirpath),
          template: segments,
          monitor: options.monitor,
          mode,
          saveTopK,
          saveLast,
          saveWeightsOnly: options.saveWeightsOnly ?? false,
          autoInsertMetricName: options.autoInsertMetricName ?? true,
          everyNTrainSteps,
          everyNEpochs,
          trainTimeIntervalMs,
          saveOnTrainEpochEnd: options.saveOnTrainEpochEnd,
          saveOnException: options.saveOnException ?? false,
          enableVersionCounter: options.enableVersionCounter ?? true,
          verbose: options.verbose ?? false,
          saveErrors,
          lastName,
          fileExtension,
          joinChar,
          equalsChar,
          startingVersion,
          lastPattern: lastNamePattern(lastSegments, joinChar, fileExtension)
        })
      )
    })
  }

  // -------------------------------------------------------------------------
  // What users read

  get monitor(): string | undefined {
    return this.#options.monitor
  }
  get mode(): Mode {
    return this.#options.mode
  }
  get saveTopK(): number {
    return this.#options.saveTopK
  }
  get saveLast(): boolean | "link" {
    return this.#options.saveLast
  }
  get everyNTrainSteps(): number {
    return this.#options.everyNTrainSteps
  }
  get everyNEpochs(): number {
    return this.#options.everyNEpochs
  }
  /** Where checkpoints go: the option, or decided at the first `setup`. */
  get dirpath(): string | undefined {
    return this.#dirpath
  }
  /** The best checkpoint kept (without monitor: the newest). */
  override get bestModelPath(): string | undefined {
    return this.#book.topK.bestModelPath
  }
  /** The monitored value of `bestModelPath` (NaN is stored as the worst value, ±Infinity). */
  get bestModelScore(): number | undefined {
    return this.#book.topK.bestModelScore
  }
  /** The checkpoints kept by the top-k rule, path → score, in the order they were added. */
  get bestKModels(): ReadonlyMap<string, number> {
    return new Map(this.#book.topK.models)
  }
  /** The worst of the kept top-k checkpoints (the next to go), once k are kept. */
  get kthBestModelPath(): string | undefined {
    return this.#book.topK.kthBestModelPath
  }
  get kthValue(): number {
    return this.#book.topK.kthValue
  }
  /** The monitored value of the latest top-k save. */
  get currentScore(): number | undefined {
    return this.#book.topK.currentScore
  }
  /**
   * The last checkpoint: the one this callback wrote, or else the newest
   * `last.ckpt` / `last-vN.ckpt` found in `dirpath` at `setup` (for `ckptPath: "last"`).
   */
  override get lastModelPath(): string | undefined {
    return this.#book.lastModelPath ?? this.#discoveredLast
  }

  /** Lightning's state key: the options that tell two checkpoint callbacks apart. */
  get stateKey(): string {
    const o = this.#options
    return `ModelCheckpoint{'monitor': ${pyRepr(o.monitor)}, 'mode': ${pyRepr(o.mode)}, 'everyNTrainSteps': ${o.everyNTrainSteps}, ` +
      `'everyNEpochs': ${o.everyNEpochs}, 'trainTimeInterval': ${pyRepr(o.trainTimeIntervalMs)}}`
  }

  /**
   * The full path of a checkpoint named from `metrics` (Lightning's
   * `format_checkpoint_name`): the template (or `filename`, itself a template),
   * `-v<ver>` when given, a `prefix-` when given, the extension, under `dirpath`.
   */
  formatCheckpointName(
    metrics: ReadonlyMap<string, number>,
    options?: { readonly filename?: string | undefined; readonly ver?: number | undefined; readonly prefix?: string | undefined }
  ): string {
    let segments = this.#options.template
    if (options?.filename !== undefined) {
      const parsed = parseTemplate(options.filename)
      segments = typeof parsed === "string" ? [{ _tag: "Literal", text: options.filename }] : parsed
    }
    const { autoInsertMetricName, equalsChar, joinChar, fileExtension } = this.#options
    let name = renderTemplate(segments, metrics, autoInsertMetricName, equalsChar)
    if (options?.prefix !== undefined) {
      // Lightning: a name that already starts with the prefix gets it once
      // (`filename: "exception"` → `exception.ckpt`).
      const prefix = sanitizeFileName(options.prefix)
      if (name !== prefix && !name.startsWith(prefix + joinChar)) name = prefix + joinChar + name
    }
    if (options?.ver !== undefined) name = name + joinChar + `v${options.ver}`
    const file = name + fileExtension
    return this.#dirpath === undefined ? file : joinPath(this.#dirpath, file)
  }

  // -------------------------------------------------------------------------
  // State

  readonly stateDict = (): Json => ({
    monitor: this.#options.monitor ?? null,
    mode: this.#options.mode,
    bestModelScore: this.#book.topK.bestModelScore === undefined ? null : encodeScore(this.#book.topK.bestModelScore),
    bestModelPath: this.#book.topK.bestModelPath ?? null,
    currentScore: this.#book.topK.currentScore === undefined ? null : encodeScore(this.#book.topK.currentScore),
    dirpath: this.#dirpath ?? null,
    bestKModels: Object.fromEntries([...this.#book.topK.models].map(([path, score]) => [path, encodeScore(score)])),
    kthBestModelPath: this.#book.topK.kthBestModelPath ?? null,
    kthValue: encodeScore(this.#book.topK.kthValue),
    lastModelPath: this.#book.lastModelPath ?? null
  })

  readonly loadStateDict = (state: Json): Effect.Effect<void, Callback.HookError> =>
    Effect.suspend(() => {
      if (typeof state !== "object" || state === null || Array.isArray(state)) {
        return Effect.fail(new Callback.CallbackError({ callback: this.name, reason: "the saved state is not an object" }))
      }
      const saved = state as { readonly [key: string]: Json }
      const text = (key: string): string | undefined => (typeof saved[key] === "string" ? saved[key] as string : undefined)
      const from = text("dirpath")
      const sameDir = from === undefined || this.#dirpath === undefined || samePath(from, this.#dirpath)
      const effects: Array<Effect.Effect<void>> = []
      const topK = this.#book.topK
      if (sameDir) {
        const models = new Map<string, Score>()
        const savedModels = saved["bestKModels"]
        if (typeof savedModels === "object" && savedModels !== null && !Array.isArray(savedModels)) {
          for (const [path, score] of Object.entries(savedModels as { readonly [key: string]: Json })) {
            const value = decodeScore(score)
            if (value !== undefined) models.set(path, value)
          }
        }
        this.#update({
          topK: {
            models,
            kthBestModelPath: text("kthBestModelPath"),
            kthValue: decodeScore(saved["kthValue"]) ?? topK.kthValue,
            bestModelPath: text("bestModelPath"),
            bestModelScore: decodeScore(saved["bestModelScore"]),
            currentScore: decodeScore(saved["currentScore"])
          },
          lastModelPath: text("lastModelPath")
        })
      } else {
        this.#update({ topK: { ...topK, bestModelPath: text("bestModelPath") } })
        effects.push(Effect.logWarning(
          `ModelCheckpoint: the dirpath has changed from ${from} to ${this.#dirpath}, so bestModelScore, kthBestModelPath, ` +
            `kthValue, lastModelPath and bestKModels are not restored; only bestModelPath is`
        ))
      }
      return Effect.all(effects, { discard: true })
    })

  // -------------------------------------------------------------------------
  // Hooks (arrow functions: the Trainer calls them unbound)

  readonly setup: Callback.Hook<[stage: Callback.Stage]> = (trainer, stage) =>
    Effect.gen({ self: this }, function*() {
      this.#dirpath = this.#options.dirpath ?? normalizeDir(joinPath(trainer.defaultRootDir, "checkpoints"))
      if (this.#dirpath === "~" || this.#dirpath.startsWith("~/")) {
        // Lightning expands the user's home (`os.path.expanduser`); HOME from the environment.
        const home = yield* Effect.orElseSucceed(
          Effect.gen(function*() {
            return yield* Config.option(Config.String("HOME"))
          }),
          () => Option.none<string>()
        )
        if (Option.isSome(home)) this.#dirpath = normalizeDir(home.value + this.#dirpath.slice(1))
      }
      if (stage !== "fit") return
      this.#deferred = false
      this.#monitorFromValidation = false
      this.#validatedThisFit = false
      this.#validatedThisEpoch = false
      this.#pendingValidationSave = false
      this.#update({ lastGlobalStepSaved: 0 })
      this.#resumedStep = undefined
      // The Trainer resolves `ckptPath: "last"` after setup: offer the newest last
      // checkpoint in dirpath, so that a fresh callback can resume a previous run.
      const entries = yield* trainer.checkpointIO.list(this.#dirpath)
      let newest: { name: string; modifiedAt: number; version: number } | undefined
      for (const entry of entries) {
        const name = baseName(entry.path)
        const match = this.#options.lastPattern.exec(name)
        if (match === null) continue
        const version = match[1] === undefined ? 0 : Number(match[1])
        if (
          newest === undefined || entry.modifiedAt > newest.modifiedAt ||
          (entry.modifiedAt === newest.modifiedAt && version > newest.version)
        ) {
          newest = { name, modifiedAt: entry.modifiedAt, version }
        }
      }
      this.#discoveredLast = newest === undefined ? undefined : joinPath(this.#dirpath, newest.name)
      if (this.#options.saveTopK !== 0 && entries.length > 0) {
        yield* Effect.logWarning(`ModelCheckpoint: checkpoint directory ${this.#dirpath} exists and is not empty`)
      }
    })

  readonly onTrainStart: Callback.Hook = () =>
    Effect.map(Clock.currentTimeMillis, (now) => {
      this.#lastTimeChecked = now
    })

  readonly onTrainEpochStart: Callback.Hook = () =>
    Effect.sync(() => {
      this.#validatedThisEpoch = false
    })

  readonly onTrainBatchStart: Callback.Hook<[batchIdx: number]> = (trainer) =>
    Effect.suspend(() => {
      this.#validatedThisEpoch = false
      // A validation inside the epoch (default mode): save now, in the state it left.
      if (!this.#pendingValidationSave) return Effect.void
      this.#pendingValidationSave = false
      return this.#shouldSkip(trainer) || !this.#epochDue(trainer) ? Effect.void : this.#saveEvent(trainer, "topK")
    })

  readonly onTrainBatchEnd: Callback.Hook<[output: Callback.TrainStepOutput, batchIdx: number]> = (trainer) =>
    Effect.gen({ self: this }, function*() {
      if (this.#shouldSkip(trainer)) return
      const n = this.#options.everyNTrainSteps
      const skipBatch = n < 1 || trainer.globalStep % n !== 0
      let skipTime = true
      const interval = this.#options.trainTimeIntervalMs
      const now = yield* Clock.currentTimeMillis
      if (interval !== undefined) {
        skipTime = this.#lastTimeChecked === undefined || now - this.#lastTimeChecked < interval
      }
      if (skipBatch && skipTime) return
      if (!skipTime) this.#lastTimeChecked = now
      const monitor = this.#options.monitor
      if (monitor !== undefined && trainer.loggedMetrics.has(monitor)) this.#monitorFromValidation = false
      // Lightning 2.6: a monitored metric logged in validation (or not logged yet) is
      // ranked with its fresh value: the save waits for the end of the next validation.
      if (monitor !== undefined && (this.#monitorFromValidation || !trainer.callbackMetrics.has(monitor))) {
        this.#deferred = true
        return
      }
      yield* this.#saveEvent(trainer, "topK")
    })

  readonly onTrainEpochEnd: Callback.Hook = (trainer) =>
    Effect.suspend(() => {
      this.#pendingValidationSave = false
      if (this.#shouldSkip(trainer)) return Effect.void
      const when = this.#options.saveOnTrainEpochEnd
      const save = when === true || (when === undefined && (this.#validatedThisEpoch || !this.#validatedThisFit))
      // Lightning 2.6: the last checkpoint too is written only when a save is due here.
      return save && this.#epochDue(trainer) ? this.#saveEvent(trainer, "topK") : Effect.void
    })

  readonly onValidationEnd: Callback.Hook = (trainer) =>
    Effect.suspend(() => {
      if (trainer.stage !== "fit" || trainer.sanityChecking) return Effect.void
      this.#validatedThisFit = true
      this.#validatedThisEpoch = true
      const monitor = this.#options.monitor
      if (monitor !== undefined && trainer.loggedMetrics.has(monitor)) this.#monitorFromValidation = true
      if (this.#deferred) {
        this.#deferred = false
        if (!this.#shouldSkip(trainer)) return this.#saveEvent(trainer, "topK")
      }
      const when = this.#options.saveOnTrainEpochEnd
      if (when === undefined) this.#pendingValidationSave = true
      if (when !== false || this.#shouldSkip(trainer) || !this.#epochDue(trainer)) return Effect.void
      return this.#saveEvent(trainer, "topK")
    })

  /**
   * Lightning 2.6: `last.ckpt` is brought up to date at the end of training when no
   * save event wrote it at the final step (with `everyNEpochs: 0`, or saves at
   * validation ends and no validation, `last` is written here once). A save still
   * deferred to a validation that never came happens here too.
   */
  readonly onTrainEnd: Callback.Hook = (trainer) =>
    Effect.suspend(() => {
      if (this.#shouldSkip(trainer) || trainer.globalStep === 0) return Effect.void
      if (this.#deferred) {
        this.#deferred = false
        return this.#saveEvent(trainer, "topK")
      }
      return this.#options.saveLast === false ? Effect.void : this.#saveEvent(trainer, "none")
    })

  /** The fit's pending saves are waited for here, and a background failure handled by `saveErrors`. */
  readonly onFitEnd: Callback.Hook = (trainer) => this.#settle(trainer)

  readonly onLoadCheckpoint: Callback.Hook<[meta: CheckpointMeta]> = (_trainer, meta) =>
    Effect.sync(() => {
      // The state resumed from is already saved: nothing to save again at this step.
      this.#update({ lastGlobalStepSaved: meta.globalStep })
      this.#resumedStep = meta.globalStep
    })

  /**
   * Saves `exception-<name>.ckpt` (and the last checkpoint) when asked to. Never
   * fails: a failure to save is logged, and the run's own error is what the Trainer
   * returns.
   */
  readonly onException: Callback.Hook<[cause: unknown]> = (trainer, cause) => {
    if (!this.#options.saveOnException) return Effect.void
    return Effect.suspend(() => {
      if (trainer.stage !== "fit" || trainer.sanityChecking || trainer.globalStep === this.#book.lastGlobalStepSaved) {
        return Effect.void
      }
      const candidates = this.#monitorCandidates(trainer)
      const what = Cause.isCause(cause) && Cause.hasInterruptsOnly(cause) ? "was interrupted" : "failed"
      return this.#saveEvent(trainer, "none", (t) =>
        Effect.gen({ self: this }, function*() {
          // A metric in the template may be stale or not logged yet when the fit breaks
          // off (`val_acc=0.0000` mid-epoch): an exception checkpoint is named by epoch
          // and step alone unless the template names nothing else.
          const onlyPosition = this.#options.template.every((s) => s._tag === "Literal" || s.name === "epoch" || s.name === "step")
          const path = yield* this.#freePath(
            t,
            candidates,
            { prefix: ModelCheckpoint.exceptionPrefix, filename: onlyPosition ? undefined : "{epoch}-{step}" },
            undefined
          )
          yield* this.#save(t, path)
          // Logged once committed: on an asynchronous store `exists` waits for the save.
          if (yield* t.checkpointIO.exists(path)) {
            yield* Effect.logInfo(`ModelCheckpoint: the fit ${what} at epoch ${t.currentEpoch}, step ${t.globalStep}; saved ${path}`)
          } else {
            yield* Effect.logWarning(
              `ModelCheckpoint: the fit ${what} at epoch ${t.currentEpoch}, step ${t.globalStep}; ${path} could not be saved`
            )
          }
        }))
    }).pipe(
      Effect.catchCause((failure) => Effect.logError(`ModelCheckpoint: could not save a checkpoint on exception: ${Cause.pretty(failure)}`))
    )
  }

  // -------------------------------------------------------------------------
  // Saving and retention

  #shouldSkip(trainer: Callback.TrainerState): boolean {
    return (trainer.fastDevRun ?? 0) > 0 || trainer.stage !== "fit" || trainer.sanityChecking ||
      trainer.globalStep === this.#book.lastGlobalStepSaved
  }

  #epochDue(trainer: Callback.TrainerState): boolean {
    const n = this.#options.everyNEpochs
    return n >= 1 && (trainer.currentEpoch + 1) % n === 0
  }

  #dir(trainer: Callback.TrainerState): string {
    if (this.#dirpath === undefined) {
      this.#dirpath = this.#options.dirpath ?? normalizeDir(joinPath(trainer.defaultRootDir, "checkpoints"))
    }
    return this.#dirpath
  }

  /** The callback metrics, with `epoch` and `step` as integers (Lightning's `_monitor_candidates`). */
  #monitorCandidates(trainer: Callback.TrainerState): Map<string, number> {
    const candidates = new Map(trainer.callbackMetrics)
    const epoch = candidates.get("epoch")
    candidates.set("epoch", epoch === undefined ? trainer.currentEpoch : Math.trunc(epoch))
    const step = candidates.get("step")
    candidates.set("step", step === undefined ? trainer.globalStep : Math.trunc(step))
    return candidates
  }

  /**
   * The name to save to: the template's, or with the version counter the first of
   * `-v1`, `-v2`, … that is free in storage. `replacing` (the file this save rotates
   * out, or the current last checkpoint) may be overwritten.
   */
  #freePath(
    trainer: Callback.TrainerState,
    candidates: ReadonlyMap<string, number>,
    options: { readonly filename?: string | undefined; readonly prefix?: string | undefined },
    replacing: string | undefined
  ): Effect.Effect<string, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      this.#dir(trainer)
      let path = this.formatCheckpointName(candidates, options)
      if (!this.#options.enableVersionCounter) return path
      let version = this.#options.startingVersion
      while (path !== replacing && (yield* trainer.checkpointIO.exists(path)) && !(yield* this.#isOwnLeftover(trainer, path))) {
        path = this.formatCheckpointName(candidates, { ...options, ver: version })
        version++
      }
      return path
    })
  }

  /**
   * Is `path` a checkpoint this run wrote after the one it resumed from, that the
   * resumed state does not track (a kill between a top-k commit and the `last.ckpt`
   * commit)? Then the resumed run, arriving at the same name again, takes it over
   * (overwrites it and tracks it) instead of leaving it behind under a `-vN` name.
   * Proof of ownership is the file's own saved state: it records itself, under this
   * callback's state key, in this `dirpath`, at a later step. Anything that cannot be
   * read that way is someone else's and keeps the version counter.
   */
  #isOwnLeftover(trainer: Callback.TrainerState, path: string): Effect.Effect<boolean> {
    return Effect.gen({ self: this }, function*() {
      const resumed = this.#resumedStep
      if (resumed === undefined || trainer.resumedFrom === undefined || samePath(path, trainer.resumedFrom)) return false
      if (this.#dirpath === undefined || posix.dirname(posix.resolve(path)) !== posix.resolve(this.#dirpath)) return false
      for (
        const tracked of [
          this.#book.topK.bestModelPath,
          this.#book.lastModelPath,
          this.#book.newest?.path,
          ...this.#book.topK.models.keys()
        ]
      ) {
        if (tracked !== undefined && samePath(path, tracked)) return false
      }
      const checkpoint = yield* trainer.checkpointIO.load(path, { weightsOnly: true })
      if (Option.isNone(checkpoint.meta) || checkpoint.meta.value.globalStep <= resumed) return false
      const state = checkpoint.meta.value.callbacks?.[this.stateKey]
      if (typeof state !== "object" || state === null || Array.isArray(state)) return false
      const saved = state as { readonly [key: string]: Json }
      if (typeof saved["dirpath"] !== "string" || !samePath(saved["dirpath"], this.#dirpath)) return false
      const models = saved["bestKModels"]
      const recordsItself = saved["bestModelPath"] === path ||
        (typeof models === "object" && models !== null && !Array.isArray(models) && Object.hasOwn(models, path))
      if (recordsItself) {
        yield* Effect.logInfo(
          `ModelCheckpoint: taking over ${path}, left by the run this one resumed (written after ${trainer.resumedFrom})`
        )
      }
      return recordsItself
    }).pipe(Effect.catch(() => Effect.succeed(false)))
  }

  #save(trainer: Callback.TrainerState, path: string): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      yield* trainer.saveCheckpoint(path, { weightsOnly: this.#options.saveWeightsOnly })
      this.#update({ lastGlobalStepSaved: trainer.globalStep, newest: { path, step: trainer.globalStep } })
    })
  }

  /**
   * One save point: the top-k checkpoint (or `main`), then the last checkpoint. The
   * last path is decided first, so that every file written here records it in its
   * state (resuming from any of them keeps writing the same `last.ckpt`).
   */
  #saveEvent(
    trainer: Callback.TrainerState,
    kind: "topK" | "none",
    main?: (trainer: Callback.TrainerState) => Effect.Effect<void, Callback.HookError>
  ): Effect.Effect<void, Callback.HookError> {
    const event = Effect.gen({ self: this }, function*() {
      this.#dir(trainer)
      const candidates = this.#monitorCandidates(trainer)
      const previousLast = this.#book.lastModelPath
      let lastPath: string | undefined
      if (this.#options.saveLast !== false) {
        lastPath = yield* this.#freePath(trainer, candidates, { filename: this.#options.lastName }, previousLast)
        this.#update({ lastModelPath: lastPath })
      }
      this.#rotatedOut = []
      if (main !== undefined) yield* main(trainer)
      else if (kind === "topK") yield* this.#saveTopK(trainer, candidates)
      if (lastPath !== undefined) yield* this.#writeLast(trainer, lastPath, previousLast)
      // Rotated-out checkpoints go last, once the last checkpoint (whose state no longer
      // tracks them) is committed (`exists` waits for it on an asynchronous store): a
      // crash before leaves them in storage, still tracked; never the reverse.
      const rotated = this.#rotatedOut
      this.#rotatedOut = []
      if (rotated.length > 0 && lastPath !== undefined && !(yield* trainer.checkpointIO.exists(lastPath))) {
        yield* Effect.logWarning(`ModelCheckpoint: kept ${rotated.map((r) => r.previous).join(", ")}: ${lastPath} is not in storage`)
        return
      }
      for (const { current, previous } of rotated) yield* this.#removeRotated(trainer, previous, current)
    })
    return Effect.suspend(() => {
      // The event works on a draft of the bookkeeping (each save records it: a
      // checkpoint records itself), committed when the event succeeds and dropped when
      // it fails or is interrupted, so that no later save (the one `onException` makes,
      // say) records a checkpoint that is not in storage.
      const guarded = Effect.suspend(() => {
        this.#draft = this.#committed
        return event
      }).pipe(
        Effect.tap(() =>
          Effect.sync(() => {
            if (this.#draft !== undefined) this.#committed = this.#draft
            this.#draft = undefined
          })
        ),
        Effect.onError(() =>
          Effect.sync(() => {
            this.#draft = undefined
            this.#rotatedOut = []
          })
        )
      )
      const own = this.#options.saveErrors === "stop" ? guarded : guarded.pipe(
        Effect.catchIf(
          (error): error is CheckpointStorageError | BackgroundSaveFailed =>
            error._tag === "CheckpointStorageError" || error._tag === "BackgroundSaveFailed",
          (error) =>
            Effect.gen({ self: this }, function*() {
              yield* this.#forgetMissing(trainer)
              yield* Effect.logWarning(
                `ModelCheckpoint: could not save at epoch ${trainer.currentEpoch}, step ${trainer.globalStep}: ${error.message}; ` +
                  `training goes on (saveErrors: "warn")`
              )
            })
        )
      )
      // Earlier background saves that failed (an asynchronous store) are taken here and
      // handled by `saveErrors`; this event's own saves happen either way.
      return Effect.gen({ self: this }, function*() {
        const failures = yield* trainer.checkpointIO.takeFailures
        if (failures.length === 0) return yield* own
        const failed = new BackgroundSaveFailed({ failures })
        yield* this.#forgetMissing(trainer)
        if (this.#options.saveErrors === "warn") {
          yield* Effect.logWarning(`ModelCheckpoint: ${failed.message}; training goes on (saveErrors: "warn")`)
          return yield* own
        }
        yield* own
        return yield* failed
      })
    })
  }

  /**
   * Waits for this fit's pending saves at its end and handles a background failure by
   * `saveErrors` (so that a `"warn"` run is not failed by the Trainer's final flush).
   */
  #settle(trainer: Callback.TrainerState): Effect.Effect<void, Callback.HookError> {
    const flushed = trainer.checkpointIO.flush
    if (this.#options.saveErrors === "stop") return flushed
    return flushed.pipe(
      Effect.catchIf(
        (error): error is CheckpointStorageError | BackgroundSaveFailed =>
          error._tag === "CheckpointStorageError" || error._tag === "BackgroundSaveFailed",
        (error) =>
          Effect.andThen(
            this.#forgetMissing(trainer),
            Effect.logWarning(`ModelCheckpoint: at the end of the fit: ${error.message} (saveErrors: "warn")`)
          )
      )
    )
  }

  /**
   * Stops tracking checkpoints that are not in storage (an earlier background save
   * that failed), so that rotation, `bestModelPath` and `lastModelPath` only ever name
   * files that exist. Storage that cannot answer leaves the bookkeeping as it is.
   */
  #forgetMissing(trainer: Callback.TrainerState): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      const missing = new Set<string>()
      const book = this.#book
      const tracked = [...book.topK.models.keys(), book.topK.bestModelPath, book.lastModelPath, book.newest?.path]
      for (const path of tracked) {
        if (path === undefined || missing.has(path)) continue
        // A store that cannot say (an I/O error) keeps the file tracked: forgetting a
        // checkpoint that exists would let retention lose track of it for good.
        const present = yield* trainer.checkpointIO.exists(path).pipe(
          Effect.catch((error) =>
            Effect.as(Effect.logWarning(`ModelCheckpoint: cannot tell whether ${path} exists (${error.message}); still tracking it`), true)
          )
        )
        if (!present) missing.add(path)
      }
      if (missing.size === 0) return
      this.#update({
        topK: CheckpointRetention.forget(this.#policy, this.#book.topK, missing),
        lastModelPath: book.lastModelPath !== undefined && missing.has(book.lastModelPath) ? undefined : book.lastModelPath,
        newest: book.newest !== undefined && missing.has(book.newest.path) ? undefined : book.newest
      })
    })
  }

  #saveTopK(trainer: Callback.TrainerState, candidates: ReadonlyMap<string, number>): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      const { monitor, saveTopK } = this.#options
      if (saveTopK === 0) return
      if (monitor === undefined) return yield* this.#saveNoMonitor(trainer, candidates)
      const current = candidates.get(monitor)
      if (current === undefined) {
        const message = `ModelCheckpoint(monitor: ${JSON.stringify(monitor)}) could not find the monitored key in the metrics: ` +
          `[${[...candidates.keys()].join(", ")}]. Did you log ${JSON.stringify(monitor)} in the module?`
        // After a validation ran, a missing key is a typo, not "not logged yet".
        if (this.#validatedThisFit) return yield* new Callback.CallbackError({ callback: this.name, reason: message })
        if (!this.#warnedMissingMonitor) yield* Effect.logWarning(message)
        this.#warnedMissingMonitor = true
        return
      }
      if (!CheckpointRetention.wouldKeep(this.#policy, this.#book.topK, current)) {
        if (this.#options.verbose) {
          yield* Effect.logInfo(
            `Epoch ${candidates.get("epoch")}, global step ${candidates.get("step")}: '${monitor}' was not in top ${saveTopK}`
          )
        }
        return
      }
      yield* this.#updateBestAndSave(trainer, current, candidates)
    })
  }

  #updateBestAndSave(
    trainer: Callback.TrainerState,
    value: number,
    candidates: ReadonlyMap<string, number>
  ): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      // The decision is pure; it is in force (recorded by the save) only in the draft,
      // committed with the event.
      const replacing = CheckpointRetention.replaced(this.#policy, this.#book.topK)
      const path = yield* this.#freePath(trainer, candidates, {}, replacing)
      const decision = CheckpointRetention.admit(this.#policy, this.#book.topK, path, value)
      this.#update({ topK: decision.state })
      const topK = decision.state
      if (this.#options.verbose) {
        const k = this.#options.saveTopK === -1 ? topK.models.size : this.#options.saveTopK
        yield* Effect.logInfo(
          `Epoch ${candidates.get("epoch")}, global step ${candidates.get("step")}: '${this.#options.monitor}' reached ` +
            `${topK.currentScore?.toFixed(5)} (best ${topK.bestModelScore?.toFixed(5)}), saving model to '${path}' as top ${k}`
        )
      }
      yield* this.#save(trainer, path)
      for (const previous of decision.rotatedOut) this.#rotatedOut.push({ previous, current: path })
    })
  }

  #saveNoMonitor(trainer: Callback.TrainerState, candidates: ReadonlyMap<string, number>): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      const path = yield* this.#freePath(trainer, candidates, {}, this.#book.topK.bestModelPath)
      const decision = CheckpointRetention.admitNewest(this.#policy, this.#book.topK, path)
      this.#update({ topK: decision.state })
      if (this.#options.verbose) {
        yield* Effect.logInfo(`Epoch ${candidates.get("epoch")}, global step ${candidates.get("step")}: saving model to '${path}'`)
      }
      yield* this.#save(trainer, path)
      for (const previous of decision.rotatedOut) this.#rotatedOut.push({ previous, current: path })
    })
  }

  #writeLast(trainer: Callback.TrainerState, path: string, previous: string | undefined): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      const source = this.#book.newest
      // Link only to a checkpoint of this very step: never a stale target.
      if (
        this.#options.saveLast === "link" && this.#options.saveTopK !== 0 && source !== undefined &&
        source.step === trainer.globalStep && source.path !== path
      ) {
        yield* trainer.checkpointIO.copy(source.path, path)
        this.#update({ newest: { path, step: trainer.globalStep } })
        if (this.#options.verbose) yield* Effect.logInfo(`ModelCheckpoint: linked ${path} to ${source.path}`)
      } else {
        yield* this.#save(trainer, path)
        // "saving": on an asynchronous store the write is still under way.
        if (this.#options.verbose) yield* Effect.logInfo(`ModelCheckpoint: saving ${path}`)
      }
      if (previous !== undefined) yield* this.#removeRotated(trainer, previous, path)
    })
  }

  /** May `previous` be removed now that `current` replaces it? */
  #mayRemove(trainer: Callback.TrainerState, previous: string, current: string): boolean {
    if (samePath(previous, current)) return false
    // The checkpoint this run resumed from may still be open (remote storage, a reader).
    if (trainer.resumedFrom !== undefined && samePath(previous, trainer.resumedFrom)) return false
    // Only files directly inside dirpath: never another run's directory.
    if (this.#dirpath === undefined || posix.dirname(posix.resolve(previous)) !== posix.resolve(this.#dirpath)) return false
    // Never the newest checkpoint, nor one still tracked.
    if (this.#book.newest !== undefined && samePath(previous, this.#book.newest.path)) return false
    for (const tracked of [this.#book.topK.bestModelPath, this.#book.lastModelPath, ...this.#book.topK.models.keys()]) {
      if (tracked !== undefined && samePath(previous, tracked)) return false
    }
    return true
  }

  /**
   * Removes a rotated-out checkpoint once its replacement is committed. `exists`
   * on the replacement waits for its pending save on an asynchronous store; a
   * replacement that is not there keeps the old file.
   */
  #removeRotated(trainer: Callback.TrainerState, previous: string, current: string): Effect.Effect<void, Callback.HookError> {
    return Effect.gen({ self: this }, function*() {
      if (!this.#mayRemove(trainer, previous, current)) return
      const committed = yield* trainer.checkpointIO.exists(current)
      if (!committed) {
        yield* Effect.logWarning(`ModelCheckpoint: kept ${previous}: its replacement ${current} is not in storage`)
        return
      }
      const removed = trainer.checkpointIO.remove(previous)
      // Retention is housekeeping: its saves are committed, so a removal that fails
      // (a directory, or a symlink to one, where a checkpoint was) goes by `saveErrors`.
      const logged = this.#options.verbose ? Effect.andThen(removed, Effect.logInfo(`ModelCheckpoint: removed ${previous}`)) : removed
      yield* this.#options.saveErrors === "stop" ? logged : logged.pipe(
        Effect.catch((error) =>
          Effect.logWarning(`ModelCheckpoint: could not remove ${previous}: ${error.message}; kept (saveErrors: "warn")`)
        )
      )
    })
  }
}

/** Checks the options and builds a `ModelCheckpoint` (same as `ModelCheckpoint.make`). */
export const make = (options: Options = {}): Effect.Effect<ModelCheckpoint, ModelCheckpointConfigError> => ModelCheckpoint.make(options)
