/**
 * `DataParallel`: Lightning's DDP on worker threads: `devices` replicas of the
 * user's program, each with its own tfjs backend and its shard of every global
 * batch, gradients averaged through the `Collective` before every optimizer step.
 *
 * How the user's code reaches the replicas (Lightning's "re-launch the script per
 * rank"): the layer, built on the main thread, is rank 0; it starts `devices - 1`
 * worker threads that run the program's entry module again (`entry`, by default the
 * script Node was started with, with the same arguments), and in those threads the
 * same layer becomes ranks 1 … n-1. The program stays an ordinary Effect program:
 * the same `TrainingModule`, `DataModule` and Trainer options run on every rank.
 *
 * Semantics (Lightning's): each replica sees its shard of every global batch (rows
 * `rank`, `rank + n`, … of the batch, padded by wrapping around when the batch does
 * not divide); logged metrics are averaged across replicas before the Trainer uses
 * them (callbacks, loggers, ModelCheckpoint's monitor); `globalStep` counts optimizer
 * steps; hooks run on every rank; only rank 0 logs metrics, draws the progress bar
 * and writes checkpoints (through the run's own CheckpointIO; other ranks read
 * through it, their writes are skipped). Checkpoints are single-device ones: a run
 * resumes on any number of replicas.
 *
 * Failure: an error or crash on any rank fails every rank's fit with a
 * `CollectiveError` naming the rank; the worker threads belong to the layer's scope
 * (terminated and awaited when it closes, after any exit or interruption).
 *
 * Gotchas: one data-parallel layer per program run; the entry module must start the
 * same program when re-run (argument parsing included); output of ranks 1 … n-1 on
 * stdout is discarded, their stderr is forwarded.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Cause, Effect, Exit, Layer } from "effect"
import * as os from "node:os"
import { pathToFileURL } from "node:url"
import { isMainThread, Worker, workerData } from "node:worker_threads"
import type { HostTensor } from "./Checkpoint.ts"
import type { CheckpointIOShape } from "./CheckpointIO.ts"
import * as Collective from "./Collective.ts"
import { Device } from "./Device.ts"
import * as Strategy from "./Strategy.ts"

const dataKey = "effect-trainer/DataParallel"

interface ReplicaData {
  readonly rank: number
  readonly group: Collective.SharedGroup
}

const replicaData: ReplicaData | undefined = !isMainThread && typeof workerData === "object" && workerData !== null
  ? (workerData as Record<string, ReplicaData | undefined>)[dataKey]
  : undefined

/** This thread's replica when it is a worker started by `layer` (rank ≥ 1); undefined on the main thread. */
export const replica: { readonly rank: number; readonly worldSize: number } | undefined = replicaData === undefined
  ? undefined
  : { rank: replicaData.rank, worldSize: replicaData.group.worldSize }

/** Whether this thread is rank 0 (the main thread): guard your own printing with it, as Lightning's `rank_zero_only`. */
export const isGlobalZero: boolean = replica === undefined || replica.rank === 0

let live = 0

/** Worker threads started by data-parallel layers and not yet exited (0 after every run: tests hold it to that). */
export const liveWorkers = (): number => live

/** Options of `layer`. */
export interface DataParallelOptions {
  /** Replicas: a number, or `"auto"` (one per CPU core). */
  readonly devices: number | "auto"
  /** The module each worker runs (a path or file URL): default, the script Node was started with. */
  readonly entry?: string | URL | undefined
  /** The arguments the workers see in `process.argv.slice(2)`: default, this process's. */
  readonly argv?: ReadonlyArray<string> | undefined
  /**
   * This replica's part of a batch (default: `shardRows` on host tensors and records
   * or arrays of them; a batch it cannot split runs whole on every replica, which is
   * correct but gains nothing, and is logged once).
   */
  readonly shard?: ((batch: unknown, rank: number, worldSize: number) => unknown) | undefined
}

const isHost = (value: unknown): value is HostTensor =>
  typeof value === "object" && value !== null && "dtype" in value && "shape" in value && "data" in value &&
  ArrayBuffer.isView((value as HostTensor).data) && Array.isArray((value as HostTensor).shape)

const rowsOf = (t: HostTensor, indices: ReadonlyArray<number>): HostTensor => {
  const rowSize = t.shape.slice(1).reduce((a, b) => a * b, 1)
  const source = t.data as unknown as { subarray: (a: number, b: number) => ArrayLike<number>; constructor: new(n: number) => unknown }
  const out = new source.constructor(indices.length * rowSize) as { set: (a: ArrayLike<number>, at: number) => void }
  indices.forEach((r, i) => out.set(source.subarray(r * rowSize, (r + 1) * rowSize), i * rowSize))
  return { ...t, shape: [indices.length, ...t.shape.slice(1)], data: out } as unknown as HostTensor
}

/**
 * Lightning's distributed sampler on one batch: rows `rank`, `rank + n`, … of every
 * host tensor in the batch (a host tensor, or a record or array of them with equal
 * row counts), the batch padded by wrapping to a multiple of `worldSize` so every
 * replica gets the same number of rows. `undefined` when the batch is not made of
 * host tensors.
 */
export const shardRows = (batch: unknown, rank: number, worldSize: number): unknown => {
  const entries: Array<[string | number, HostTensor]> | undefined = isHost(batch)
    ? [["", batch]]
    : Array.isArray(batch) && batch.every(isHost)
    ? batch.map((t, i) => [i, t])
    : typeof batch === "object" && batch !== null && Object.values(batch).length > 0 && Object.values(batch).every(isHost)
    ? Object.entries(batch as Record<string, HostTensor>)
    : undefined
  if (entries === undefined) return undefined
  const rows = entries[0]![1].shape[0] ?? 0
  if (rows === 0 || entries.some(([, t]) => t.shape[0] !== rows)) return undefined
  const padded = Math.ceil(rows / worldSize) * worldSize
  const indices: Array<number> = []
  for (let i = rank; i < padded; i += worldSize) indices.push(i % rows)
  if (isHost(batch)) return rowsOf(batch, indices)
  if (Array.isArray(batch)) return entries.map(([, t]) => rowsOf(t, indices))
  return Object.fromEntries(entries.map(([k, t]) => [k, rowsOf(t, indices)]))
}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** The CheckpointIO seen by ranks other than 0: reads go through, writes (save, remove, copy, flush) are skipped (rank 0 writes). */
const readOnly = (io: CheckpointIOShape): CheckpointIOShape => ({
  ...io,
  save: () => Effect.void,
  remove: () => Effect.void,
  copy: () => Effect.void,
  flush: Effect.void
})

/** The tensors' values one after the other, then `extra`, into `into` when it has the size. */
const flatten = (tensors: ReadonlyArray<tf.Tensor>, extra: ReadonlyArray<number> = [], into?: Float32Array): Float32Array => {
  const size = tensors.reduce((n, t) => n + t.size, 0) + extra.length
  const out = into !== undefined && into.length === size ? into : new Float32Array(size)
  let offset = 0
  for (const t of tensors) {
    out.set(t.dataSync() as Float32Array, offset)
    offset += t.size
  }
  out.set(extra, offset)
  return out
}

const unflatten = (tfjs: typeof tf, flat: Float32Array, like: ReadonlyArray<{ readonly shape: ReadonlyArray<number | null> }>) => {
  let offset = 0
  return like.map((w) => {
    const shape = w.shape.map((d) => d ?? 1)
    const size = shape.reduce((a, b) => a * b, 1)
    const t = tfjs.tensor(flat.subarray(offset, offset + size), shape, "float32")
    offset += size
    return t
  })
}

const hashOf = (text: string) => {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/**
 * The replica strategy of `collective.rank` on the `Device` in context: the
 * single-device steps, with the initial weights broadcast from rank 0 before a
 * model's first step and the gradients averaged before every optimizer step.
 */
export const make = (
  collective: Collective.CollectiveShape,
  options?: Pick<DataParallelOptions, "shard">
): Effect.Effect<Strategy.StrategyShape, Strategy.StrategyConfigError, Device> =>
  Effect.gen(function*() {
    const base = yield* Strategy.make({ name: `DataParallelStrategy(${collective.worldSize})` })
    const { tf: tfjs } = base.device
    const { rank, worldSize } = collective
    const synced = new WeakSet<tf.LayersModel>()
    let warnedUnshardable = false

    const stepFailed = (step: string) => (cause: unknown) => new Strategy.StepError({ step, reason: messageOf(cause), cause })

    /** Rank 0's weights on every replica, before the first step of a model. */
    const syncWeights = (model: tf.LayersModel) =>
      Effect.gen(function*() {
        if (synced.has(model) || worldSize === 1) return
        const values = yield* Effect.try({
          try: () => flatten(model.weights.map((w) => w.read())),
          catch: stepFailed("broadcast of the weights")
        })
        yield* collective.broadcast(values, 0)
        if (rank !== 0) {
          yield* Effect.try({
            try: () => {
              const fresh = unflatten(tfjs, values, model.weights)
              model.weights.forEach((w, i) => w.write(fresh[i]!))
              tfjs.dispose(fresh)
            },
            catch: stepFailed("broadcast of the weights")
          })
        }
        synced.add(model)
      })

    const computeGradients: Strategy.StrategyShape["computeGradients"] = (model, loss, scale) =>
      Effect.andThen(syncWeights(model), base.computeGradients(model, loss, scale))

    const applyGradients: Strategy.StrategyShape["applyGradients"] = (model, optimizer, grads, stepOptions) =>
      Effect.gen(function*() {
        const flat = yield* Effect.try({ try: () => flatten(grads), catch: stepFailed("all-reduce of the gradients") })
        yield* collective.allReduceMean(flat)
        const reduced = unflatten(tfjs, flat, grads)
        yield* base.applyGradients(model, optimizer, reduced, stepOptions).pipe(
          Effect.ensuring(Effect.sync(() => tfjs.dispose(reduced)))
        )
      })

    // Reused between steps: fresh allocations are slow (first touch), and the
    // tensors made from it are freed before the next step.
    let scratch: Float32Array | undefined
    /** The step metrics the last step averaged (with a copy of the result): `reduceMetrics` passes them as they are. */
    let averaged: { readonly map: ReadonlyMap<string, number>; readonly values: ReadonlyMap<string, number> } | undefined

    const trainingStep: Strategy.StrategyShape["trainingStep"] = (model, optimizer, loss, stepOptions) =>
      Effect.gen(function*() {
        const computed = yield* computeGradients(model, loss, 1)
        const metrics = stepOptions.metrics
        if (metrics === undefined || worldSize === 1) {
          yield* applyGradients(model, optimizer, computed.grads, stepOptions).pipe(
            Effect.ensuring(Effect.sync(() => tfjs.dispose([...computed.grads])))
          )
          return computed.loss
        }
        // One round trip for the gradients, the loss and the logged metrics.
        metrics.set("loss", computed.loss)
        const keys = [...metrics.keys()].sort()
        const check = hashOf(keys.join("\u0000")) & 0xffff // exact in float32
        const flat = yield* Effect.try({
          try: () => (scratch = flatten(computed.grads, [check, keys.length, ...keys.map((k) => metrics.get(k)!)], scratch)),
          catch: stepFailed("all-reduce of the gradients")
        }).pipe(Effect.ensuring(Effect.sync(() => tfjs.dispose([...computed.grads]))))
        yield* collective.allReduceMean(flat)
        const at = flat.length - keys.length - 2
        if (flat[at] !== check || flat[at + 1] !== keys.length) {
          return yield* new Collective.CollectiveError({
            rank,
            operation: "allReduce",
            reason: `the replicas logged different metrics (rank ${rank}: ${keys.join(", ")})`
          })
        }
        keys.forEach((k, i) => metrics.set(k, flat[at + 2 + i]!))
        averaged = { map: metrics, values: new Map(metrics) }
        const reduced = unflatten(tfjs, flat, computed.grads)
        yield* base.applyGradients(model, optimizer, reduced, stepOptions).pipe(
          Effect.ensuring(Effect.sync(() => tfjs.dispose(reduced)))
        )
        return metrics.get("loss")!
      })

    const reduceMetrics: NonNullable<Strategy.StrategyShape["reduceMetrics"]> = (metrics) =>
      Effect.gen(function*() {
        if (worldSize === 1) return metrics
        // Averaged with the gradients of the step just taken (the same on every replica).
        const last = averaged
        averaged = undefined
        if (last !== undefined && last.map === metrics && last.values.size === metrics.size) {
          if ([...metrics].every(([k, v]) => last.values.get(k) === v)) return metrics
        }
        const keys = [...metrics.keys()].sort()
        const hash = hashOf(keys.join("\u0000"))
        // The key set travels with the values: replicas that logged different metrics fail.
        const values = Float64Array.from([hash, keys.length, ...keys.map((k) => metrics.get(k)!)])
        yield* collective.allReduceMean(values)
        if (values[0] !== hash || values[1] !== keys.length) {
          return yield* new Collective.CollectiveError({
            rank,
            operation: "reduceMetrics",
            reason: `the replicas logged different metrics (rank ${rank}: ${keys.join(", ")})`
          })
        }
        return new Map(keys.map((k, i) => [k, values[i + 2]!]))
      })

    const shardWith = options?.shard ?? shardRows
    const shard = <B>(batch: B): B => {
      if (worldSize === 1) return batch
      const part = shardWith(batch, rank, worldSize)
      if (part !== undefined) return part as B
      if (!warnedUnshardable) {
        warnedUnshardable = true
        Effect.runSync(
          Effect.logWarning(`DataParallel: a batch is not made of host tensors; every replica runs it whole (pass a shard function)`)
        )
      }
      return batch
    }

    return {
      ...base,
      rank,
      worldSize,
      isGlobalZero: rank === 0,
      trainingStep,
      computeGradients,
      applyGradients,
      reduceMetrics,
      shard,
      checkpointIOForRank: (io) => (rank === 0 ? io : readOnly(io))
    } satisfies Strategy.StrategyShape
  })

/** Replicas for `devices`: `"auto"` is one per CPU core. */
export const resolveDevices = (devices: number | "auto"): number => devices === "auto" ? Math.max(1, os.availableParallelism()) : devices

const entryOf = (entry: string | URL | undefined): URL | undefined => {
  if (entry instanceof URL) return entry
  const path = entry ?? process.argv[1]
  if (path === undefined) return undefined
  return path.startsWith("file:") ? new URL(path) : pathToFileURL(path)
}

/** Starts ranks 1 … n-1 for the scope: terminated and awaited when it closes. */
const startWorkers = (options: DataParallelOptions, worldSize: number) =>
  Effect.gen(function*() {
    const entry = entryOf(options.entry)
    if (entry === undefined) {
      return yield* new Strategy.StrategyConfigError({
        strategy: "DataParallelStrategy",
        reason: "no entry module to start the replicas with"
      })
    }
    const group = Collective.makeShared(worldSize)
    const collective = Collective.fromShared(group, 0)
    const argv = [...(options.argv ?? process.argv.slice(2))]
    const workers = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          const started: Array<{ worker: Worker; exited: Promise<void> }> = []
          for (let rank = 1; rank < worldSize; rank++) {
            const worker = new Worker(entry, { workerData: { [dataKey]: { rank, group } }, argv, stdout: true, stderr: true })
            live++
            worker.stdout.resume()
            worker.stderr.on("data", (chunk: Buffer) => process.stderr.write(`[rank ${rank}] ${chunk.toString()}`))
            worker.on("error", (error) => Effect.runSync(collective.abort(`crashed: ${messageOf(error)}`, rank)))
            const exited = new Promise<void>((resolve) =>
              worker.on("exit", (code) => {
                live--
                Effect.runSync(collective.abort(code === 0 ? "its program ended" : `exited with code ${code}`, rank))
                resolve()
              })
            )
            started.push({ worker, exited })
          }
          return started
        },
        catch: (cause) =>
          new Strategy.StrategyConfigError({ strategy: "DataParallelStrategy", reason: `starting the replicas: ${messageOf(cause)}` })
      }),
      (started, exit) =>
        Effect.gen(function*() {
          yield* collective.abort(
            Exit.isSuccess(exit) ? "rank 0 finished" : `rank 0 stopped: ${Cause.pretty(exit.cause).split("\n")[0]}`,
            0
          )
          yield* Effect.promise(() => Promise.all(started.map(({ exited, worker }) => worker.terminate().then(() => exited))))
        })
    )
    return { collective, workers }
  })

/**
 * The data-parallel strategy (Lightning's `DDPStrategy`) with `devices` replicas, each
 * on the `Device` the program provides in its own thread. On the main thread it is
 * rank 0 and starts the other replicas; in a replica thread it is that rank. With
 * one device, it is a single replica without workers.
 */
export const layer = (options: DataParallelOptions): Layer.Layer<Strategy.Strategy, Strategy.StrategyConfigError, Device> =>
  Layer.effect(
    Strategy.Strategy,
    Effect.gen(function*() {
      if (replicaData !== undefined) {
        const collective = Collective.fromShared(replicaData.group, replicaData.rank)
        // This replica's failure (or end) releases the others from any operation it will not join.
        yield* Effect.addFinalizer((exit) =>
          collective.abort(Exit.isSuccess(exit) ? "its program ended" : Cause.pretty(exit.cause).split("\n")[0] ?? "failed")
        )
        return yield* make(collective, options)
      }
      const worldSize = resolveDevices(options.devices)
      if (!Number.isInteger(worldSize) || worldSize < 1) {
        return yield* new Strategy.StrategyConfigError({
          strategy: "DataParallelStrategy",
          reason: `devices must be a positive integer or "auto", got ${options.devices}`
        })
      }
      if (worldSize === 1) return yield* make(Collective.single, options)
      const { collective } = yield* startWorkers(options, worldSize)
      return yield* make(collective, options)
    })
  )
