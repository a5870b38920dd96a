import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Effect, FileSystem, Layer } from "effect"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import { checkpointIOSuite, RawStore } from "./support/CheckpointIOSuite.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

const fileRaw = Layer.effect(
  RawStore,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const root = yield* fs.makeTempDirectoryScoped({ prefix: "ckpt-suite-" })
    return {
      root,
      // A plain copy: Node's Buffer.slice() would share memory with the file's bytes.
      read: (path: string) => Effect.orDie(Effect.map(fs.readFile(path), (bytes) => new Uint8Array(bytes))),
      write: (path: string, bytes: Uint8Array) => Effect.orDie(fs.writeFile(path, bytes)),
      settle: Effect.void
    }
  })
)

checkpointIOSuite(
  "FileCheckpointIO",
  () => Layer.mergeAll(FileCheckpointIO.layer, fileRaw).pipe(Layer.provide(node), Layer.orDie)
)

const memoryRaw = Layer.effect(
  RawStore,
  Effect.gen(function*() {
    const { files } = yield* MemoryCheckpointIO.MemoryStore
    return {
      root: "/checkpoints",
      read: (path: string) => Effect.sync(() => files.get(MemoryCheckpointIO.normalize(path))?.bytes.slice() ?? new Uint8Array(0)),
      write: (path: string, bytes: Uint8Array) =>
        Effect.sync(() => void files.set(MemoryCheckpointIO.normalize(path), { bytes: bytes.slice(), modifiedAt: 0 })),
      settle: Effect.void
    }
  })
)

checkpointIOSuite("MemoryCheckpointIO", () => memoryRaw.pipe(Layer.provideMerge(MemoryCheckpointIO.layerWithStore)))
