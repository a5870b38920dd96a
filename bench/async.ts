/**
 * bench:async: what a background save costs training, for a 256 MB checkpoint.
 *
 *   npm run bench:async [-- --mb 256 --repeats 5 --dir <dir> --json <file>]
 *
 * - blocking_vs_sync: how long AsyncCheckpointIO.save blocks its caller, as a
 *   fraction of a synchronous FileCheckpointIO.save of the same checkpoint. The
 *   caller hands over a freshly staged snapshot (`snapshot: "transfer"`), as the
 *   Strategy does; the "copy" figure is printed too.
 * - step_slowdown: median time of a CPU-bound training step (a 192x192 matmul in
 *   plain JS, yielding to the runtime between steps as the Trainer does), measured
 *   start to start so that main-thread work of the save counts, while a background
 *   save runs, over the same without one. Printed with and without the checksum
 *   worker, to show why it exists.
 * - background_vs_sync: from the asynchronous save's call to the end of its flush,
 *   over the synchronous save.
 * - peak extra memory: the highest RSS and `process.memoryUsage().arrayBuffers`
 *   sampled (every 2 ms) from an asynchronous save's call to the end of its flush,
 *   less the figure just before the call, over the checkpoint size; for a transfer
 *   and for a copy (separate, untimed saves). RSS is the whole process (the checksum
 *   worker's thread included); memory freed by earlier rounds and reused does not
 *   show as growth.
 *
 * `measureAsync` is the measurement itself, for the suite (bench/suite.ts).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Context, Effect, Fiber, type FileSystem, Layer, type Path } from "effect"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as nodePath from "node:path"
import { parseArgs } from "node:util"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO, type CheckpointIOShape } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"

export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})
const now = Effect.sync(() => performance.now())

// The "training step": CPU-bound work on the main thread.
const n = 192
const a = Float64Array.from({ length: n * n }, (_, i) => Math.sin(i))
const b = Float64Array.from({ length: n * n }, (_, i) => Math.cos(i))
const c = new Float64Array(n * n)
const step = () => {
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k]!
      for (let j = 0; j < n; j++) c[i * n + j]! += aik * b[k * n + j]!
    }
  }
}
/**
 * One step, timed from its start to the start of the next one: the step itself plus
 * whatever else the main thread did when the loop yielded (a background save's own
 * work there is exactly what slows training).
 */
const timedStep = Effect.gen(function*() {
  const start = yield* now
  yield* Effect.sync(step)
  yield* Effect.yieldNow
  return (yield* now) - start
})

/** Step times while `background` runs (until it completes), at least `minSteps`. */
const stepsDuring = (background: Effect.Effect<void, unknown>, minSteps: number) =>
  Effect.gen(function*() {
    let done = false
    const fiber = yield* Effect.forkChild(Effect.ensuring(background, Effect.sync(() => (done = true))))
    const times: Array<number> = []
    while (!done || times.length < minSteps) times.push(yield* timedStep)
    yield* Fiber.join(fiber)
    return times
  })

/** Peak growth of RSS and of ArrayBuffer memory over the figures at the call, sampled every 2 ms until `stop`. */
const memoryPeak = () => {
  const before = process.memoryUsage()
  let rss = before.rss
  let arrayBuffers = before.arrayBuffers
  const sample = () => {
    const m = process.memoryUsage()
    if (m.rss > rss) rss = m.rss
    if (m.arrayBuffers > arrayBuffers) arrayBuffers = m.arrayBuffers
  }
  const timer = setInterval(sample, 2)
  return {
    stop: () => {
      sample()
      clearInterval(timer)
      return { rss: rss - before.rss, arrayBuffers: arrayBuffers - before.arrayBuffers }
    }
  }
}

export interface AsyncOptions {
  readonly totalBytes: number
  readonly tensorCount: number
  readonly repeats: number
  /** Where the file goes (created if missing; the file is removed afterwards). */
  readonly dir: string
}

/** One value per repeat (the warm-up round is not included). Times in ms, memory in bytes. */
export interface AsyncSamples {
  readonly bytes: number
  readonly tensorCount: number
  /** FileCheckpointIO.save. */
  readonly sync: Array<number>
  /** AsyncCheckpointIO.save blocking its caller, `snapshot: "transfer"`. */
  readonly blockTransfer: Array<number>
  /** The same with the default `snapshot: "copy"`. */
  readonly blockCopy: Array<number>
  /** From the end of the (transfer) save call to the end of its flush, checksum worker. */
  readonly background: Array<number>
  /** From the (transfer) save call to the end of its flush, checksum worker. */
  readonly backgroundTotal: Array<number>
  /** As `background`, checksums on the main thread. */
  readonly backgroundMain: Array<number>
  /** Median step time during a background save over the median without one, checksum worker. */
  readonly slowdownWorker: Array<number>
  /** The same, checksums on the main thread. */
  readonly slowdownMain: Array<number>
  /** Median step time without a save (ms), in the checksum-worker run. */
  readonly quietStep: Array<number>
  /** Median step time during the background save (ms), in the checksum-worker run. */
  readonly busyStep: Array<number>
  readonly peakRssTransfer: Array<number>
  readonly peakArrayBuffersTransfer: Array<number>
  readonly peakRssCopy: Array<number>
  readonly peakArrayBuffersCopy: Array<number>
}

/**
 * The measurement: per round, a synchronous save, then the asynchronous ones (blocking
 * and background times, memory, step times with and without the checksum worker);
 * one warm-up round, then `repeats` rounds.
 */
export const measureAsync = (
  options: AsyncOptions
): Effect.Effect<AsyncSamples, unknown, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const { dir, repeats, tensorCount, totalBytes } = options
    yield* Effect.promise(() => fsp.mkdir(dir, { recursive: true }))
    const file = nodePath.join(dir, "bench.ckpt")
    const per = Math.floor(totalBytes / 4 / tensorCount)
    const master = Array.from({ length: tensorCount }, (_, i) => {
      const data = new Float32Array(per)
      for (let k = 0; k < per; k++) data[k] = Math.sin(i * per + k)
      return data
    })
    /** A fresh staged snapshot, as the Strategy hands over (built outside the timings). */
    const staged = () => {
      const tensors: Record<string, Checkpoint.HostTensor> = {}
      master.forEach((data, i) => (tensors[`model/layer${i}/kernel`] = Checkpoint.tensor("F32", [data.length], data.slice())))
      return Checkpoint.make({ tensors, meta: { epoch: 1, globalStep: 1000 } })
    }
    const sync = yield* FileCheckpointIO.make
    const withAsync = <A>(options: AsyncCheckpointIO.Options, f: (io: CheckpointIOShape) => Effect.Effect<A, unknown, never>) =>
      Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(AsyncCheckpointIO.layer(options).pipe(Layer.provide(FileCheckpointIO.layer)))
        return yield* f(Context.get(context, CheckpointIO))
      }))

    const samples: AsyncSamples = {
      bytes: per * 4 * tensorCount,
      tensorCount,
      sync: [],
      blockTransfer: [],
      blockCopy: [],
      background: [],
      backgroundTotal: [],
      backgroundMain: [],
      slowdownWorker: [],
      slowdownMain: [],
      quietStep: [],
      busyStep: [],
      peakRssTransfer: [],
      peakArrayBuffersTransfer: [],
      peakRssCopy: [],
      peakArrayBuffersCopy: []
    }
    for (let r = -1; r < repeats; r++) {
      // Synchronous save.
      let ckpt = staged()
      gc()
      const t = yield* now
      yield* sync.save(ckpt, file)
      const syncTime = (yield* now) - t

      // Blocking time of the asynchronous save, transfer and copy; then the peak
      // memory of each in untimed saves (sampling costs main-thread time).
      const blocking = yield* withAsync({}, (io) =>
        Effect.gen(function*() {
          ckpt = staged()
          gc()
          const t0 = yield* now
          yield* io.save(ckpt, file, { snapshot: "transfer" })
          const t1 = yield* now
          yield* io.flush
          const t2 = yield* now
          ckpt = staged()
          gc()
          const t3 = yield* now
          yield* io.save(ckpt, file)
          const copy = (yield* now) - t3
          yield* io.flush
          const memory = (snapshot: "transfer" | "copy") =>
            Effect.gen(function*() {
              ckpt = staged()
              // V8 frees ArrayBuffer memory on a background thread after a GC: let it
              // finish, so that the figure before the save holds no memory about to go.
              for (let i = 0; i < 2; i++) {
                gc()
                yield* Effect.sleep("25 millis")
              }
              const peak = memoryPeak()
              yield* io.save(ckpt, file, { snapshot })
              yield* io.flush
              return peak.stop()
            })
          const memTransfer = yield* memory("transfer")
          const memCopy = yield* memory("copy")
          return { transfer: t1 - t0, copy, background: t2 - t1, backgroundTotal: t2 - t0, memTransfer, memCopy }
        }))

      const backgroundMain = yield* withAsync({ checksumWorker: false }, (io) =>
        Effect.gen(function*() {
          ckpt = staged()
          gc()
          yield* io.save(ckpt, file, { snapshot: "transfer" })
          const t1 = yield* now
          yield* io.flush
          return (yield* now) - t1
        }))

      // Training steps with and without a background save.
      const slowdown = (checksumWorker: boolean) =>
        withAsync({ checksumWorker }, (io) =>
          Effect.gen(function*() {
            for (let w = 0; w < 5; w++) yield* timedStep // warm the JIT
            const quiet = yield* stepsDuring(Effect.void, 40)
            ckpt = staged()
            gc()
            const busy = yield* stepsDuring(
              Effect.andThen(io.save(ckpt, file, { snapshot: "transfer" }), io.flush),
              5
            )
            return { ratio: median(busy) / median(quiet), quiet: median(quiet), busy: median(busy) }
          }))
      const worker = yield* slowdown(true)
      const main = yield* slowdown(false)
      if (r < 0) continue // warm-up round
      samples.sync.push(syncTime)
      samples.blockTransfer.push(blocking.transfer)
      samples.blockCopy.push(blocking.copy)
      samples.background.push(blocking.background)
      samples.backgroundTotal.push(blocking.backgroundTotal)
      samples.backgroundMain.push(backgroundMain)
      samples.slowdownWorker.push(worker.ratio)
      samples.slowdownMain.push(main.ratio)
      samples.quietStep.push(worker.quiet)
      samples.busyStep.push(worker.busy)
      samples.peakRssTransfer.push(blocking.memTransfer.rss)
      samples.peakArrayBuffersTransfer.push(blocking.memTransfer.arrayBuffers)
      samples.peakRssCopy.push(blocking.memCopy.rss)
      samples.peakArrayBuffersCopy.push(blocking.memCopy.arrayBuffers)
    }
    yield* Effect.promise(() => fsp.rm(file, { force: true }))
    return samples
  })

/** `measureAsync` on Node's file system. */
export const runAsync = (options: AsyncOptions): Promise<AsyncSamples> =>
  Effect.runPromise(measureAsync(options).pipe(Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))))

const main = async () => {
  const { values } = parseArgs({
    options: {
      mb: { type: "string", default: "256" },
      tensors: { type: "string", default: "16" },
      repeats: { type: "string", default: "5" },
      dir: { type: "string" },
      json: { type: "string" }
    }
  })
  const tensorCount = Number(values.tensors)
  const repeats = Number(values.repeats)
  const dir = values.dir ?? (await fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-async-")))
  const samples = await runAsync({ totalBytes: Number(values.mb) * 1024 * 1024, tensorCount, repeats, dir })
  if (values.dir === undefined) await fsp.rm(dir, { recursive: true, force: true })

  const m = Object.fromEntries(
    Object.entries(samples).map(([k, v]) => [k, Array.isArray(v) ? median(v) : v])
  ) as Record<Exclude<keyof AsyncSamples, "bytes" | "tensorCount">, number>
  const result = { blocking_vs_sync: m.blockTransfer / m.sync, step_slowdown: m.slowdownWorker }
  const ms = (x: number) => `${x.toFixed(1)} ms`
  const mib = (x: number) => `${(x / 1048576).toFixed(1)} MiB`
  const spread = (xs: ReadonlyArray<number>, digits = 2) => xs.map((x) => x.toFixed(digits)).join(" ")
  console.log(`checkpoint: ${values.mb} MiB in ${tensorCount} float32 tensors, ${repeats} repeats, medians`)
  console.log(`sync save                          ${ms(m.sync)}`)
  console.log(
    `async save blocks (transfer)       ${ms(m.blockTransfer)}   blocking_vs_sync = ${result.blocking_vs_sync.toFixed(4)} (target <= 0.05)`
  )
  console.log(`async save blocks (copy)           ${ms(m.blockCopy)}   ratio ${(m.blockCopy / m.sync).toFixed(3)}`)
  console.log(`background write, checksum worker   ${ms(m.background)}   ratio to sync ${(m.background / m.sync).toFixed(3)}`)
  console.log(`background write, checksum on main  ${ms(m.backgroundMain)}   ratio to sync ${(m.backgroundMain / m.sync).toFixed(3)}`)
  console.log(`step time during a background save, checksum worker:  x${m.slowdownWorker.toFixed(3)} (target <= 1.10)`)
  console.log(`step time during a background save, checksum on main: x${m.slowdownMain.toFixed(3)}`)
  console.log(
    `peak extra memory, transfer: RSS ${mib(m.peakRssTransfer)}, arrayBuffers ${mib(m.peakArrayBuffersTransfer)}; copy: RSS ${
      mib(m.peakRssCopy)
    }, arrayBuffers ${mib(m.peakArrayBuffersCopy)}`
  )
  console.log(`spread: sync ${spread(samples.sync, 0)} | transfer ${spread(samples.blockTransfer)} | copy ${spread(samples.blockCopy, 0)}`)
  console.log(`spread: slowdown worker ${spread(samples.slowdownWorker, 3)} | main ${spread(samples.slowdownMain, 3)}`)
  if (values.json !== undefined) {
    await fsp.writeFile(values.json, JSON.stringify(result, null, 2) + "\n")
  }
}

if (import.meta.main) await main()
