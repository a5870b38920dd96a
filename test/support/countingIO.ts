import { Layer } from "effect"
import type { Operation } from "../../src/CheckpointIO.ts"
import * as MemoryCheckpointIO from "../../src/MemoryCheckpointIO.ts"
import { RecordingCheckpointIO } from "../../src/testing/index.ts"

/** A fresh memory store that counts its calls, for checking which CheckpointIO is used and how. */
export const countingIO = () => {
  const recording = RecordingCheckpointIO.make()
  const counts = {} as Record<Exclude<Operation, "flush">, number>
  for (const op of ["save", "load", "remove", "copy", "exists", "list"] as const) {
    Object.defineProperty(counts, op, { get: () => RecordingCheckpointIO.counts(recording.calls)[op], enumerable: true })
  }
  return { counts, calls: recording.calls, layer: recording.layer.pipe(Layer.provide(MemoryCheckpointIO.layerWithStore)) }
}
