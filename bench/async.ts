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
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Context, Effect, Fiber, Layer } from "effect"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as nodePath from "node:path"
import { parseArgs } from "node:util"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO, type CheckpointIOShape } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"

const { values } = parseArgs({
  options: {
    mb: { type: "string", default: "256" },
    tensors: { type: "string", default: "16" },
    repeats: { type: "string", default: "5" },
    dir: { type: "string" },
    json: { type: "string" }
  }
})
const totalBytes = Number(values.mb) * 1024 * 1024
const tensorCount = Number(values.tensors)
const repeats = Number(values.repeats)

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})
const now = Effect.sync(() => performance.now())

const master = (() => {
  const per = totalBytes / 4 / tensorCount
  return Array.from({ length: tensorCount }, (_, i) => {
    const data = new Float32Array(per)
    for (let k = 0; k < per; k++) data[k] = Math.sin(i * per + k)
    return data
  })
})()

/** A fresh staged snapshot, as the Strategy hands over (built outside the timings). */
const staged = () => {
  const tensors: Record<string, Checkpoint.HostTensor> = {}
  master.forEach((data, i) => (tensors[`model/layer${i}/kernel`] = Checkpoint.tensor("F32", [data.length], data.slice())))
  return Checkpoint.make({ tensors, meta: { epoch: 1, globalStep: 1000 } })
}

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

const program = Effect.gen(function*() {
  const dir = values.dir ?? (yield* Effect.promise(() => fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-async-"))))
  yield* Effect.promise(() => fsp.mkdir(dir, { recursive: true }))
  const file = nodePath.join(dir, "bench.ckpt")
  const sync = yield* FileCheckpointIO.make
  const withAsync = <A>(options: AsyncCheckpointIO.Options, f: (io: CheckpointIOShape) => Effect.Effect<A, unknown, never>) =>
    Effect.scoped(Effect.gen(function*() {
      const context = yield* Layer.build(AsyncCheckpointIO.layer(options).pipe(Layer.provide(FileCheckpointIO.layer)))
      return yield* f(Context.get(context, CheckpointIO))
    }))

  const samples = {
    sync: [] as Array<number>,
    blockTransfer: [] as Array<number>,
    blockCopy: [] as Array<number>,
    background: [] as Array<number>,
    backgroundMain: [] as Array<number>,
    slowdownWorker: [] as Array<number>,
    slowdownMain: [] as Array<number>
  }
  for (let r = -1; r < repeats; r++) {
    // Synchronous save.
    let ckpt = staged()
    gc()
    let t = yield* now
    yield* sync.save(ckpt, file)
    const syncTime = (yield* now) - t

    // Blocking time of the asynchronous save, transfer and copy.
    const blocking = yield* withAsync({}, (io) =>
      Effect.gen(function*() {
        ckpt = staged()
        gc()
        const t0 = yield* now
        yield* io.save(ckpt, file, { snapshot: "transfer" })
        const transfer = (yield* now) - t0
        const t1 = yield* now
        yield* io.flush
        const background = (yield* now) - t1
        ckpt = staged()
        gc()
        const t2 = yield* now
        yield* io.save(ckpt, file)
        const copy = (yield* now) - t2
        yield* io.flush
        return { transfer, copy, background }
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
          return median(busy) / median(quiet)
        }))
    const worker = yield* slowdown(true)
    const main = yield* slowdown(false)
    if (r < 0) continue // warm-up round
    samples.sync.push(syncTime)
    samples.blockTransfer.push(blocking.transfer)
    samples.blockCopy.push(blocking.copy)
    samples.background.push(blocking.background)
    samples.backgroundMain.push(backgroundMain)
    samples.slowdownWorker.push(worker)
    samples.slowdownMain.push(main)
  }
  yield* Effect.promise(() => fsp.rm(file, { force: true }))
  if (values.dir === undefined) yield* Effect.promise(() => fsp.rm(dir, { recursive: true, force: true }))

  const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])) as Record<keyof typeof samples, number>
  const result = { blocking_vs_sync: m.blockTransfer / m.sync, step_slowdown: m.slowdownWorker }
  const ms = (x: number) => `${x.toFixed(1)} ms`
  const spread = (xs: ReadonlyArray<number>, digits = 2) => xs.map((x) => x.toFixed(digits)).join(" ")
  console.log(`checkpoint: ${values.mb} MiB in ${tensorCount} float32 tensors, ${repeats} repeats, medians`)
  console.log(`sync save                          ${ms(m.sync)}`)
  console.log(`async save blocks (transfer)       ${ms(m.blockTransfer)}   blocking_vs_sync = ${result.blocking_vs_sync.toFixed(4)} (target <= 0.05)`)
  console.log(`async save blocks (copy)           ${ms(m.blockCopy)}   ratio ${(m.blockCopy / m.sync).toFixed(3)}`)
  console.log(`background write, checksum worker   ${ms(m.background)}   ratio to sync ${(m.background / m.sync).toFixed(3)}`)
  console.log(`background write, checksum on main  ${ms(m.backgroundMain)}   ratio to sync ${(m.backgroundMain / m.sync).toFixed(3)}`)
  console.log(`step time during a background save, checksum worker:  x${m.slowdownWorker.toFixed(3)} (target <= 1.10)`)
  console.log(`step time during a background save, checksum on main: x${m.slowdownMain.toFixed(3)}`)
  console.log(`spread: sync ${spread(samples.sync, 0)} | transfer ${spread(samples.blockTransfer)} | copy ${spread(samples.blockCopy, 0)}`)
  console.log(`spread: slowdown worker ${spread(samples.slowdownWorker, 3)} | main ${spread(samples.slowdownMain, 3)}`)
  if (values.json !== undefined) {
    yield* Effect.promise(() => fsp.writeFile(values.json!, JSON.stringify(result, null, 2) + "\n"))
  }
})

await Effect.runPromise(program.pipe(Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))))
