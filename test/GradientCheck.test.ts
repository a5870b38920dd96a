import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs"
import { Effect } from "effect"
import * as Device from "../src/Device.ts"
import * as GradientCheck from "../src/GradientCheck.ts"
import * as WasmKernels from "../src/WasmKernels.ts"

/** Runs `f` on a Device on `backend`, released when `f` ends. */
const on = <A>(backend: Device.BackendName, f: () => A) => Effect.scoped(Effect.flatMap(Device.make(backend), () => Effect.sync(f)))

/** max |a - b| / max |a| (0 when both are all zeros). */
const relativeError = (expected: Float32Array, actual: Float32Array): number => {
  assert.strictEqual(actual.length, expected.length)
  return GradientCheck.difference(expected, actual).rel
}

interface KernelCase {
  readonly kernel: string
  readonly name: string
  /** Builds the kernel's inputs from the generator on the active backend. */
  readonly inputs: (random: GradientCheck.Generator) => Record<string, tf.Tensor>
  readonly attrs: Record<string, unknown>
}

const tensorOf = (random: GradientCheck.Generator, shape: Array<number>, kind: GradientCheck.InputKind = "mixed") =>
  tf.tensor(GradientCheck.fill(kind, shape.reduce((a, b) => a * b, 1), random), shape)

const pool2D = (
  x: Array<number>,
  filterSize: number,
  strides: number,
  pad: "valid" | "same",
  kind: GradientCheck.InputKind
): KernelCase => ({
  kernel: tf.MaxPoolGrad,
  name: `x [${x}], pool ${filterSize}, stride ${strides}, ${pad}, ${kind}`,
  attrs: { filterSize, strides, pad },
  inputs: (random) => {
    const input = tensorOf(random, x, kind) as tf.Tensor4D
    const output = tf.maxPool(input, filterSize, strides, pad)
    return { input, output, dy: tensorOf(random, [...output.shape]) }
  }
})

const pool3D = (
  kernel: string,
  x: Array<number>,
  filterSize: number,
  strides: number,
  pad: "valid" | "same",
  kind: GradientCheck.InputKind
): KernelCase => ({
  kernel,
  name: `x [${x}], pool ${filterSize}, stride ${strides}, ${pad}, ${kind}`,
  attrs: { filterSize, strides, pad, dataFormat: "NDHWC" },
  inputs: (random) => {
    const input = tensorOf(random, x, kind)
    if (kernel === tf.MaxPool3D) return { x: input }
    const info = tf.backend_util.computePool3DInfo(x as [number, number, number, number, number], filterSize, strides, 1, pad)
    const dy = tensorOf(random, info.outShape)
    return { input, dy, output: tf.zeros(info.outShape) }
  }
})

const conv3D = (
  kernel: string,
  x: Array<number>,
  filter: Array<number>,
  strides: number | [number, number, number],
  pad: "valid" | "same"
): KernelCase => ({
  kernel,
  name: `x [${x}], filter [${filter}], stride ${strides}, ${pad}`,
  attrs: kernel === tf.Conv3DBackpropFilterV2 ? { strides, pad, filterShape: filter } : { strides, pad, inputShape: x },
  inputs: (random) => {
    const info = tf.backend_util.computeConv3DInfo(
      x as [number, number, number, number, number],
      filter as [number, number, number, number, number],
      strides,
      1,
      pad
    )
    const dy = tensorOf(random, info.outShape)
    return kernel === tf.Conv3DBackpropFilterV2 ? { x: tensorOf(random, x), dy } : { dy, filter: tensorOf(random, filter) }
  }
})

const depthwise = (kernel: string, x: Array<number>, filter: Array<number>, strides: number, pad: "valid" | "same"): KernelCase => ({
  kernel,
  name: `x [${x}], filter [${filter}], stride ${strides}, ${pad}`,
  attrs: kernel === tf.DepthwiseConv2dNativeBackpropFilter
    ? { strides, pad, dilations: 1, filterShape: filter }
    : { strides, pad, dilations: 1, inputShape: x },
  inputs: (random) => {
    const info = tf.backend_util.computeConv2DInfo(
      x as [number, number, number, number],
      filter as [number, number, number, number],
      strides,
      1,
      pad,
      undefined,
      true
    )
    const dy = tensorOf(random, info.outShape)
    return kernel === tf.DepthwiseConv2dNativeBackpropFilter ? { x: tensorOf(random, x), dy } : { dy, filter: tensorOf(random, filter) }
  }
})

const segmentSum = (name: string, x: Array<number>, ids: Array<number>, idShape: Array<number>, numSegments: number): KernelCase => ({
  kernel: tf.UnsortedSegmentSum,
  name,
  attrs: { numSegments },
  inputs: (random) => ({ x: tensorOf(random, x), segmentIds: tf.tensor(ids, idShape, "int32") })
})

/** The kernels WasmKernels registers, each on inputs with mixed signs, zeros and ties, strides 1 and 2, both paddings. */
const kernelCases: ReadonlyArray<KernelCase> = [
  ...(["mixed", "negative", "relu"] as const).flatMap((kind) => [
    pool2D([2, 7, 6, 3], 2, 2, "valid", kind),
    pool2D([2, 7, 6, 3], 3, 1, "same", kind),
    pool2D([1, 8, 8, 2], 2, 1, "valid", kind),
    pool2D([2, 5, 6, 2], 3, 2, "same", kind),
    pool3D(tf.MaxPool3D, [2, 4, 5, 4, 2], 2, 1, "same", kind),
    pool3D(tf.MaxPool3D, [2, 4, 5, 4, 2], 2, 2, "valid", kind),
    pool3D(tf.MaxPool3DGrad, [2, 4, 5, 4, 2], 2, 1, "same", kind),
    pool3D(tf.MaxPool3DGrad, [2, 5, 4, 5, 2], 3, 2, "same", kind),
    pool3D(tf.MaxPool3DGrad, [1, 4, 4, 4, 3], 2, 2, "valid", kind)
  ]),
  ...[tf.Conv3DBackpropFilterV2, tf.Conv3DBackpropInputV2].flatMap((kernel) => [
    conv3D(kernel, [2, 5, 6, 5, 3], [2, 3, 2, 3, 4], 1, "valid"),
    conv3D(kernel, [2, 5, 6, 5, 3], [2, 3, 2, 3, 4], 1, "same"),
    conv3D(kernel, [2, 5, 6, 5, 3], [2, 3, 2, 3, 4], 2, "valid"),
    conv3D(kernel, [2, 6, 5, 7, 2], [3, 2, 3, 2, 3], 2, "same"),
    conv3D(kernel, [1, 5, 7, 6, 2], [2, 3, 3, 2, 2], [1, 2, 3], "same")
  ]),
  ...[tf.DepthwiseConv2dNativeBackpropFilter, tf.DepthwiseConv2dNativeBackpropInput].flatMap((kernel) => [
    depthwise(kernel, [2, 7, 6, 3], [3, 2, 3, 2], 1, "valid"),
    depthwise(kernel, [2, 7, 6, 3], [3, 3, 3, 1], 1, "same"),
    depthwise(kernel, [2, 7, 6, 3], [3, 2, 3, 2], 2, "valid"),
    depthwise(kernel, [2, 8, 7, 2], [3, 3, 2, 3], 2, "same")
  ]),
  segmentSum("1-D ids with duplicates and out-of-range ids", [7, 3], [0, 2, 2, -1, 3, 9, 0], [7], 4),
  segmentSum("rank-3 data", [6, 2, 2], [1, 1, 0, 2, 4, 1], [6], 5)
]

const runKernels = (cases: ReadonlyArray<KernelCase>, implementation: (c: KernelCase) => tf.KernelFunc | "registered") =>
  cases.map((c, index) =>
    tf.tidy(() => {
      const inputs = c.inputs(GradientCheck.generator(500 + index))
      const chosen = implementation(c)
      const result = chosen === "registered"
        ? tf.engine().runKernel(c.kernel, inputs as tf.NamedTensorMap, c.attrs as tf.NamedAttrMap) as tf.Tensor
        : chosen({ inputs, attrs: c.attrs as tf.NamedAttrMap, backend: tf.backend() }) as tf.TensorInfo
      // Upstream's kernels return a bare TensorInfo.
      const tensor = result instanceof tf.Tensor ? result : tf.engine().makeTensorFromTensorInfo(result)
      return Float32Array.from(tensor.dataSync())
    })
  )

describe("GradientCheck and the wasm kernels", () => {
  it.effect("issue 20.1: the MaxPoolGrad repro gives no difference from cpu on wasm through Device, for all four input kinds", () =>
    Effect.gen(function*() {
      const repro = GradientCheck.cases(GradientCheck.quick).filter((c) => c.layer === "tf.maxPool (issue 20)")
      assert.deepStrictEqual(repro.map((c) => c.name.split(", ").pop()), ["mixed", "negative", "relu", "positive"])
      const rows = yield* GradientCheck.check({ cases: repro })
      for (const row of rows) {
        assert.strictEqual(row.backend, "wasm")
        assert.isAtMost(row.worstAbs, 1e-6, row.name)
      }
    }))

  it.effect("issue 20.2: every layer's output and gradients on wasm agree with cpu (quick sizes)", () =>
    Effect.gen(function*() {
      const rows = yield* GradientCheck.check({ cases: GradientCheck.cases(GradientCheck.quick) })
      const failures = rows.filter((row) => !row.pass && row.unsupported === undefined)
      assert.deepStrictEqual(failures.map((row) => `${row.layer} ${row.name}: ${row.error ?? row.worstRel}`), [])
      // Only what tfjs cannot differentiate on any backend is left out, and only while cpu cannot either.
      assert.deepStrictEqual([...new Set(rows.filter((row) => !row.pass).map((row) => `${row.layer} on ${row.backend}`))], [
        "conv3dTranspose on cpu",
        "thresholdedReLU on cpu"
      ])
      const layers = new Set(rows.map((row) => row.layer))
      for (
        const layer of [
          "dense",
          "conv1d",
          "conv2d",
          "conv3d",
          "conv2dTranspose",
          "conv3dTranspose",
          "depthwiseConv2d",
          "separableConv2d",
          "maxPooling1d",
          "maxPooling2d",
          "maxPooling3d",
          "averagePooling1d",
          "averagePooling2d",
          "averagePooling3d",
          "globalMaxPooling1d",
          "globalMaxPooling2d",
          "globalAveragePooling1d",
          "globalAveragePooling2d",
          "batchNormalization",
          "layerNormalization",
          "dropout",
          "embedding",
          "simpleRNN",
          "gru",
          "lstm",
          "activation",
          "reshape",
          "flatten",
          "concatenate",
          "loss"
        ]
      ) assert.isTrue(layers.has(layer), layer)
      const table = GradientCheck.table(rows, true)
      assert.include(table, "| conv3dTranspose | 4 |")
      assert.include(table, "n/a: tfjs 4.22 registers no gradient for Conv3DBackpropInputV2")
    }))

  it.effect("issue 20.3: each kernel WasmKernels registers matches cpu's own, on wasm and (as a composite) on cpu", () =>
    Effect.gen(function*() {
      const reference = yield* on("cpu", () => runKernels(kernelCases, () => "registered"))
      const ours = new Map(WasmKernels.wasmKernelConfigs.map((config) => [config.kernelName, config.kernelFunc]))
      const compositeOnCpu = yield* on("cpu", () => runKernels(kernelCases, (c) => ours.get(c.kernel)!))
      const onWasm = yield* on("wasm", () => {
        for (const { kernelName } of WasmKernels.wasmKernelConfigs) {
          assert.strictEqual(tf.getKernel(kernelName, "wasm")?.kernelFunc, ours.get(kernelName), kernelName)
        }
        const before = tf.memory().numTensors
        const result = runKernels(kernelCases, () => "registered")
        assert.strictEqual(tf.memory().numTensors, before, "the kernels leak no tensor")
        return result
      })
      for (const [index, c] of kernelCases.entries()) {
        assert.isBelow(relativeError(reference[index]!, compositeOnCpu[index]!), 1e-5, `composite on cpu: ${c.kernel} ${c.name}`)
        assert.isBelow(relativeError(reference[index]!, onWasm[index]!), 1e-5, `wasm: ${c.kernel} ${c.name}`)
      }
    }))

  it.effect("issue 20.4: upstream's wasm kernels we replace are still wrong (when this fails, check theirs and drop ours)", () =>
    Effect.gen(function*() {
      const replaced = [tf.MaxPoolGrad, tf.MaxPool3D, tf.MaxPool3DGrad, tf.Conv3DBackpropFilterV2, tf.Conv3DBackpropInputV2]
      const cases = kernelCases.filter((c) => replaced.includes(c.kernel) && !c.name.endsWith("relu"))
      const reference = yield* on("cpu", () => runKernels(cases, () => "registered"))
      const upstream = yield* on("wasm", () => {
        for (const name of replaced) WasmKernels.upstreamKernel(name)!.setupFunc?.(tf.backend())
        return runKernels(cases, (c) => WasmKernels.upstreamKernel(c.kernel)!.kernelFunc)
      })
      for (const name of replaced) {
        const worst = Math.max(
          ...cases.flatMap((c, index) => c.kernel === name ? [relativeError(reference[index]!, upstream[index]!)] : [])
        )
        assert.isAbove(worst, 1e-2, name)
      }
    }))

  it("issue 20.5: the table has the columns of the docs", () => {
    const row: GradientCheck.Row = {
      layer: "dense",
      name: "a",
      backend: "wasm",
      worstAbs: 1e-7,
      worstRel: 0,
      worst: "input",
      tolerance: 1e-4,
      pass: true
    }
    assert.strictEqual(
      GradientCheck.table([row]),
      "| layer | case | backend | worst abs | worst rel | tolerance | pass |\n|---|---|---|---|---|---|---|\n| dense | a | wasm | 1.0e-7 | 0 | 1.0e-4 | yes |"
    )
  })
})
