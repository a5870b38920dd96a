/**
 * `FaultyFileSystem`: a `FileSystem` that wraps another one and fails on command,
 * for testing what storage does when the disk is full, permissions are missing or a
 * device reports an I/O error.
 *
 * Provide `FaultyFileSystem.layer` over a real file system; the `FaultInjector`
 * service then arms faults (`inject`) and records every operation on the way
 * (`operations`), so a test can check both the protocol a store follows and what it
 * leaves behind when one step fails.
 *
 * @example
 * ```ts
 * const io = FileCheckpointIO.layer.pipe(
 *   Layer.provideMerge(FaultyFileSystem.layer),
 *   Layer.provide(NodeServices.layer)
 * )
 * // in a test: (yield* FaultInjector).inject({ at: "rename", code: "EIO" })
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, FileSystem, Layer, PlatformError } from "effect"

/** The steps at which a fault can be injected. `syncDirectory` is an fsync of a directory. */
export type FaultPoint =
  | "open"
  | "write"
  | "sync"
  | "syncDirectory"
  | "rename"
  | "link"
  | "remove"
  | "makeDirectory"
  | "read"
  | "stat"
  | "readDirectory"

/** errno codes a fault can carry. */
export type FaultCode = "ENOSPC" | "EDQUOT" | "EACCES" | "EPERM" | "EROFS" | "EIO"

/** A fault to inject: at which step, with which errno, for which paths, after how many successes. */
export interface Fault {
  readonly at: FaultPoint
  readonly code: FaultCode
  /** Only for paths this accepts (default: every path). */
  readonly path?: ((path: string) => boolean) | undefined
  /** Let this many matching operations succeed first (default 0). */
  readonly after?: number | undefined
  /** Keep failing after the first hit (default: fail once, then disarm). */
  readonly persistent?: boolean | undefined
}

/** One file-system operation the faulty file system saw. */
export interface OperationRecord {
  readonly op: FaultPoint
  readonly path: string
}

/** Arms faults and reports what the faulty file system saw. */
export interface FaultInjectorShape {
  /** Arms a fault. */
  readonly inject: (fault: Fault) => void
  /** Disarms every fault and forgets the recorded operations. */
  readonly reset: () => void
  /** Every operation seen so far, in order (also those that failed). */
  readonly operations: () => ReadonlyArray<OperationRecord>
  /** How many faults have fired. */
  readonly fired: () => number
}

/** The service that controls a `FaultyFileSystem` (provided beside it by `layer`). */
export class FaultInjector extends Context.Service<FaultInjector, FaultInjectorShape>()(
  "effect-trainer/FaultyFileSystem/FaultInjector"
) {}

interface Armed {
  readonly fault: Fault
  remaining: number
}

const makeInjector = () => {
  let armed: Array<Armed> = []
  let log: Array<OperationRecord> = []
  let fired = 0
  const shape: FaultInjectorShape = {
    inject: (fault) => {
      armed.push({ fault, remaining: fault.after ?? 0 })
    },
    reset: () => {
      armed = []
      log = []
      fired = 0
    },
    operations: () => log,
    fired: () => fired
  }
  /** Records an operation and returns the error to fail it with, if a fault fires. */
  const check = (op: FaultPoint, path: string, method: string): PlatformError.PlatformError | undefined => {
    log.push({ op, path })
    const hit = armed.find((a) => a.fault.at === op && (a.fault.path?.(path) ?? true))
    if (hit === undefined) return undefined
    if (hit.remaining > 0) {
      hit.remaining--
      return undefined
    }
    if (hit.fault.persistent !== true) armed = armed.filter((a) => a !== hit)
    fired++
    const code = hit.fault.code
    const cause = Object.assign(new Error(`${code}: injected fault at ${op} of ${path}`), { code, syscall: method })
    return PlatformError.systemError({
      _tag: code === "EACCES" || code === "EPERM" ? "PermissionDenied" : "Unknown",
      module: "FileSystem",
      method,
      syscall: method,
      pathOrDescriptor: path,
      cause
    })
  }
  return { shape, check }
}

const guard = <A>(
  check: ReturnType<typeof makeInjector>["check"],
  op: FaultPoint,
  path: string,
  method: string,
  effect: Effect.Effect<A, PlatformError.PlatformError>
): Effect.Effect<A, PlatformError.PlatformError> =>
  Effect.suspend(() => {
    const error = check(op, path, method)
    return error === undefined ? effect : Effect.fail(error)
  })

/** Wraps a file system with fault injection. */
export const make = (
  underlying: FileSystem.FileSystem
): { readonly fileSystem: FileSystem.FileSystem; readonly injector: FaultInjectorShape } => {
  const { check, shape } = makeInjector()

  const wrapFile = (file: FileSystem.File, path: string): FileSystem.File => {
    const wrapped: FileSystem.File = {
      [FileSystem.FileTypeId]: FileSystem.FileTypeId,
      get stat() {
        return file.stat
      },
      seek: (offset, from) => file.seek(offset, from),
      read: (buffer, options) => guard(check, "read", path, "read", file.read(buffer, options)),
      readAlloc: (size, options) => file.readAlloc(size, options),
      truncate: (length) => file.truncate(length),
      sync: Effect.flatMap(file.stat, (info) => {
        const op = info.type === "Directory" ? "syncDirectory" : "sync"
        return guard(check, op, path, "fsync", file.sync)
      }),
      // A failing write lands half of its bytes first, as a disk filling up does.
      write: (buffer) =>
        Effect.suspend(() => {
          const error = check("write", path, "write")
          return error === undefined
            ? file.write(buffer)
            : Effect.flatMap(file.write(buffer.subarray(0, buffer.byteLength >> 1)), () => Effect.fail(error))
        }),
      writeAll: (buffer) =>
        Effect.suspend(() => {
          const error = check("write", path, "write")
          return error === undefined
            ? file.writeAll(buffer)
            : Effect.flatMap(file.writeAll(buffer.subarray(0, buffer.byteLength >> 1)), () => Effect.fail(error))
        })
    }
    return wrapped
  }

  const fileSystem: FileSystem.FileSystem = FileSystem.make({
    ...underlying,
    open: (path, options) =>
      guard(check, "open", path, "open", Effect.succeed(undefined)).pipe(
        Effect.flatMap(() => underlying.open(path, options)),
        Effect.map((file) => wrapFile(file, path))
      ),
    rename: (from, to) => guard(check, "rename", to, "rename", underlying.rename(from, to)),
    link: (from, to) => guard(check, "link", to, "link", underlying.link(from, to)),
    remove: (path, options) => guard(check, "remove", path, "unlink", underlying.remove(path, options)),
    makeDirectory: (path, options) => guard(check, "makeDirectory", path, "mkdir", underlying.makeDirectory(path, options)),
    stat: (path) => guard(check, "stat", path, "stat", underlying.stat(path)),
    readDirectory: (path, options) => guard(check, "readDirectory", path, "scandir", underlying.readDirectory(path, options))
  })
  return { fileSystem, injector: shape }
}

/** A fault-injecting `FileSystem` over the one in context, plus its `FaultInjector`. */
export const layer: Layer.Layer<FileSystem.FileSystem | FaultInjector, never, FileSystem.FileSystem> = Layer.effectContext(
  Effect.map(FileSystem.FileSystem, (underlying) => {
    const { fileSystem, injector } = make(underlying)
    return Context.make(FileSystem.FileSystem, fileSystem).pipe(Context.add(FaultInjector, injector))
  })
)
