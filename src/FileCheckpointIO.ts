/**
 * `FileCheckpointIO`: the default `CheckpointIO`, one safetensors file per
 * checkpoint on a local disk (the counterpart of Lightning's `TorchCheckpointIO`).
 *
 * Built on Effect's `FileSystem` and `Path` services, so a test can swap the file
 * system (see `FaultyFileSystem`). The write protocol makes a save atomic and
 * durable:
 *
 * 1. create missing directories; clean temporary files left by dead processes;
 * 2. write a temporary file in the same directory (so the rename never crosses a
 *    device), tensor by tensor, never the whole checkpoint in one buffer;
 * 3. fsync the data (checksumming large tensors meanwhile), write the header, fsync
 *    again, rename it onto the final name, fsync the directory.
 *
 * A failure or interruption at any step leaves no file under the final name and the
 * previous checkpoint intact (if the directory fsync fails after the rename, the
 * previous file is put back). Temporary files are named
 * `.<name hash>.<writer>.<pid>.<random>.tmp-ckpt` (at most ~50 bytes, whatever the
 * checkpoint's name) and are never listed. `<writer>` identifies the host, boot and
 * pid namespace of the process that wrote it, so that writers in other containers or
 * on other hosts sharing the directory (whose pids mean nothing here) are told apart:
 * a temporary file is swept when it is provably ours and dead (our writer identity,
 * a pid that is not running, or our own pid but not in use), or when it has not been
 * modified for `staleTemporaryAfter` (default 1 hour), whoever wrote it.
 *
 * Loading opens regular files only (a FIFO or a device is refused, never opened in a
 * way that could block) and refuses a file whose tensors need more memory than
 * `maxLoadBytes` with `CheckpointTooLarge` before allocating.
 *
 * @since 0.1.0
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Clock, Duration, Effect, Exit, FileSystem, Layer, Option, Path, type PlatformError, type Scope } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { constants as fsConstants, promises as fsPromises, readFileSync, readlinkSync } from "node:fs"
import { hostname, totalmem } from "node:os"
import {
  checkPath,
  type CheckpointEntry,
  CheckpointInvalidArgument,
  CheckpointIO,
  type CheckpointIOError,
  type CheckpointIOShape,
  CheckpointNotFound,
  make as CheckpointIOMake,
  type Operation,
  storageError
} from "./CheckpointIO.ts"
import * as SafeTensors from "./SafeTensors.ts"

const tempSuffix = ".tmp-ckpt"

/** Is this directory entry a temporary file of an unfinished save? */
export const isTemporaryName = (name: string): boolean => name.startsWith(".") && name.endsWith(tempSuffix)

const hex8 = (text: string): string => createHash("sha256").update(text).digest("hex").slice(0, 8)

const readOr = (read: () => string): string => {
  try {
    return read().trim()
  } catch {
    return ""
  }
}

/**
 * This process's writer identity in temporary names: 8 hex digits of a hash of the
 * host name, the boot id and the pid namespace. Two processes with the same identity
 * see each other's pids (same host, same boot, same namespace); any other writer's
 * pid is meaningless here.
 */
export const writerIdentity: string = hex8(
  [
    hostname(),
    readOr(() => readFileSync("/proc/sys/kernel/random/boot_id", "utf8")),
    readOr(() => readlinkSync("/proc/self/ns/pid"))
  ].join("\n")
)

// Not Math.random: a seeded run replaces it inside its steps, and names must never
// draw from (or depend on) that stream. The checkpoint's name is hashed, so that the
// temporary name is short whatever the name (a name of 255 bytes can be saved).
const temporaryName = (base: string, identity: string, pid: number): string =>
  `.${hex8(base)}.${identity}.${pid}.${randomBytes(5).toString("hex")}${tempSuffix}`

/**
 * Temporary names this process has in use. A temporary file of our own identity and
 * pid that is not in here was left by an earlier process that had the same pid (a
 * container's main process is pid 1 in every run): stale.
 */
const inUse = new Set<string>()

/** The writer of a temporary file; `identity` is absent in names of older versions. */
const temporaryOwner = (name: string): { readonly identity: string | undefined; readonly pid: number } | undefined => {
  const current = /^\.[0-9a-f]{8}\.([0-9a-f]{8})\.(\d+)\.[0-9a-f]+\.tmp-ckpt$/.exec(name)
  if (current) return { identity: current[1], pid: Number(current[2]) }
  const legacy = /\.(\d+)\.[a-z0-9]+\.tmp-ckpt$/.exec(name)
  return legacy ? { identity: undefined, pid: Number(legacy[1]) } : undefined
}

/** The longest file name (in UTF-8 bytes) that common file systems accept. */
const maxNameBytes = 255

const processIsAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * A URL (`s3://bucket/key`, `gs://…`) is not a local path: refused, so that it never
 * becomes a local directory named `s3:`. Use a store for it (`S3CheckpointIO`).
 */
const refuseUrl = (operation: Operation, file: string): Effect.Effect<void, CheckpointInvalidArgument> =>
  /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(file)
    ? Effect.fail(
      new CheckpointInvalidArgument({
        operation,
        path: file,
        reason: "is a URL, not a local path: the file store does not handle it (use a store for it, such as S3CheckpointIO)"
      })
    )
    : Effect.void

const isNotFound = (error: PlatformError.PlatformError): boolean => error.reason._tag === "NotFound"

/** Options of the file store. */
export interface Options {
  /**
   * The most bytes of tensor memory one `load` may allocate; a checkpoint that needs
   * more fails with `CheckpointTooLarge` before anything is allocated. Default: half
   * of the machine's memory (`defaultNodeMaxLoadBytes`); `Infinity` for no bound but
   * the file's size. An allocation the runtime refuses is a `CheckpointTooLarge` either way.
   */
  readonly maxLoadBytes?: number | undefined
  /**
   * A temporary file not modified for this long is stale whoever wrote it (a writer
   * on another host or in another container, whose pid cannot be checked from here;
   * or a dead writer whose pid was reused). Default 1 hour: keep it above the time one
   * save can spend between two writes (the final fsync of a huge file, say).
   */
  readonly staleTemporaryAfter?: Duration.Input | undefined
  /** The writer identity in temporary names (default `writerIdentity`; for tests). */
  readonly writerIdentity?: string | undefined
}

/** The default `maxLoadBytes`: half of the machine's memory. */
export const defaultNodeMaxLoadBytes = (): number => Math.floor(totalmem() / 2)

type ReadOpener = (target: string) => Effect.Effect<SafeTensors.ByteSource<CheckpointIOError>, CheckpointIOError, Scope.Scope>

/**
 * Opens a file for reading on Node with `O_NONBLOCK`: a FIFO, a device or a socket
 * swapped in after any check can never block the open; `fstat` on the open file then
 * refuses anything but a regular file.
 */
const nodeReadOpener: ReadOpener = (target) =>
  Effect.gen(function*() {
    const failed = (cause: unknown): CheckpointIOError =>
      typeof cause === "object" && cause !== null && "code" in cause && cause.code === "ENOENT"
        ? new CheckpointNotFound({ operation: "load", path: target })
        : storageError("load", target)(cause)
    const handle = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => fsPromises.open(target, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK),
        catch: failed
      }),
      (h) => Effect.ignore(Effect.tryPromise(() => h.close()))
    )
    const info = yield* Effect.tryPromise({ try: () => handle.stat(), catch: failed })
    if (!info.isFile()) {
      return yield* new CheckpointInvalidArgument({ operation: "load", path: target, reason: "is not a regular file" })
    }
    return {
      size: info.size,
      read: (into, position) =>
        Effect.tryPromise({
          try: () => handle.read(into, 0, into.byteLength, position).then((r) => r.bytesRead),
          catch: failed
        })
    }
  })

const makeInternal = (
  options: Options,
  readOpener: ReadOpener | undefined
): Effect.Effect<CheckpointIOShape, never, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const identity = options.writerIdentity ?? writerIdentity
    const staleAfterMillis = Duration.toMillis(Duration.fromInputUnsafe(options.staleTemporaryAfter ?? "1 hour"))
    const limits: SafeTensors.ReadLimits = { maxBytes: options.maxLoadBytes }
    /** When each directory was last swept (Clock milliseconds). */
    const cleanedDirectories = new Map<string, number>()

    const fail = (operation: Operation, file: string) => (error: PlatformError.PlatformError) =>
      isNotFound(error)
        ? new CheckpointNotFound({ operation, path: file })
        : storageError(operation, file)(error)

    /** Is the temporary file `name` (modified at `modifiedAt`) stale at `now`? */
    const isStale = (name: string, modifiedAt: number | undefined, now: number): boolean => {
      if (inUse.has(name)) return false
      const owner = temporaryOwner(name)
      if (owner !== undefined && owner.identity === identity) {
        // Our host, boot and pid namespace: the pid says whether its writer is gone.
        if (owner.pid === process.pid || !processIsAlive(owner.pid)) return true
      }
      // Another writer's (its pid means nothing here), or a live pid that may have been
      // reused: stale only once it has not been touched for the threshold.
      return modifiedAt !== undefined && now - modifiedAt >= staleAfterMillis
    }

    /**
     * Removes temporary files whose writer is gone (see `isStale`); once per directory
     * per `staleTemporaryAfter`, so that a foreign file is swept once it is old enough.
     */
    const cleanStaleTemporaries = (dir: string) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const last = cleanedDirectories.get(dir)
        if (last !== undefined && now - last < staleAfterMillis) return
        const names = yield* fs.readDirectory(dir)
        for (const name of names) {
          if (!isTemporaryName(name) || temporaryOwner(name) === undefined) continue
          const full = path.join(dir, name)
          const info = yield* fs.stat(full).pipe(Effect.option)
          if (Option.isNone(info)) continue // gone meanwhile
          const modifiedAt = Option.getOrUndefined(Option.map(info.value.mtime, (d) => d.getTime()))
          if (!isStale(name, modifiedAt, now)) continue
          yield* fs.remove(full, { force: true }).pipe(
            Effect.tap(() => Effect.logDebug(`removed stale temporary checkpoint file ${full}`))
          )
        }
        cleanedDirectories.set(dir, now)
      }).pipe(
        // Cleaning is housekeeping: it never fails a save.
        Effect.catch((error) => Effect.logWarning(`could not clean temporary files in ${dir}: ${error.message}`))
      )

    const syncDirectory = (dir: string) => Effect.scoped(Effect.flatMap(fs.open(dir, { flag: "r" }), (d) => d.sync))

    /**
     * Creates `dir` and its missing parents. When `durable`, each directory created is
     * made durable in its parent (an fsync of the parent): otherwise a power cut after
     * the save returned could take the new directory, and the checkpoint in it, away.
     */
    const makeDirectories = (dir: string, durable: boolean) =>
      Effect.gen(function*() {
        const missing: Array<string> = []
        for (let d = dir; !(yield* fs.exists(d)); d = path.dirname(d)) {
          missing.push(d)
          if (path.dirname(d) === d) break
        }
        // One level at a time, not Node's recursive mkdir: that one reports ENOENT for a
        // read-only file system and loops forever under /proc.
        const topDown = [...missing].reverse()
        if (topDown.length === 0) yield* fs.makeDirectory(dir, { recursive: true })
        for (const d of topDown) {
          yield* fs.makeDirectory(d).pipe(Effect.catchIf((error) => error.reason._tag === "AlreadyExists", () => Effect.void))
        }
        if (durable) { for (const d of topDown) yield* syncDirectory(path.dirname(d)) }
      })

    /** With `durable`, the data is synced before the header (see `ByteSink.sync`), then all of it. */
    const fileSink = (file: FileSystem.File, durable: boolean): SafeTensors.ByteSink<PlatformError.PlatformError> => ({
      write: (chunk) => file.writeAll(chunk),
      writeAt: (position, chunk) => Effect.flatMap(file.seek(BigInt(position), "start"), () => file.writeAll(chunk)),
      sync: durable ? file.sync : undefined
    })

    const fileSource = (file: FileSystem.File, size: number): SafeTensors.ByteSource<PlatformError.PlatformError> => ({
      size,
      read: (into, position) => file.read(into, { position: BigInt(position) })
    })

    const resolveTarget = (operation: Operation, file: string) =>
      Effect.andThen(refuseUrl(operation, file), Effect.as(checkPath(operation, file), path.resolve(file)))

    /** A name the file system would refuse can never be saved: say so up front. */
    const checkNameLength = (operation: Operation, target: string) => {
      const bytes = new TextEncoder().encode(path.basename(target)).byteLength
      return bytes > maxNameBytes
        ? Effect.fail(
          new CheckpointInvalidArgument({
            operation,
            path: target,
            reason: `the file name is ${bytes} bytes long, more than the ${maxNameBytes} bytes file systems accept`
          })
        )
        : Effect.void
    }

    /**
     * Commits `tmp` as `target`. If the directory fsync fails after the rename, the
     * previous checkpoint is put back (or, when there was none, the new name removed).
     */
    const commit = (tmp: string, target: string, dir: string, durable: boolean) =>
      Effect.gen(function*() {
        // A hard link keeps the previous checkpoint reachable until the new one is durable.
        const backupName = temporaryName(path.basename(target), identity, process.pid)
        const backup = path.join(dir, backupName)
        inUse.add(backupName)
        const previous = yield* fs.link(target, backup).pipe(
          Effect.as("linked" as const),
          Effect.catch((error) => Effect.succeed(isNotFound(error) ? "none" as const : "unlinkable" as const))
        )
        const rollback = previous === "linked"
          ? fs.rename(backup, target)
          : previous === "none"
          ? fs.remove(target, { force: true })
          : Effect.void // the new file is all there is: keep it
        yield* fs.rename(tmp, target).pipe(
          Effect.andThen(durable ? syncDirectory(dir).pipe(Effect.tapError(() => Effect.ignore(rollback))) : Effect.void),
          Effect.ensuring(Effect.andThen(
            previous === "linked" ? Effect.ignore(fs.remove(backup, { force: true })) : Effect.void,
            Effect.sync(() => inUse.delete(backupName))
          ))
        )
      }).pipe(Effect.uninterruptible)

    const save: CheckpointIOShape["save"] = Effect.fn("FileCheckpointIO.save")(function*(checkpoint, file, options) {
      const target = yield* resolveTarget("save", file)
      yield* Effect.annotateCurrentSpan({ path: target })
      yield* checkNameLength("save", target)
      const planned = yield* SafeTensors.plan(checkpoint, target)
      const durable = options?.durable ?? true
      const dir = path.dirname(target)
      yield* makeDirectories(dir, durable).pipe(Effect.mapError(storageError("save", target)))
      yield* cleanStaleTemporaries(dir)
      const tmpName = temporaryName(path.basename(target), identity, process.pid)
      const tmp = path.join(dir, tmpName)
      inUse.add(tmpName)
      yield* Effect.gen(function*() {
        yield* Effect.scoped(Effect.gen(function*() {
          const handle = yield* fs.open(tmp, { flag: "wx" })
          yield* SafeTensors.write(planned, fileSink(handle, durable))
          if (durable) yield* handle.sync
        }))
        yield* commit(tmp, target, dir, durable)
      }).pipe(
        Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : fs.remove(tmp, { force: true }).pipe(Effect.ignore)),
        Effect.ensuring(Effect.sync(() => inUse.delete(tmpName))),
        Effect.mapError(storageError("save", target))
      )
    })

    /**
     * Opens a regular file for reading. Over a generic `FileSystem` (which has no
     * non-blocking open): stat first, so that a FIFO or a device is refused without
     * being opened, then fstat the open file, so that a swap in between is refused too
     * (the Node layer opens with `O_NONBLOCK`, see `nodeReadOpener`).
     */
    const openForRead: ReadOpener = readOpener ?? ((target) =>
      Effect.gen(function*() {
        const notAFile = (type: string) =>
          new CheckpointInvalidArgument({ operation: "load", path: target, reason: `is a ${type}, not a regular file` })
        const before = yield* fs.stat(target).pipe(Effect.mapError(fail("load", target)))
        if (before.type !== "File") return yield* notAFile(before.type)
        const handle = yield* fs.open(target, { flag: "r" }).pipe(Effect.mapError(fail("load", target)))
        const info = yield* handle.stat.pipe(Effect.mapError(fail("load", target)))
        if (info.type !== "File") return yield* notAFile(info.type)
        const source = fileSource(handle, Number(info.size))
        return { size: source.size, read: (into, position) => source.read(into, position).pipe(Effect.mapError(fail("load", target))) }
      }))

    const load: CheckpointIOShape["load"] = Effect.fn("FileCheckpointIO.load")(function*(file, options) {
      const target = yield* resolveTarget("load", file)
      yield* Effect.annotateCurrentSpan({ path: target })
      return yield* Effect.scoped(Effect.gen(function*() {
        const source = yield* openForRead(target)
        return yield* SafeTensors.read(source, target, options, limits)
      }))
    })

    const copy: CheckpointIOShape["copy"] = Effect.fn("FileCheckpointIO.copy")(function*(source, target) {
      const from = yield* resolveTarget("copy", source)
      const to = yield* resolveTarget("copy", target)
      yield* Effect.annotateCurrentSpan({ source: from, target: to })
      const info = yield* fs.stat(from).pipe(Effect.mapError(fail("copy", from)))
      if (info.type !== "File") {
        return yield* new CheckpointInvalidArgument({ operation: "copy", path: from, reason: `is a ${info.type}, not a file` })
      }
      if (from === to) return
      yield* checkNameLength("copy", to)
      const dir = path.dirname(to)
      yield* makeDirectories(dir, true).pipe(Effect.mapError(storageError("copy", to)))
      const tmpName = temporaryName(path.basename(to), identity, process.pid)
      const tmp = path.join(dir, tmpName)
      inUse.add(tmpName)
      yield* Effect.gen(function*() {
        // A hard link: no bytes copied, and the target keeps this content even when the
        // source is saved again. Where links are refused (another device, no support), a copy.
        const linked = yield* fs.link(from, tmp).pipe(Effect.as(true), Effect.catch(() => Effect.succeed(false)))
        if (!linked) {
          yield* fs.copyFile(from, tmp)
          yield* Effect.scoped(Effect.flatMap(fs.open(tmp, { flag: "r+" }), (f) => f.sync))
        }
        yield* commit(tmp, to, dir, true)
      }).pipe(
        Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : fs.remove(tmp, { force: true }).pipe(Effect.ignore)),
        Effect.ensuring(Effect.sync(() => inUse.delete(tmpName))),
        Effect.mapError(storageError("copy", to))
      )
    })

    const remove: CheckpointIOShape["remove"] = Effect.fn("FileCheckpointIO.remove")(function*(file) {
      const target = yield* resolveTarget("remove", file)
      yield* Effect.annotateCurrentSpan({ path: target })
      const info = yield* fs.stat(target).pipe(
        Effect.map(Option.some),
        Effect.catchIf(isNotFound, () => Effect.succeed(Option.none())),
        Effect.mapError(storageError("remove", target))
      )
      if (Option.isNone(info)) return
      if (info.value.type === "Directory") {
        return yield* new CheckpointInvalidArgument({ operation: "remove", path: target, reason: "is a directory" })
      }
      yield* fs.remove(target, { force: true }).pipe(Effect.mapError(storageError("remove", target)))
    })

    const exists: CheckpointIOShape["exists"] = Effect.fn("FileCheckpointIO.exists")(function*(file) {
      const target = yield* resolveTarget("exists", file)
      return yield* fs.stat(target).pipe(
        Effect.map((info) => info.type === "File"),
        Effect.catchIf(isNotFound, () => Effect.succeed(false)),
        Effect.mapError(storageError("exists", target))
      )
    })

    const list: CheckpointIOShape["list"] = Effect.fn("FileCheckpointIO.list")(function*(dir) {
      yield* refuseUrl("list", dir)
      const target = path.resolve(dir)
      yield* Effect.annotateCurrentSpan({ path: target })
      const names = yield* fs.readDirectory(target).pipe(
        Effect.catchIf(isNotFound, () => Effect.succeed([] as Array<string>)),
        Effect.mapError(storageError("list", target))
      )
      const entries: Array<CheckpointEntry> = []
      for (const name of names.filter((n) => !isTemporaryName(n)).sort()) {
        const full = path.join(target, name)
        const info = yield* fs.stat(full).pipe(
          Effect.map(Option.some),
          // Removed between readDirectory and stat: not committed any more.
          Effect.catchIf(isNotFound, () => Effect.succeed(Option.none())),
          Effect.mapError(storageError("list", full))
        )
        if (Option.isNone(info) || info.value.type !== "File") continue
        entries.push({
          path: full,
          modifiedAt: Option.match(info.value.mtime, { onNone: () => 0, onSome: (d) => d.getTime() }),
          size: Number(info.value.size)
        })
      }
      return entries
    })

    /**
     * The absolute path with the symlinks of its directory resolved: the nearest
     * existing ancestor is resolved and the missing rest appended (the file, and even
     * its directory, may not exist yet). The file itself is not followed: a save
     * renames onto its name. An ancestor that cannot be resolved (no permission)
     * leaves the absolute path as it is.
     */
    const identify: CheckpointIOShape["identify"] = (file) =>
      Effect.gen(function*() {
        const absolute = path.resolve(file)
        const rest = [path.basename(absolute)]
        for (let dir = path.dirname(absolute);; dir = path.dirname(dir)) {
          const real = yield* fs.realPath(dir).pipe(
            Effect.map(Option.some),
            Effect.catchIf(isNotFound, () => Effect.succeed(Option.none<string>())),
            Effect.catch(() => Effect.succeed(Option.some(dir)))
          )
          if (Option.isSome(real)) return path.join(real.value, ...rest.reverse())
          if (path.dirname(dir) === dir) return absolute
          rest.push(path.basename(dir))
        }
      })

    return CheckpointIOMake({ save, load, remove, exists, list, copy, identify })
  })

/**
 * Builds the service over the `FileSystem` and `Path` in context, with options.
 */
export const makeWith = (
  options: Options = {}
): Effect.Effect<CheckpointIOShape, never, FileSystem.FileSystem | Path.Path> =>
  makeInternal({ ...options, maxLoadBytes: options.maxLoadBytes ?? defaultNodeMaxLoadBytes() }, undefined)

/** The file store with default options (see `makeWith`). */
export const make: Effect.Effect<CheckpointIOShape, never, FileSystem.FileSystem | Path.Path> = makeWith()

/** The file store over whatever `FileSystem` and `Path` the application provides. */
export const layer: Layer.Layer<CheckpointIO, never, FileSystem.FileSystem | Path.Path> = Layer.effect(CheckpointIO, make)

/** `layer` with options (see `Options`). */
export const layerWith = (options: Options): Layer.Layer<CheckpointIO, never, FileSystem.FileSystem | Path.Path> =>
  Layer.effect(CheckpointIO, makeWith(options))

/**
 * The file store on Node's file system, with options. Reads open with `O_NONBLOCK`
 * (a FIFO can never block a load); `maxLoadBytes` defaults to half of the machine's
 * memory (`defaultNodeMaxLoadBytes`).
 */
export const layerNodeWith = (options: Options): Layer.Layer<CheckpointIO> =>
  Layer.effect(
    CheckpointIO,
    makeInternal({ ...options, maxLoadBytes: options.maxLoadBytes ?? defaultNodeMaxLoadBytes() }, nodeReadOpener)
  ).pipe(Layer.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)))

/** The file store on Node's file system, with default options (see `layerNodeWith`). */
export const layerNode: Layer.Layer<CheckpointIO> = layerNodeWith({})
