/**
 * The checkpoint file format: the safetensors layout, plus our integrity metadata.
 *
 * ```
 * [ u64 LE: N ][ N bytes: UTF-8 JSON header, space-padded to 8 ][ tensor data, back to back ]
 * ```
 * The header maps each tensor name to `{ dtype, shape, data_offsets: [begin, end] }`
 * (offsets relative to the data buffer) and holds `__metadata__` (string → string).
 * Ours adds `effect_trainer.format`, `effect_trainer.meta` (the `CheckpointMeta` as
 * JSON), `effect_trainer.crc32` (one CRC-32 per tensor) and
 * `effect_trainer.header_crc32` (the header's own checksum, so that a flipped digit
 * in, say, the epoch is caught too). Python's `safetensors`,
 * PyTorch and NumPy read the file; loading never runs code.
 *
 * This module is storage-agnostic: it writes to a `ByteSink` and reads from a
 * `ByteSource`, so the file store and the memory store share one codec and one set
 * of checks. Reading validates the whole header (sizes, JSON shape, dtypes, offsets,
 * contiguity, shapes against byte counts) before allocating any tensor, and checks
 * each tensor's CRC-32 as it is read.
 *
 * @since 0.1.0
 */
import { Effect, Fiber, Option, Result, Schema } from "effect"
import { crc32 } from "node:zlib"
import {
  arrayConstructor,
  bytesPerElement,
  type Checkpoint,
  CheckpointMeta,
  type DType,
  DType as DTypeSchema,
  type HostTensor,
  modelPrefix,
  type TensorData
} from "./Checkpoint.ts"
import {
  CheckpointCorrupt,
  CheckpointInvalidArgument,
  CheckpointTooLarge,
  type DTypePolicy,
  type LoadOptions
} from "./CheckpointIO.ts"

/** Where encoded bytes go. `writeAt` patches bytes already written (the header). */
export interface ByteSink<E> {
  readonly write: (chunk: Uint8Array) => Effect.Effect<void, E>
  readonly writeAt: (position: number, chunk: Uint8Array) => Effect.Effect<void, E>
}

/**
 * Where encoded bytes come from. `read` fills `into` from `position` and returns
 * how many bytes it read (0 at end of data).
 */
export interface ByteSource<E> {
  readonly size: number
  readonly read: (into: Uint8Array, position: number) => Effect.Effect<number, E>
}

/** Largest header accepted on load (the safetensors reference uses the same cap). */
export const maxHeaderBytes = 100 * 1024 * 1024

/** Tensors smaller than this are coalesced through one scratch buffer on save and load. */
const smallTensorBytes = 1 << 20
/** Size of the scratch buffer and of each I/O call on large tensors. */
const chunkBytes = 8 << 20

/** The header key of safetensors' string-to-string metadata. */
export const metadataKey = "__metadata__"
/** Metadata keys under this prefix are effect-trainer's own (refused in `extraMetadata`). */
export const reservedPrefix = "effect_trainer."
/** Metadata key of the format version. */
export const formatKey = "effect_trainer.format"
/** Metadata key of the checkpoint's meta (the training state), as JSON. */
export const metaKey = "effect_trainer.meta"
/** Metadata key of the per-tensor CRC-32 map, as JSON. */
export const crcKey = "effect_trainer.crc32"
/** CRC-32 of the padded header bytes with this value itself read as `00000000`. */
export const headerCrcKey = "effect_trainer.header_crc32"
/** The version of effect-trainer's layout inside safetensors. */
export const formatVersion = "1"

const tfjsDTypes: ReadonlySet<DType> = new Set(["F32", "I32", "BOOL"])

const byteView = (data: TensorData): Uint8Array => new Uint8Array(data.buffer, data.byteOffset, data.byteLength)

/** A record without a prototype, so that a name such as `__proto__` is just a key. */
const record = <A>(): Record<string, A> => Object.create(null) as Record<string, A>

const crcHex = (crc: number): string => (crc >>> 0).toString(16).padStart(8, "0")

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

interface PlannedTensor {
  readonly name: string
  readonly bytes: Uint8Array
  /** Already computed by the caller (see `HostTensor.crc32`). */
  readonly crc32: number | undefined
}

/** A validated checkpoint, ready to be written: the header size is fixed. */
export interface WritePlan {
  readonly tensors: ReadonlyArray<PlannedTensor>
  readonly header: (crcs: ReadonlyArray<number>) => Uint8Array
  /** The header with every checksum zero: written first, patched at the end. */
  readonly placeholder: Uint8Array
  /** Total file size in bytes. */
  readonly size: number
}

const isDType = Schema.is(DTypeSchema)

const invalid = (path: string, reason: string) => new CheckpointInvalidArgument({ operation: "save", path, reason })

const validateTensor = (path: string, name: string, t: HostTensor): Effect.Effect<void, CheckpointInvalidArgument> => {
  if (!isDType(t.dtype)) {
    return Effect.fail(invalid(path, `tensor "${name}" has unknown dtype ${String(t.dtype)}`))
  }
  if (!(t.data instanceof arrayConstructor[t.dtype])) {
    return Effect.fail(
      invalid(path, `tensor "${name}" has dtype ${t.dtype} but its data is a ${t.data?.constructor?.name ?? typeof t.data}`)
    )
  }
  let count = 1
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      return Effect.fail(invalid(path, `tensor "${name}" has an invalid shape [${t.shape.join(", ")}]`))
    }
    count *= d
  }
  if (count !== t.data.length) {
    return Effect.fail(
      invalid(path, `tensor "${name}" has shape [${t.shape.join(", ")}] (${count} elements) but ${t.data.length} values`)
    )
  }
  if (t.dtype === "BOOL") {
    const bytes = t.data as Uint8Array
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i]! > 1) return Effect.fail(invalid(path, `tensor "${name}" is BOOL but holds the value ${bytes[i]}`))
    }
  }
  return Effect.void
}

const headerCrcMarker = new TextEncoder().encode(`"${headerCrcKey}":"`)

/** Position of the header checksum's 8 hex digits in `header`, searching from the end. */
const headerCrcPosition = (header: Uint8Array): number => {
  outer: for (let i = header.length - headerCrcMarker.length - 8; i >= 0; i--) {
    for (let k = 0; k < headerCrcMarker.length; k++) {
      if (header[i + k] !== headerCrcMarker[k]) continue outer
    }
    return i + headerCrcMarker.length
  }
  return -1
}

const zeroHex = new TextEncoder().encode("00000000")

/** CRC-32 of the header bytes (after the length prefix) with the checksum digits read as zeros. */
const headerCrc = (header: Uint8Array, at: number): number =>
  crc32(header.subarray(at + 8), crc32(zeroHex, crc32(header.subarray(0, at))))

/** Length prefix, JSON, space padding to a multiple of 8, and the header checksum filled in. */
const encodeHeader = (json: string, withHeaderCrc: boolean): Uint8Array => {
  const text = new TextEncoder().encode(json)
  const padded = Math.ceil((8 + text.length) / 8) * 8 - 8
  const out = new Uint8Array(8 + padded)
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true)
  out.set(text, 8)
  out.fill(0x20, 8 + text.length)
  if (withHeaderCrc) {
    const header = out.subarray(8)
    const at = headerCrcPosition(header)
    header.set(new TextEncoder().encode(crcHex(headerCrc(header, at))), at)
  }
  return out
}

/**
 * Checks that a checkpoint can be written: tensor names, dtypes, shapes against
 * data, BOOL values, metadata keys and the meta's schema. Cheap (no data is copied);
 * asynchronous stores call it before accepting a save, so that a bad checkpoint
 * fails at once. Returns the meta encoded for the header.
 */
export const validate = (checkpoint: Checkpoint, path: string): Effect.Effect<Record<string, string>, CheckpointInvalidArgument> =>
  Effect.gen(function*() {
    for (const name of Object.keys(checkpoint.tensors)) {
      if (name.length === 0 || name === metadataKey) {
        return yield* invalid(path, `"${name}" is not a valid tensor name`)
      }
      yield* validateTensor(path, name, checkpoint.tensors[name]!)
    }
    const metadata = record<string>()
    for (const [key, value] of Object.entries(checkpoint.extraMetadata)) {
      if (key.startsWith(reservedPrefix)) {
        return yield* invalid(path, `metadata key "${key}" is reserved (prefix ${reservedPrefix})`)
      }
      if (typeof value !== "string") return yield* invalid(path, `metadata value of "${key}" is not a string`)
      metadata[key] = value
    }
    if (Option.isSome(checkpoint.meta)) {
      const encoded = yield* Schema.encodeUnknownEffect(CheckpointMeta)(checkpoint.meta.value).pipe(
        Effect.mapError((error) => invalid(path, `invalid checkpoint meta: ${error.message}`)),
        // A meta nested too deep, or cyclic, overflows the stack in the encoder.
        Effect.catchDefect((defect) => Effect.fail(invalid(path, `invalid checkpoint meta: ${String(defect)}`)))
      )
      metadata[formatKey] = formatVersion
      metadata[metaKey] = yield* Effect.try({
        try: () => JSON.stringify(encoded),
        catch: (cause) => invalid(path, `checkpoint meta cannot be written as JSON: ${String(cause)}`)
      })
    }
    return metadata
  })

/**
 * Validates a checkpoint for writing (see `validate`) and fixes the header layout.
 * Fails with `CheckpointInvalidArgument`.
 */
export const plan = (checkpoint: Checkpoint, path: string): Effect.Effect<WritePlan, CheckpointInvalidArgument> =>
  Effect.gen(function*() {
    const metadata = yield* validate(checkpoint, path)
    const tensors: Array<PlannedTensor> = []
    const entries: Array<readonly [string, { dtype: DType; shape: ReadonlyArray<number>; data_offsets: [number, number] }]> =
      []
    let offset = 0
    for (const name of Object.keys(checkpoint.tensors)) {
      const t = checkpoint.tensors[name]!
      const bytes = byteView(t.data)
      entries.push([name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] }])
      tensors.push({ name, bytes, crc32: t.crc32 })
      offset += bytes.byteLength
    }
    const names = tensors.map((t) => t.name)
    const build = (crcs: ReadonlyArray<number>): string => {
      const crcMap = record<string>()
      names.forEach((name, i) => (crcMap[name] = crcHex(crcs[i] ?? 0)))
      const header = record<unknown>()
      for (const [name, entry] of entries) header[name] = entry
      // The header checksum goes last, where the reader looks for it.
      header[metadataKey] = Object.assign(record<string>(), metadata, {
        [crcKey]: JSON.stringify(crcMap),
        [headerCrcKey]: "00000000"
      })
      return JSON.stringify(header)
    }
    const placeholder = encodeHeader(build([]), true)
    const headerSize = placeholder.length
    return {
      tensors,
      placeholder,
      header: (crcs) => {
        const bytes = encodeHeader(build(crcs), true)
        // CRCs are fixed-width hex, so the header size never depends on them.
        if (bytes.length !== headerSize) throw new Error("BUG: header size changed with checksums")
        return bytes
      },
      size: headerSize + offset
    }
  })

/**
 * Writes a planned checkpoint: a placeholder header, each tensor in turn (small
 * ones coalesced through one reused scratch buffer, large ones straight from their
 * own memory in chunks), then the header again with the CRC-32s computed on the way.
 * Never holds a copy of the whole checkpoint.
 */
export const write = <E>(planned: WritePlan, sink: ByteSink<E>): Effect.Effect<void, E> =>
  Effect.gen(function*() {
    const crcs = new Array<number>(planned.tensors.length).fill(0)
    let smallBytes = 0
    for (const t of planned.tensors) if (t.bytes.byteLength < smallTensorBytes) smallBytes += t.bytes.byteLength
    yield* sink.write(planned.placeholder)
    let scratch: Uint8Array | undefined
    let filled = 0
    const flush = Effect.suspend(() => {
      if (filled === 0 || scratch === undefined) return Effect.void
      const chunk = scratch.subarray(0, filled)
      filled = 0
      return sink.write(chunk)
    })
    for (let i = 0; i < planned.tensors.length; i++) {
      const { bytes, crc32: known } = planned.tensors[i]!
      if (bytes.byteLength < smallTensorBytes) {
        crcs[i] = known ?? crc32(bytes)
        scratch ??= new Uint8Array(Math.min(chunkBytes, smallBytes))
        if (filled + bytes.byteLength > scratch.byteLength) yield* flush
        scratch.set(bytes, filled)
        filled += bytes.byteLength
        continue
      }
      yield* flush
      if (known !== undefined) {
        for (let at = 0; at < bytes.byteLength; at += chunkBytes) {
          yield* sink.write(bytes.subarray(at, Math.min(at + chunkBytes, bytes.byteLength)))
        }
        crcs[i] = known
        continue
      }
      let crc = 0
      for (let at = 0; at < bytes.byteLength; at += chunkBytes) {
        const chunk = bytes.subarray(at, Math.min(at + chunkBytes, bytes.byteLength))
        // Start the write (it runs off the main thread), checksum the chunk meanwhile.
        const writing = yield* Effect.forkChild(sink.write(chunk), { startImmediately: true })
        crc = crc32(chunk, crc)
        yield* Fiber.join(writing)
      }
      crcs[i] = crc
    }
    yield* flush
    yield* sink.writeAt(0, planned.header(crcs))
  })

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

const TensorEntry = Schema.Struct({
  dtype: DTypeSchema,
  shape: Schema.Array(NonNegativeInt),
  data_offsets: Schema.Tuple([NonNegativeInt, NonNegativeInt])
})

const Metadata = Schema.Record(Schema.String, Schema.String)

const CrcMap = Schema.fromJsonString(Schema.Record(Schema.String, Schema.String))

const MetaJson = Schema.fromJsonString(CheckpointMeta)

// Decoders built once: building one per tensor dominated loading 10,000 tensors.
const decodeEntry = Schema.decodeUnknownResult(TensorEntry)
const decodeMetadata = Schema.decodeUnknownResult(Metadata)
const decodeMeta = Schema.decodeUnknownResult(MetaJson)
const decodeCrcs = Schema.decodeUnknownResult(CrcMap)

/** One tensor as described by a validated header. */
export interface TensorLayout {
  readonly name: string
  readonly dtype: DType
  readonly shape: ReadonlyArray<number>
  /** Absolute position of the first byte in the source. */
  readonly position: number
  readonly byteLength: number
  readonly crc: Option.Option<number>
}

/** A validated header. */
export interface Layout {
  readonly tensors: ReadonlyArray<TensorLayout>
  readonly meta: Option.Option<CheckpointMeta>
  readonly extraMetadata: Readonly<Record<string, string>>
}

const readFully = <E>(
  source: ByteSource<E>,
  into: Uint8Array,
  position: number,
  corrupt: (reason: string) => CheckpointCorrupt
): Effect.Effect<void, E | CheckpointCorrupt> =>
  Effect.gen(function*() {
    let done = 0
    while (done < into.byteLength) {
      const n = yield* source.read(into.subarray(done), position + done)
      if (n <= 0) {
        return yield* corrupt(`unexpected end of data at byte ${position + done} (the file changed while it was read)`)
      }
      done += n
    }
  })

const firstIssue = (error: Schema.SchemaError): string => error.message.split("\n").slice(0, 3).join(" ")

/**
 * Reads and validates the header. Everything about the tensors is checked here,
 * before any tensor memory is allocated; the header allocation itself is bounded by
 * `maxHeaderBytes` and by the source size.
 */
export const readLayout = <E>(source: ByteSource<E>, path: string): Effect.Effect<Layout, E | CheckpointCorrupt> =>
  Effect.gen(function*() {
    const corrupt = (reason: string) => new CheckpointCorrupt({ path, reason })
    const size = source.size
    if (size < 8) return yield* corrupt(`file is ${size} bytes, shorter than the 8-byte header length`)
    const prefix = new Uint8Array(8)
    yield* readFully(source, prefix, 0, corrupt)
    const declared = new DataView(prefix.buffer).getBigUint64(0, true)
    if (declared > BigInt(maxHeaderBytes)) {
      return yield* corrupt(`header length ${declared} exceeds the ${maxHeaderBytes}-byte limit`)
    }
    const headerLength = Number(declared)
    if (8 + headerLength > size) {
      return yield* corrupt(`header length ${headerLength} runs past the end of the ${size}-byte file`)
    }
    if (headerLength < 2) return yield* corrupt(`header length ${headerLength} is too short for a JSON object`)
    const headerBytes = new Uint8Array(headerLength)
    yield* readFully(source, headerBytes, 8, corrupt)
    let text: string
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes)
    } catch {
      return yield* corrupt("header is not valid UTF-8")
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (error) {
      return yield* corrupt(`header is not valid JSON (${(error as Error).message})`)
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      return yield* corrupt("header is not a JSON object")
    }
    const dataStart = 8 + headerLength
    const dataSize = size - dataStart
    let metadata: { readonly [key: string]: string } = {}
    const described: Array<{ name: string; entry: typeof TensorEntry.Type }> = []
    for (const [name, value] of Object.entries(json)) {
      if (name === metadataKey) {
        const decoded = decodeMetadata(value)
        if (Result.isFailure(decoded)) return yield* corrupt(`__metadata__ must map strings to strings`)
        metadata = decoded.success
        continue
      }
      const decoded = decodeEntry(value)
      if (Result.isFailure(decoded)) {
        return yield* corrupt(`tensor "${name}" has an invalid header entry: ${firstIssue(decoded.failure)}`)
      }
      described.push({ name, entry: decoded.success })
    }

    // The header checksum first: it makes any damage to the header a clear diagnosis.
    if (metadata[headerCrcKey] !== undefined) {
      const at = headerCrcPosition(headerBytes)
      const stored = at < 0 ? "" : new TextDecoder().decode(headerBytes.subarray(at, at + 8))
      // Lowercase hex only, as written: `parseInt` would read "A" and "a" alike.
      if (
        at < 0 || stored !== metadata[headerCrcKey] || !/^[0-9a-f]{8}$/.test(stored) ||
        parseInt(stored, 16) !== headerCrc(headerBytes, at)
      ) {
        return yield* corrupt(`header fails its checksum (${headerCrcKey})`)
      }
    } else if (metadata[formatKey] !== undefined) {
      return yield* corrupt(`${headerCrcKey} is missing`)
    }
    // Offsets: in range, ordered, contiguous, no overlap, ending at end of file.
    const ordered = [...described].sort((a, b) =>
      a.entry.data_offsets[0] - b.entry.data_offsets[0] || a.entry.data_offsets[1] - b.entry.data_offsets[1]
    )
    let expected = 0
    for (const { entry, name } of ordered) {
      const [begin, end] = entry.data_offsets
      if (end < begin) return yield* corrupt(`tensor "${name}" has data_offsets [${begin}, ${end}] that end before they begin`)
      if (end > dataSize) {
        return yield* corrupt(`tensor "${name}" has data_offsets [${begin}, ${end}] past the ${dataSize}-byte data buffer`)
      }
      if (begin < expected) return yield* corrupt(`tensor "${name}" overlaps the previous tensor at byte ${begin}`)
      if (begin > expected) return yield* corrupt(`tensor "${name}" leaves a hole at bytes [${expected}, ${begin})`)
      // Clamped, not stopped early: a zero anywhere in the shape (`[10, 0]`) still
      // makes the count zero, and a huge shape cannot overflow.
      let count = 1
      for (const d of entry.shape) count = Math.min(count * d, dataSize + 1)
      const bytes = count * bytesPerElement(entry.dtype)
      if (bytes !== end - begin) {
        return yield* corrupt(
          `tensor "${name}" has shape [${entry.shape.join(", ")}] of ${entry.dtype} but ${end - begin} bytes of data`
        )
      }
      expected = end
    }
    if (expected !== dataSize) {
      return yield* corrupt(`tensor data ends at byte ${expected} of a ${dataSize}-byte data buffer (trailing bytes)`)
    }

    // Our own metadata: format, meta, one CRC-32 per tensor.
    let meta: Option.Option<CheckpointMeta> = Option.none()
    let crcs: Record<string, string> | undefined
    const extraMetadata = record<string>()
    for (const [key, value] of Object.entries(metadata)) {
      if (!key.startsWith(reservedPrefix)) extraMetadata[key] = value
    }
    if (metadata[formatKey] !== undefined) {
      if (metadata[formatKey] !== formatVersion) {
        return yield* corrupt(`unsupported effect-trainer format version "${metadata[formatKey]}"`)
      }
      const rawMeta = metadata[metaKey]
      if (rawMeta === undefined) return yield* corrupt(`${metaKey} is missing`)
      const decodedMeta = decodeMeta(rawMeta)
      if (Result.isFailure(decodedMeta)) {
        return yield* corrupt(`${metaKey} is not a valid checkpoint meta: ${firstIssue(decodedMeta.failure)}`)
      }
      meta = Option.some(decodedMeta.success)
    }
    if (metadata[crcKey] !== undefined) {
      const decodedCrcs = decodeCrcs(metadata[crcKey])
      if (Result.isFailure(decodedCrcs)) return yield* corrupt(`${crcKey} is not a JSON map of checksums`)
      crcs = decodedCrcs.success
      const names = new Set(described.map((d) => d.name))
      for (const name of Object.keys(crcs)) {
        if (!names.has(name)) return yield* corrupt(`${crcKey} names an unknown tensor "${name}"`)
      }
    } else if (Option.isSome(meta)) {
      return yield* corrupt(`${crcKey} is missing`)
    }

    const tensors: Array<TensorLayout> = []
    for (const { entry, name } of described) {
      let crc: Option.Option<number> = Option.none()
      if (crcs !== undefined) {
        const hex = crcs[name]
        if (hex === undefined || !/^[0-9a-f]{8}$/.test(hex)) {
          return yield* corrupt(`tensor "${name}" has no valid checksum in ${crcKey}`)
        }
        crc = Option.some(parseInt(hex, 16))
      }
      tensors.push({
        name,
        dtype: entry.dtype,
        shape: entry.shape,
        position: dataStart + entry.data_offsets[0],
        byteLength: entry.data_offsets[1] - entry.data_offsets[0],
        crc
      })
    }
    return { tensors, meta, extraMetadata }
  })

const invalidLoad = (path: string, reason: string) => new CheckpointInvalidArgument({ operation: "load", path, reason })

const f16ToF32 = (bits: number): number => {
  const sign = bits & 0x8000 ? -1 : 1
  const exponent = (bits >> 10) & 0x1f
  const fraction = bits & 0x3ff
  if (exponent === 0) return sign * fraction * 2 ** -24
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15)
}

/** `float8_e4m3fn` (OCP FP8 E4M3): bias 7, no infinities, NaN at exponent 15 and mantissa 7. */
const f8e4m3ToF32 = (bits: number): number => {
  const sign = bits & 0x80 ? -1 : 1
  const exponent = (bits >> 3) & 0xf
  const fraction = bits & 0x7
  if (exponent === 0) return sign * fraction * 2 ** -9
  if (exponent === 0xf && fraction === 0x7) return NaN
  return sign * (1 + fraction / 8) * 2 ** (exponent - 7)
}

/** `float8_e5m2` (OCP FP8 E5M2): bias 15, IEEE infinities and NaNs, like F16's top byte. */
const f8e5m2ToF32 = (bits: number): number => f16ToF32(bits << 8)

/** Converts a tensor to the nearest dtype tfjs computes in (F32, I32, BOOL). */
const toTfjs = (path: string, name: string, t: HostTensor): HostTensor | CheckpointInvalidArgument => {
  switch (t.dtype) {
    case "F32":
    case "I32":
    case "BOOL":
      return t
    case "F64":
      return { dtype: "F32", shape: t.shape, data: Float32Array.from(t.data as Float64Array) }
    case "F16":
      return { dtype: "F32", shape: t.shape, data: Float32Array.from(t.data as Uint16Array, f16ToF32) }
    case "BF16": {
      const out = new Float32Array(t.data.length)
      new Uint32Array(out.buffer).set(Uint32Array.from(t.data as Uint16Array, (b) => b << 16))
      return { dtype: "F32", shape: t.shape, data: out }
    }
    case "F8_E4M3":
      return { dtype: "F32", shape: t.shape, data: Float32Array.from(t.data as Uint8Array, f8e4m3ToF32) }
    case "F8_E5M2":
      return { dtype: "F32", shape: t.shape, data: Float32Array.from(t.data as Uint8Array, f8e5m2ToF32) }
    default: {
      const out = new Int32Array(t.data.length)
      const source = t.data as ArrayLike<number | bigint>
      for (let i = 0; i < source.length; i++) {
        const v = Number(source[i]!)
        if (v > 2147483647 || v < -2147483648) {
          return invalidLoad(path, `tensor "${name}" (${t.dtype}) holds ${String(source[i])}, outside the int32 range`)
        }
        out[i] = v
      }
      return { dtype: "I32", shape: t.shape, data: out }
    }
  }
}

/** Bounds on what `read` may allocate. */
export interface ReadLimits {
  /**
   * The most bytes of tensor memory one load may allocate (default: no bound but the
   * source's size). A file whose selected tensors need more is refused with
   * `CheckpointTooLarge` before anything is allocated.
   */
  readonly maxBytes?: number | undefined
}

/**
 * Reads a checkpoint: validates the header, then reads the selected tensors into
 * typed arrays over one fresh allocation, checking each one's CRC-32 (and BOOL
 * values). The allocation is bounded by the source's size and by
 * `limits.maxBytes`; an allocation the runtime refuses (a `RangeError`) is a
 * `CheckpointTooLarge` too, never a defect.
 */
export const read = <E>(
  source: ByteSource<E>,
  path: string,
  options?: LoadOptions,
  limits?: ReadLimits
): Effect.Effect<Checkpoint, E | CheckpointCorrupt | CheckpointInvalidArgument | CheckpointTooLarge> =>
  Effect.gen(function*() {
    const corrupt = (reason: string) => new CheckpointCorrupt({ path, reason })
    const layout = yield* readLayout(source, path)
    const policy: DTypePolicy = options?.dtypes ?? "preserve"
    const ours = Option.isSome(layout.meta)
    const selected = (options?.weightsOnly === true && ours
      ? layout.tensors.filter((t) => t.name.startsWith(modelPrefix))
      : [...layout.tensors]).sort((a, b) => a.position - b.position)
    if (policy === "tfjs") {
      const foreign = selected.find((t) => !tfjsDTypes.has(t.dtype))
      if (foreign !== undefined) {
        return yield* invalidLoad(
          path,
          `tensor "${foreign.name}" is ${foreign.dtype}, which tfjs cannot hold (load with dtypes: "convert" to convert it)`
        )
      }
    }

    // One allocation for every tensor (each at an 8-byte-aligned offset), as a raw
    // read of the file would make: many large allocations each press V8's garbage
    // collector (measured: GC took more time than the reads). Gotcha: a tensor kept
    // alive keeps the whole arena alive.
    const offsets = new Map<TensorLayout, number>()
    let arenaBytes = 0
    for (const t of selected) {
      offsets.set(t, arenaBytes)
      arenaBytes += Math.ceil(t.byteLength / 8) * 8
    }
    const tooLarge = (reason: string) =>
      new CheckpointTooLarge({ operation: "load", path, bytes: arenaBytes, limit: limits?.maxBytes ?? Infinity, reason })
    if (limits?.maxBytes !== undefined && arenaBytes > limits.maxBytes) {
      return yield* tooLarge(
        `its tensors need ${arenaBytes} bytes of memory, more than the ${limits.maxBytes}-byte bound of this store`
      )
    }
    const arena = yield* Effect.try({
      try: () => new ArrayBuffer(arenaBytes),
      catch: (cause) => tooLarge(`cannot allocate ${arenaBytes} bytes for its tensors (${String(cause)})`)
    })
    const allocate = (t: TensorLayout): TensorData =>
      new arrayConstructor[t.dtype](arena, offsets.get(t)!, t.byteLength / bytesPerElement(t.dtype))

    const tensors = record<HostTensor>()
    /** Checks a tensor read in full and adds it; an error to fail with, if any (plain code: it runs per tensor). */
    const finish = (t: TensorLayout, data: TensorData, crc: number): CheckpointCorrupt | CheckpointInvalidArgument | undefined => {
      if (Option.isSome(t.crc) && t.crc.value !== crc >>> 0) {
        return corrupt(`tensor "${t.name}" fails its checksum (expected ${crcHex(t.crc.value)}, got ${crcHex(crc)})`)
      }
      if (t.dtype === "BOOL") {
        const bytes = data as Uint8Array
        for (let i = 0; i < bytes.length; i++) {
          if (bytes[i]! > 1) return corrupt(`tensor "${t.name}" is BOOL but holds the byte ${bytes[i]}`)
        }
      }
      const host: HostTensor = { dtype: t.dtype, shape: t.shape, data } as HostTensor
      const converted = policy === "convert" ? toTfjs(path, t.name, host) : host
      if (converted instanceof CheckpointInvalidArgument) return converted
      tensors[t.name] = converted
      return undefined
    }

    // The reads to make, in file order: a large tensor in chunks straight into its
    // own memory; a run of small adjacent tensors in one read through a scratch buffer.
    type Step =
      | { readonly into: Uint8Array; readonly position: number; readonly large: TensorLayout; readonly last: boolean }
      | { readonly into: Uint8Array; readonly position: number; readonly run: ReadonlyArray<TensorLayout> }
    const steps: Array<Step> = []
    const scratches = [new Uint8Array(0), new Uint8Array(0)]
    for (let i = 0; i < selected.length;) {
      const t = selected[i]!
      if (t.byteLength >= smallTensorBytes) {
        const bytes = byteView(allocate(t))
        for (let at = 0; at < t.byteLength; at += chunkBytes) {
          const end = Math.min(at + chunkBytes, t.byteLength)
          steps.push({ into: bytes.subarray(at, end), position: t.position + at, large: t, last: end === t.byteLength })
        }
        i++
        continue
      }
      let j = i
      let runBytes = 0
      while (
        j < selected.length &&
        selected[j]!.byteLength < smallTensorBytes &&
        selected[j]!.position === t.position + runBytes &&
        runBytes + selected[j]!.byteLength <= chunkBytes
      ) {
        runBytes += selected[j]!.byteLength
        j++
      }
      // Two scratch buffers in turn: one is read into while the other is unpacked.
      const which = steps.length % 2
      if (scratches[which]!.byteLength < runBytes) {
        scratches[which] = new Uint8Array(Math.min(chunkBytes, Math.max(runBytes, 2 * scratches[which]!.byteLength)))
      }
      steps.push({ into: scratches[which]!.subarray(0, runBytes), position: t.position, run: selected.slice(i, j) })
      i = j
    }

    // A pipeline: step k is read (off the main thread) while step k-1 is checksummed.
    const running = new Map<TensorLayout, number>()
    const process = (step: Step): Effect.Effect<void, CheckpointCorrupt | CheckpointInvalidArgument> => {
      if ("large" in step) {
        const crc = crc32(step.into, running.get(step.large) ?? 0)
        running.set(step.large, crc)
        if (!step.last) return Effect.void
        running.delete(step.large)
        const error = finish(step.large, allocate(step.large), crc)
        return error === undefined ? Effect.void : Effect.fail(error)
      }
      for (const s of step.run) {
        const from = step.into.subarray(s.position - step.position, s.position - step.position + s.byteLength)
        const data = allocate(s)
        byteView(data).set(from)
        const error = finish(s, data, crc32(from))
        if (error !== undefined) return Effect.fail(error)
      }
      return Effect.void
    }
    let previous: Step | undefined
    for (const step of steps) {
      const reading = yield* Effect.forkChild(readFully(source, step.into, step.position, corrupt), {
        startImmediately: true
      })
      if (previous !== undefined) yield* process(previous)
      yield* Fiber.join(reading)
      previous = step
    }
    if (previous !== undefined) yield* process(previous)
    return { tensors, meta: layout.meta, extraMetadata: layout.extraMetadata }
  }).pipe(
    // The last line of defence: whatever allocation the runtime refuses (a typed array
    // over its maximum length, a conversion's copy) is a typed error, never a defect.
    Effect.catchDefect((defect) =>
      defect instanceof RangeError
        ? Effect.fail(
          new CheckpointTooLarge({
            operation: "load",
            path,
            bytes: source.size,
            limit: limits?.maxBytes ?? Infinity,
            reason: `cannot allocate memory for its tensors (${defect.message})`
          })
        )
        : Effect.die(defect)
    )
  )
