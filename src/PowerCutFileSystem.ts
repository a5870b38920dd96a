/**
 * `PowerCutFileSystem`: a `FileSystem` that wraps another one, keeps track of what
 * has been made durable by fsync, and can simulate a power cut, for testing that a
 * store's write protocol survives one.
 *
 * The model (POSIX's promise, without the luck real file systems often add):
 * - a file's contents are durable as of its last `sync` (fsync of a handle to it); a
 *   file created and never synced has no durable contents (it comes back empty);
 * - a directory's entries (creations, renames, links, removals) are durable as of its
 *   last `sync` (an fsync of the directory opened with `open(dir, { flag: "r" })`);
 *   an entry added and never made durable is gone after the cut, one removed comes back.
 *
 * Identities are inodes (hard links share one). The real directory under `root` is
 * the volatile state (the page cache); a shadow copy of the durable state is kept
 * beside it, and `cut` rewrites the real directory to that durable state, then powers
 * back on, with everything on disk durable (as after a reboot).
 *
 * `cutAt(n)` arms a cut at the `n`-th state-changing operation from now (0: the
 * next): that operation does not happen, and it and every operation after it fail
 * with `EIO` ("the machine is off") until `cut`; so enumerating `n` over a protocol
 * interrupts it at every step. `cut({ mode: "random", seed })` models a kernel that
 * had already flushed some of the volatile state: each directory keeps either its
 * durable or its current entries, and each file either its durable or its current
 * contents, by a seeded coin (a superset of what journaling file systems do).
 *
 * Paths outside `root` pass through untracked. Symbolic links are not modelled.
 *
 * @example
 * ```ts
 * const stack = FileCheckpointIO.layer.pipe(
 *   Layer.provideMerge(PowerCutFileSystem.layer(root)),
 *   Layer.provideMerge(NodeServices.layer)
 * )
 * // in a test: power.cutAt(5); yield* Effect.exit(io.save(c, path)); yield* power.cut()
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, FileSystem, Layer, Option, Path, PlatformError } from "effect"

/** A state-changing operation, as recorded. */
export interface PowerCutOperation {
  readonly op:
    | "open"
    | "write"
    | "truncate"
    | "sync"
    | "syncDirectory"
    | "rename"
    | "link"
    | "remove"
    | "makeDirectory"
    | "copyFile"
    | "writeFile"
  readonly path: string
}

/** How a power cut treats what was written but not fsynced. */
export interface CutOptions {
  /** `"drop"` (default): everything not fsynced is lost; `"random"`: a seeded mix. */
  readonly mode?: "drop" | "random" | undefined
  readonly seed?: number | undefined
}

/** Controls a `PowerCutFileSystem`: make the current state durable, cut the power, inspect. */
export interface PowerCutShape {
  /** Makes everything under `root`, as it is now, durable (a `sync(1)`). */
  readonly syncAll: Effect.Effect<void, PlatformError.PlatformError>
  /** Arms a cut at the `n`-th state-changing operation from now (0: the next). */
  readonly cutAt: (n: number) => void
  /** Turns the power off now: every operation fails until `cut`. */
  readonly powerOff: () => void
  /** Whether the power is off (an armed cut was hit, or `powerOff`). */
  readonly isOff: () => boolean
  /** Rewrites `root` to its durable state and powers back on; everything is durable afterwards. */
  readonly cut: (options?: CutOptions) => Effect.Effect<void, PlatformError.PlatformError>
  /** State-changing operations under `root` since the last `cut` or `resetOperations`. */
  readonly operations: () => ReadonlyArray<PowerCutOperation>
  readonly resetOperations: () => void
}

/** The service that controls a `PowerCutFileSystem` (provided beside it by `layer`). */
export class PowerCut extends Context.Service<PowerCut, PowerCutShape>()(
  "effect-trainer/PowerCutFileSystem/PowerCut"
) {}

type Node =
  | { readonly kind: "file"; durable: Uint8Array }
  | { readonly kind: "dir"; durable: Map<string, number> }

const creatingFlags: ReadonlySet<FileSystem.OpenFlag> = new Set(["w", "wx", "w+", "wx+", "a", "ax", "a+", "ax+"])
const writingFlags: ReadonlySet<FileSystem.OpenFlag> = new Set([...creatingFlags, "r+"])

/** mulberry32 (as `Random`), local so that a cut never touches a caller's stream. */
const coin = (seed: number) => {
  let state = seed >>> 0
  return (): boolean => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 < 0.5
  }
}

/**
 * Wraps `underlying` for the tree under `root` (which must exist). Everything under
 * `root` counts as durable at the start.
 */
export const make = (
  underlying: FileSystem.FileSystem,
  path: Path.Path,
  root: string
): Effect.Effect<{ readonly fileSystem: FileSystem.FileSystem; readonly powerCut: PowerCutShape }, PlatformError.PlatformError> =>
  Effect.gen(function*() {
    const rootPath = path.resolve(root)
    const nodes = new Map<number, Node>()
    const byIno = new Map<bigint, number>()
    let nextId = 0
    let rootId = -1
    let off = false
    let armed: number | undefined
    let log: Array<PowerCutOperation> = []

    const tracked = (p: string): boolean => {
      const full = path.resolve(p)
      return full === rootPath || full.startsWith(rootPath + path.sep)
    }

    // Node reports inode numbers on every POSIX system; without one, each stat is a
    // new identity (hard links and renames are then not followed).
    let synthetic = 0n
    const inoOf = (info: FileSystem.File.Info): bigint => Option.getOrElse(info.ino, () => --synthetic)

    const fresh = (ino: bigint, kind: "file" | "dir"): number => {
      const id = nextId++
      nodes.set(id, kind === "file" ? { kind, durable: new Uint8Array(0) } : { kind, durable: new Map() })
      byIno.set(ino, id)
      return id
    }

    const idOf = (info: FileSystem.File.Info): number => {
      const id = byIno.get(inoOf(info))
      return id ?? fresh(inoOf(info), info.type === "Directory" ? "dir" : "file")
    }

    const powerFailure = (method: string, p: string) =>
      PlatformError.systemError({
        _tag: "Unknown",
        module: "FileSystem",
        method,
        pathOrDescriptor: p,
        description: "the power is off (simulated power cut)",
        cause: Object.assign(new Error(`EIO: the power is off (${method} ${p})`), { code: "EIO" })
      })

    /** Lets an operation through, or fails it because the power is (now) off. */
    const gate = (op: PowerCutOperation["op"] | "read", p: string, method: string): Effect.Effect<void, PlatformError.PlatformError> =>
      Effect.suspend(() => {
        if (off) return Effect.fail(powerFailure(method, p))
        if (op === "read" || !tracked(p)) return Effect.void
        if (armed !== undefined) {
          if (armed === 0) {
            armed = undefined
            off = true
            return Effect.fail(powerFailure(method, p))
          }
          armed--
        }
        log.push({ op, path: path.resolve(p) })
        return Effect.void
      })

    const statOption = (p: string) =>
      Effect.map(Effect.result(underlying.stat(p)), (r) => (r._tag === "Success" ? Option.some(r.success) : Option.none()))

    /**
     * The current contents of the file behind a handle. Read by path, since a handle
     * may be write-only: the path it was opened with, or else wherever its inode is
     * now under `root` (undefined once it has no name left: nothing can reach it).
     */
    const contentsOf = (file: FileSystem.File, opened: string) =>
      Effect.gen(function*() {
        const ino = inoOf(yield* file.stat)
        const at = yield* statOption(opened)
        if (Option.isSome(at) && inoOf(at.value) === ino) return yield* underlying.readFile(opened)
        const find = (dir: string): Effect.Effect<string | undefined, PlatformError.PlatformError> =>
          Effect.gen(function*() {
            for (const name of yield* underlying.readDirectory(dir)) {
              const full = path.join(dir, name)
              const info = yield* underlying.lstat(full)
              if (inoOf(info) === ino) return full
              if (info.type === "Directory") {
                const found = yield* find(full)
                if (found !== undefined) return found
              }
            }
            return undefined
          })
        const found = yield* find(rootPath)
        return found === undefined ? undefined : yield* underlying.readFile(found)
      })

    /** The current entries of a directory, by identity. */
    const currentEntries = (dir: string) =>
      Effect.gen(function*() {
        const entries = new Map<string, number>()
        for (const name of yield* underlying.readDirectory(dir)) {
          const info = yield* underlying.lstat(path.join(dir, name))
          entries.set(name, idOf(info))
        }
        return entries
      })

    const syncAll = Effect.gen(function*() {
      const walk = (dir: string): Effect.Effect<number, PlatformError.PlatformError> =>
        Effect.gen(function*() {
          const id = idOf(yield* underlying.lstat(dir))
          const node = nodes.get(id)!
          if (node.kind !== "dir") return id
          const entries = yield* currentEntries(dir)
          node.durable = entries
          for (const name of entries.keys()) {
            const full = path.join(dir, name)
            const info = yield* underlying.lstat(full)
            if (info.type === "Directory") yield* walk(full)
            else {
              const file = nodes.get(idOf(info))!
              if (file.kind === "file") file.durable = yield* underlying.readFile(full)
            }
          }
          return id
        })
      rootId = yield* walk(rootPath)
    })

    const wrapFile = (file: FileSystem.File, p: string, id: number): FileSystem.File => ({
      [FileSystem.FileTypeId]: FileSystem.FileTypeId,
      get stat() {
        return Effect.andThen(gate("read", p, "fstat"), file.stat)
      },
      seek: (offset, from) => Effect.andThen(gate("read", p, "seek"), file.seek(offset, from)),
      read: (buffer, options) => Effect.andThen(gate("read", p, "read"), file.read(buffer, options)),
      readAlloc: (size, options) => Effect.andThen(gate("read", p, "read"), file.readAlloc(size, options)),
      truncate: (length) => Effect.andThen(gate("truncate", p, "ftruncate"), file.truncate(length)),
      write: (buffer) => Effect.andThen(gate("write", p, "write"), file.write(buffer)),
      writeAll: (buffer) => Effect.andThen(gate("write", p, "write"), file.writeAll(buffer)),
      sync: Effect.gen(function*() {
        const node = nodes.get(id)
        yield* gate(node?.kind === "dir" ? "syncDirectory" : "sync", p, "fsync")
        yield* file.sync
        if (node === undefined || !tracked(p)) return
        if (node.kind === "dir") node.durable = yield* currentEntries(p)
        else node.durable = (yield* contentsOf(file, p)) ?? node.durable
      })
    })

    const open: FileSystem.FileSystem["open"] = (p, options) =>
      Effect.gen(function*() {
        const flag = options?.flag ?? "r"
        const creating = creatingFlags.has(flag)
        yield* gate(writingFlags.has(flag) ? "open" : "read", p, "open")
        const existed = creating && tracked(p) ? Option.isSome(yield* statOption(p)) : true
        const file = yield* underlying.open(p, options)
        if (!tracked(p)) return file
        const info = yield* file.stat
        const id = existed ? idOf(info) : fresh(inoOf(info), "file")
        return wrapFile(file, p, id)
      })

    /** Runs a creating operation and gives a new identity to what it created. */
    const creating = <A>(
      op: PowerCutOperation["op"],
      p: string,
      method: string,
      effect: Effect.Effect<A, PlatformError.PlatformError>
    ) =>
      Effect.gen(function*() {
        yield* gate(op, p, method)
        const existed = tracked(p) ? Option.isSome(yield* statOption(p)) : true
        const out = yield* effect
        if (!existed) {
          const info = yield* underlying.lstat(p)
          fresh(inoOf(info), info.type === "Directory" ? "dir" : "file")
        }
        return out
      })

    const makeDirectory: FileSystem.FileSystem["makeDirectory"] = (p, options) =>
      Effect.gen(function*() {
        yield* gate("makeDirectory", p, "mkdir")
        if (!tracked(p)) return yield* underlying.makeDirectory(p, options)
        // The directories this call creates, outermost first.
        const missing: Array<string> = []
        for (let d = path.resolve(p); tracked(d) && Option.isNone(yield* statOption(d)); d = path.dirname(d)) {
          missing.unshift(d)
        }
        yield* underlying.makeDirectory(p, options)
        for (const d of missing) {
          const info = yield* statOption(d)
          if (Option.isSome(info)) fresh(inoOf(info.value), "dir")
        }
      })

    const fileSystem = FileSystem.make({
      ...underlying,
      access: (p, o) => Effect.andThen(gate("read", p, "access"), underlying.access(p, o)),
      stat: (p) => Effect.andThen(gate("read", p, "stat"), underlying.stat(p)),
      lstat: (p) => Effect.andThen(gate("read", p, "lstat"), underlying.lstat(p)),
      readDirectory: (p, o) => Effect.andThen(gate("read", p, "scandir"), underlying.readDirectory(p, o)),
      readDirectoryEntries: (p) => Effect.andThen(gate("read", p, "scandir"), underlying.readDirectoryEntries(p)),
      readFile: (p) => Effect.andThen(gate("read", p, "readFile"), underlying.readFile(p)),
      realPath: (p) => Effect.andThen(gate("read", p, "realpath"), underlying.realPath(p)),
      open,
      makeDirectory,
      writeFile: (p, data, o) => creating("writeFile", p, "writeFile", underlying.writeFile(p, data, o)),
      copyFile: (from, to) => creating("copyFile", to, "copyFile", underlying.copyFile(from, to)),
      copy: (from, to, o) => creating("copyFile", to, "copy", underlying.copy(from, to, o)),
      truncate: (p, length) => Effect.andThen(gate("truncate", p, "truncate"), underlying.truncate(p, length)),
      rename: (from, to) => Effect.andThen(gate("rename", to, "rename"), underlying.rename(from, to)),
      link: (from, to) => Effect.andThen(gate("link", to, "link"), underlying.link(from, to)),
      remove: (p, o) => Effect.andThen(gate("remove", p, "unlink"), underlying.remove(p, o))
    })

    const cut = (options?: CutOptions) =>
      Effect.gen(function*() {
        const mode = options?.mode ?? "drop"
        const flip = coin(options?.seed ?? 0)
        off = true
        armed = undefined
        // Where each identity lives now (for "current" choices in random mode).
        const currentPath = new Map<number, string>()
        const mapCurrent = (dir: string): Effect.Effect<void, PlatformError.PlatformError> =>
          Effect.gen(function*() {
            for (const name of yield* underlying.readDirectory(dir)) {
              const full = path.join(dir, name)
              const info = yield* underlying.lstat(full)
              const id = idOf(info)
              if (!currentPath.has(id)) currentPath.set(id, full)
              if (info.type === "Directory") yield* mapCurrent(full)
            }
          })
        yield* mapCurrent(rootPath)
        currentPath.set(rootId, rootPath)

        // The tree after the cut, decided before anything is rewritten.
        type Planned = { readonly kind: "file"; readonly id: number; readonly bytes: Uint8Array } | {
          readonly kind: "dir"
          readonly id: number
          readonly children: Map<string, Planned>
        }
        const plan = (id: number, depth: number): Effect.Effect<Planned | undefined, PlatformError.PlatformError> =>
          Effect.gen(function*() {
            const node = nodes.get(id)
            if (node === undefined || depth > 64) return undefined
            const now = currentPath.get(id)
            if (node.kind === "file") {
              const bytes = mode === "random" && now !== undefined && flip() ? yield* underlying.readFile(now) : node.durable
              return { kind: "file", id, bytes }
            }
            const entries = mode === "random" && now !== undefined && flip() ? yield* currentEntries(now) : node.durable
            const children = new Map<string, Planned>()
            for (const [name, child] of entries) {
              const planned = yield* plan(child, depth + 1)
              if (planned !== undefined) children.set(name, planned)
            }
            return { kind: "dir", id, children }
          })
        const tree = yield* plan(rootId, 0)

        // Rewrite the real directory.
        for (const name of yield* underlying.readDirectory(rootPath)) {
          yield* underlying.remove(path.join(rootPath, name), { recursive: true, force: true })
        }
        const written = new Map<number, string>()
        const build = (dir: string, planned: Planned): Effect.Effect<void, PlatformError.PlatformError> =>
          Effect.gen(function*() {
            if (planned.kind !== "dir") return
            for (const [name, child] of planned.children) {
              const full = path.join(dir, name)
              if (child.kind === "dir") {
                yield* underlying.makeDirectory(full)
                yield* build(full, child)
              } else if (written.has(child.id)) {
                yield* underlying.link(written.get(child.id)!, full)
              } else {
                yield* underlying.writeFile(full, child.bytes)
                written.set(child.id, full)
              }
            }
          })
        if (tree !== undefined) yield* build(rootPath, tree)

        // After the reboot: a fresh model where everything on disk is durable.
        nodes.clear()
        byIno.clear()
        off = false
        log = []
        yield* syncAll
      })

    const powerCut: PowerCutShape = {
      syncAll: Effect.suspend(() => (off ? Effect.fail(powerFailure("sync", rootPath)) : syncAll)),
      cutAt: (n) => {
        armed = n
      },
      powerOff: () => {
        off = true
      },
      isOff: () => off,
      cut,
      operations: () => log,
      resetOperations: () => {
        log = []
      }
    }

    yield* syncAll
    return { fileSystem, powerCut }
  })

/**
 * A power-cut `FileSystem` over the one in context, tracking the tree under `root`
 * (which must exist), plus its `PowerCut` controller.
 */
export const layer = (
  root: string
): Layer.Layer<FileSystem.FileSystem | PowerCut, PlatformError.PlatformError, FileSystem.FileSystem | Path.Path> =>
  Layer.effectContext(
    Effect.gen(function*() {
      const { fileSystem, powerCut } = yield* make(yield* FileSystem.FileSystem, yield* Path.Path, root)
      return Context.make(FileSystem.FileSystem, fileSystem).pipe(Context.add(PowerCut, powerCut))
    })
  )
