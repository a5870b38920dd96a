/**
 * `DataModule`: the data of a run, as Effect Streams of batches (Lightning's
 * `LightningDataModule`).
 *
 * `train(epoch)` returns the batches of one epoch. It must be deterministic for a
 * given epoch (shuffle from a seed, never `Math.random`): that is what makes a
 * mid-epoch resume exact, because the Trainer saves the position (epoch, batch
 * index) and on resume skips the batches already seen. `fromArrays` builds one from
 * host tensors with a seeded split and a seeded per-epoch shuffle.
 *
 * @since 0.1.0
 */
import { Data, Stream } from "effect"
import { arrayConstructor, elementCount, type HostTensor, type TensorData } from "./Checkpoint.ts"
import * as Random from "./Random.ts"

/** Loading or preparing data failed. */
export class DataError extends Data.TaggedError("DataError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `data: ${this.reason}`
  }
}

/** The data of a run (Lightning's `LightningDataModule`): training, validation, test and predict batches as Effect Streams, and their counts when known. */
export interface DataModule<Batch> {
  /** The training batches of `epoch` (0-based), the same every time for one epoch. */
  readonly train?: ((epoch: number) => Stream.Stream<Batch, DataError>) | undefined
  readonly val?: (() => Stream.Stream<Batch, DataError>) | undefined
  readonly test?: (() => Stream.Stream<Batch, DataError>) | undefined
  readonly predict?: (() => Stream.Stream<Batch, DataError>) | undefined
  /** Batches per training epoch, when known (for progress and fractional intervals). */
  readonly numTrainBatches?: number | undefined
  readonly numValBatches?: number | undefined
  readonly numTestBatches?: number | undefined
}

/** A batch of inputs and targets, rows along the first axis. */
export interface XY {
  readonly x: HostTensor
  readonly y: HostTensor
}

/** Rows `indices` of `t` as a new host tensor. */
export const gatherRows = (t: HostTensor, indices: ArrayLike<number>): HostTensor => {
  const rowSize = elementCount(t.shape.slice(1))
  const out = new arrayConstructor[t.dtype](indices.length * rowSize) as TensorData
  const source = t.data as unknown as { subarray: (a: number, b: number) => ArrayLike<number> }
  const target = out as unknown as { set: (a: ArrayLike<number>, at: number) => void }
  for (let i = 0; i < indices.length; i++) {
    const r = indices[i]!
    target.set(source.subarray(r * rowSize, (r + 1) * rowSize), i * rowSize)
  }
  return { dtype: t.dtype, shape: [indices.length, ...t.shape.slice(1)], data: out } as HostTensor
}

/** How `fromArrays` batches, shuffles (seeded) and splits in-memory arrays. */
export interface ArraysOptions {
  readonly batchSize: number
  /** Seed of the split and of the per-epoch shuffles (default 0). */
  readonly seed?: number | undefined
  /** Shuffle the training rows every epoch (default true). */
  readonly shuffle?: boolean | undefined
  /** Fractions of the rows held out for validation and test (default 0.1 and 0). */
  readonly valFraction?: number | undefined
  readonly testFraction?: number | undefined
  /** Drop a last incomplete training batch (default false). */
  readonly dropLast?: boolean | undefined
}

const batchesOf = (data: XY, rows: Int32Array, batchSize: number, dropLast: boolean): Stream.Stream<XY, DataError> => {
  const count = dropLast ? Math.floor(rows.length / batchSize) : Math.ceil(rows.length / batchSize)
  return Stream.range(0, count - 1).pipe(
    Stream.map((b) => {
      const slice = rows.subarray(b * batchSize, Math.min((b + 1) * batchSize, rows.length))
      return { x: gatherRows(data.x, slice), y: gatherRows(data.y, slice) }
    })
  )
}

/**
 * A DataModule over in-memory inputs and targets: a seeded split into train / val /
 * test, and a seeded shuffle of the training rows per epoch (seed mixed with the
 * epoch), so that epoch `e` always yields the same batches.
 */
export const fromArrays = (data: XY, options: ArraysOptions): DataModule<XY> => {
  const n = data.x.shape[0] ?? 0
  const seed = options.seed ?? 0
  const order = Random.permutation(n, Random.mix(seed, 0x5eed))
  const nVal = Math.round(n * (options.valFraction ?? 0.1))
  const nTest = Math.round(n * (options.testFraction ?? 0))
  const testRows = order.slice(0, nTest)
  const valRows = order.slice(nTest, nTest + nVal)
  const trainRows = order.slice(nTest + nVal)
  const { batchSize } = options
  const dropLast = options.dropLast ?? false
  const batches = (rows: number) => (dropLast ? Math.floor(rows / batchSize) : Math.ceil(rows / batchSize))
  return {
    train: (epoch) => {
      const perm = options.shuffle === false
        ? trainRows
        : Int32Array.from(Random.permutation(trainRows.length, Random.mix(seed, epoch)), (i) => trainRows[i]!)
      return batchesOf(data, perm, batchSize, dropLast)
    },
    val: nVal > 0 ? () => batchesOf(data, valRows, batchSize, false) : undefined,
    test: nTest > 0 ? () => batchesOf(data, testRows, batchSize, false) : undefined,
    predict: nTest > 0 ? () => batchesOf(data, testRows, batchSize, false) : undefined,
    numTrainBatches: batches(trainRows.length),
    numValBatches: Math.ceil(nVal / batchSize),
    numTestBatches: Math.ceil(nTest / batchSize)
  }
}

/** One-hot encoding of integer labels as an F32 host tensor [n, classes]. */
export const oneHot = (labels: ArrayLike<number>, classes: number): HostTensor => {
  const out = new Float32Array(labels.length * classes)
  for (let i = 0; i < labels.length; i++) out[i * classes + labels[i]!] = 1
  return { dtype: "F32", shape: [labels.length, classes], data: out }
}
