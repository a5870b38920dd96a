import { Effect, Layer } from "effect"
import { CheckpointIO, type CheckpointIOShape } from "../../src/CheckpointIO.ts"
import * as MemoryCheckpointIO from "../../src/MemoryCheckpointIO.ts"

/** A memory store that counts its calls, for checking which CheckpointIO is used and how. */
export const countingIO = () => {
  const counts = { save: 0, load: 0, remove: 0, copy: 0, exists: 0, list: 0 }
  const layer = Layer.effect(
    CheckpointIO,
    Effect.map(MemoryCheckpointIO.make, (io): CheckpointIOShape => ({
      ...io,
      save: (c, p, o) => Effect.suspend(() => (counts.save++, io.save(c, p, o))),
      load: (p, o) => Effect.suspend(() => (counts.load++, io.load(p, o))),
      remove: (p) => Effect.suspend(() => (counts.remove++, io.remove(p))),
      copy: (s, t) => Effect.suspend(() => (counts.copy++, io.copy(s, t))),
      exists: (p) => Effect.suspend(() => (counts.exists++, io.exists(p))),
      list: (d) => Effect.suspend(() => (counts.list++, io.list(d)))
    }))
  ).pipe(Layer.provide(MemoryCheckpointIO.MemoryStore.layer))
  return { counts, layer }
}
