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
 * 3. fsync it, rename it onto the final name, fsync the directory.
 *
 * A failure or interruption at any step leaves no file under the final name and the
 * previous checkpoint intact (if the directory fsync fails after the rename, the
 * previous file is put back). Temporary files are named
 * `.<name>.<pid>.<random>.tmp-ckpt` and are never listed.
 *
 * @since 0.1.0
 */
import { Effect, Exit, FileSystem, Layer, Option, Path, type PlatformError, type Scope } from "effect"
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { randomBytes } from "node:crypto"
import {
  CheckpointInvalidArgument,
  CheckpointIO,
  make as CheckpointIOMake,
  type CheckpointEntry,
  type CheckpointIOError,
  type CheckpointIOShape,
  CheckpointNotFound,
  checkPath,
  type Operation,
  storageError
} from "./CheckpointIO.ts"
import * as SafeTensors from "./SafeTensors.ts"

const tempSuffix = ".tmp-ckpt"

/** Is this directory entry a temporary file of an unfinished save? */
export const isTemporaryName = (name: string): boolean => name.startsWith(".") && name.endsWith(tempSuffix)

// Not Math.random: a seeded run replaces it inside its steps, and names must never
// draw from (or depend on) that stream.
const temporaryName = (base: string, pid: number): string =>
  `.${base}.${pid}.${randomBytes(5).toString("hex")}${tempSuffix}`

/**
 * Temporary names this process has in use. A temporary file of our own pid that is not
 * in here was left by an earlier process that had the same pid (a container's main
 * process is pid 1 in every run): stale.
 */
const inUse = new Set<string>()

const ownerPid = (name: string): number | undefined => {
  const match = /\.(\d+)\.[a-z0-9]+\.tmp-ckpt$/.exec(name)
  return match ? Number(match[1]) : undefined
}

const processIsAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const isNotFound = (error: PlatformError.PlatformError): boolean =>
  error.reason._tag === "NotFound"

/**
 * Builds the service over the `FileSystem` and `Path` in context.
 */
export const make: Effect.Effect<CheckpointIOShape, never, FileSystem.FileSystem | Path.Path> = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const cleanedDirectories = new Set<string>()

  const fail = (operation: Operation, file: string) => (error: PlatformError.PlatformError) =>
    isNotFound(error)
      ? new CheckpointNotFound({ operation, path: file })
      : storageError(operation, file)(error)

  /** Removes temporary files whose writer is gone; once per directory per layer. */
  const cleanStaleTemporaries = (dir: string) =>
    Effect.gen(function*() {
      if (cleanedDirectories.has(dir)) return
      const names = yield* fs.readDirectory(dir)
      for (const name of names) {
        const pid = ownerPid(name)
        if (!isTemporaryName(name) || pid === undefined) continue
        if (pid === process.pid ? inUse.has(name) : processIsAlive(pid)) continue
        yield* fs.remove(path.join(dir, name), { force: true }).pipe(
          Effect.tap(() => Effect.logDebug(`removed stale temporary checkpoint file ${path.join(dir, name)}`))
        )
      }
      cleanedDirectories.add(dir)
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
      yield* fs.makeDirectory(dir, { recursive: true })
      if (durable) for (const d of missing.reverse()) yield* syncDirectory(path.dirname(d))
    })

  const fileSink = (file: FileSystem.File): SafeTensors.ByteSink<PlatformError.PlatformError> => ({
    write: (chunk) => file.writeAll(chunk),
    writeAt: (position, chunk) =>
      Effect.flatMap(file.seek(BigInt(position), "start"), () => file.writeAll(chunk))
  })

  const fileSource = (file: FileSystem.File, size: number): SafeTensors.ByteSource<PlatformError.PlatformError> => ({
    size,
    read: (into, position) => file.read(into, { position: BigInt(position) })
  })

  const resolveTarget = (operation: Operation, file: string) =>
    Effect.as(checkPath(operation, file), path.resolve(file))

  /**
   * Commits `tmp` as `target`. If the directory fsync fails after the rename, the
   * previous checkpoint is put back (or, when there was none, the new name removed).
   */
  const commit = (tmp: string, target: string, dir: string, durable: boolean) =>
    Effect.gen(function*() {
      // A hard link keeps the previous checkpoint reachable until the new one is durable.
      const backupName = temporaryName(path.basename(target), process.pid)
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
    const planned = yield* SafeTensors.plan(checkpoint, target)
    const durable = options?.durable ?? true
    const dir = path.dirname(target)
    yield* makeDirectories(dir, durable).pipe(Effect.mapError(storageError("save", target)))
    yield* cleanStaleTemporaries(dir)
    const tmpName = temporaryName(path.basename(target), process.pid)
    const tmp = path.join(dir, tmpName)
    inUse.add(tmpName)
    yield* Effect.gen(function*() {
      yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* fs.open(tmp, { flag: "wx" })
        yield* SafeTensors.write(planned, fileSink(handle))
        if (durable) yield* handle.sync
      }))
      yield* commit(tmp, target, dir, durable)
    }).pipe(
      Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : fs.remove(tmp, { force: true }).pipe(Effect.ignore)),
      Effect.ensuring(Effect.sync(() => inUse.delete(tmpName))),
      Effect.mapError(storageError("save", target))
    )
  })

  const openForRead = (target: string): Effect.Effect<readonly [FileSystem.File, number], CheckpointIOError, Scope.Scope> =>
    Effect.gen(function*() {
      const handle = yield* fs.open(target, { flag: "r" }).pipe(Effect.mapError(fail("load", target)))
      const info = yield* handle.stat.pipe(Effect.mapError(fail("load", target)))
      if (info.type !== "File") {
        return yield* new CheckpointInvalidArgument({ operation: "load", path: target, reason: `is a ${info.type}, not a file` })
      }
      return [handle, Number(info.size)] as const
    })

  const load: CheckpointIOShape["load"] = Effect.fn("FileCheckpointIO.load")(function*(file, options) {
    const target = yield* resolveTarget("load", file)
    yield* Effect.annotateCurrentSpan({ path: target })
    return yield* Effect.scoped(Effect.gen(function*() {
      const [handle, size] = yield* openForRead(target)
      return yield* SafeTensors.read(fileSource(handle, size), target, options).pipe(
        Effect.mapError((error) => "_tag" in error && error._tag === "PlatformError" ? fail("load", target)(error) : error)
      )
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
    const dir = path.dirname(to)
    yield* makeDirectories(dir, true).pipe(Effect.mapError(storageError("copy", to)))
    const tmpName = temporaryName(path.basename(to), process.pid)
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

/** The file store over whatever `FileSystem` and `Path` the application provides. */
export const layer: Layer.Layer<CheckpointIO, never, FileSystem.FileSystem | Path.Path> = Layer.effect(CheckpointIO, make)

/** The file store on Node's file system. */
export const layerNode: Layer.Layer<CheckpointIO> = layer.pipe(
  Layer.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))
)
