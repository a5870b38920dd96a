/**
 * The checkpoint record handed to storage.
 *
 * A `Checkpoint` is host-side and finished: a map of named tensors (dtype, shape and
 * a typed array each) plus the non-tensor part (`CheckpointMeta`). It never holds a
 * tfjs tensor or a model: staging device tensors into host memory happens in the
 * Strategy / Device before a `CheckpointIO` sees the record. What goes *into* a
 * checkpoint is decided by the Trainer, the module and the callbacks; how it is
 * *stored* is decided by `CheckpointIO`.
 *
 * Tensor names keep the model's own variable names under a section prefix:
 * `model/<variable>` for weights (see `modelPrefix`), `optimizer/<index>/<slot>` and
 * `optimizer/state/<key>` for optimizer state; `CheckpointConnector` owns that
 * encoding. A weights-only load keeps the `model/` section only.
 *
 * @since 0.1.0
 */
import { Option, Schema } from "effect"
import { libraryVersion } from "./version.ts"

/**
 * Element types a checkpoint can hold: every dtype of the safetensors format that has
 * a JavaScript typed array. `F16` and `BF16` are kept as raw 16-bit patterns in a
 * `Uint16Array`; `BOOL` is one byte per element (0 or 1) in a `Uint8Array`; the 8-bit
 * floats `F8_E4M3` (torch's `float8_e4m3fn`) and `F8_E5M2` are raw bytes in a
 * `Uint8Array`.
 * TensorFlow.js itself only computes in `F32`, `I32` and `BOOL`; see
 * `LoadOptions.dtypes` for converting the others on load.
 */
export const DTypes = [
  "F64",
  "F32",
  "F16",
  "BF16",
  "I64",
  "I32",
  "I16",
  "I8",
  "U64",
  "U32",
  "U16",
  "U8",
  "BOOL",
  "F8_E4M3",
  "F8_E5M2"
] as const

/** A safetensors dtype name (`"F32"`, `"I64"`, …). */
export type DType = typeof DTypes[number]

/** The Schema of a dtype name. */
export const DType = Schema.Literals(DTypes)

/** The typed array that holds the elements of each dtype. */
export interface TypedArrayOf {
  readonly F64: Float64Array
  readonly F32: Float32Array
  readonly F16: Uint16Array
  readonly BF16: Uint16Array
  readonly I64: BigInt64Array
  readonly I32: Int32Array
  readonly I16: Int16Array
  readonly I8: Int8Array
  readonly U64: BigUint64Array
  readonly U32: Uint32Array
  readonly U16: Uint16Array
  readonly U8: Uint8Array
  readonly BOOL: Uint8Array
  readonly F8_E4M3: Uint8Array
  readonly F8_E5M2: Uint8Array
}

/** The typed array that holds a tensor of some dtype (`Float32Array` for F32, `BigInt64Array` for I64, …). */
export type TensorData = TypedArrayOf[DType]

type TypedArrayConstructor = {
  readonly BYTES_PER_ELEMENT: number
  new(length: number): TensorData
  new(buffer: ArrayBufferLike, byteOffset: number, length: number): TensorData
}

/** Constructor of the typed array for each dtype (also gives the element size). */
export const arrayConstructor: { readonly [D in DType]: TypedArrayConstructor } = {
  F64: Float64Array,
  F32: Float32Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  I64: BigInt64Array,
  I32: Int32Array,
  I16: Int16Array,
  I8: Int8Array,
  U64: BigUint64Array,
  U32: Uint32Array,
  U16: Uint16Array,
  U8: Uint8Array,
  BOOL: Uint8Array,
  F8_E4M3: Uint8Array,
  F8_E5M2: Uint8Array
}

/** Bytes per element of a dtype. */
export const bytesPerElement = (dtype: DType): number => arrayConstructor[dtype].BYTES_PER_ELEMENT

/**
 * One tensor in host memory: row-major, little-endian elements.
 *
 * Gotcha: the record does not copy `data`. Whoever builds a checkpoint from live
 * buffers (tfjs on `cpu` hands out its own backing arrays) must copy first; the
 * Strategy's staging does.
 */
export interface HostTensor<D extends DType = DType> {
  readonly dtype: D
  readonly shape: ReadonlyArray<number>
  readonly data: TypedArrayOf[D]
  /**
   * The CRC-32 of `data`'s bytes, when already known (computed off the main thread by
   * `ChecksumWorker`, say); storage then skips computing it. It must be right: a
   * wrong value makes the saved file fail its checksum on load.
   */
  readonly crc32?: number | undefined
}

/** Builds a host tensor, checking nothing: `CheckpointIO.save` validates. */
export const tensor = <D extends DType>(dtype: D, shape: ReadonlyArray<number>, data: TypedArrayOf[D]): HostTensor<D> => ({
  dtype,
  shape,
  data
})

/** Number of elements of a shape (1 for a scalar `[]`). */
export const elementCount = (shape: ReadonlyArray<number>): number => shape.reduce((n, d) => n * d, 1)

/** Section prefix of model weights. A weights-only load keeps these tensors only. */
export const modelPrefix = "model/"

/** Section prefix of optimizer state (slots such as Adam's `m` / `v`, and its step). */
export const optimizerPrefix = "optimizer/"

const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

const JsonRecord = Schema.Record(Schema.String, Schema.Json)

/** The optimizer's class name and its configuration (learning rate, betas, …). */
export const OptimizerConfig = Schema.Struct({
  className: Schema.String,
  config: JsonRecord
})

/** The optimizer's class name and `getConfig()`, as saved in a checkpoint. */
export type OptimizerConfig = typeof OptimizerConfig.Type

/**
 * The non-tensor part of a checkpoint, stored as JSON in the file's `__metadata__`.
 *
 * - `loops`: loop progress (batches / epochs seen, data position, random state),
 *   keyed by loop name;
 * - `callbacks`: each stateful callback's state under its state key;
 * - `user`: free entries from the user's module hooks.
 */
export const CheckpointMeta = Schema.Struct({
  formatVersion: Schema.Literal(1),
  libraryVersion: Schema.String,
  epoch: NonNegativeInt,
  globalStep: NonNegativeInt,
  weightsOnly: Schema.Boolean,
  loops: JsonRecord,
  callbacks: JsonRecord,
  optimizer: Schema.NullOr(OptimizerConfig),
  hyperParameters: JsonRecord,
  user: JsonRecord
})

/** The non-tensor part of a checkpoint (epoch, step, loop state, callback states, …), decoded with its Schema. */
export type CheckpointMeta = typeof CheckpointMeta.Type

/**
 * A checkpoint: tensors by name, the non-tensor part, and string metadata.
 *
 * `meta` is `None` for a file written by another safetensors writer (its tensors
 * load; it carries no training state). `extraMetadata` holds `__metadata__` string
 * entries that are not ours: a foreign file's, or your own to write along (keys
 * starting with `effect_trainer.` are reserved).
 */
export interface Checkpoint {
  readonly tensors: Readonly<Record<string, HostTensor>>
  readonly meta: Option.Option<CheckpointMeta>
  readonly extraMetadata: Readonly<Record<string, string>>
}

/** Fields of `CheckpointMeta` that have a sensible default. */
export type MetaInput = Partial<CheckpointMeta> & Pick<CheckpointMeta, "epoch" | "globalStep">

/** Fills a `CheckpointMeta` from the fields given; the rest get empty defaults. */
export const makeMeta = (input: MetaInput): CheckpointMeta => ({
  formatVersion: 1,
  libraryVersion,
  weightsOnly: false,
  loops: {},
  callbacks: {},
  optimizer: null,
  hyperParameters: {},
  user: {},
  ...input
})

/**
 * Builds a checkpoint record.
 *
 * @example
 * ```ts
 * const ckpt = Checkpoint.make({
 *   tensors: { "model/dense/kernel": Checkpoint.tensor("F32", [2, 2], new Float32Array(4)) },
 *   meta: { epoch: 1, globalStep: 10 }
 * })
 * ```
 */
export const make = (input: {
  readonly tensors: Readonly<Record<string, HostTensor>>
  readonly meta?: MetaInput | undefined
  readonly extraMetadata?: Readonly<Record<string, string>> | undefined
}): Checkpoint => ({
  tensors: input.tensors,
  meta: input.meta === undefined ? Option.none() : Option.some(makeMeta(input.meta)),
  extraMetadata: input.extraMetadata ?? {}
})

/** Total bytes of tensor data in a checkpoint. */
export const byteSize = (checkpoint: Checkpoint): number => {
  let total = 0
  for (const name in checkpoint.tensors) total += checkpoint.tensors[name]!.data.byteLength
  return total
}
