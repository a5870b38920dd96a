/**
 * The corruption fuzzer's cases: seeded mutations of valid checkpoint files (bit
 * flips anywhere and in tensor data, truncations, appended bytes, random spans,
 * length-prefix values, structured header edits with and without a recomputed header
 * checksum, tensor edits with recomputed checksums, random headers and files), each
 * loaded through `MemoryCheckpointIO` (the codec is the file store's).
 *
 * The oracle, per case:
 * - the load ends in a typed error (`CheckpointCorrupt`; `CheckpointInvalidArgument`
 *   only for the `"tfjs"` / `"convert"` dtype policies) or a result, never a defect;
 * - a result from a raw mutation of one of our files (checksums not recomputed) is
 *   exactly the original checkpoint (tensors byte for byte, meta, metadata);
 * - any other result is exactly what the mutated file's header describes, as read by
 *   an independent parser (`safetensorsBytes.ts`);
 * - bit flips in tensor data fail with a checksum error;
 * - allocations during a load (ArrayBuffers and typed arrays, counted through the
 *   global constructors) stay under 8 × the file size + 1 MiB: above that the
 *   allocation is refused (thrown), which the oracle reports as a defect;
 * - no load hangs (a watchdog in `fuzz.ts` fails a case that makes no progress for
 *   tens of seconds); the slowest load is reported, never a failure, because load
 *   time on a shared machine says nothing about correctness (speed is for bench/).
 */
import { Effect, Exit, Option } from "effect"
import * as Checkpoint from "../../src/Checkpoint.ts"
import { CheckpointIO, type LoadOptions } from "../../src/CheckpointIO.ts"
import * as MemoryCheckpointIO from "../../src/MemoryCheckpointIO.ts"
import { sample } from "../support/checkpoints.ts"
import { crcHex, crcKey, encode, foreign, headerCrcKey, headerText, split } from "./safetensorsBytes.ts"
import { type Failure, type Prng, prng, trialSeed } from "./support.ts"

export interface FuzzOptions {
  /** `"random"` (default): seeded mutations; `"crafted"`: the hand-made hostile files of `craftedCases`. */
  readonly mode?: "random" | "crafted" | undefined
  readonly cases?: number
  readonly seed?: number
  /** Only this case seed (to replay a failure). */
  readonly onlySeed?: number
}

export interface FuzzOutcome {
  readonly trials: number
  readonly failures: ReadonlyArray<Failure>
  readonly notes: Record<string, number | string>
}

// ---------------------------------------------------------------------------
// Allocation accounting

class AllocationRefused extends Error {}

interface Tracker {
  active: boolean
  total: number
  largest: number
  limit: number
}

const typedArrays: ReadonlyArray<readonly [string, number]> = [
  ["ArrayBuffer", 1],
  ["SharedArrayBuffer", 1],
  ["Uint8Array", 1],
  ["Uint8ClampedArray", 1],
  ["Int8Array", 1],
  ["Uint16Array", 2],
  ["Int16Array", 2],
  ["Uint32Array", 4],
  ["Int32Array", 4],
  ["Float32Array", 4],
  ["Float64Array", 8],
  ["BigInt64Array", 8],
  ["BigUint64Array", 8]
]

/**
 * Counts bytes requested from the global ArrayBuffer and typed-array constructors
 * while `active`, and refuses (throws) an allocation past `limit`. Gotcha: this
 * replaces globals for the whole thread: run it in a worker (as `fuzz.ts` does).
 */
export const installAllocationTracker = (): { readonly tracker: Tracker; readonly uninstall: () => void } => {
  const tracker: Tracker = { active: false, total: 0, largest: 0, limit: Infinity }
  const g = globalThis as unknown as Record<string, unknown>
  const originals = new Map<string, unknown>()
  const note = (bytes: number) => {
    if (!tracker.active || !Number.isFinite(bytes) || bytes <= 0) return
    tracker.total += bytes
    tracker.largest = Math.max(tracker.largest, bytes)
    if (tracker.total > tracker.limit) {
      tracker.active = false
      throw new AllocationRefused(`allocation of ${bytes} bytes (${tracker.total} in this load) exceeds the bound of ${tracker.limit}`)
    }
  }
  for (const [name, per] of typedArrays) {
    const C = g[name] as (new(...args: Array<unknown>) => object) | undefined
    if (C === undefined) continue
    originals.set(name, C)
    const proxy: object = new Proxy(C, {
      construct(target, args, newTarget) {
        const first = args[0]
        if (typeof first === "number") note(first * per)
        else if (
          typeof first === "object" && first !== null && !ArrayBuffer.isView(first) &&
          !(first instanceof (originals.get("ArrayBuffer") as typeof ArrayBuffer)) &&
          typeof (first as { length?: unknown }).length === "number"
        ) note((first as { length: number }).length * per)
        return Reflect.construct(target, args, newTarget === proxy ? target : newTarget)
      }
    })
    g[name] = proxy
  }
  return {
    tracker,
    uninstall: () => {
      for (const [name, C] of originals) g[name] = C
    }
  }
}

// ---------------------------------------------------------------------------
// Base files

interface Base {
  readonly name: string
  readonly bytes: Uint8Array
  readonly ours: boolean
  /** Reference loads by option set. */
  readonly reference: Map<string, Checkpoint.Checkpoint>
}

const optionSets: ReadonlyArray<readonly [string, LoadOptions]> = [
  ["default", {}],
  ["weightsOnly", { weightsOnly: true }],
  ["convert", { dtypes: "convert" }],
  ["tfjs", { dtypes: "tfjs" }]
]

const manyTensors = (seed: number): Checkpoint.Checkpoint => {
  const rng = prng(seed)
  const tensors: Record<string, Checkpoint.HostTensor> = {}
  for (let i = 0; i < 24; i++) {
    const dtype = rng.pick(Checkpoint.DTypes)
    const shape = Array.from({ length: rng.int(4) }, () => rng.range(0, 5))
    const count = shape.reduce((n, d) => n * d, 1)
    const C = Checkpoint.arrayConstructor[dtype]
    const data = new C(count)
    const bytes = new Uint8Array(data.buffer)
    bytes.set(rng.bytes(bytes.length))
    if (dtype === "BOOL") (data as Uint8Array).forEach((v, k, a) => (a[k] = v & 1))
    tensors[`${rng.chance(0.6) ? "model" : "optimizer"}/layer${i}/${dtype.toLowerCase()}`] = { dtype, shape, data } as Checkpoint.HostTensor
  }
  return Checkpoint.make({
    tensors,
    meta: { epoch: 3, globalStep: 77, user: { nested: { list: [1, 2, { deep: "x" }] } }, hyperParameters: { lr: 0.5 } },
    extraMetadata: { note: "many" }
  })
}

const large = (): Checkpoint.Checkpoint =>
  Checkpoint.make({
    tensors: {
      "model/big": Checkpoint.tensor("F32", [300, 1000], Float32Array.from({ length: 300_000 }, (_, i) => Math.sin(i))),
      "model/small": Checkpoint.tensor("I32", [3], Int32Array.of(1, 2, 3)),
      "optimizer/iter": Checkpoint.tensor("I32", [], Int32Array.of(9))
    },
    meta: { epoch: 0, globalStep: 1 }
  })

const foreignFile = (): Uint8Array => {
  const data = new Uint8Array(4 * 6 + 2 * 3 + 8 * 2)
  const view = new DataView(data.buffer)
  for (let i = 0; i < 6; i++) view.setFloat32(4 * i, i / 3, true)
  for (let i = 0; i < 3; i++) view.setUint16(24 + 2 * i, 0x3c00 + i, true)
  view.setBigInt64(30, -5n, true)
  view.setBigInt64(38, 1n << 40n, true)
  return foreign({
    "weight": { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] },
    "__metadata__": { format: "pt" },
    "half": { dtype: "F16", shape: [3], data_offsets: [24, 30] },
    "long": { dtype: "I64", shape: [2, 1], data_offsets: [30, 46] }
  }, data)
}

const loadBytes = (bytes: Uint8Array, options: LoadOptions) =>
  Effect.gen(function*() {
    const io = yield* CheckpointIO
    const store = yield* MemoryCheckpointIO.MemoryStore
    store.files.set("/fuzz/case.ckpt", { bytes, modifiedAt: 0 })
    return yield* io.load("/fuzz/case.ckpt", options)
  }).pipe(Effect.provide(MemoryCheckpointIO.layerWithStore))

const saveBytes = (checkpoint: Checkpoint.Checkpoint) =>
  Effect.gen(function*() {
    const io = yield* CheckpointIO
    const store = yield* MemoryCheckpointIO.MemoryStore
    yield* io.save(checkpoint, "/base.ckpt")
    return store.files.get("/base.ckpt")!.bytes
  }).pipe(Effect.provide(MemoryCheckpointIO.layerWithStore))

const makeBases = Effect.gen(function*() {
  const raw: Array<readonly [string, Uint8Array, boolean, number]> = [
    ["sample", yield* saveBytes(sample(1)), true, 35],
    ["many", yield* saveBytes(manyTensors(5)), true, 30],
    ["empty", yield* saveBytes(Checkpoint.make({ tensors: {}, meta: { epoch: 0, globalStep: 0 } })), true, 5],
    ["large", yield* saveBytes(large()), true, 3],
    ["foreign", foreignFile(), false, 27]
  ]
  const bases: Array<Base & { readonly weight: number }> = []
  for (const [name, bytes, ours, weight] of raw) {
    const reference = new Map<string, Checkpoint.Checkpoint>()
    for (const [key, options] of optionSets) {
      const exit = yield* Effect.exit(loadBytes(bytes, options))
      if (Exit.isSuccess(exit)) reference.set(key, exit.value)
    }
    bases.push({ name, bytes, ours, reference, weight })
  }
  return bases
})

// ---------------------------------------------------------------------------
// Mutations

type Oracle = "original" | "consistent" | "checksum"

interface Mutation {
  readonly kind: string
  readonly bytes: Uint8Array
  readonly oracle: Oracle
  /** Forces the default load options (data flips must be read to be caught). */
  readonly fullLoad?: boolean
}

const clone = <A>(a: A): A => JSON.parse(JSON.stringify(a)) as A

const oddValues: ReadonlyArray<unknown> = [
  0,
  1,
  -1,
  2,
  7,
  8,
  1.5,
  -0.5,
  2 ** 31,
  2 ** 32 + 1,
  2 ** 53 - 1,
  2 ** 53,
  1e308,
  -1e308,
  "3",
  "",
  null,
  true,
  [],
  {},
  [1],
  [0, 0]
]

/** One structured edit of a parsed header (a fresh object). */
const editHeader = (rng: Prng, header: Record<string, unknown>): Record<string, unknown> => {
  const h = clone(header)
  const names = Object.keys(h).filter((k) => k !== "__metadata__")
  const metadata = (typeof h["__metadata__"] === "object" && h["__metadata__"] !== null ? h["__metadata__"] : undefined) as
    | Record<string, unknown>
    | undefined
  const choice = rng.int(names.length > 0 ? 16 : 6)
  switch (choice) {
    case 0: { // replace the whole header
      return { __replaced__: rng.pick([[], null, "header", 42, [{ a: 1 }]]) } as Record<string, unknown>
    }
    case 1: { // a metadata key removed
      if (metadata === undefined) return h
      const keys = Object.keys(metadata).filter((k) => k !== headerCrcKey)
      if (keys.length > 0) delete metadata[rng.pick(keys)]
      return h
    }
    case 2: { // a metadata value of another type
      if (metadata === undefined) return h
      const keys = Object.keys(metadata).filter((k) => k !== headerCrcKey)
      if (keys.length > 0) metadata[rng.pick(keys)] = rng.pick(oddValues)
      return h
    }
    case 3: { // the meta JSON edited
      if (metadata === undefined || typeof metadata["effect_trainer.meta"] !== "string") return h
      const meta = JSON.parse(metadata["effect_trainer.meta"]) as Record<string, unknown>
      const key = rng.pick(Object.keys(meta))
      if (rng.chance(0.2)) delete meta[key]
      else meta[key] = rng.pick(oddValues)
      if (rng.chance(0.1)) meta["__proto__"] = { polluted: true }
      metadata["effect_trainer.meta"] = rng.chance(0.1) ? "{" + JSON.stringify(meta) : JSON.stringify(meta)
      return h
    }
    case 4: { // the format version
      if (metadata === undefined) return h
      metadata["effect_trainer.format"] = rng.pick(["2", "0", "", "1 ", 1])
      return h
    }
    case 5: { // the CRC map edited
      if (metadata === undefined || typeof metadata[crcKey] !== "string") return h
      const crcs = JSON.parse(metadata[crcKey] as string) as Record<string, unknown>
      const keys = Object.keys(crcs)
      const r = rng.int(5)
      if (r === 0 && keys.length > 0) delete crcs[rng.pick(keys)]
      else if (r === 1) crcs[`unknown${rng.int(9)}`] = "00000000"
      else if (r === 2 && keys.length > 0) crcs[rng.pick(keys)] = rng.pick(["0000000", "ZZZZZZZZ", "000000000", 12345678, "FFFFFFFF"])
      else if (r === 3 && keys.length > 0) {
        const k = rng.pick(keys)
        const hex = String(crcs[k])
        const i = rng.int(8)
        crcs[k] = hex.slice(0, i) + ((parseInt(hex[i] ?? "0", 16) + 1) % 16).toString(16) + hex.slice(i + 1)
      } else metadata[crcKey] = rng.pick(["", "[]", "{", "null", "{\"__proto__\":\"00000000\"}"])
      if (typeof metadata[crcKey] === "string" && r <= 3) metadata[crcKey] = JSON.stringify(crcs)
      return h
    }
    default: { // a tensor entry
      const name = rng.pick(names)
      const entry = h[name] as Record<string, unknown>
      const r = rng.int(12)
      if (r === 0) entry["dtype"] = rng.pick([...Checkpoint.DTypes, "F8", "f32", "", 4, null])
      else if (r === 1 || r === 2) {
        const shape = Array.isArray(entry["shape"]) ? entry["shape"] as Array<unknown> : []
        if (shape.length > 0 && rng.chance(0.6)) shape[rng.int(shape.length)] = rng.pick(oddValues)
        else if (rng.chance(0.5)) shape.push(rng.pick([0, 1, 2, 2 ** 40]))
        else shape.pop()
        entry["shape"] = rng.chance(0.05) ? "2x3" : shape
      } else if (r === 3 || r === 4 || r === 5) {
        const offsets = Array.isArray(entry["data_offsets"]) ? entry["data_offsets"] as Array<unknown> : [0, 0]
        const k = rng.int(2)
        const v = offsets[k]
        offsets[k] = typeof v === "number" && rng.chance(0.6) ? v + rng.pick([-8, -4, -2, -1, 1, 2, 4, 8]) : rng.pick(oddValues)
        if (rng.chance(0.05)) offsets.push(0)
        if (rng.chance(0.05)) offsets.reverse()
        entry["data_offsets"] = offsets
      } else if (r === 6) delete h[name]
      else if (r === 7) h[`${name}-copy`] = clone(entry)
      else if (r === 8) {
        h[rng.pick(["__proto__", "constructor", "toString", `${name}/renamed`, "", "__metadata__x"])] = entry
        delete h[name]
      } else if (r === 9) entry[rng.pick(["extra", "__proto__", "dtype "])] = rng.pick(oddValues)
      else if (r === 10) delete entry[rng.pick(["dtype", "shape", "data_offsets"])]
      else h[name] = rng.pick(oddValues)
      return h
    }
  }
}

/** Random JSON-looking header text. */
const randomHeaderText = (rng: Prng): string => {
  const tokens = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"a\"",
    "\"dtype\"",
    "\"F32\"",
    "\"shape\"",
    "\"data_offsets\"",
    "0",
    "1",
    "-1",
    "1e999",
    "\"__metadata__\"",
    "null",
    "true",
    " ",
    "\"\\u0000\""
  ]
  let out = ""
  const n = rng.range(0, 40)
  for (let i = 0; i < n; i++) out += rng.pick(tokens)
  return out
}

const mutate = (rng: Prng, base: Base): Mutation => {
  const bytes = base.bytes
  const parts = split(bytes)!
  const dataStart = 8 + parts.headerLength
  const rawOracle: Oracle = base.ours ? "original" : "consistent"
  const roll = rng.int(100)
  if (roll < 18) {
    const copy = bytes.slice()
    const n = rng.range(1, 4)
    for (let i = 0; i < n; i++) {
      const p = rng.int(copy.length)
      copy[p] = copy[p]! ^ (1 << rng.int(8))
    }
    return { kind: "bit flips", bytes: copy, oracle: rawOracle }
  }
  if (roll < 33 && base.ours && bytes.length > dataStart) {
    const copy = bytes.slice()
    const flipped = new Set<number>()
    const n = rng.range(1, 3)
    while (flipped.size < n) flipped.add((dataStart + rng.int(bytes.length - dataStart)) * 8 + rng.int(8))
    for (const f of flipped) copy[f >> 3] = copy[f >> 3]! ^ (1 << (f & 7))
    return { kind: "bit flips in tensor data", bytes: copy, oracle: "checksum", fullLoad: true }
  }
  if (roll < 42) return { kind: "truncation", bytes: bytes.slice(0, rng.int(bytes.length)), oracle: rawOracle }
  if (roll < 46) {
    const extra = rng.bytes(rng.range(1, 64))
    const copy = new Uint8Array(bytes.length + extra.length)
    copy.set(bytes)
    copy.set(extra, bytes.length)
    return { kind: "appended bytes", bytes: copy, oracle: rawOracle }
  }
  if (roll < 54) {
    const copy = bytes.slice()
    const at = rng.int(copy.length)
    copy.set(rng.bytes(Math.min(rng.range(1, 32), copy.length - at)), at)
    return { kind: "random span", bytes: copy, oracle: rawOracle }
  }
  if (roll < 59) {
    const copy = bytes.slice()
    const n = BigInt(parts.headerLength)
    const value = rng.pick([
      0n,
      1n,
      2n,
      7n,
      n - 8n,
      n - 1n,
      n + 1n,
      n + 8n,
      BigInt(bytes.length),
      BigInt(bytes.length) - 8n,
      1n << 32n,
      1n << 53n,
      (1n << 64n) - 1n,
      BigInt(rng.int(2 ** 31)) << BigInt(rng.int(33))
    ])
    new DataView(copy.buffer).setBigUint64(0, BigInt.asUintN(64, value), true)
    return { kind: "length prefix", bytes: copy, oracle: rawOracle }
  }
  const header = JSON.parse(parts.headerText) as Record<string, unknown>
  if (roll < 82) {
    const edited = editHeader(rng, header)
    const text = "__replaced__" in edited ? JSON.stringify(edited["__replaced__"]) : headerText(edited)
    return { kind: "header edit, checksum recomputed", bytes: encode(text, parts.data, { fixCrc: true }), oracle: "consistent" }
  }
  if (roll < 88) {
    const edited = editHeader(rng, header)
    const text = "__replaced__" in edited ? JSON.stringify(edited["__replaced__"]) : headerText(edited)
    return { kind: "header edit", bytes: encode(text, parts.data, { fixCrc: false }), oracle: base.ours ? "original" : "consistent" }
  }
  if (roll < 93 && base.ours) {
    // A valid different file: tensor bytes changed, their checksums and the header's recomputed.
    const metadata = header["__metadata__"] as Record<string, string>
    const crcs = JSON.parse(metadata[crcKey]!) as Record<string, string>
    const data = parts.data.slice()
    const names = Object.keys(header).filter((k) => k !== "__metadata__")
    const withBytes = names.filter((k) => {
      const [b, e] = (header[k] as { data_offsets: [number, number] }).data_offsets
      return e > b
    })
    if (withBytes.length > 0) {
      const name = rng.pick(withBytes)
      const entry = header[name] as { dtype: string; data_offsets: [number, number] }
      const [b, e] = entry.data_offsets
      const fresh = rng.bytes(e - b)
      if (entry.dtype === "BOOL") fresh.forEach((v, i, a) => (a[i] = v & 1))
      data.set(fresh, b)
      crcs[name] = crcHex(data.subarray(b, e))
      metadata[crcKey] = JSON.stringify(crcs)
    }
    return { kind: "tensor edit, checksums recomputed", bytes: encode(headerText(header), data, { fixCrc: true }), oracle: "consistent" }
  }
  if (roll < 97) {
    return {
      kind: "random header",
      bytes: encode(randomHeaderText(rng), rng.bytes(rng.int(16)), { pad: rng.chance(0.5) }),
      oracle: "consistent"
    }
  }
  return { kind: "random file", bytes: rng.bytes(rng.int(128)), oracle: "consistent" }
}

// ---------------------------------------------------------------------------
// The oracle

const bytesOf = (t: Checkpoint.HostTensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i])

const sameCheckpoint = (actual: Checkpoint.Checkpoint, expected: Checkpoint.Checkpoint): string | undefined => {
  const a = Object.keys(actual.tensors).sort()
  const e = Object.keys(expected.tensors).sort()
  if (a.join("\n") !== e.join("\n")) return `tensors [${a.join(", ")}] instead of [${e.join(", ")}]`
  for (const name of e) {
    const x = actual.tensors[name]!
    const y = expected.tensors[name]!
    if (x.dtype !== y.dtype || x.shape.join(",") !== y.shape.join(",") || !sameBytes(bytesOf(x), bytesOf(y))) {
      return `tensor "${name}" differs from the original`
    }
  }
  if (JSON.stringify(Option.getOrNull(actual.meta)) !== JSON.stringify(Option.getOrNull(expected.meta))) return "meta differs"
  if (JSON.stringify({ ...actual.extraMetadata }) !== JSON.stringify({ ...expected.extraMetadata })) return "metadata differs"
  return undefined
}

const DTypeSet = new Set<string>(Checkpoint.DTypes)

/** Does `loaded` hold exactly what the file's header describes (an independent reading)? */
const describes = (file: Uint8Array, loaded: Checkpoint.Checkpoint, options: LoadOptions): string | undefined => {
  const parts = split(file)
  if (parts === undefined) return "loaded, but the length prefix does not fit the file"
  let header: Record<string, unknown>
  try {
    header = JSON.parse(parts.headerText) as Record<string, unknown>
  } catch {
    return "loaded a header that is not JSON"
  }
  const metadata = header["__metadata__"] as Record<string, unknown> | undefined
  const ours = metadata !== undefined && metadata["effect_trainer.format"] !== undefined
  if (ours !== Option.isSome(loaded.meta)) return "meta presence does not match the header"
  let names = Object.keys(header).filter((k) => k !== "__metadata__")
  if (options.weightsOnly === true && ours) names = names.filter((k) => k.startsWith(Checkpoint.modelPrefix))
  const got = Object.keys(loaded.tensors)
  if (got.slice().sort().join("\n") !== names.slice().sort().join("\n")) {
    return `tensors [${got.join(", ")}] but the header names [${names.join(", ")}]`
  }
  let total = 0
  for (const name of Object.keys(header)) {
    if (name === "__metadata__") continue
    const entry = header[name] as { dtype: string; shape: Array<number>; data_offsets: [number, number] }
    if (!DTypeSet.has(entry.dtype)) return `loaded although "${name}" has dtype ${entry.dtype}`
    total += entry.data_offsets[1] - entry.data_offsets[0]
  }
  if (8 + parts.headerLength + total !== file.length) return "loaded although the data does not end at end of file"
  for (const name of names) {
    const entry = header[name] as { dtype: Checkpoint.DType; shape: Array<number>; data_offsets: [number, number] }
    const t = loaded.tensors[name]!
    if (t.shape.join(",") !== entry.shape.join(",")) return `"${name}" has shape [${t.shape}] but the header says [${entry.shape}]`
    const count = entry.shape.reduce((n, d) => n * d, 1)
    if (t.data.length !== count) return `"${name}" holds ${t.data.length} values for shape [${entry.shape}]`
    if (options.dtypes === undefined || options.dtypes === "preserve" || options.dtypes === "tfjs") {
      if (t.dtype !== entry.dtype) return `"${name}" is ${t.dtype} but the header says ${entry.dtype}`
      const [b, e] = entry.data_offsets
      if (!sameBytes(bytesOf(t), parts.data.subarray(b, e))) return `"${name}" bytes differ from the file's`
    }
  }
  return undefined
}

// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Hand-made hostile files

/** A crafted file, and the allocation bound its load must stay under. */
export interface Crafted {
  readonly name: string
  readonly bytes: Uint8Array
  /** `"error"`: must be refused with a typed error; `"any"`: a typed error or what the header says. */
  readonly expect: "error" | "any"
}

const withChecksums = (header: Record<string, unknown>, data: Uint8Array): Uint8Array => {
  const metadata = (header["__metadata__"] ?? {}) as Record<string, unknown>
  const crcs: Record<string, string> = {}
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue
    const offsets = (entry as { data_offsets?: unknown }).data_offsets
    const [b, e] = Array.isArray(offsets) ? offsets as [number, number] : [0, 0]
    crcs[name] = crcHex(data.subarray(Math.max(0, Math.min(b, data.length)), Math.max(0, Math.min(e, data.length))))
  }
  const full = { ...header, __metadata__: { [crcKey]: JSON.stringify(crcs), ...metadata, [headerCrcKey]: "00000000" } }
  return encode(headerText(full), data, { fixCrc: true })
}

const prefixOnly = (length: bigint, body: Uint8Array = new Uint8Array(16)): Uint8Array => {
  const out = new Uint8Array(8 + body.length)
  new DataView(out.buffer).setBigUint64(0, length, true)
  out.set(body, 8)
  return out
}

/** Headers that claim absurd sizes or shapes, or abuse JSON: each refused before any large allocation. */
export const craftedCases = (): ReadonlyArray<Crafted> => {
  const f32 = (n: number) => new Uint8Array(4 * n)
  const entry = (dtype: string, shape: Array<number>, b: number, e: number) => ({ dtype, shape, data_offsets: [b, e] })
  const many = (n: number) => {
    const header: Record<string, unknown> = {}
    for (let i = 0; i < n; i++) header[`t${i}`] = entry("U8", [0], 0, 0)
    return header
  }
  const deep = (n: number) => "[".repeat(n) + "]".repeat(n)
  return [
    { name: "header length 2^64-1", bytes: prefixOnly((1n << 64n) - 1n), expect: "error" },
    { name: "header length just over the 100 MB cap", bytes: prefixOnly(100n * 1024n * 1024n + 8n), expect: "error" },
    { name: "header length at the cap, 16-byte file", bytes: prefixOnly(100n * 1024n * 1024n), expect: "error" },
    {
      name: "shape [2^31, 2^31] over 4 bytes",
      bytes: withChecksums({ a: entry("F32", [2 ** 31, 2 ** 31], 0, 4) }, f32(1)),
      expect: "error"
    },
    {
      name: "shape [1e6, 1e6, 1e6] with offsets to 2^53-1",
      bytes: withChecksums({ a: entry("F32", [1e6, 1e6, 1e6], 0, 2 ** 53 - 1) }, f32(1)),
      expect: "error"
    },
    {
      name: "shape [2^48] with matching offsets past the file",
      bytes: withChecksums({ a: entry("F32", [2 ** 48], 0, 2 ** 50) }, f32(1)),
      expect: "error"
    },
    { name: "shape [2^53] (not a safe integer)", bytes: foreign({ a: entry("F32", [2 ** 53], 0, 4) }, f32(1)), expect: "error" },
    {
      name: "shape [0, 2^53-1] (no elements)",
      bytes: foreign({ a: entry("F32", [0, 2 ** 53 - 1], 0, 0) }, new Uint8Array(0)),
      expect: "any"
    },
    { name: "offsets [0, 1e999]", bytes: encode(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1e999]}}`, f32(1)), expect: "error" },
    { name: "offsets [-0, 4]", bytes: encode(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}`, f32(1)), expect: "any" },
    {
      name: "offsets in exponent form [0, 4e0]",
      bytes: encode(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4e0]}}`, f32(1)),
      expect: "any"
    },
    {
      name: "100,000 dimensions of 1",
      bytes: foreign({ a: entry("F32", Array.from({ length: 100_000 }, () => 1), 0, 4) }, f32(1)),
      expect: "any"
    },
    { name: "5,000 empty tensors with checksums", bytes: withChecksums(many(5000), new Uint8Array(0)), expect: "any" },
    // Validation must stay linear: a quadratic name check made this take ~10 s (now fixed).
    { name: "40,000 empty tensors with checksums (a 3 MB file)", bytes: withChecksums(many(40_000), new Uint8Array(0)), expect: "any" },
    {
      name: "a shape nested 1,000,000 deep",
      bytes: encode(`{"a":{"dtype":"F32","shape":${deep(1_000_000)},"data_offsets":[0,0]}}`, new Uint8Array(0)),
      expect: "error"
    },
    {
      name: "metadata nested 1,000,000 deep",
      bytes: encode(`{"__metadata__":{"x":${deep(1_000_000)}}}`, new Uint8Array(0)),
      expect: "error"
    },
    {
      name: "meta JSON nested 100,000 deep",
      bytes: withChecksums({
        __metadata__: {
          "effect_trainer.format": "1",
          "effect_trainer.meta":
            `{"formatVersion":1,"libraryVersion":"x","epoch":0,"globalStep":0,"weightsOnly":false,"loops":{},"callbacks":{},"optimizer":null,"hyperParameters":{},"user":{"a":${
              deep(100_000)
            }}}`
        }
      }, new Uint8Array(0)),
      expect: "any"
    },
    {
      name: "CRC map JSON nested 100,000 deep",
      bytes: withChecksums({ __metadata__: { [crcKey]: deep(100_000) } }, new Uint8Array(0)),
      expect: "error"
    },
    { name: "a 10 MB metadata string", bytes: foreign({ __metadata__: { big: "x".repeat(10 << 20) } }, new Uint8Array(0)), expect: "any" },
    {
      name: "duplicate tensor keys",
      bytes: encode(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32(2)),
      expect: "error"
    },
    {
      name: "tensor named __proto__",
      bytes: withChecksums({ ["__proto__"]: entry("F32", [1], 0, 4) } as Record<string, unknown>, f32(1)),
      expect: "any"
    },
    {
      name: "metadata key __proto__ with an object",
      bytes: encode(`{"__metadata__":{"__proto__":{"polluted":"yes"}}}`, new Uint8Array(0)),
      expect: "error"
    },
    {
      name: "metadata key __proto__ with a string",
      bytes: encode(`{"__metadata__":{"__proto__":"polluted"}}`, new Uint8Array(0)),
      expect: "any"
    },
    { name: "a header of 1,000,000 spaces", bytes: encode(" ".repeat(1_000_000) + "{}", new Uint8Array(0)), expect: "any" },
    { name: "a lone surrogate in a name", bytes: foreign({ ["a\ud800"]: entry("U8", [1], 0, 1) }, Uint8Array.of(1)), expect: "any" },
    {
      name: "a header that is invalid UTF-8",
      bytes: (() => {
        const f = foreign({ ab: entry("U8", [1], 0, 1) }, Uint8Array.of(1))
        f[10] = 0xff
        return f
      })(),
      expect: "error"
    }
  ]
}

/** Loads each crafted file with a tight allocation bound (2 × its size + 1 MiB). */
const runCrafted = async (onCase: (report: CaseReport) => void, tracker?: Tracker): Promise<FuzzOutcome> => {
  const failures: Array<Failure> = []
  let loaded = 0
  let worst = 0
  let slowest = 0
  for (const [index, c] of craftedCases().entries()) {
    onCase({ index, seed: index, kind: c.name })
    if (tracker !== undefined) {
      tracker.total = 0
      tracker.limit = 2 * c.bytes.length + (1 << 20)
      tracker.active = true
    }
    const started = performance.now()
    const exit = await Effect.runPromiseExit(loadBytes(c.bytes, {}))
    const elapsed = performance.now() - started
    if (tracker !== undefined) {
      tracker.active = false
      worst = Math.max(worst, tracker.total)
    }
    slowest = Math.max(slowest, elapsed)
    const fail = (message: string) => failures.push({ seed: index, message: `crafted "${c.name}": ${message}` })
    if (Exit.isFailure(exit)) {
      const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
      if (reason === undefined || reason._tag !== "Fail") fail(`a defect: ${String(exit.cause).slice(0, 300)}`)
      else if ((reason.error as { _tag: string })._tag !== "CheckpointCorrupt") {
        fail(`unexpected error ${(reason.error as { _tag: string })._tag}`)
      }
      continue
    }
    loaded++
    if (c.expect === "error") fail("loaded, but it must be refused")
    else {
      const problem = describes(c.bytes, exit.value, {})
      if (problem !== undefined) fail(`loaded something the file does not say: ${problem}`)
    }
  }
  return {
    trials: craftedCases().length,
    failures,
    notes: {
      "crafted files that loaded (valid)": loaded,
      "largest allocation total (bytes)": worst,
      "slowest load (ms)": Number(slowest.toFixed(1))
    }
  }
}

export interface CaseReport {
  readonly index: number
  readonly seed: number
  readonly kind: string
}

/**
 * Runs the cases in this thread. `onCase` is called before each (a watchdog can name
 * the case that hangs). `tracker`: the allocation tracker, when installed.
 */
export const runFuzzCases = async (
  options: FuzzOptions,
  onCase: (report: CaseReport) => void = () => {},
  tracker?: Tracker
): Promise<FuzzOutcome> => {
  const cases = options.cases ?? 10_000
  const seed = options.seed ?? 1
  if (options.mode === "crafted") return runCrafted(onCase, tracker)
  const bases = await Effect.runPromise(makeBases)
  const totalWeight = bases.reduce((n, b) => n + b.weight, 0)
  const failures: Array<Failure> = []
  const kinds: Record<string, number> = {}
  let loaded = 0
  let typed = 0
  let worstRatio = 0
  let slowest = 0
  const seeds = options.onlySeed !== undefined ? [options.onlySeed] : Array.from({ length: cases }, (_, i) => trialSeed(seed, i))
  for (const [index, caseSeed] of seeds.entries()) {
    const rng = prng(caseSeed)
    let pickAt = rng.int(totalWeight)
    const base = bases.find((b) => (pickAt -= b.weight) < 0)!
    const mutation = mutate(rng, base)
    const [optionKey, loadOptions] = mutation.fullLoad === true
      ? optionSets[0]!
      : rng.chance(0.8)
      ? optionSets[0]!
      : rng.pick(optionSets.slice(1))
    const label = `${base.name} file, ${mutation.kind}, ${optionKey} load`
    kinds[mutation.kind] = (kinds[mutation.kind] ?? 0) + 1
    onCase({ index, seed: caseSeed, kind: label })
    if (tracker !== undefined) {
      tracker.total = 0
      tracker.largest = 0
      tracker.limit = 8 * mutation.bytes.length + (1 << 20)
      tracker.active = true
    }
    const started = performance.now()
    const exit = await Effect.runPromiseExit(loadBytes(mutation.bytes, loadOptions))
    const elapsed = performance.now() - started
    if (tracker !== undefined) {
      tracker.active = false
      worstRatio = Math.max(worstRatio, tracker.total / Math.max(1, mutation.bytes.length))
    }
    slowest = Math.max(slowest, elapsed)
    const fail = (message: string) => failures.push({ seed: caseSeed, message: `${label}: ${message}` })
    if (Exit.isFailure(exit)) {
      const error = exit.cause.reasons.find((r) => r._tag === "Fail")
      if (error === undefined || error._tag !== "Fail") {
        fail(`a defect instead of a typed error: ${String(exit.cause).slice(0, 400)}`)
        continue
      }
      typed++
      const e = error.error as { _tag: string; message: string }
      const allowed = e._tag === "CheckpointCorrupt" ||
        (e._tag === "CheckpointInvalidArgument" && (loadOptions.dtypes === "tfjs" || loadOptions.dtypes === "convert"))
      if (!allowed) fail(`unexpected error ${e._tag}: ${e.message}`)
      else if (!e.message.includes("/fuzz/case.ckpt")) fail(`the error does not name the file: ${e.message}`)
      if (mutation.oracle === "checksum" && !/checksum/.test(e.message)) {
        fail(`a data bit flip not reported as a checksum failure: ${e.message}`)
      }
      continue
    }
    loaded++
    const result = exit.value
    if (mutation.oracle === "checksum") {
      fail("a bit flip in tensor data loaded without a checksum error")
    } else if (mutation.oracle === "original") {
      const reference = base.reference.get(optionKey)
      const problem = reference === undefined
        ? "loaded, but the original does not load with these options"
        : sameCheckpoint(result, reference)
      if (problem !== undefined) fail(`a damaged file loaded with other contents: ${problem}`)
    } else {
      const problem = describes(mutation.bytes, result, loadOptions)
      if (problem !== undefined) fail(`loaded something the file does not say: ${problem}`)
    }
  }
  return {
    trials: seeds.length,
    failures,
    notes: {
      "loaded (valid after mutation)": loaded,
      "typed errors": typed,
      "worst bytes allocated / file size": tracker === undefined ? "not measured" : Number(worstRatio.toFixed(2)),
      "slowest load (ms)": Number(slowest.toFixed(1)),
      ...Object.fromEntries(Object.entries(kinds).sort().map(([k, v]) => [`cases: ${k}`, v]))
    }
  }
}
