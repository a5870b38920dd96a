/**
 * `OnExceptionCheckpoint`: saves a checkpoint when a fit fails or is interrupted
 * (Lightning's `OnExceptionCheckpoint`).
 *
 * On `onException` it saves `<dirpath>/<filename>.ckpt` (default `on_exception.ckpt`)
 * through the Trainer's `CheckpointIO`, overwriting an earlier one; resume from it with
 * `fit(..., { ckptPath })`. A fit that ends well removes the file at `teardown`, so a
 * stale exception checkpoint does not outlive the run that recovered (Lightning's
 * rule; other stages leave it). It never fails the run: a save that fails is logged,
 * and the fit returns its own error.
 *
 * As a checkpoint callback it counts for `enableCheckpointing`: a Trainer given only
 * this one has no default `ModelCheckpoint` (add one for regular saves).
 *
 * @example
 * ```ts
 * const onException = yield* OnExceptionCheckpoint.make({ dirpath: "runs/checkpoints" })
 * const trainer = yield* Trainer.make({ callbacks: [yield* ModelCheckpoint.make(), onException] })
 * ```
 *
 * @since 0.3.0
 */
import { Cause, Data, Effect } from "effect"
import * as Callback from "./Callback.ts"

/**
 * An `OnExceptionCheckpoint` was configured in a way that can never work.
 *
 * @since 0.3.0
 */
export class OnExceptionCheckpointConfigError extends Data.TaggedError("OnExceptionCheckpointConfigError")<{
  readonly option: string
  readonly reason: string
}> {
  override get message(): string {
    return `OnExceptionCheckpoint option ${this.option}: ${this.reason}`
  }
}

/**
 * Options of `OnExceptionCheckpoint` (Lightning's names).
 *
 * @since 0.3.0
 */
export interface Options {
  /** The directory of the checkpoint (required, as in Lightning). */
  readonly dirpath: string
  /** The file name without the extension (default `"on_exception"`). */
  readonly filename?: string | undefined
}

/**
 * The callback. Build it with `make`.
 *
 * @since 0.3.0
 */
export class OnExceptionCheckpoint extends Callback.Checkpoint implements Callback.Callback {
  static readonly fileExtension = ".ckpt"
  readonly name = "OnExceptionCheckpoint"
  /** Where the checkpoint goes: `<dirpath>/<filename>.ckpt`. */
  readonly ckptPath: string
  #failed = false

  private constructor(ckptPath: string) {
    super()
    this.ckptPath = ckptPath
  }

  /** Checks the options and builds the callback. */
  static make(options: Options): Effect.Effect<OnExceptionCheckpoint, OnExceptionCheckpointConfigError> {
    return Effect.suspend(() => {
      const filename = options.filename ?? "on_exception"
      if (filename.length === 0) {
        return Effect.fail(new OnExceptionCheckpointConfigError({ option: "filename", reason: "must not be empty" }))
      }
      if (/[/\\\u0000-\u001f]/.test(filename)) {
        return Effect.fail(
          new OnExceptionCheckpointConfigError({ option: "filename", reason: `must be a file name, got ${JSON.stringify(filename)}` })
        )
      }
      if (options.dirpath.length === 0) {
        return Effect.fail(new OnExceptionCheckpointConfigError({ option: "dirpath", reason: "must not be empty" }))
      }
      const dir = options.dirpath.endsWith("/") ? options.dirpath.slice(0, -1) : options.dirpath
      return Effect.succeed(new OnExceptionCheckpoint(`${dir}/${filename}${OnExceptionCheckpoint.fileExtension}`))
    })
  }

  readonly setup: Callback.Hook<[stage: Callback.Stage]> = () =>
    Effect.sync(() => {
      this.#failed = false
    })

  /** Saves `ckptPath`; never fails (a failed save is logged). */
  readonly onException: Callback.Hook<[cause: unknown]> = (trainer, cause) =>
    Effect.gen({ self: this }, function*() {
      this.#failed = true
      yield* trainer.saveCheckpoint(this.ckptPath)
      const what = Cause.isCause(cause) && Cause.hasInterruptsOnly(cause) ? "was interrupted" : "failed"
      // On an asynchronous store `exists` waits for the save.
      if (yield* trainer.checkpointIO.exists(this.ckptPath)) {
        yield* Effect.logInfo(
          `OnExceptionCheckpoint: the ${trainer.stage} ${what} at epoch ${trainer.currentEpoch}, step ${trainer.globalStep}; saved ${this.ckptPath}`
        )
      }
    }).pipe(
      Effect.catchCause((failure) => Effect.logError(`OnExceptionCheckpoint: could not save ${this.ckptPath}: ${Cause.pretty(failure)}`))
    )

  /** After a fit that ended well: removes a stale exception checkpoint. */
  readonly teardown: Callback.Hook<[stage: Callback.Stage]> = (trainer, stage) =>
    Effect.gen({ self: this }, function*() {
      if (stage !== "fit" || this.#failed) return
      if (yield* trainer.checkpointIO.exists(this.ckptPath)) yield* trainer.checkpointIO.remove(this.ckptPath)
    })
}

/**
 * Checks the options and builds an `OnExceptionCheckpoint`.
 *
 * @since 0.3.0
 */
export const make = (options: Options): Effect.Effect<OnExceptionCheckpoint, OnExceptionCheckpointConfigError> =>
  OnExceptionCheckpoint.make(options)
