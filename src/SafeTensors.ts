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
import { Buffer, isAscii, isUtf8 } from "node:buffer"
import { crc32 } from "node:zlib"
import {
  arrayConstructor,
  bytesPerElement,
  type Checkpoint,
  CheckpointMeta,
  type DType,
  DType as DTypeSchema,
  DTypes,
  type HostTensor,
  modelPrefix,
  type TensorData
} from "./Checkpoint.ts"
import { CheckpointCorrupt, CheckpointInvalidArgument, CheckpointTooLarge, type DTypePolicy, type LoadOptions } from "./CheckpointIO.ts"

/** Where encoded bytes go. `writeAt` patches bytes already written (the header). */
export interface ByteSink<E> {
  readonly write: (chunk: Uint8Array) => Effect.Effect<void, E>
  readonly writeAt: (position: number, chunk: Uint8Array) => Effect.Effect<void, E>
  /**
   * Makes the bytes written so far durable (an fsync), for a sink that will be
   * synced after `write` anyway. When present, `write` syncs the data before the
   * header and checksums large tensors meanwhile: the disk is busy then and the CPU
   * free, where during the writes both are busy. The caller still syncs at the end
   * (the header).
   */
  readonly sync?: Effect.Effect<void, E> | undefined
}

/**
 * Where encoded bytes come from. `read` fills `into` from `position` and returns
 * how many bytes it read (0 at end of data).
 */
export interface ByteSource<E> {
  readonly size: number
  readonly read: (into: Uint8Array, position: number) => Effect.Effect<number, E>
}

/** A `ByteSource` over bytes in memory (the memory store's, a test's). */
export const bytesSource = (bytes: Uint8Array): ByteSource<never> => ({
  size: bytes.byteLength,
  read: (into, position) =>
    Effect.sync(() => {
      const available = bytes.subarray(position, position + into.byteLength)
      into.set(available)
      return available.byteLength
    })
})

/** Largest header accepted on load (the safetensors reference uses the same cap). */
export const maxHeaderBytes = 100 * 1024 * 1024

/** Tensors smaller than this are coalesced through two scratch buffers on save. */
const smallTensorBytes = 1 << 20
/** Size of each scratch buffer and the most bytes of one I/O call. */
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

/** Why a tensor cannot be written, if it cannot (plain code: it runs once per tensor). */
const tensorProblem = (name: string, t: HostTensor): string | undefined => {
  if (!isDType(t.dtype)) return `tensor "${name}" has unknown dtype ${String(t.dtype)}`
  if (!(t.data instanceof arrayConstructor[t.dtype])) {
    return `tensor "${name}" has dtype ${t.dtype} but its data is a ${t.data?.constructor?.name ?? typeof t.data}`
  }
  let count = 1
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) return `tensor "${name}" has an invalid shape [${t.shape.join(", ")}]`
    count *= d
  }
  if (count !== t.data.length) {
    return `tensor "${name}" has shape [${t.shape.join(", ")}] (${count} elements) but ${t.data.length} values`
  }
  if (t.dtype === "BOOL") {
    const bytes = t.data as Uint8Array
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i]! > 1) return `tensor "${name}" is BOOL but holds the value ${bytes[i]}`
    }
  }
  return undefined
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
const headerCrc = (header: Uint8Array, at: number): number => crc32(header.subarray(at + 8), crc32(zeroHex, crc32(header.subarray(0, at))))

const hexDigits = new TextEncoder().encode("0123456789abcdef")

/** Writes `crc` as 8 lowercase hex digits at `at`. */
const putHex = (out: Uint8Array, at: number, crc: number): void => {
  for (let k = 7; k >= 0; k--) {
    out[at + k] = hexDigits[crc & 0xf]!
    crc >>>= 4
  }
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
      const problem = tensorProblem(name, checkpoint.tensors[name]!)
      if (problem !== undefined) return yield* invalid(path, problem)
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
 * The header JSON, built as text in one pass (no object per tensor, one string for
 * the whole header), exactly as `JSON.stringify` of the header object would write
 * it: tensors in `Object.keys` order, `__metadata__` last, the CRC map (a JSON
 * string inside the JSON) with every checksum `00000000`, the header checksum last.
 * Returns the text and, per tensor, where its checksum digits start (in UTF-16
 * code units, which are bytes when the text is ASCII). With `crcs`, the checksums
 * are written in instead.
 */
const headerText = (
  names: ReadonlyArray<string>,
  tensors: ReadonlyArray<PlannedTensor>,
  dtypes: ReadonlyArray<DType>,
  shapes: ReadonlyArray<ReadonlyArray<number>>,
  metadata: Record<string, string>,
  crcs?: ReadonlyArray<number>
): { readonly text: string; readonly crcAt: Array<number> } => {
  const parts: Array<string> = []
  let length = 1 // "{"
  const push = (part: string) => {
    parts.push(part)
    length += part.length
  }
  let offset = 0
  for (let i = 0; i < names.length; i++) {
    const end = offset + tensors[i]!.bytes.byteLength
    push(
      `${i === 0 ? "" : ","}${JSON.stringify(names[i])}:{"dtype":"${dtypes[i]}","shape":[${
        shapes[i]!.join(",")
      }],"data_offsets":[${offset},${end}]}`
    )
    offset = end
  }
  push(`${names.length === 0 ? "" : ","}${JSON.stringify(metadataKey)}:{`)
  for (const key of Object.keys(metadata)) push(`${JSON.stringify(key)}:${JSON.stringify(metadata[key])},`)
  push(`${JSON.stringify(crcKey)}:"{`)
  const crcAt = [] as Array<number>
  for (let i = 0; i < names.length; i++) {
    // The map's own JSON (`"name":"digits"`), escaped as the content of a JSON string.
    const escaped = JSON.stringify(`${JSON.stringify(names[i])}:"`).slice(1, -1)
    push(`${i === 0 ? "" : ","}${escaped}`)
    crcAt[i] = length
    push(`${crcs === undefined ? "00000000" : crcHex(crcs[i] ?? 0)}\\"`)
  }
  push(`}",${JSON.stringify(headerCrcKey)}:"00000000"}}`)
  return { text: `{${parts.join("")}`, crcAt }
}

/** Length prefix, the header bytes, space padding to a multiple of 8; whether the text was ASCII. */
const encodeHeader = (text: string): { readonly bytes: Uint8Array; readonly ascii: boolean } => {
  const encoded = new TextEncoder().encode(text)
  const padded = Math.ceil((8 + encoded.length) / 8) * 8 - 8
  const out = new Uint8Array(8 + padded)
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true)
  out.set(encoded, 8)
  out.fill(0x20, 8 + encoded.length)
  return { bytes: out, ascii: encoded.length === text.length }
}

/** Fills in the header checksum of an encoded header (length prefix included). */
const sealHeader = (out: Uint8Array): Uint8Array => {
  const header = out.subarray(8)
  const at = headerCrcPosition(header)
  putHex(header, at, headerCrc(header, at))
  return out
}

/**
 * Validates a checkpoint for writing (see `validate`) and fixes the header layout.
 * Fails with `CheckpointInvalidArgument`, also when the header would be larger than
 * `maxHeaderBytes` (a reader, ours included, would refuse the file).
 */
export const plan = (checkpoint: Checkpoint, path: string): Effect.Effect<WritePlan, CheckpointInvalidArgument> =>
  Effect.gen(function*() {
    const metadata = yield* validate(checkpoint, path)
    const names = Object.keys(checkpoint.tensors)
    const tensors = [] as Array<PlannedTensor>
    const dtypes = [] as Array<DType>
    const shapes = [] as Array<ReadonlyArray<number>>
    let offset = 0
    for (let i = 0; i < names.length; i++) {
      const t = checkpoint.tensors[names[i]!]!
      const bytes = byteView(t.data)
      tensors[i] = { name: names[i]!, bytes, crc32: t.crc32 }
      dtypes[i] = t.dtype
      shapes[i] = t.shape
      offset += bytes.byteLength
    }
    const { crcAt, text } = headerText(names, tensors, dtypes, shapes, metadata)
    const encoded = encodeHeader(text)
    const placeholder = sealHeader(encoded.bytes)
    if (placeholder.length - 8 > maxHeaderBytes) {
      return yield* invalid(
        path,
        `its header would be ${placeholder.length - 8} bytes (${names.length} tensors), more than the ${maxHeaderBytes} bytes ` +
          `readers accept: fewer tensors or shorter names`
      )
    }
    return {
      tensors,
      placeholder,
      header: (crcs) => {
        if (!encoded.ascii) {
          // Non-ASCII text: positions in it are not byte positions; build it again with the checksums.
          const bytes = sealHeader(encodeHeader(headerText(names, tensors, dtypes, shapes, metadata, crcs).text).bytes)
          // CRCs are fixed-width hex, so the header size never depends on them.
          if (bytes.length !== placeholder.length) throw new Error("BUG: header size changed with checksums")
          return bytes
        }
        // ASCII text: its code units are its bytes, so each checksum is patched in place.
        const out = placeholder.slice()
        for (let i = 0; i < crcAt.length; i++) putHex(out, 8 + crcAt[i]!, crcs[i] ?? 0)
        return sealHeader(out)
      },
      size: placeholder.length + offset
    }
  })

/**
 * Writes a planned checkpoint: a placeholder header, the tensors, then the header
 * again with the CRC-32s computed on the way. A pipeline: one write is in flight
 * (off the main thread) while the next is prepared (small tensors copied into one of
 * two reused scratch buffers and checksummed) or the one in flight is checksummed
 * (large tensors, written straight from their own memory in chunks). Never holds a
 * copy of the whole checkpoint; no Effect per tensor.
 */
export const write = <E>(planned: WritePlan, sink: ByteSink<E>): Effect.Effect<void, E> =>
  Effect.gen(function*() {
    const tensors = planned.tensors
    const crcs = [] as Array<number> // filled in tensor order
    let smallBytes = 0
    for (const t of tensors) if (t.bytes.byteLength < smallTensorBytes) smallBytes += t.bytes.byteLength
    const scratchBytes = Math.min(chunkBytes, smallBytes)
    const scratches: Array<Uint8Array | undefined> = [undefined, undefined]
    let turn = 0
    let inFlight: Fiber.Fiber<void, E> | undefined
    const syncFirst = sink.sync !== undefined
    /** Large tensors to checksum while the data is synced. */
    const later: Array<number> = []
    /** Waits for the write in flight, then starts this one (it runs off the main thread). */
    const submit = (chunk: Uint8Array) =>
      Effect.gen(function*() {
        if (inFlight !== undefined) yield* Fiber.join(inFlight)
        inFlight = yield* Effect.forkChild(sink.write(chunk), { startImmediately: true })
      })

    yield* sink.write(planned.placeholder)
    for (let i = 0; i < tensors.length;) {
      const { bytes, crc32: known } = tensors[i]!
      if (bytes.byteLength >= smallTensorBytes) {
        let crc = 0
        for (let at = 0; at < bytes.byteLength; at += chunkBytes) {
          const chunk = bytes.subarray(at, Math.min(at + chunkBytes, bytes.byteLength))
          yield* submit(chunk)
          if (known === undefined && !syncFirst) crc = crc32(chunk, crc) // while the chunk is written
        }
        if (known === undefined && syncFirst) later.push(i)
        crcs[i] = known ?? crc
        i++
        continue
      }
      // A run of small tensors into the scratch buffer not in flight (the one in
      // flight, if any, is the other one), checksummed on the way.
      const scratch = scratches[turn] ??= new Uint8Array(scratchBytes)
      let filled = 0
      while (i < tensors.length) {
        const t = tensors[i]!
        const n = t.bytes.byteLength
        if (n >= smallTensorBytes || filled + n > scratch.byteLength) break
        scratch.set(t.bytes, filled)
        crcs[i] = t.crc32 ?? crc32(t.bytes)
        filled += n
        i++
      }
      yield* submit(scratch.subarray(0, filled))
      turn ^= 1
    }
    if (inFlight !== undefined) yield* Fiber.join(inFlight)
    if (sink.sync !== undefined && later.length > 0) {
      const syncing = yield* Effect.forkChild(sink.sync, { startImmediately: true })
      for (const i of later) {
        const bytes = tensors[i]!.bytes
        let crc = 0
        for (let at = 0; at < bytes.byteLength; at += chunkBytes) {
          crc = crc32(bytes.subarray(at, Math.min(at + chunkBytes, bytes.byteLength)), crc)
          yield* Effect.yieldNow // other fibers of the program get the thread between chunks
        }
        crcs[i] = crc
      }
      yield* Fiber.join(syncing)
    }
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

/** 8 lowercase hex digits, as written (`parseInt` would read "A" and "a" alike). */
const isCrcHex = (text: string): boolean => {
  if (text.length !== 8) return false
  for (let i = 0; i < 8; i++) {
    const c = text.charCodeAt(i)
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false
  }
  return true
}

/** The tensor entries of a header, one array per field, in header order. */
interface Entries {
  readonly names: Array<string>
  readonly dtypes: Array<DType>
  readonly shapes: Array<ReadonlyArray<number>>
  readonly begins: Array<number>
  readonly ends: Array<number>
}

const emptyEntries = (): Entries => ({ names: [], dtypes: [], shapes: [], begins: [], ends: [] })

/**
 * A scanner for headers as safetensors writers make them: one pass over the text,
 * no object per tensor. Returns `undefined` for anything else, valid or not
 * (escapes in a number, an entry with extra keys, a duplicate name, invalid JSON):
 * the caller then parses with `JSON.parse` and the schemas, which give the same
 * result or the diagnosis. Everything it accepts, that path accepts the same way.
 */
const scanner = (s: string) => {
  let p = 0
  const fail = (): never => {
    throw scanFailed
  }
  const ws = () => {
    for (let c = s.charCodeAt(p); c === 32 || c === 10 || c === 13 || c === 9; c = s.charCodeAt(++p));
  }
  const expect = (code: number) => {
    ws()
    if (s.charCodeAt(p) !== code) fail()
    p++
    ws()
  }
  const string = (): string => {
    if (s.charCodeAt(p) !== 34) fail()
    const start = p + 1
    let escaped = false
    for (let i = start; i < s.length; i++) {
      const c = s.charCodeAt(i)
      if (c === 34) {
        p = i + 1
        if (!escaped) return s.slice(start, i)
        const literal = s.slice(start - 1, i + 1)
        const value: unknown = JSON.parse(literal)
        return typeof value === "string" ? value : fail()
      }
      if (c === 92) {
        escaped = true
        i++
      } else if (c < 0x20) {
        fail()
      }
    }
    return fail()
  }
  /** A non-negative safe integer written as JSON writes one (no sign, fraction or exponent). */
  const uint = (): number => {
    let c = s.charCodeAt(p)
    if (c < 48 || c > 57) fail()
    let value = c - 48
    c = s.charCodeAt(++p)
    if (value === 0 && c >= 48 && c <= 57) fail()
    for (; c >= 48 && c <= 57; c = s.charCodeAt(++p)) value = value * 10 + c - 48
    if (c === 46 || c === 101 || c === 69 || value > Number.MAX_SAFE_INTEGER) fail()
    return value
  }
  const uints = (): Array<number> => {
    expect(91) // [
    const out: Array<number> = []
    if (s.charCodeAt(p) === 93) {
      p++
      return out
    }
    for (;;) {
      out.push(uint())
      ws()
      const c = s.charCodeAt(p++)
      if (c === 93) return out
      if (c !== 44) fail()
      ws()
    }
  }
  /** `{ key: value, ... }`, calling `member` at each value. */
  const object = (member: (key: string) => void) => {
    expect(123) // {
    if (s.charCodeAt(p) === 125) {
      p++
      return
    }
    for (;;) {
      const key = string()
      expect(58) // :
      member(key)
      ws()
      const c = s.charCodeAt(p++)
      if (c === 125) return
      if (c !== 44) fail()
      ws()
    }
  }
  const end = () => {
    ws()
    if (p !== s.length) fail()
  }
  /** Is the text at `p` this literal (quotes included)? If so, skips it. */
  const literal = (text: string): boolean => {
    if (!s.startsWith(text, p)) return false
    p += text.length
    return true
  }
  /** A dtype's name in quotes, matched in place (no string made). */
  const dtype = (): DType => {
    for (const d of quotedDTypes) if (literal(d.quoted)) return d.dtype
    return fail()
  }
  /**
   * A tensor entry with exactly `dtype`, `shape` and `data_offsets`, into `into`: plain
   * code that allocates nothing but the shape (it runs once per tensor).
   */
  const entry = (into: Entries) => {
    let type: DType | undefined
    let shape: Array<number> | undefined
    let begin = -1
    let end = -1
    expect(123) // {
    for (;;) {
      if (literal(`"dtype"`) && type === undefined) {
        expect(58)
        type = dtype()
      } else if (literal(`"shape"`) && shape === undefined) {
        expect(58)
        shape = uints()
      } else if (literal(`"data_offsets"`) && begin < 0) {
        expect(58)
        expect(91) // [
        begin = uint()
        expect(44) // ,
        end = uint()
        expect(93) // ]
      } else {
        fail()
      }
      ws()
      const c = s.charCodeAt(p++)
      if (c === 125) break
      if (c !== 44) fail()
      ws()
    }
    if (type === undefined || shape === undefined || begin < 0) fail()
    into.dtypes.push(type!)
    into.shapes.push(shape!)
    into.begins.push(begin)
    into.ends.push(end)
  }
  return { object, string, uints, end, entry }
}

const scanFailed = new Error("not a plain header")

const quotedDTypes = DTypes.map((dtype) => ({ dtype, quoted: `"${dtype}"` }))

/** Scans `run` with a scanner over `text`; `undefined` when the scanner gives up. */
const scanWith = <A>(text: string, run: (scan: ReturnType<typeof scanner>) => A): A | undefined => {
  try {
    return run(scanner(text))
  } catch (error) {
    if (error === scanFailed || error instanceof SyntaxError) return undefined
    throw error
  }
}

/** A whole header: the tensor entries and the metadata (see `scanner`). */
const scanHeader = (text: string) =>
  scanWith(text, (scan) => {
    const entries = emptyEntries()
    let metadata: Record<string, string> | undefined
    scan.object((name) => {
      if (name === metadataKey) {
        if (metadata !== undefined) throw scanFailed
        const map = record<string>()
        scan.object((key) => {
          if (Object.hasOwn(map, key)) throw scanFailed
          map[key] = scan.string()
        })
        metadata = map
        return
      }
      // Duplicate names are refused by `read` (JSON.parse would keep the last entry).
      scan.entry(entries)
      entries.names.push(name)
    })
    scan.end()
    return { entries, metadata: metadata ?? record<string>() }
  })

/** A JSON object of strings, as keys and values in order (see `scanner`). */
const scanStringMap = (text: string) =>
  scanWith(text, (scan) => {
    const keys: Array<string> = []
    const values: Array<string> = []
    scan.object((key) => {
      keys.push(key)
      values.push(scan.string())
    })
    scan.end()
    return { keys, values }
  })

/** Decodes UTF-8; `undefined` when the bytes are not valid UTF-8. */
const decodeHeaderText = (bytes: Uint8Array): string | undefined => {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  // ASCII, the usual case, is also Latin-1: the cheapest decoding there is.
  if (isAscii(bytes)) return buffer.toString("latin1")
  if (!isUtf8(bytes)) return undefined
  // As TextDecoder: a leading byte order mark is not part of the text.
  return buffer.toString("utf8", bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0)
}

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
 * `maxHeaderBytes` and by the source size. One pass over the text for headers as
 * writers make them (no object per entry), `JSON.parse` and the schemas otherwise.
 * Gotcha: a name that appears twice is listed twice here; `read` refuses it.
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
    const text = decodeHeaderText(headerBytes)
    if (text === undefined) return yield* corrupt("header is not valid UTF-8")
    const dataStart = 8 + headerLength
    const dataSize = size - dataStart
    let metadata: { readonly [key: string]: string } = {}
    let entries: Entries
    let isName: (name: string) => boolean
    let nameSet: Set<string> | undefined
    // One pass over the text for headers as writers make them; JSON.parse and the
    // schemas for anything else (and for the diagnosis of a bad header).
    const scanned = scanHeader(text)
    if (scanned !== undefined) {
      metadata = scanned.metadata
      entries = scanned.entries
      isName = (name) => (nameSet ??= new Set(entries.names)).has(name)
    } else {
      let json: unknown
      try {
        json = JSON.parse(text)
      } catch (error) {
        return yield* corrupt(`header is not valid JSON (${(error as Error).message})`)
      }
      if (typeof json !== "object" || json === null || Array.isArray(json)) {
        return yield* corrupt("header is not a JSON object")
      }
      const header = json as Record<string, unknown>
      entries = emptyEntries()
      for (const name of Object.keys(header)) {
        const value = header[name]
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
        entries.names.push(name)
        entries.dtypes.push(decoded.success.dtype)
        entries.shapes.push(decoded.success.shape)
        entries.begins.push(decoded.success.data_offsets[0])
        entries.ends.push(decoded.success.data_offsets[1])
      }
      isName = (name) => name !== metadataKey && Object.hasOwn(header, name)
    }
    const { begins, dtypes, ends, names, shapes } = entries
    const count = names.length

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
    const byOffsets = (a: number, b: number) => begins[a]! - begins[b]! || ends[a]! - ends[b]!
    let sorted = true
    for (let i = 1; i < count && sorted; i++) sorted = byOffsets(i - 1, i) <= 0
    // Written in order, as ours are: no sort needed.
    const order = sorted ? undefined : Array.from({ length: count }, (_, i) => i).sort(byOffsets)
    let expected = 0
    for (let k = 0; k < count; k++) {
      const i = order === undefined ? k : order[k]!
      const name = names[i]!
      const begin = begins[i]!
      const end = ends[i]!
      if (end < begin) return yield* corrupt(`tensor "${name}" has data_offsets [${begin}, ${end}] that end before they begin`)
      if (end > dataSize) {
        return yield* corrupt(`tensor "${name}" has data_offsets [${begin}, ${end}] past the ${dataSize}-byte data buffer`)
      }
      if (begin < expected) return yield* corrupt(`tensor "${name}" overlaps the previous tensor at byte ${begin}`)
      if (begin > expected) return yield* corrupt(`tensor "${name}" leaves a hole at bytes [${expected}, ${begin})`)
      // Clamped, not stopped early: a zero anywhere in the shape (`[10, 0]`) still
      // makes the count zero, and a huge shape cannot overflow.
      const shape = shapes[i]!
      let elements = 1
      for (let d = 0; d < shape.length; d++) elements = Math.min(elements * shape[d]!, dataSize + 1)
      const bytes = elements * bytesPerElement(dtypes[i]!)
      if (bytes !== end - begin) {
        return yield* corrupt(
          `tensor "${name}" has shape [${shape.join(", ")}] of ${dtypes[i]} but ${end - begin} bytes of data`
        )
      }
      expected = end
    }
    if (expected !== dataSize) {
      return yield* corrupt(`tensor data ends at byte ${expected} of a ${dataSize}-byte data buffer (trailing bytes)`)
    }

    // Our own metadata: format, meta, one CRC-32 per tensor.
    let meta: Option.Option<CheckpointMeta> = Option.none()
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
    /** The checksum text of tensor `i`, when the header has a CRC map. */
    let crcOf: ((i: number) => string | undefined) | undefined
    if (metadata[crcKey] !== undefined) {
      let keys: Array<string>
      let values: Array<string>
      const scannedCrcs = scanStringMap(metadata[crcKey])
      if (scannedCrcs !== undefined) {
        keys = scannedCrcs.keys
        values = scannedCrcs.values
      } else {
        const decodedCrcs = decodeCrcs(metadata[crcKey])
        if (Result.isFailure(decodedCrcs)) return yield* corrupt(`${crcKey} is not a JSON map of checksums`)
        const map = decodedCrcs.success
        keys = Object.keys(map)
        values = keys.map((key) => map[key]!)
      }
      // In tensor order, as we write it: checksum i is tensor i's.
      let aligned = keys.length === count
      for (let i = 0; i < count && aligned; i++) aligned = keys[i] === names[i]
      if (aligned) {
        const v = values
        crcOf = (i) => v[i]
      } else {
        const map = new Map<string, string>()
        for (let k = 0; k < keys.length; k++) {
          if (!isName(keys[k]!)) return yield* corrupt(`${crcKey} names an unknown tensor "${keys[k]}"`)
          map.set(keys[k]!, values[k]!) // the last of duplicates, as JSON.parse
        }
        crcOf = (i) => map.get(names[i]!)
      }
    } else if (Option.isSome(meta)) {
      return yield* corrupt(`${crcKey} is missing`)
    }

    const tensors = [] as Array<TensorLayout>
    for (let i = 0; i < count; i++) {
      let crc: Option.Option<number> = Option.none()
      if (crcOf !== undefined) {
        const hex = crcOf(i)
        if (hex === undefined || !isCrcHex(hex)) {
          return yield* corrupt(`tensor "${names[i]}" has no valid checksum in ${crcKey}`)
        }
        crc = Option.some(parseInt(hex, 16))
      }
      tensors[i] = {
        name: names[i]!,
        dtype: dtypes[i]!,
        shape: shapes[i]!,
        position: dataStart + begins[i]!,
        byteLength: ends[i]! - begins[i]!,
        crc
      }
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
    const wanted = options?.weightsOnly === true && ours
      ? layout.tensors.filter((t) => t.name.startsWith(modelPrefix))
      : layout.tensors
    const byPosition = (a: TensorLayout, b: TensorLayout) => a.position - b.position
    let inFileOrder = true
    for (let i = 1; i < wanted.length && inFileOrder; i++) inFileOrder = byPosition(wanted[i - 1]!, wanted[i]!) <= 0
    const selected = inFileOrder ? wanted : [...wanted].sort(byPosition)
    if (policy === "tfjs") {
      const foreign = selected.find((t) => !tfjsDTypes.has(t.dtype))
      if (foreign !== undefined) {
        return yield* invalidLoad(
          path,
          `tensor "${foreign.name}" is ${foreign.dtype}, which tfjs cannot hold (load with dtypes: "convert" to convert it)`
        )
      }
    }

    // One allocation for every tensor, as a raw read of the file would make: many
    // large allocations each press V8's garbage collector (measured: GC took more
    // time than the reads). The arena mirrors the file: a tensor that follows the
    // previous one directly in the file follows it directly in the arena when its
    // dtype's alignment allows, so that a run of such tensors is read straight into
    // place, small or large, with no scratch buffer and no copy; any other tensor
    // starts a new run at the next 8-byte boundary. Gotcha: a tensor kept alive
    // keeps the whole arena alive.
    const count = selected.length
    const offsets = [] as Array<number> // filled in order
    /** Runs of tensors contiguous in both the file and the arena: [first tensor, end). */
    const runs: Array<{ readonly first: number; readonly position: number; readonly at: number; bytes: number }> = []
    let arenaBytes = 0
    for (let i = 0; i < count; i++) {
      const t = selected[i]!
      const previous = i > 0 ? selected[i - 1]! : undefined
      const run = runs[runs.length - 1]
      if (
        run !== undefined && previous !== undefined && t.position === previous.position + previous.byteLength &&
        arenaBytes % bytesPerElement(t.dtype) === 0
      ) {
        run.bytes += t.byteLength
      } else {
        arenaBytes = Math.ceil(arenaBytes / 8) * 8
        runs.push({ first: i, position: t.position, at: arenaBytes, bytes: t.byteLength })
      }
      offsets[i] = arenaBytes
      arenaBytes += t.byteLength
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
    const arenaView = new Uint8Array(arena)

    const tensors = record<HostTensor>()
    /** Checks a tensor read in full and adds it; an error to fail with, if any (plain code: it runs per tensor). */
    const finish = (i: number, crc: number): CheckpointCorrupt | CheckpointInvalidArgument | undefined => {
      const t = selected[i]!
      // Only a header that JSON.parse would not read as written has these.
      if (t.name in tensors) return corrupt(`tensor "${t.name}" appears twice in the header`)
      if (Option.isSome(t.crc) && t.crc.value !== crc >>> 0) {
        return corrupt(`tensor "${t.name}" fails its checksum (expected ${crcHex(t.crc.value)}, got ${crcHex(crc)})`)
      }
      if (t.dtype === "BOOL") {
        const bytes = arenaView.subarray(offsets[i]!, offsets[i]! + t.byteLength)
        for (let k = 0; k < bytes.length; k++) {
          if (bytes[k]! > 1) return corrupt(`tensor "${t.name}" is BOOL but holds the byte ${bytes[k]}`)
        }
      }
      const data = new arrayConstructor[t.dtype](arena, offsets[i]!, t.byteLength / bytesPerElement(t.dtype))
      const host: HostTensor = { dtype: t.dtype, shape: t.shape, data } as HostTensor
      const converted = policy === "convert" ? toTfjs(path, t.name, host) : host
      if (converted instanceof CheckpointInvalidArgument) return converted
      tensors[t.name] = converted
      return undefined
    }

    // The reads: each run in chunks of at most `chunkBytes`, straight into the arena.
    const chunks: Array<{ readonly position: number; readonly at: number; readonly bytes: number }> = []
    for (const run of runs) {
      for (let done = 0; done < run.bytes; done += chunkBytes) {
        chunks.push({ position: run.position + done, at: run.at + done, bytes: Math.min(chunkBytes, run.bytes - done) })
      }
    }
    // Checksums chunk by chunk, in arena order: `next` is the first tensor not yet
    // finished, `running` the checksum of its bytes so far.
    let next = 0
    let running = 0
    /**
     * Checksums the arena bytes [start, end) (a chunk just read; runs never share a
     * chunk, and a tensor never spans two runs), finishing every tensor that ends there.
     */
    const checkRange = (start: number, end: number): CheckpointCorrupt | CheckpointInvalidArgument | undefined => {
      while (next < count) {
        const begin = offsets[next]!
        const tensorEnd = begin + selected[next]!.byteLength
        if (begin > end || (begin === end && tensorEnd > end)) return undefined
        const from = Math.max(begin, start)
        if (tensorEnd > end) {
          running = crc32(arenaView.subarray(from, end), running)
          return undefined
        }
        const crc = crc32(arenaView.subarray(from, tensorEnd), running)
        running = 0
        const error = finish(next, crc)
        if (error !== undefined) return error
        next++
      }
      return undefined
    }
    // A pipeline: chunk k is read (off the main thread) while chunk k-1 is checksummed.
    const check = (chunk: { readonly at: number; readonly bytes: number }) => {
      const error = checkRange(chunk.at, chunk.at + chunk.bytes)
      return error === undefined ? Effect.void : Effect.fail(error)
    }
    let previous: { readonly at: number; readonly bytes: number } | undefined
    for (const chunk of chunks) {
      const reading = yield* Effect.forkChild(
        readFully(source, arenaView.subarray(chunk.at, chunk.at + chunk.bytes), chunk.position, corrupt),
        { startImmediately: true }
      )
      if (previous !== undefined) yield* check(previous)
      yield* Fiber.join(reading)
      previous = chunk
    }
    if (previous !== undefined) yield* check(previous)
    // Empty tensors after the last byte (or in a file with no tensor data).
    const rest = checkRange(arenaBytes, arenaBytes)
    if (rest !== undefined) return yield* rest
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
