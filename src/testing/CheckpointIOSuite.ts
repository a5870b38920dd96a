/**
 * The conformance suite every `CheckpointIO` must pass, for `@effect/vitest`: the
 * same tests the built-in stores run (round trips of every dtype, replace, weights
 * only, dtype policies, exists/list/remove, copy, invalid input, the safetensors
 * layout byte for byte, foreign files, truncation at any offset, a flipped bit
 * anywhere, malformed headers).
 *
 * A store under test comes with a `RawStore`: raw access to the bytes it holds under
 * a path, so that the corruption cases can damage a stored checkpoint the way a disk
 * or a network would. `layerRawFileSystem` serves stores that keep files on the
 * `FileSystem` in context, `layerRawMemory` the memory store; write your own for
 * anything else (a bucket, a database).
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { NodeServices } from "@effect/platform-node"
 * import { CheckpointIOSuite } from "effect-trainer/testing"
 *
 * CheckpointIOSuite.run("MyCheckpointIO", () =>
 *   CheckpointIOSuite.layerRawFileSystem.pipe(
 *     Layer.provideMerge(MyCheckpointIO.layer),
 *     Layer.provideMerge(NodeServices.layer),
 *     Layer.orDie
 *   ))
 * ```
 *
 * Needs `vitest` and `@effect/vitest` (optional peer dependencies of this package).
 *
 * @since 0.2.0
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, FileSystem, Layer, Option, type PlatformError } from "effect"
import * as Checkpoint from "../Checkpoint.ts"
import type { HostTensor } from "../Checkpoint.ts"
import { CheckpointIO } from "../CheckpointIO.ts"
import * as MemoryCheckpointIO from "../MemoryCheckpointIO.ts"
import * as Random from "../Random.ts"

/**
 * Raw access to what a store holds, for tampering in tests.
 *
 * @since 0.2.0
 */
export class RawStore extends Context.Service<RawStore, {
  /** A directory (or key prefix) the tests may use, empty at the start. */
  readonly root: string
  /** The bytes stored under `path`, as a copy. */
  readonly read: (path: string) => Effect.Effect<Uint8Array>
  /** Replaces the bytes under `path`, bypassing the store. */
  readonly write: (path: string, bytes: Uint8Array) => Effect.Effect<void>
  /** Makes committed work visible to `read` (a flush for asynchronous stores). */
  readonly settle: Effect.Effect<void>
}>()("effect-trainer/testing/RawStore") {}

/**
 * `RawStore` for a store that keeps its checkpoints as files on the `FileSystem` in
 * context: a fresh temporary directory per test, `settle` is the store's `flush`.
 *
 * @since 0.2.0
 */
export const layerRawFileSystem: Layer.Layer<RawStore, PlatformError.PlatformError, FileSystem.FileSystem | CheckpointIO> = Layer
  .effect(
    RawStore,
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const io = yield* CheckpointIO
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "ckpt-suite-" })
      return {
        root,
        // A plain copy: Node's Buffer.slice() would share memory with the file's bytes.
        read: (path: string) => Effect.orDie(Effect.map(fs.readFile(path), (bytes) => new Uint8Array(bytes))),
        write: (path: string, bytes: Uint8Array) => Effect.orDie(fs.writeFile(path, bytes)),
        settle: Effect.orDie(io.flush)
      }
    })
  )

/**
 * `RawStore` over the `MemoryStore` in context (`MemoryCheckpointIO.layerWithStore`,
 * or a wrapper over `MemoryCheckpointIO.layerFromStore`); `settle` is the store's `flush`.
 *
 * @since 0.2.0
 */
export const layerRawMemory: Layer.Layer<RawStore, never, MemoryCheckpointIO.MemoryStore | CheckpointIO> = Layer.effect(
  RawStore,
  Effect.gen(function*() {
    const { files } = yield* MemoryCheckpointIO.MemoryStore
    const io = yield* CheckpointIO
    return {
      root: "/checkpoints",
      read: (path: string) => Effect.sync(() => files.get(MemoryCheckpointIO.normalize(path))?.bytes.slice() ?? new Uint8Array(0)),
      write: (path: string, bytes: Uint8Array) =>
        Effect.sync(() => void files.set(MemoryCheckpointIO.normalize(path), { bytes: bytes.slice(), modifiedAt: 0 })),
      settle: Effect.orDie(io.flush)
    }
  })
)

/**
 * A tensor of every dtype, including an empty one and a scalar, filled from a seed.
 *
 * @since 0.2.0
 */
export const everyDType = (seed: number): Record<string, HostTensor> => {
  let state = seed >>> 0
  const byte = () => {
    const [s, r] = Random.next(state)
    state = s
    return Math.floor(r * 256)
  }
  const out: Record<string, HostTensor> = {}
  for (const dtype of Checkpoint.DTypes) {
    const shape = [2, 3]
    const C = Checkpoint.arrayConstructor[dtype]
    const data = new C(6)
    const bytes = new Uint8Array(data.buffer)
    for (let i = 0; i < bytes.length; i++) bytes[i] = byte()
    if (dtype === "BOOL") (data as Uint8Array).forEach((v, i, a) => (a[i] = v & 1))
    out[`model/${dtype.toLowerCase()}`] = { dtype, shape, data } as HostTensor
  }
  out["model/scalar"] = Checkpoint.tensor("F32", [], Float32Array.of(3.5))
  out["model/empty"] = Checkpoint.tensor("F32", [3, 0], new Float32Array(0))
  out["optimizer/iter"] = Checkpoint.tensor("I32", [], Int32Array.of(7))
  out["optimizer/model/f32/m"] = Checkpoint.tensor("F32", [2, 3], Float32Array.from([1, 2, 3, 4, 5, 6]))
  return out
}

/**
 * A small but complete checkpoint: every dtype, meta and extra metadata.
 *
 * @since 0.2.0
 */
export const sample = (seed = 1): Checkpoint.Checkpoint =>
  Checkpoint.make({
    tensors: everyDType(seed),
    meta: {
      epoch: 2,
      globalStep: 40,
      loops: { fit: { batchesSeen: 40, position: { epoch: 2, batch: 0 } } },
      callbacks: { "ModelCheckpoint{monitor=val_loss}": { bestModelScore: 0.25 } },
      optimizer: { className: "Adam", config: { learningRate: 0.001, beta1: 0.9 } },
      hyperParameters: { hidden: 128, lr: 0.001 },
      user: { note: "hello" }
    },
    extraMetadata: { source: "test" }
  })

/**
 * The bytes of a tensor's data, as a view.
 *
 * @since 0.2.0
 */
export const bytesOf = (t: HostTensor): Uint8Array => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)

/**
 * Asserts that two tensor records hold the same names, dtypes, shapes, array types
 * and bytes.
 *
 * @since 0.2.0
 */
export const assertSameTensors = (
  actual: Readonly<Record<string, HostTensor>>,
  expected: Readonly<Record<string, HostTensor>>
): void => {
  assert.deepStrictEqual(Object.keys(actual).sort(), Object.keys(expected).sort())
  for (const name of Object.keys(expected)) {
    const a = actual[name]!
    const e = expected[name]!
    assert.strictEqual(a.dtype, e.dtype, name)
    assert.deepStrictEqual([...a.shape], [...e.shape], name)
    assert.strictEqual(a.data.constructor, e.data.constructor, name)
    assert.deepStrictEqual(bytesOf(a), bytesOf(e), name)
  }
}

/**
 * A safetensors file built by hand, the way another writer would (no checksums).
 *
 * @since 0.2.0
 */
export const foreignFile = (header: Record<string, unknown>, data: Uint8Array, pad = true): Uint8Array => {
  const json = new TextEncoder().encode(JSON.stringify(header))
  const length = pad ? Math.ceil(json.length / 8) * 8 : json.length
  const out = new Uint8Array(8 + length + data.length)
  new DataView(out.buffer).setBigUint64(0, BigInt(length), true)
  out.fill(0x20, 8, 8 + length)
  out.set(json, 8)
  out.set(data, 8 + length)
  return out
}

const headerLength = (file: Uint8Array) => Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true))

const expectError = <A, E extends { readonly _tag: string }, R>(
  effect: Effect.Effect<A, E, R>,
  tag: string,
  context: string
) =>
  Effect.gen(function*() {
    const result = yield* Effect.result(effect)
    if (result._tag === "Success") assert.fail(`${context}: expected ${tag}, but it succeeded`)
    else assert.strictEqual(result.failure._tag, tag, `${context}: ${String((result.failure as unknown as Error).message)}`)
    return result._tag === "Failure" ? result.failure : undefined
  })

/**
 * Registers the suite (a `describe` block of `it.effect` tests) for the store that
 * `makeLayer` provides, with its `RawStore`; a fresh layer per test.
 *
 * @since 0.2.0
 */
export const run = (name: string, makeLayer: () => Layer.Layer<CheckpointIO | RawStore>): void => {
  describe(`CheckpointIO behaviour: ${name}`, () => {
    const test = (title: string, body: Effect.Effect<void, unknown, CheckpointIO | RawStore>) =>
      it.effect(title, () => body.pipe(Effect.provide(makeLayer())))

    const setup = Effect.gen(function*() {
      const io = yield* CheckpointIO
      const raw = yield* RawStore
      return { io, raw, at: (file: string) => `${raw.root}/${file}` }
    })

    test(
      "round-trips every dtype, empty and scalar tensors, meta and extra metadata",
      Effect.gen(function*() {
        const { at, io } = yield* setup
        const ckpt = sample(7)
        yield* io.save(ckpt, at("a.ckpt"))
        const loaded = yield* io.load(at("a.ckpt"))
        assertSameTensors(loaded.tensors, ckpt.tensors)
        assert.deepStrictEqual(loaded.meta, ckpt.meta)
        assert.deepStrictEqual({ ...loaded.extraMetadata }, { source: "test" })
      })
    )

    test(
      "a second save replaces the first",
      Effect.gen(function*() {
        const { at, io } = yield* setup
        yield* io.save(sample(1), at("a.ckpt"))
        yield* io.save(sample(2), at("a.ckpt"))
        const loaded = yield* io.load(at("a.ckpt"))
        assertSameTensors(loaded.tensors, sample(2).tensors)
      })
    )

    test(
      "weights-only load keeps the model section and the meta",
      Effect.gen(function*() {
        const { at, io } = yield* setup
        yield* io.save(sample(3), at("a.ckpt"))
        const loaded = yield* io.load(at("a.ckpt"), { weightsOnly: true })
        const expected = Object.fromEntries(Object.entries(sample(3).tensors).filter(([k]) => k.startsWith("model/")))
        assertSameTensors(loaded.tensors, expected)
        assert.isTrue(Option.isSome(loaded.meta))
      })
    )

    test(
      "dtype policies: preserve, refuse for tfjs, convert for tfjs",
      Effect.gen(function*() {
        const { at, io } = yield* setup
        const ckpt = Checkpoint.make({
          tensors: {
            "model/half": Checkpoint.tensor("F16", [3], Uint16Array.of(0x3c00, 0xc000, 0x3555)),
            "model/bf": Checkpoint.tensor("BF16", [2], Uint16Array.of(0x3f80, 0xc040)),
            "model/double": Checkpoint.tensor("F64", [2], Float64Array.of(0.5, -1e10)),
            "model/long": Checkpoint.tensor("I64", [2], BigInt64Array.of(-5n, 2147483647n)),
            "model/byte": Checkpoint.tensor("U8", [2], Uint8Array.of(0, 255)),
            "model/flag": Checkpoint.tensor("BOOL", [2], Uint8Array.of(1, 0))
          },
          meta: { epoch: 0, globalStep: 0 }
        })
        yield* io.save(ckpt, at("d.ckpt"))
        const kept = yield* io.load(at("d.ckpt"))
        assert.strictEqual(kept.tensors["model/half"]!.dtype, "F16")
        const refused = yield* expectError(io.load(at("d.ckpt"), { dtypes: "tfjs" }), "CheckpointInvalidArgument", "tfjs")
        assert.match(String(refused?.message), /is (F16|BF16|F64|I64|U8).*convert/)
        const converted = (yield* io.load(at("d.ckpt"), { dtypes: "convert" })).tensors
        assert.deepStrictEqual([...converted["model/half"]!.data], [1, -2, Math.fround(0.333251953125)])
        assert.deepStrictEqual([...converted["model/bf"]!.data], [1, -3])
        assert.deepStrictEqual([...converted["model/double"]!.data], [0.5, Math.fround(-1e10)])
        assert.deepStrictEqual([...converted["model/long"]!.data], [-5, 2147483647])
        assert.deepStrictEqual([...converted["model/byte"]!.data], [0, 255])
        assert.strictEqual(converted["model/flag"]!.dtype, "BOOL")
        for (const t of Object.values(converted)) assert.include(["F32", "I32", "BOOL"], t.dtype)

        yield* io.save(
          Checkpoint.make({ tensors: { "model/big": Checkpoint.tensor("I64", [1], BigInt64Array.of(1n << 40n)) } }),
          at("big.ckpt")
        )
        const outOfRange = yield* expectError(io.load(at("big.ckpt"), { dtypes: "convert" }), "CheckpointInvalidArgument", "range")
        assert.match(String(outOfRange?.message), /outside the int32 range/)
      })
    )

    test(
      "exists, list (sorted, committed files with sizes and times), remove",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        assert.deepStrictEqual(yield* io.list(raw.root), [])
        assert.deepStrictEqual(yield* io.list(at("missing-dir")), [])
        yield* io.save(sample(1), at("b.ckpt"))
        yield* io.save(sample(1), at("a.ckpt"))
        yield* io.save(sample(1), at("sub/c.ckpt"))
        yield* raw.settle
        assert.isTrue(yield* io.exists(at("a.ckpt")))
        assert.isFalse(yield* io.exists(at("nope.ckpt")))
        const listed = yield* io.list(raw.root)
        assert.deepStrictEqual(listed.map((e) => e.path.slice(raw.root.length)), ["/a.ckpt", "/b.ckpt"])
        for (const entry of listed) {
          assert.strictEqual(entry.size, (yield* raw.read(entry.path)).byteLength)
          assert.isAtLeast(entry.modifiedAt, 0)
        }
        yield* io.remove(at("a.ckpt"))
        yield* io.remove(at("a.ckpt")) // removing a missing checkpoint is not an error
        assert.isFalse(yield* io.exists(at("a.ckpt")))
        yield* expectError(io.load(at("a.ckpt")), "CheckpointNotFound", "load after remove")
        assert.deepStrictEqual((yield* io.list(raw.root)).map((e) => e.path.slice(raw.root.length)), ["/b.ckpt"])
      })
    )

    test(
      "copy: the target gets the source's content, and keeps it when the source is saved again",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        yield* io.save(sample(1), at("a.ckpt"))
        yield* io.copy(at("a.ckpt"), at("sub/last.ckpt"))
        assertSameTensors((yield* io.load(at("sub/last.ckpt"))).tensors, sample(1).tensors)
        yield* io.save(sample(2), at("a.ckpt"))
        yield* io.copy(at("a.ckpt"), at("b.ckpt"))
        assertSameTensors((yield* io.load(at("sub/last.ckpt"))).tensors, sample(1).tensors)
        assertSameTensors((yield* io.load(at("b.ckpt"))).tensors, sample(2).tensors)
        yield* io.copy(at("b.ckpt"), at("b.ckpt")) // onto itself: nothing to do
        assertSameTensors((yield* io.load(at("b.ckpt"))).tensors, sample(2).tensors)
        yield* io.remove(at("a.ckpt"))
        assertSameTensors((yield* io.load(at("b.ckpt"))).tensors, sample(2).tensors)
        yield* expectError(io.copy(at("missing.ckpt"), at("c.ckpt")), "CheckpointNotFound", "copy of a missing checkpoint")
        yield* raw.settle
        assert.deepStrictEqual((yield* io.list(raw.root)).map((e) => e.path.slice(raw.root.length)), ["/b.ckpt"])
      })
    )

    test(
      "refuses invalid checkpoints and paths, and writes nothing",
      Effect.gen(function*() {
        const { at, io } = yield* setup
        const cases: Array<[string, Checkpoint.Checkpoint]> = [
          ["shape mismatch", Checkpoint.make({ tensors: { "model/x": Checkpoint.tensor("F32", [2, 2], new Float32Array(3)) } })],
          ["wrong array", Checkpoint.make({ tensors: { "model/x": { dtype: "F32", shape: [1], data: new Int32Array(1) } } })],
          ["bad bool", Checkpoint.make({ tensors: { "model/x": Checkpoint.tensor("BOOL", [1], Uint8Array.of(2)) } })],
          ["negative dim", Checkpoint.make({ tensors: { "model/x": Checkpoint.tensor("F32", [-1], new Float32Array(0)) } })],
          ["reserved metadata", Checkpoint.make({ tensors: {}, extraMetadata: { "effect_trainer.meta": "{}" } })],
          ["bad meta", Checkpoint.make({ tensors: {}, meta: { epoch: -1, globalStep: 0 } })]
        ]
        for (const [label, ckpt] of cases) {
          yield* expectError(io.save(ckpt, at("bad.ckpt")), "CheckpointInvalidArgument", label)
          assert.isFalse(yield* io.exists(at("bad.ckpt")), label)
        }
        yield* expectError(io.save(sample(1), ""), "CheckpointInvalidArgument", "empty path")
        yield* expectError(io.save(sample(1), at("dir/")), "CheckpointInvalidArgument", "directory path")
      })
    )

    test(
      "writes the safetensors layout byte for byte",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        const ckpt = sample(5)
        yield* io.save(ckpt, at("layout.ckpt"))
        yield* raw.settle
        const file = yield* raw.read(at("layout.ckpt"))
        const n = headerLength(file)
        assert.strictEqual((8 + n) % 8, 0, "header padded to a multiple of 8")
        const text = new TextDecoder().decode(file.subarray(8, 8 + n))
        assert.match(text, /^\{.*\} *$/s, "JSON padded with spaces")
        const header = JSON.parse(text) as Record<string, { dtype: string; shape: Array<number>; data_offsets: [number, number] }>
        const metadata = header["__metadata__"] as unknown as Record<string, string>
        assert.strictEqual(metadata["effect_trainer.format"], "1")
        for (const value of Object.values(metadata)) assert.isString(value)
        const entries = Object.entries(header).filter(([k]) => k !== "__metadata__")
        assert.strictEqual(entries.length, Object.keys(ckpt.tensors).length)
        let expected = 0
        for (const [name, entry] of entries.sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0])) {
          const t = ckpt.tensors[name]!
          assert.strictEqual(entry.dtype, t.dtype)
          assert.deepStrictEqual(entry.shape, [...t.shape])
          assert.strictEqual(entry.data_offsets[0], expected, `${name} starts where the previous ended`)
          const stored = file.subarray(8 + n + entry.data_offsets[0], 8 + n + entry.data_offsets[1])
          assert.deepStrictEqual(stored, bytesOf(t), `${name} bytes, little-endian, row-major`)
          expected = entry.data_offsets[1]
        }
        assert.strictEqual(8 + n + expected, file.byteLength, "data ends exactly at end of file")
      })
    )

    test(
      "loads files from other safetensors writers",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        const data = new Uint8Array(4 + 2 + 8)
        new DataView(data.buffer).setFloat32(0, 1.5, true)
        new DataView(data.buffer).setUint16(4, 0x3c00, true)
        new DataView(data.buffer).setBigInt64(6, -3n, true)
        // Keys in another order than the data, unpadded header, a foreign metadata entry.
        const file = foreignFile(
          {
            "b": { dtype: "F16", shape: [1], data_offsets: [4, 6] },
            "__metadata__": { format: "pt" },
            "a": { dtype: "F32", shape: [], data_offsets: [0, 4] },
            "c": { dtype: "I64", shape: [1, 1], data_offsets: [6, 14] }
          },
          data,
          false
        )
        yield* raw.write(at("foreign.safetensors"), file)
        const loaded = yield* io.load(at("foreign.safetensors"))
        assert.isTrue(Option.isNone(loaded.meta))
        assert.deepStrictEqual({ ...loaded.extraMetadata }, { format: "pt" })
        assert.deepStrictEqual([...loaded.tensors["a"]!.data], [1.5])
        assert.deepStrictEqual([...loaded.tensors["c"]!.data], [-3n])
        const weights = yield* io.load(at("foreign.safetensors"), { weightsOnly: true, dtypes: "convert" })
        assert.deepStrictEqual(Object.keys(weights.tensors).sort(), ["a", "b", "c"])
        assert.deepStrictEqual([...weights.tensors["b"]!.data], [1])
      })
    )

    test(
      "truncation at any offset is a typed corrupt error",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        yield* io.save(sample(9), at("t.ckpt"))
        yield* raw.settle
        const file = yield* raw.read(at("t.ckpt"))
        const n = headerLength(file)
        const offsets = new Set<number>([0, 1, 7, 8, 9, n, n + 7, n + 8, n + 9, file.byteLength - 1])
        for (let k = 0; k < file.byteLength; k += 13) offsets.add(k)
        for (const offset of offsets) {
          yield* raw.write(at("cut.ckpt"), file.slice(0, offset))
          const error = yield* expectError(io.load(at("cut.ckpt")), "CheckpointCorrupt", `truncated at ${offset}`)
          assert.include(String(error?.message), "cut.ckpt", "the error names the file")
        }
        // Appended bytes are as wrong as missing ones.
        const longer = new Uint8Array(file.byteLength + 4)
        longer.set(file)
        yield* raw.write(at("long.ckpt"), longer)
        yield* expectError(io.load(at("long.ckpt")), "CheckpointCorrupt", "trailing bytes")
      })
    )

    test(
      "a flipped byte anywhere in the header or the data is a typed corrupt error",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        yield* io.save(sample(11), at("f.ckpt"))
        yield* raw.settle
        const file = yield* raw.read(at("f.ckpt"))
        const n = headerLength(file)
        const positions: Array<number> = []
        for (let p = 0; p < 8 + n; p++) positions.push(p) // every header byte, the length prefix too
        for (let p = 8 + n; p < file.byteLength; p += 3) positions.push(p)
        for (const p of positions) {
          const copy = file.slice()
          copy[p] = copy[p]! ^ (1 << (p % 8))
          yield* raw.write(at("flip.ckpt"), copy)
          const error = yield* expectError(io.load(at("flip.ckpt")), "CheckpointCorrupt", `bit ${p % 8} of byte ${p}`)
          if (p >= 8 + n) assert.match(String(error?.message), /checksum/, `data flip at ${p} caught by its checksum: ${error?.message}`)
        }
      })
    )

    test(
      "bad headers are typed corrupt errors with the reason",
      Effect.gen(function*() {
        const { at, io, raw } = yield* setup
        const f32 = (n: number) => new Uint8Array(4 * n)
        const cases: Array<[string, Uint8Array, RegExp]> = [
          ["empty", new Uint8Array(0), /shorter than the 8-byte header length/],
          [
            "huge header length",
            (() => {
              const f = foreignFile({}, new Uint8Array(0))
              new DataView(f.buffer).setBigUint64(0, 1n << 40n, true)
              return f
            })(),
            /exceeds the .*limit/
          ],
          [
            "header past end",
            (() => {
              const f = foreignFile({}, new Uint8Array(0))
              new DataView(f.buffer).setBigUint64(0, 4096n, true)
              return f
            })(),
            /past the end/
          ],
          [
            "bad JSON",
            (() => {
              const f = foreignFile({ a: 1 }, new Uint8Array(0))
              f[8] = "[".charCodeAt(0)
              return f
            })(),
            /not valid JSON|not a JSON object/
          ],
          ["not an object", foreignFile([1, 2] as unknown as Record<string, unknown>, new Uint8Array(0)), /not a JSON object/],
          ["unknown dtype", foreignFile({ a: { dtype: "Q7", shape: [1], data_offsets: [0, 4] } }, f32(1)), /invalid header entry/],
          ["out of range", foreignFile({ a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, f32(1)), /past the 4-byte data buffer/],
          [
            "overlap",
            foreignFile({
              a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
              b: { dtype: "F32", shape: [2], data_offsets: [4, 12] }
            }, f32(3)),
            /overlaps/
          ],
          [
            "hole",
            foreignFile({
              a: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
              b: { dtype: "F32", shape: [1], data_offsets: [8, 12] }
            }, f32(3)),
            /hole/
          ],
          ["shape vs bytes", foreignFile({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, f32(2)), /but 8 bytes/],
          ["absurd shape", foreignFile({ a: { dtype: "F32", shape: [1e9, 1e9, 1e9], data_offsets: [0, 4] } }, f32(1)), /but 4 bytes/],
          ["reversed offsets", foreignFile({ a: { dtype: "F32", shape: [0], data_offsets: [4, 0] } }, f32(1)), /end before they begin/],
          ["metadata not strings", foreignFile({ __metadata__: { a: 1 } }, new Uint8Array(0)), /__metadata__/],
          ["bad bool", foreignFile({ a: { dtype: "BOOL", shape: [1], data_offsets: [0, 1] } }, Uint8Array.of(7)), /BOOL/]
        ]
        for (const [label, bytes, reason] of cases) {
          yield* raw.write(at("bad.ckpt"), bytes)
          const error = yield* expectError(io.load(at("bad.ckpt")), "CheckpointCorrupt", label)
          assert.match(String(error?.message), reason, label)
        }
      })
    )
  })
}
