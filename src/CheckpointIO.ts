/**
 * `CheckpointIO`: how and where checkpoints are stored.
 *
 * The counterpart of PyTorch Lightning's `CheckpointIO` plugin, as an Effect
 * service. The Trainer and checkpoint callbacks only ever talk to this service, so a
 * Layer decides the storage: `FileCheckpointIO.layer` (the default, local disk),
 * `MemoryCheckpointIO.layer` (tests), or your own. Teardown is the Layer's scope.
 *
 * Every implementation keeps these promises:
 * - `save` is atomic: a reader sees the previous checkpoint or the new one under a
 *   path, never a partial file; a failed or interrupted save leaves the previous one.
 * - `load` validates everything before it allocates and fails with
 *   `CheckpointCorrupt` (naming the file and the reason) on any inconsistency.
 * - `remove` of a missing checkpoint succeeds; `list` shows committed checkpoints
 *   only (never temporary files).
 * - Each operation fails only for itself: a background save that failed earlier (on
 *   an asynchronous store) never fails an unrelated `save`, `load`, `exists`, `list`,
 *   `remove` or `copy`. Such failures are handed out, exactly once, by
 *   `takeFailures` (without waiting) or by `flush` (after waiting).
 * - `identify` says which spellings name the same checkpoint (the file store: the
 *   absolute path with its directory's symlinks resolved), so that a wrapper keeps
 *   per-path order however a path is written.
 *
 * @since 0.1.0
 */
import { Context, Data, Effect, PlatformError } from "effect"
import type { Checkpoint } from "./Checkpoint.ts"

/** The operations of the service, named in errors. */
export type Operation = "save" | "load" | "remove" | "exists" | "list" | "flush" | "copy"

/** No checkpoint under `path`. */
export class CheckpointNotFound extends Data.TaggedError("CheckpointNotFound")<{
  readonly operation: Operation
  readonly path: string
}> {
  override get message(): string {
    return `${this.operation}: no checkpoint at ${this.path}`
  }
}

/** The file under `path` is not a valid checkpoint; `reason` says what is wrong. */
export class CheckpointCorrupt extends Data.TaggedError("CheckpointCorrupt")<{
  readonly path: string
  readonly reason: string
}> {
  override get message(): string {
    return `checkpoint ${this.path} is corrupt: ${this.reason}`
  }
}

/**
 * Why storage failed: out of space (ENOSPC, EDQUOT), not permitted (EACCES, EPERM,
 * EROFS), an I/O error (EIO), or anything else.
 */
export type StorageReason = "NoSpace" | "PermissionDenied" | "IO" | "Other"

/** The storage refused an operation; `cause` is the underlying error. */
export class CheckpointStorageError extends Data.TaggedError("CheckpointStorageError")<{
  readonly operation: Operation
  readonly path: string
  readonly reason: StorageReason
  readonly cause: unknown
}> {
  override get message(): string {
    const systemError = PlatformError.isPlatformError(this.cause) ? this.cause.reason : undefined
    const code = errnoCode(systemError?.cause ?? this.cause)
    const detail = this.cause instanceof Error ? `: ${this.cause.message}` : ""
    return `${this.operation} ${this.path} failed (${this.reason}${code === undefined ? "" : `, ${code}`})${detail}`
  }
}

/** The caller passed something that can never work (a bad tensor, a bad path). */
export class CheckpointInvalidArgument extends Data.TaggedError("CheckpointInvalidArgument")<{
  readonly operation: Operation
  readonly path: string
  readonly reason: string
}> {
  override get message(): string {
    return `${this.operation} ${this.path}: ${this.reason}`
  }
}

/** One background save that failed: the path it was saving to, and why. */
export interface BackgroundFailure {
  readonly path: string
  readonly error: CheckpointIOError
}

/**
 * One or more background saves failed (an asynchronous store hands them out once,
 * through `takeFailures` or `flush`, never through an unrelated call). Each failure
 * names its file and reason.
 */
export class BackgroundSaveFailed extends Data.TaggedError("BackgroundSaveFailed")<{
  readonly failures: ReadonlyArray<BackgroundFailure>
}> {
  override get message(): string {
    return `background save failed: ${this.failures.map((f) => f.error.message).join("; ")}`
  }
}

/**
 * Loading `path` would take more memory than the store allows (`bytes` of tensors
 * against a bound of `limit`), or the allocation itself failed. Refused before any
 * tensor memory is allocated; the file itself may be valid (load it where there is
 * more memory, or raise the store's bound).
 */
export class CheckpointTooLarge extends Data.TaggedError("CheckpointTooLarge")<{
  readonly operation: Operation
  readonly path: string
  readonly bytes: number
  readonly limit: number
  readonly reason: string
}> {
  override get message(): string {
    return `${this.operation} ${this.path}: ${this.reason}`
  }
}

/** Every error a CheckpointIO operation can fail with. */
export type CheckpointIOError =
  | CheckpointNotFound
  | CheckpointCorrupt
  | CheckpointStorageError
  | CheckpointInvalidArgument
  | CheckpointTooLarge
  | BackgroundSaveFailed

/** Options of `save`. */
export interface SaveOptions {
  /**
   * Flush the file and its directory entry to stable storage before `save`
   * returns (default `true`). Turning it off trades power-cut durability for speed;
   * the write stays atomic for readers either way.
   */
  readonly durable?: boolean | undefined
  /**
   * How an asynchronous store takes the tensors before `save` returns (synchronous
   * stores write them before returning and ignore this):
   * - `"copy"` (default): it copies them; the caller may change its arrays at once;
   * - `"transfer"`: the caller hands them over: the store takes their buffers
   *   without copying (`ArrayBuffer.transfer`), which detaches the caller's arrays.
   *   For freshly staged snapshots that nothing else uses, as the Strategy makes.
   */
  readonly snapshot?: "copy" | "transfer" | undefined
}

/**
 * What to do with dtypes TensorFlow.js cannot compute in (anything but F32, I32,
 * BOOL):
 * - `"preserve"` (default): return every tensor as stored;
 * - `"tfjs"`: refuse such a tensor with `CheckpointInvalidArgument`;
 * - `"convert"`: convert to the nearest tfjs dtype (F64 / F16 / BF16 → F32; integer
 *   types → I32, refusing a value outside the int32 range).
 */
export type DTypePolicy = "preserve" | "tfjs" | "convert"

/** Options of `load`. */
export interface LoadOptions {
  /**
   * Load model weights only: the `model/` section of an effect-trainer checkpoint
   * (every tensor of a foreign file). Other tensors are validated from the header
   * but never read.
   */
  readonly weightsOnly?: boolean | undefined
  readonly dtypes?: DTypePolicy | undefined
}

/** A committed checkpoint found by `list`. */
export interface CheckpointEntry {
  readonly path: string
  /** Modification time, milliseconds since the epoch. */
  readonly modifiedAt: number
  readonly size: number
}

/**
 * The storage contract.
 *
 * Paths are the implementation's own: file paths for `FileCheckpointIO`, keys for
 * `MemoryCheckpointIO`. `list(dir)` is non-recursive and sorted by path.
 */
export interface CheckpointIOShape {
  readonly save: (
    checkpoint: Checkpoint,
    path: string,
    options?: SaveOptions
  ) => Effect.Effect<void, CheckpointIOError>
  readonly load: (path: string, options?: LoadOptions) => Effect.Effect<Checkpoint, CheckpointIOError>
  readonly remove: (path: string) => Effect.Effect<void, CheckpointIOError>
  readonly exists: (path: string) => Effect.Effect<boolean, CheckpointIOError>
  readonly list: (dir: string) => Effect.Effect<ReadonlyArray<CheckpointEntry>, CheckpointIOError>
  /**
   * Waits until every save accepted so far is committed, then fails with
   * `BackgroundSaveFailed` if background saves failed that `takeFailures` has not
   * handed out yet (taking them: each failure is reported once). Immediate for
   * synchronous stores.
   */
  readonly flush: Effect.Effect<void, CheckpointIOError>
  /**
   * Hands out the background saves that failed since the last `takeFailures` or
   * `flush`, exactly once, without waiting for pending saves (empty for synchronous
   * stores, whose `save` reports its own failure). What `ModelCheckpoint` calls at
   * each save event to apply its `saveErrors` policy.
   */
  readonly takeFailures: Effect.Effect<ReadonlyArray<BackgroundFailure>>
  /**
   * The store's identity of a path: two paths with the same identity name the same
   * checkpoint (`a/./b.ckpt` and `a/b.ckpt`; a relative and an absolute spelling; a
   * directory reached through a symlink). The file store resolves the path to an
   * absolute one with its directory's symlinks resolved (the file itself need not
   * exist); the memory store normalises its key. `AsyncCheckpointIO` keys its
   * per-path order by it. A wrapper should pass its inner store's `identify` on.
   */
  readonly identify: (path: string) => Effect.Effect<string, CheckpointIOError>
  /**
   * Makes `target` a checkpoint with the content of `source`, atomically (a reader
   * sees the previous `target` or the new one): a hard link where the storage
   * supports one (no bytes copied; later saves to `source` do not change `target`),
   * otherwise a copy. What `ModelCheckpoint(saveLast: "link")` uses.
   */
  readonly copy: (source: string, target: string) => Effect.Effect<void, CheckpointIOError>
}

/**
 * Refuses a path that cannot name a checkpoint (empty, or ending in a separator).
 * Stores call it first, so that the error is the same whatever the store.
 */
export const checkPath = (operation: Operation, path: string): Effect.Effect<void, CheckpointInvalidArgument> =>
  path.length === 0 || path.endsWith("/") || path.endsWith("\\")
    ? Effect.fail(new CheckpointInvalidArgument({ operation, path, reason: "a checkpoint path must name a file" }))
    : Effect.void

const noFailures: Effect.Effect<ReadonlyArray<BackgroundFailure>> = Effect.succeed([])

/**
 * Builds a store from its operations. `flush` defaults to nothing to wait for;
 * `takeFailures` to none (a synchronous store); `identify` to the path as given;
 * `copy` to a load of the source and a save to the target.
 */
export const make = (
  operations:
    & Omit<CheckpointIOShape, "flush" | "copy" | "takeFailures" | "identify">
    & {
      readonly flush?: CheckpointIOShape["flush"] | undefined
      readonly copy?: CheckpointIOShape["copy"] | undefined
      readonly takeFailures?: CheckpointIOShape["takeFailures"] | undefined
      readonly identify?: CheckpointIOShape["identify"] | undefined
    }
): CheckpointIOShape => ({
  ...operations,
  flush: operations.flush ?? Effect.void,
  takeFailures: operations.takeFailures ?? noFailures,
  identify: operations.identify ?? Effect.succeed,
  copy: operations.copy ?? ((source, target) => Effect.flatMap(operations.load(source), (c) => operations.save(c, target)))
})

/** The service key. Provide it with `FileCheckpointIO.layer`, `MemoryCheckpointIO.layer`, … */
export class CheckpointIO extends Context.Service<CheckpointIO, CheckpointIOShape>()("effect-trainer/CheckpointIO") {}

const errnoCode = (cause: unknown): string | undefined => {
  if (typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string") {
    return cause.code
  }
  return undefined
}

/** Classifies a storage failure by its errno code (or a PlatformError's tag). */
export const storageReason = (error: unknown): StorageReason => {
  const systemError = PlatformError.isPlatformError(error) ? error.reason : undefined
  const code = errnoCode(systemError?.cause ?? error)
  switch (code) {
    case "ENOSPC":
    case "EDQUOT":
      return "NoSpace"
    case "EACCES":
    case "EPERM":
    case "EROFS":
      return "PermissionDenied"
    case "EIO":
      return "IO"
  }
  if (systemError?._tag === "PermissionDenied") return "PermissionDenied"
  return "Other"
}

/** Wraps any storage failure into the typed `CheckpointStorageError`. */
export const storageError = (operation: Operation, path: string) => (cause: unknown): CheckpointStorageError =>
  new CheckpointStorageError({ operation, path, reason: storageReason(cause), cause })
