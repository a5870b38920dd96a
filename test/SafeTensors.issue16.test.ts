import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Option } from "effect"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as SafeTensors from "../src/SafeTensors.ts"
import { seeded } from "./support/random.ts"

// Issue 16: saving and loading at the speed of the disk. The figures are for the
// benchmarks; these tests pin the behaviour the faster paths must keep.

const source = SafeTensors.bytesSource

/** A file from header text (any JSON, written as given) and data bytes. */
const fileOf = (header: string | Uint8Array, data: Uint8Array): Uint8Array => {
  const text = typeof header === "string" ? new TextEncoder().encode(header) : header
  const out = new Uint8Array(8 + text.byteLength + data.byteLength)
  new DataView(out.buffer).setBigUint64(0, BigInt(text.byteLength), true)
  out.set(text, 8)
  out.set(data, 8 + text.byteLength)
  return out
}

const load = (file: Uint8Array) => SafeTensors.read(source(file), "/mem/x.safetensors")

const data = Uint8Array.from({ length: 16 }, (_, i) => i + 1)

/** What JSON.parse makes of a header: the tensors as name → [dtype, shape, begin, end]. */
const expected = (header: string) => {
  const json = JSON.parse(header) as Record<string, { dtype: string; shape: Array<number>; data_offsets: [number, number] }>
  const out: Record<string, unknown> = {}
  for (const [name, e] of Object.entries(json)) {
    if (name === "__metadata__") continue
    // An empty tensor's place cannot be told from its (no) bytes.
    const [begin, end] = e.data_offsets[0] === e.data_offsets[1] ? [undefined, undefined] : e.data_offsets
    out[name] = [e.dtype, e.shape.map(Number), begin, end]
  }
  return out
}

const loaded = (ckpt: Checkpoint.Checkpoint, begins: Map<number, number>) => {
  const out: Record<string, unknown> = {}
  for (const [name, t] of Object.entries(ckpt.tensors)) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
    // Where the bytes came from in the data buffer (each test's data bytes are distinct).
    const begin = bytes.byteLength === 0 ? undefined : begins.get(bytes[0]!)
    out[name] = [t.dtype, [...t.shape], begin, begin === undefined ? undefined : begin + bytes.byteLength]
  }
  return out
}

const begins = new Map([...data].map((b, i) => [b, i]))

describe("SafeTensors: issue 16", () => {
  // Headers as other writers make them: the one-pass scanner (or its fallback to
  // JSON.parse and the schemas) must read each exactly as JSON.parse does.
  const readable: ReadonlyArray<readonly [string, string]> = [
    [
      "whitespace everywhere",
      ` {\n "a" : { "shape" : [ 2 ] ,\t"dtype" : "F32" , "data_offsets" : [ 0 , 8 ] } ,\r\n "__metadata__" : { "k" : "v" } , "b":{"dtype":"U8","shape":[2,4],"data_offsets":[8,16]} } `
    ],
    [
      "escaped and non-ASCII names",
      `{"a\\"b\\\\c\\u00e9":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"é🎉":{"dtype":"U8","shape":[8],"data_offsets":[8,16]}}`
    ],
    [
      "integer-like names",
      `{"10":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"2":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[8,16]}}`
    ],
    ["an entry with an extra key", `{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16],"note":"x"}}`],
    ["a shape written 4.0 and an escaped dtype", `{"a":{"dtype":"F\\u00332","shape":[4.0],"data_offsets":[0,16]}}`],
    [
      "empty tensors and an empty shape",
      `{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"z":{"dtype":"BOOL","shape":[0],"data_offsets":[8,8]},"u":{"dtype":"U8","shape":[8],"data_offsets":[8,16]}}`
    ],
    [
      "entries out of file order",
      `{"b":{"dtype":"U8","shape":[8],"data_offsets":[8,16]},"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`
    ],
    ["a duplicate metadata key", `{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},"__metadata__":{"k":"1","k":"2"}}`]
  ]
  for (const [what, header] of readable) {
    it.effect(`issue 16.1: a header with ${what} reads as JSON.parse reads it`, () =>
      Effect.gen(function*() {
        const ckpt = yield* load(fileOf(header, data))
        assert.deepStrictEqual(loaded(ckpt, begins), expected(header))
        const metadata = (JSON.parse(header) as { __metadata__?: Record<string, string> }).__metadata__ ?? {}
        assert.deepStrictEqual({ ...ckpt.extraMetadata }, metadata)
      }))
  }

  it.effect("issue 16.1: a header with a byte order mark reads as TextDecoder and JSON.parse read it", () =>
    Effect.gen(function*() {
      const header = `{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}`
      const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...new TextEncoder().encode(header)])
      const ckpt = yield* load(fileOf(bytes, data))
      assert.deepStrictEqual(loaded(ckpt, begins), expected(header))
    }))

  const refused: ReadonlyArray<readonly [string, string, string]> = [
    ["a trailing comma", `{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},}`, "header is not valid JSON"],
    ["a number with a leading zero", `{"a":{"dtype":"U8","shape":[016],"data_offsets":[0,16]}}`, "header is not valid JSON"],
    [
      "a negative offset",
      `{"a":{"dtype":"U8","shape":[16],"data_offsets":[-0,16]},"b":{"dtype":"U8","shape":[0],"data_offsets":[-1,0]}}`,
      "invalid header entry"
    ],
    ["a fractional shape", `{"a":{"dtype":"U8","shape":[15.5],"data_offsets":[0,16]}}`, "invalid header entry"],
    ["an unknown dtype", `{"a":{"dtype":"F31","shape":[4],"data_offsets":[0,16]}}`, "invalid header entry"],
    ["text after the object", `{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}} x`, "header is not valid JSON"],
    ["a control character in a name", `{"a\u0001":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}`, "header is not valid JSON"],
    // JSON.parse would keep one entry and find a hole; either way the file is refused.
    [
      "a name that appears twice",
      `{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[8],"data_offsets":[8,16]}}`,
      "twice"
    ]
  ]
  for (const [what, header, reason] of refused) {
    it.effect(`issue 16.1: a header with ${what} is a typed corrupt error`, () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(load(fileOf(header, data)))
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
        assert.strictEqual(error?._tag, "CheckpointCorrupt")
        assert.include(error?.reason, reason)
      }))
  }

  it.effect("issue 16.2: a save whose header would pass the 100 MB cap fails up front with a typed error", () =>
    Effect.gen(function*() {
      const ckpt = Checkpoint.make({
        tensors: { w: Checkpoint.tensor("F32", [1], new Float32Array([1])) },
        extraMetadata: { big: "x".repeat(SafeTensors.maxHeaderBytes) }
      })
      const exit = yield* Effect.exit(SafeTensors.plan(ckpt, "/mem/big.safetensors"))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
      assert.strictEqual(error?._tag, "CheckpointInvalidArgument")
      assert.include(error?.reason, "readers accept")
    }))

  // Small tensors go through two scratch buffers while the previous write is in
  // flight: a sink whose writes take several turns of the scheduler (and copy the
  // bytes only when they finish) shows any reuse of a buffer still being written.
  it.effect("issue 16.3: pipelined writes keep one write in flight, coalesce small tensors and never reuse a buffer in flight", () =>
    Effect.gen(function*() {
      const random = seeded(16)
      const tensors: Record<string, Checkpoint.HostTensor> = {}
      for (let i = 0; i < 3000; i++) {
        // Mostly small (a few KiB, ~9 MB in all: both scratch buffers in turn), a few large ones between them.
        const large = i % 700 === 350
        const n = large ? (1 << 18) + random.int(1000) : random.int(1500)
        tensors[`layer${i}/w`] = Checkpoint.tensor("F32", [n], Float32Array.from({ length: n }, () => random.next()))
      }
      tensors["mask"] = Checkpoint.tensor("BOOL", [3], new Uint8Array([1, 0, 1]))
      const ckpt = Checkpoint.make({ tensors, meta: { epoch: 1, globalStep: 2 } })
      const planned = yield* SafeTensors.plan(ckpt, "/mem/pipe.safetensors")
      const file = new Uint8Array(planned.size)
      let position = 0
      let inFlight = 0
      let mostInFlight = 0
      let writes = 0
      const sink: SafeTensors.ByteSink<never> = {
        write: (chunk) =>
          Effect.gen(function*() {
            const at = position
            position += chunk.byteLength
            writes++
            mostInFlight = Math.max(mostInFlight, ++inFlight)
            for (let k = 0; k < 3; k++) yield* Effect.yieldNow
            file.set(chunk, at)
            inFlight--
          }),
        writeAt: (at, chunk) => Effect.sync(() => file.set(chunk, at))
      }
      yield* SafeTensors.write(planned, sink)
      assert.strictEqual(position, planned.size)
      assert.strictEqual(mostInFlight, 1)
      assert.isBelow(writes, 40, "small tensors are coalesced, not written one by one")
      const back = yield* load(file)
      assert.deepStrictEqual(Object.keys(back.tensors), Object.keys(tensors))
      for (const [name, t] of Object.entries(tensors)) assert.deepStrictEqual(back.tensors[name]!.data, t.data, name)
      assert.deepStrictEqual(Option.getOrUndefined(back.meta)?.globalStep, 2)
    }))
})
