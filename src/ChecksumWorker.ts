/**
 * `ChecksumWorker`: CRC-32 of tensor data on a worker thread, so that a background
 * save does not steal the main thread from training.
 *
 * Measured (bench:async): checksumming 256 MB takes ~65 ms of CPU with zlib; on the
 * main thread that time is taken from the training loop while a background save
 * runs. Here the tensors' buffers are *transferred* to a worker thread (zero-copy),
 * checksummed there and transferred back, and each tensor comes back with its
 * `crc32` filled in, which the codec then uses instead of computing it.
 *
 * Gotchas: only for buffers the caller owns outright (a snapshot): while a buffer is
 * with the worker, every view of it is detached. Buffers that cannot be transferred
 * (Node's pooled Buffers), small ones, and any failure of the worker fall back to
 * checksumming on the calling thread; the result is the same either way.
 *
 * @since 0.1.0
 */
import { Effect, type Scope } from "effect"
import { Worker } from "node:worker_threads"
import { crc32 } from "node:zlib"
import { arrayConstructor, bytesPerElement, type HostTensor, type TensorData } from "./Checkpoint.ts"

/** Buffers smaller than this are checksummed in place: a round trip costs more. */
const minimumTransferBytes = 1 << 20

const workerSource = `
const { parentPort } = require("node:worker_threads")
const { crc32 } = require("node:zlib")
parentPort.on("message", ({ id, buffer, ranges }) => {
  const crcs = ranges.map(([offset, length]) => crc32(new Uint8Array(buffer, offset, length)))
  parentPort.postMessage({ id, buffer, crcs }, buffer instanceof ArrayBuffer ? [buffer] : [])
})
`

/** CRC-32 of tensors on a worker thread: the buffers travel to the worker and back (transferred, not copied). */
export interface ChecksumWorker {
  /** Returns the tensors with `crc32` set (and their data re-pointed at the returned buffers). */
  readonly checksum: (tensors: Readonly<Record<string, HostTensor>>) => Effect.Effect<Record<string, HostTensor>>
}

const bytesOf = (data: TensorData) => new Uint8Array(data.buffer, data.byteOffset, data.byteLength)

const inPlace = (tensors: Readonly<Record<string, HostTensor>>): Record<string, HostTensor> => {
  const out: Record<string, HostTensor> = Object.create(null)
  for (const [name, t] of Object.entries(tensors)) out[name] = { ...t, crc32: t.crc32 ?? crc32(bytesOf(t.data)) }
  return out
}

/** Starts a checksum worker thread for the scope; it is terminated when the scope closes. */
export const make: Effect.Effect<ChecksumWorker, never, Scope.Scope> = Effect.gen(function*() {
  const pending = new Map<number, (reply: { buffer: ArrayBufferLike; crcs: Array<number> } | undefined) => void>()
  let nextId = 0
  let broken = false
  const worker = yield* Effect.acquireRelease(
    Effect.sync(() => {
      // Referenced for as long as its scope is open, like any other resource.
      const w = new Worker(workerSource, { eval: true })
      w.on("message", (reply: { id: number; buffer: ArrayBufferLike; crcs: Array<number> }) => {
        pending.get(reply.id)?.(reply)
        pending.delete(reply.id)
      })
      const fail = () => {
        broken = true
        for (const resume of pending.values()) resume(undefined)
        pending.clear()
      }
      w.on("error", fail)
      w.on("exit", fail)
      return w
    }),
    (w) => Effect.promise(() => w.terminate())
  )

  /** Checksums the given ranges of one buffer on the worker; `undefined` if it could not. */
  const remote = (buffer: ArrayBufferLike, ranges: Array<[number, number]>) =>
    Effect.callback<{ buffer: ArrayBufferLike; crcs: Array<number> } | undefined>((resume) => {
      if (broken) return resume(Effect.succeed(undefined))
      const id = nextId++
      pending.set(id, (reply) => resume(Effect.succeed(reply)))
      try {
        worker.postMessage({ id, buffer, ranges }, buffer instanceof ArrayBuffer ? [buffer] : [])
      } catch {
        // Not transferable (e.g. a pooled Buffer): checksum it here instead.
        pending.delete(id)
        resume(Effect.succeed(undefined))
      }
    })

  const checksum: ChecksumWorker["checksum"] = (tensors) =>
    Effect.gen(function*() {
      const groups = new Map<ArrayBufferLike, Array<[string, HostTensor]>>()
      const out: Record<string, HostTensor> = Object.create(null)
      for (const [name, t] of Object.entries(tensors)) {
        if (t.crc32 !== undefined || t.data.buffer.byteLength < minimumTransferBytes) {
          out[name] = { ...t, crc32: t.crc32 ?? crc32(bytesOf(t.data)) }
          continue
        }
        const group = groups.get(t.data.buffer) ?? []
        group.push([name, t])
        groups.set(t.data.buffer, group)
      }
      // All buffers are posted at once: the worker checksums them back to back.
      yield* Effect.forEach([...groups], ([buffer, group]) =>
        Effect.gen(function*() {
          // Taken before the transfer: afterwards the views read as empty.
          const ranges = group.map(([, t]): [number, number] => [t.data.byteOffset, t.data.byteLength])
          const reply = yield* remote(buffer, ranges)
          if (reply === undefined) {
            if ((buffer as { readonly detached?: boolean }).detached === true) {
              // Transferred to a worker that then crashed: the snapshot is gone.
              return yield* Effect.die(new Error("the checksum worker crashed while holding a snapshot buffer"))
            }
            Object.assign(out, inPlace(Object.fromEntries(group)))
            return
          }
          group.forEach(([name, t], i) => {
            const [offset, length] = ranges[i]!
            const data = new arrayConstructor[t.dtype](reply.buffer, offset, length / bytesPerElement(t.dtype))
            out[name] = { ...t, data, crc32: reply.crcs[i]! } as HostTensor
          })
        }), { concurrency: "unbounded", discard: true })
      return out
    })

  return { checksum }
})
