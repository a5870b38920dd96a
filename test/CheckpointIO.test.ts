import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Layer } from "effect"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import { CheckpointIOSuite } from "../src/testing/index.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)

CheckpointIOSuite.run("FileCheckpointIO", () =>
  CheckpointIOSuite.layerRawFileSystem.pipe(
    Layer.provideMerge(FileCheckpointIO.layer),
    Layer.provideMerge(node),
    Layer.orDie
  ))

CheckpointIOSuite.run(
  "MemoryCheckpointIO",
  () => CheckpointIOSuite.layerRawMemory.pipe(Layer.provideMerge(MemoryCheckpointIO.layerWithStore))
)
