import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, FileSystem, Layer, Path } from "effect"
import * as nodeFs from "node:fs"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import * as PowerCutFileSystem from "../../src/PowerCutFileSystem.ts"
import { versioned } from "./powercut.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

/** A power-cut file system over a fresh temporary directory. */
const setup = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const root = yield* fs.makeTempDirectoryScoped({ prefix: "powercut-" })
  const { fileSystem, powerCut } = yield* PowerCutFileSystem.make(fs, path, root)
  const at = (name: string) => `${root}/${name}`
  const syncDir = (dir: string) => Effect.scoped(Effect.flatMap(fileSystem.open(dir, { flag: "r" }), (d) => d.sync))
  const writeFile = (name: string, text: string, sync: boolean) =>
    Effect.scoped(Effect.gen(function*() {
      const f = yield* fileSystem.open(at(name), { flag: "w" })
      yield* f.writeAll(new TextEncoder().encode(text))
      if (sync) yield* f.sync
    }))
  const read = (name: string) => nodeFs.existsSync(at(name)) ? nodeFs.readFileSync(at(name), "utf8") : undefined
  return { fs: fileSystem, powerCut, root, at, syncDir, writeFile, read, path }
})

describe("PowerCutFileSystem", () => {
  it.effect("a file's contents are durable as of its last fsync, its name as of its directory's", () =>
    Effect.gen(function*() {
      const { powerCut, read, root, syncDir, writeFile } = yield* setup
      yield* writeFile("a", "one", true)
      yield* syncDir(root)
      yield* writeFile("a", "two, not synced", false)
      yield* writeFile("b", "synced, but its name is not", true)
      yield* writeFile("c", "nothing synced", false)
      yield* powerCut.cut()
      assert.strictEqual(read("a"), "one")
      assert.strictEqual(read("b"), undefined)
      assert.strictEqual(read("c"), undefined)
    }).pipe(Effect.provide(node)))

  it.effect("a name made durable before its contents comes back empty", () =>
    Effect.gen(function*() {
      const { powerCut, read, root, syncDir, writeFile } = yield* setup
      yield* writeFile("a", "never fsynced", false)
      yield* syncDir(root)
      yield* powerCut.cut()
      assert.strictEqual(read("a"), "")
    }).pipe(Effect.provide(node)))

  it.effect("renames, removals and links are undone unless the directory was synced", () =>
    Effect.gen(function*() {
      const { at, fs, powerCut, read, root, syncDir, writeFile } = yield* setup
      yield* writeFile("old", "kept", true)
      yield* writeFile("gone", "removed", true)
      yield* syncDir(root)
      yield* fs.rename(at("old"), at("new"))
      yield* fs.remove(at("gone"))
      yield* fs.link(at("new"), at("linked"))
      yield* powerCut.cut()
      assert.deepStrictEqual([read("old"), read("new"), read("gone"), read("linked")], ["kept", undefined, "removed", undefined])

      yield* fs.rename(at("old"), at("new"))
      yield* fs.link(at("new"), at("linked"))
      yield* syncDir(root)
      yield* powerCut.cut()
      assert.deepStrictEqual([read("old"), read("new"), read("linked")], [undefined, "kept", "kept"])
      assert.strictEqual(nodeFs.statSync(at("new")).ino, nodeFs.statSync(at("linked")).ino, "a hard link stays one inode")
    }).pipe(Effect.provide(node)))

  it.effect("a new directory's entry in its parent needs the parent's fsync", () =>
    Effect.gen(function*() {
      const { at, fs, powerCut, read, syncDir } = yield* setup
      yield* fs.makeDirectory(at("x/y"), { recursive: true })
      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open(at("x/y/f"), { flag: "w" })
        yield* f.writeAll(new TextEncoder().encode("deep"))
        yield* f.sync
      }))
      yield* syncDir(at("x/y"))
      yield* powerCut.cut()
      assert.isFalse(nodeFs.existsSync(at("x")), "x was never made durable in root")
      yield* fs.makeDirectory(at("x/y"), { recursive: true })
      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open(at("x/y/f"), { flag: "w" })
        yield* f.writeAll(new TextEncoder().encode("deep"))
        yield* f.sync
      }))
      yield* syncDir(at("x/y"))
      yield* syncDir(at("x"))
      yield* syncDir(at(""))
      yield* powerCut.cut()
      assert.strictEqual(read("x/y/f"), "deep")
    }).pipe(Effect.provide(node)))

  it.effect("cutAt(n): the n-th state-changing operation and everything after it fail, and change nothing", () =>
    Effect.gen(function*() {
      const { at, fs, powerCut, read, root, syncDir, writeFile } = yield* setup
      powerCut.cutAt(2) // open (0), write (1), sync (2)
      const exit = yield* Effect.exit(writeFile("a", "text", true))
      assert.isTrue(Exit.isFailure(exit))
      assert.isTrue(powerCut.isOff())
      assert.isTrue(Exit.isFailure(yield* Effect.exit(fs.rename(at("a"), at("b")))), "the machine is off")
      assert.isTrue(Exit.isFailure(yield* Effect.exit(syncDir(root))))
      assert.strictEqual(read("a"), "text", "the volatile state is still there until the cut")
      yield* powerCut.cut()
      assert.isFalse(powerCut.isOff())
      assert.strictEqual(read("a"), undefined)
      assert.deepStrictEqual(powerCut.operations(), [])
    }).pipe(Effect.provide(node)))

  it.effect("random mode mixes flushed and unflushed state by seed", () =>
    Effect.gen(function*() {
      const outcomes = new Set<string>()
      for (let seed = 0; seed < 24; seed++) {
        yield* Effect.scoped(Effect.gen(function*() {
          const { at, fs, powerCut, read, root, syncDir, writeFile } = yield* setup
          yield* writeFile("a", "v1", true)
          yield* syncDir(root)
          yield* writeFile("tmp", "v2", false)
          yield* fs.rename(at("tmp"), at("a"))
          yield* powerCut.cut({ mode: "random", seed })
          outcomes.add(String(read("a")))
        }))
      }
      // Old name and content, new name with unflushed (empty) content, or everything flushed.
      assert.includeMembers([...outcomes], ["v1", "v2", ""])
    }).pipe(Effect.provide(node)))

  // The model is strict enough to catch a protocol that leaves out an fsync.
  const mutant = (drop: "file" | "directory") =>
    Effect.gen(function*() {
      const { fs, path, powerCut, root } = yield* setup
      const broken = FileSystem.make({
        ...fs,
        open: (p, o) =>
          Effect.map(fs.open(p, o), (file): FileSystem.File => ({
            ...file,
            [FileSystem.FileTypeId]: FileSystem.FileTypeId,
            stat: file.stat,
            sync: Effect.flatMap(file.stat, (info) => (info.type === "Directory") === (drop === "directory") ? Effect.void : file.sync)
          }))
      })
      const store = (fileSystem: FileSystem.FileSystem) =>
        FileCheckpointIO.make.pipe(Effect.provideService(FileSystem.FileSystem, fileSystem), Effect.provideService(Path.Path, path))
      yield* (yield* store(fs)).save(versioned(1), `${root}/a.ckpt`)
      yield* (yield* store(broken)).save(versioned(2), `${root}/a.ckpt`)
      yield* powerCut.cut()
      const loaded = yield* Effect.exit((yield* store(fs)).load(`${root}/a.ckpt`))
      return Exit.isSuccess(loaded) ? `version ${loaded.value.meta.pipe((m) => m._tag === "Some" ? m.value.globalStep : -1)}` : "unreadable"
    })

  it.effect("catches a save that skips the file fsync (the renamed file comes back empty)", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* mutant("file"), "unreadable")
    }).pipe(Effect.provide(node)))

  it.effect("catches a save that skips the directory fsync (the save that returned is lost)", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* mutant("directory"), "version 1")
    }).pipe(Effect.provide(node)))

  it.effect("the real FileCheckpointIO keeps a save that returned", () =>
    Effect.gen(function*() {
      const { fs, path, powerCut, root } = yield* setup
      const io = yield* FileCheckpointIO.make.pipe(Effect.provideService(FileSystem.FileSystem, fs), Effect.provideService(Path.Path, path))
      yield* io.save(versioned(1), `${root}/a.ckpt`)
      yield* io.save(versioned(2), `${root}/a.ckpt`)
      yield* powerCut.cut()
      const loaded = yield* io.load(`${root}/a.ckpt`)
      assert.strictEqual(loaded.meta.pipe((m) => (m._tag === "Some" ? m.value.globalStep : -1)), 2)
    }).pipe(Effect.provide(node)))
})
