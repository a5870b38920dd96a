/**
 * `Collective`: the operations replicas of a data-parallel run do together
 * (all-reduce of gradients and metrics, broadcast of the initial weights, barrier),
 * as a service, so that the strategy does not care where the other replicas are.
 *
 * Contract: every replica calls the same operations in the same order with data of
 * the same length (SPMD). Reductions add in rank order (0, 1, …, n-1) on every
 * replica, so all replicas get bit-identical results and a run is reproducible for a
 * given replica count. A replica that fails calls `abort`: every pending and later
 * operation on every replica then fails with a `CollectiveError` naming the rank
 * that failed, so one failure never leaves the others waiting.
 *
 * Implementations: `makeShared` over one `SharedArrayBuffer` (threads of one process,
 * Atomics for the barrier; platform-free), `single` for a world of one. A multi-host
 * implementation (processes over sockets) provides the same service; see
 * docs/scale-out.md.
 *
 * @since 0.1.0
 */
import { Context, Data, Effect } from "effect"

/** A collective operation failed, or another replica (`rank`) failed and aborted the group. */
export class CollectiveError extends Data.TaggedError("CollectiveError")<{
  /** The rank that failed (the one that aborted the group). */
  readonly rank: number
  readonly operation: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `replica rank ${this.rank} failed (${this.operation}): ${this.reason}`
  }
}

/** The collective operations of one replica. */
export interface CollectiveShape {
  /** This replica's rank, 0 … worldSize-1; rank 0 is the global zero (logs, checkpoints). */
  readonly rank: number
  readonly worldSize: number
  /** Replaces `data` (on every replica) with the element-wise mean over the replicas, added in rank order. */
  readonly allReduceMean: (data: Float32Array | Float64Array) => Effect.Effect<void, CollectiveError>
  /** Copies rank `root`'s `data` into every other replica's `data` (same length everywhere). */
  readonly broadcast: (data: Float32Array | Float64Array, root?: number) => Effect.Effect<void, CollectiveError>
  /** Waits until every replica has reached the barrier. */
  readonly barrier: Effect.Effect<void, CollectiveError>
  /** Fails the group: pending and later operations fail on every replica, naming this rank. */
  readonly abort: (reason: string, rank?: number) => Effect.Effect<void>
  /** The abort of the group, if any (the rank that failed and why). */
  readonly aborted: () => { readonly rank: number; readonly reason: string } | undefined
}

/** The Collective service: provided by a data-parallel strategy to each replica. */
export class Collective extends Context.Service<Collective, CollectiveShape>()("effect-trainer/Collective") {}

/** The collective of a world of one: reductions and broadcasts leave the data as it is. */
export const single: CollectiveShape = (() => {
  let abortedBy: { rank: number; reason: string } | undefined
  const check = (operation: string) =>
    Effect.suspend(() =>
      abortedBy === undefined
        ? Effect.void
        : Effect.fail(new CollectiveError({ rank: abortedBy.rank, operation, reason: abortedBy.reason }))
    )
  return {
    rank: 0,
    worldSize: 1,
    allReduceMean: () => check("allReduce"),
    broadcast: () => check("broadcast"),
    barrier: check("barrier"),
    abort: (reason, rank = 0) => Effect.sync(() => void (abortedBy ??= { rank, reason })),
    aborted: () => abortedBy
  }
})()

// ES2024 (Node 16+); not in the project's TypeScript lib.
const waitAsync = (Atomics as unknown as {
  readonly waitAsync: (
    array: Int32Array,
    index: number,
    value: number
  ) => { readonly async: false; readonly value: string } | { readonly async: true; readonly value: Promise<string> }
}).waitAsync

// Layout of the control words (Int32) at the start of the shared buffer.
const ABORTED = 0
const ABORT_RANK = 1
const COUNT = 2
const GENERATION = 3
const REASON_LENGTH = 4
const CONTROL_WORDS = 8
const REASON_BYTES = 4096

/** The shared memory of a group: pass it (with a rank) to every replica's `fromShared`. */
export interface SharedGroup {
  readonly buffer: SharedArrayBuffer
  readonly worldSize: number
  /** Bytes of one replica's slot: larger data goes through in chunks of this size. */
  readonly slotBytes: number
}

/**
 * Allocates the shared memory of a group of `worldSize` replicas: control words, the
 * abort reason, and two slots per replica (alternate operations use alternate slots,
 * which is what lets one barrier per operation suffice).
 */
export const makeShared = (worldSize: number, slotBytes = 4 << 20): SharedGroup => ({
  buffer: new SharedArrayBuffer(CONTROL_WORDS * 4 + REASON_BYTES + 2 * worldSize * slotBytes),
  worldSize,
  slotBytes
})

/**
 * The collective of replica `rank` over a group's shared memory. Waiting uses
 * `Atomics.waitAsync`, so a waiting thread keeps its event loop (and so the
 * interruption of its fiber and the exit events of other threads) alive.
 */
export const fromShared = (group: SharedGroup, rank: number): CollectiveShape => {
  const { buffer, worldSize, slotBytes } = group
  const control = new Int32Array(buffer, 0, CONTROL_WORDS)
  const reasonBytes = new Uint8Array(buffer, CONTROL_WORDS * 4, REASON_BYTES)
  const slotsOffset = CONTROL_WORDS * 4 + REASON_BYTES
  let operations = 0

  const aborted = () => {
    if (Atomics.load(control, ABORTED) === 0) return undefined
    const length = Atomics.load(control, REASON_LENGTH)
    return {
      rank: Atomics.load(control, ABORT_RANK),
      reason: new TextDecoder().decode(reasonBytes.slice(0, length))
    }
  }

  const failIfAborted = (operation: string) =>
    Effect.suspend(() => {
      const a = aborted()
      return a === undefined ? Effect.void : Effect.fail(new CollectiveError({ rank: a.rank, operation, reason: a.reason }))
    })

  const abort: CollectiveShape["abort"] = (reason, by = rank) =>
    Effect.sync(() => {
      if (Atomics.compareExchange(control, ABORTED, 0, 2) !== 0) return
      const encoded = new TextEncoder().encode(reason).subarray(0, REASON_BYTES)
      reasonBytes.set(encoded)
      Atomics.store(control, REASON_LENGTH, encoded.length)
      Atomics.store(control, ABORT_RANK, by)
      Atomics.store(control, ABORTED, 1)
      // Wake every waiter. The generation stays: a barrier every replica had reached
      // before the abort still completes; only one that cannot complete fails.
      Atomics.notify(control, GENERATION)
    })

  /** Waits until the generation differs from `generation`; fails when the group is aborted first. */
  const waitFor = (generation: number, operation: string): Effect.Effect<void, CollectiveError> =>
    Effect.callback<void, CollectiveError>((resume) => {
      // A pending waitAsync does not keep a thread's event loop alive: this timer does.
      let keepAlive: ReturnType<typeof setTimeout> | undefined
      const done = (effect: Effect.Effect<void, CollectiveError>) => {
        if (keepAlive !== undefined) clearTimeout(keepAlive)
        resume(effect)
      }
      const loop = (): void => {
        if (Atomics.load(control, GENERATION) !== generation) return done(Effect.void)
        const a = aborted()
        if (a !== undefined) return done(Effect.fail(new CollectiveError({ rank: a.rank, operation, reason: a.reason })))
        const waited = waitAsync(control, GENERATION, generation)
        if (!waited.async) return done(Effect.void)
        keepAlive ??= setTimeout(() => {}, 2 ** 31 - 1)
        void waited.value.then(loop)
      }
      loop()
      return Effect.sync(() => keepAlive !== undefined && clearTimeout(keepAlive))
    })

  const barrierNamed = (operation: string) =>
    Effect.gen(function*() {
      yield* failIfAborted(operation)
      const generation = Atomics.load(control, GENERATION)
      if (Atomics.add(control, COUNT, 1) === worldSize - 1) {
        Atomics.store(control, COUNT, 0)
        Atomics.add(control, GENERATION, 1)
        Atomics.notify(control, GENERATION)
      } else {
        yield* waitFor(generation, operation)
      }
    })

  const slot = (r: number, parity: number) => new Uint8Array(buffer, slotsOffset + (parity * worldSize + r) * slotBytes, slotBytes)

  /** One chunk of an operation: write this replica's bytes, barrier, then `read` every slot. */
  const exchange = (operation: string, mine: Uint8Array | undefined, read: (slots: (r: number) => Uint8Array) => void) =>
    Effect.gen(function*() {
      const parity = operations++ & 1
      if (mine !== undefined) slot(rank, parity).set(mine)
      yield* barrierNamed(operation)
      read((r) => slot(r, parity))
    })

  const bytesOf = (data: Float32Array | Float64Array) => new Uint8Array(data.buffer, data.byteOffset, data.byteLength)

  const allReduceMean: CollectiveShape["allReduceMean"] = (data) =>
    Effect.gen(function*() {
      if (worldSize === 1) return yield* failIfAborted("allReduce")
      const width = data.BYTES_PER_ELEMENT
      const perChunk = Math.floor(slotBytes / width)
      const View = data instanceof Float32Array ? Float32Array : Float64Array
      for (let start = 0; start < data.length || start === 0; start += perChunk) {
        const part = data.subarray(start, Math.min(data.length, start + perChunk))
        yield* exchange("allReduce", bytesOf(part), (slots) => {
          const views = Array.from({ length: worldSize }, (_, r) => {
            const s = slots(r)
            return new View(s.buffer as ArrayBuffer, s.byteOffset, part.length)
          })
          // Rank order, in doubles, on every replica: the same sums everywhere, every
          // run. No scratch buffer: fresh allocations are slow (first touch).
          for (let i = 0; i < part.length; i++) {
            let acc = 0
            for (let r = 0; r < worldSize; r++) acc += views[r]![i]!
            part[i] = acc / worldSize
          }
        })
        if (data.length === 0) break
      }
    })

  const broadcast: CollectiveShape["broadcast"] = (data, root = 0) =>
    Effect.gen(function*() {
      if (worldSize === 1) return yield* failIfAborted("broadcast")
      const perChunk = Math.floor(slotBytes / data.BYTES_PER_ELEMENT)
      for (let start = 0; start < data.length || start === 0; start += perChunk) {
        const part = data.subarray(start, Math.min(data.length, start + perChunk))
        const bytes = bytesOf(part)
        yield* exchange("broadcast", rank === root ? bytes : undefined, (slots) => {
          if (rank !== root) bytes.set(slots(root).subarray(0, bytes.length))
        })
        if (data.length === 0) break
      }
    })

  return {
    rank,
    worldSize,
    allReduceMean,
    broadcast,
    barrier: exchange("barrier", undefined, () => {}),
    abort,
    aborted
  }
}
