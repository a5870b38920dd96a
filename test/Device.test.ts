import { assert, describe, it } from "@effect/vitest"
import * as tf from "@tensorflow/tfjs"
import { ConfigProvider, Effect, Logger } from "effect"
import { vi } from "vitest"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as Device from "../src/Device.ts"
import * as GradientCheck from "../src/GradientCheck.ts"
import * as WasmKernels from "../src/WasmKernels.ts"
import { seeded } from "./support/random.ts"

/** Runs `f` with a Device on `choice`, released when `f` ends. */
const withDevice = <A, E>(choice: Device.BackendChoice, f: (device: Device.DeviceShape) => Effect.Effect<A, E>) =>
  Effect.flatMap(Effect.service(Device.Device), f).pipe(Effect.provide(Device.layer(choice)))

/** Collects the messages logged at `Warn` while `self` runs. */
const warningsOf = <A, E, R>(self: Effect.Effect<A, E, R>) => {
  const warnings: Array<string> = []
  const capture = Logger.make(({ logLevel, message }) => {
    if (logLevel === "Warn") warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
  })
  return self.pipe(
    Effect.provideService(Logger.CurrentLoggers, new Set([capture])),
    Effect.map((a) => [a, warnings] as const)
  )
}

const randomArray = (random: ReturnType<typeof seeded>, n: number): Float32Array =>
  Float32Array.from({ length: n }, () => random.next() * 2 - 1)

/** max |a - b| / max |a|. */
const relativeError = (expected: Float32Array, actual: Float32Array): number => {
  assert.strictEqual(actual.length, expected.length)
  return GradientCheck.difference(expected, actual).rel
}

describe("Device", () => {
  describe("backends", () => {
    it.effect("cpu and wasm come up by name, on no GPU", () =>
      Effect.gen(function*() {
        for (const choice of ["cpu", "wasm"] as const) {
          const seen = yield* withDevice(choice, (device) =>
            Effect.sync(() => ({ backend: device.backend, isGpu: device.isGpu, active: tf.getBackend() })))
          assert.deepStrictEqual(seen, { backend: choice, isGpu: false, active: choice })
        }
      }))

    it.effect("tensorflow fails with a DeviceError when tfjs-node is not installed", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(withDevice("tensorflow", () => Effect.void))
        assert.strictEqual(error._tag, "DeviceError")
        assert.strictEqual(error.backend, "tensorflow")
        assert.include(error.reason, "@tensorflow/tfjs-node-gpu: not installed")
        assert.include(error.reason, "@tensorflow/tfjs-node: not installed")
        assert.include(error.message, "device tensorflow")
        // The failed acquire left the slot free.
        const backend = yield* withDevice("cpu", (device) => Effect.succeed(device.backend))
        assert.strictEqual(backend, "cpu")
      }))

    it.effect("auto falls back to wasm, with an info line (not a warning) for the absent packages", () =>
      Effect.gen(function*() {
        const [backend, warnings] = yield* warningsOf(withDevice("auto", (device) => Effect.succeed(device.backend)))
        assert.strictEqual(backend, "wasm")
        assert.deepStrictEqual(warnings, [])
      }))

    it.effect("layerConfig reads EFFECT_TRAINER_BACKEND, default auto", () =>
      Effect.gen(function*() {
        const backendFrom = (env: Record<string, string>) =>
          Effect.flatMap(Effect.service(Device.Device), (device) => Effect.succeed(device.backend)).pipe(
            Effect.provide(Device.layerConfig),
            Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnvRecord(env)))
          )
        assert.strictEqual(yield* backendFrom({ EFFECT_TRAINER_BACKEND: "cpu" }), "cpu")
        assert.strictEqual(yield* backendFrom({}), "wasm")
        const error = yield* Effect.flip(backendFrom({ EFFECT_TRAINER_BACKEND: "tpu" }))
        assert.strictEqual(error._tag, "ConfigError")
      }))

    it.effect("a second live Device fails; one after release works", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(withDevice("cpu", () => withDevice("wasm", () => Effect.void)))
        assert.strictEqual(error.backend, "wasm")
        assert.include(error.reason, "another Device (cpu) is live")
        // The outer one was released with its scope; both come up again.
        assert.strictEqual(yield* withDevice("wasm", (device) => Effect.succeed(device.backend)), "wasm")
        assert.strictEqual(yield* withDevice("cpu", (device) => Effect.succeed(device.backend)), "cpu")
      }))
  })

  describe("stage and upload", () => {
    it.effect("stage copies on cpu: writing the tensor's own array later leaves the snapshot alone", () =>
      withDevice("cpu", (device) =>
        Effect.gen(function*() {
          const f = device.tf.tensor2d([[1.5, -2], [3, 4.25]])
          const i = device.tf.tensor1d([7, -8, 9], "int32")
          const b = device.tf.tensor([true, false, true, true], [2, 1, 2], "bool")
          const s = device.tf.scalar(5)
          const staged = yield* device.stage({ f, i, b, s })
          assert.deepStrictEqual(staged, {
            f: Checkpoint.tensor("F32", [2, 2], Float32Array.of(1.5, -2, 3, 4.25)),
            i: Checkpoint.tensor("I32", [3], Int32Array.of(7, -8, 9)),
            b: Checkpoint.tensor("BOOL", [2, 1, 2], Uint8Array.of(1, 0, 1, 1)),
            s: Checkpoint.tensor("F32", [], Float32Array.of(5))
          })
          // On cpu dataSync() hands out the tensor's own backing array...
          const backing = f.dataSync()
          backing[0] = 99
          assert.strictEqual(f.dataSync()[0], 99)
          ;(i.dataSync() as Int32Array)[0] = 99
          // ...which the staged copy does not share.
          assert.strictEqual(staged["f"]!.data[0], 1.5)
          assert.strictEqual(staged["i"]!.data[0], 7)
        })))

    for (const choice of ["cpu", "wasm"] as const) {
      it.effect(`upload round trip on ${choice}; the tensors do not alias the host arrays`, () =>
        withDevice(choice, (device) =>
          Effect.gen(function*() {
            const host = {
              f: Checkpoint.tensor("F32", [3, 2], Float32Array.of(1, 2, 3, 4, 5, 6.5)),
              i: Checkpoint.tensor("I32", [2], Int32Array.of(-1, 2147483647)),
              b: Checkpoint.tensor("BOOL", [3], Uint8Array.of(0, 1, 1)),
              s: Checkpoint.tensor("I32", [], Int32Array.of(42))
            }
            const uploaded = yield* device.upload(host)
            assert.deepStrictEqual(
              Object.fromEntries(Object.entries(uploaded).map(([name, t]) => [name, [t.dtype, t.shape]])),
              { f: ["float32", [3, 2]], i: ["int32", [2]], b: ["bool", [3]], s: ["int32", []] }
            )
            host.f.data[0] = -100
            host.b.data[0] = 1
            assert.deepStrictEqual(yield* device.stage(uploaded), {
              f: Checkpoint.tensor("F32", [3, 2], Float32Array.of(1, 2, 3, 4, 5, 6.5)),
              i: Checkpoint.tensor("I32", [2], Int32Array.of(-1, 2147483647)),
              b: Checkpoint.tensor("BOOL", [3], Uint8Array.of(0, 1, 1)),
              s: Checkpoint.tensor("I32", [], Int32Array.of(42))
            })
            tf.dispose(Object.values(uploaded))
          })))
    }

    it.effect("upload refuses dtypes tfjs has no kernel for, naming the tensor, and allocates nothing", () =>
      withDevice("wasm", (device) =>
        Effect.gen(function*() {
          const before = tf.memory().numTensors
          const error = yield* Effect.flip(device.upload({
            "model/ok": Checkpoint.tensor("F32", [1], Float32Array.of(1)),
            "model/wide": Checkpoint.tensor("F64", [2], Float64Array.of(1, 2))
          }))
          assert.strictEqual(error._tag, "DeviceError")
          assert.strictEqual(error.backend, "wasm")
          assert.include(error.reason, `"model/wide"`)
          assert.include(error.reason, "F64")
          const short = yield* Effect.flip(device.upload({ t: Checkpoint.tensor("F32", [2, 2], Float32Array.of(1, 2, 3)) }))
          assert.include(short.reason, `"t"`)
          assert.include(short.reason, "4 elements")
          assert.strictEqual(tf.memory().numTensors, before)
        })))

    it.effect("stage refuses other dtypes and disposed tensors; both refuse after release", () =>
      Effect.gen(function*() {
        const device = yield* withDevice("cpu", (device) =>
          Effect.gen(function*() {
            const complex = device.tf.complex([1], [2])
            const wrongType = yield* Effect.flip(device.stage({ c: complex }))
            assert.include(wrongType.reason, `"c"`)
            assert.include(wrongType.reason, "complex64")
            const gone = device.tf.scalar(1)
            gone.dispose()
            const disposed = yield* Effect.flip(device.stage({ gone }))
            assert.include(disposed.reason, "disposed")
            return device
          }))
        const afterStage = yield* Effect.flip(device.stage({}))
        assert.include(afterStage.reason, "released")
        const afterUpload = yield* Effect.flip(device.upload({}))
        assert.include(afterUpload.reason, "released")
      }))
  })

  describe("release", () => {
    it.effect("disposes the tensors and variables the run allocated, and nothing else", () =>
      Effect.gen(function*() {
        const before = tf.variable(tf.zeros([2]), true, "before-the-run")
        const baseline = tf.memory().numTensors
        const [, warnings] = yield* warningsOf(withDevice("cpu", (device) =>
          Effect.gen(function*() {
            const tf = device.tf
            const a = tf.ones([3, 3])
            tf.variable(tf.randomNormal([4, 4], 0, 1, "float32", 1), true, "run-weights")
            tf.tidy(() => tf.matMul(a, a))
            yield* device.upload({ u: Checkpoint.tensor("F32", [1], Float32Array.of(1)) })
            const optimizer = tf.train.adam(0.1)
            const w = tf.variable(tf.ones([2]))
            optimizer.minimize(() => tf.sum(tf.square(w)))
            assert.isAbove(tf.memory().numTensors, baseline + 5)
          })))
        assert.strictEqual(tf.memory().numTensors, baseline)
        assert.deepStrictEqual(warnings, [])
        assert.isFalse(before.isDisposed)
        assert.deepStrictEqual(Object.keys(tf.engine().state.registeredVariables), ["before-the-run"])
        before.dispose()
      }))

    it.effect("warns about tensors that outlive the run", () =>
      Effect.gen(function*() {
        const baseline = tf.memory().numTensors
        const [kept, warnings] = yield* warningsOf(withDevice("cpu", (device) => Effect.sync(() => device.tf.keep(device.tf.ones([2])))))
        assert.strictEqual(warnings.length, 1)
        assert.include(warnings[0]!, "1 tensor(s) outlived the run")
        kept.dispose()
        assert.strictEqual(tf.memory().numTensors, baseline)
      }))

    it.effect("a long run does not accumulate disposed tensors in its tfjs scope", () =>
      withDevice("cpu", (device) =>
        Effect.sync(() => {
          for (let i = 0; i < 5000; i++) device.tf.scalar(i).dispose()
          assert.isBelow(tf.engine().state.activeScope.track.length, 2048)
        })))
  })

  describe("wasm Conv2DBackpropFilter", () => {
    interface Case {
      readonly name: string
      readonly x: [number, number, number, number]
      readonly filter: [number, number, number, number]
      readonly strides: number | [number, number]
      readonly pad: tf.Conv2DBackpropFilterAttrs["pad"]
      readonly dimRoundingMode?: "floor" | "round" | "ceil"
    }
    // NHWC inputs, [FH, FW, C, O] filters.
    const cases: ReadonlyArray<Case> = [
      { name: "stride 1, same", x: [2, 7, 6, 3], filter: [3, 3, 3, 4], strides: 1, pad: "same" },
      { name: "stride 1, valid, 1 channel", x: [1, 5, 5, 1], filter: [3, 3, 1, 1], strides: 1, pad: "valid" },
      { name: "stride 2, same, non-square kernel", x: [2, 7, 6, 3], filter: [3, 2, 3, 4], strides: 2, pad: "same" },
      { name: "stride 2, valid, non-square kernel", x: [3, 8, 9, 2], filter: [2, 3, 2, 5], strides: 2, pad: "valid" },
      { name: "strides [2, 3], valid, 1xK kernel", x: [2, 8, 10, 2], filter: [1, 3, 2, 3], strides: [2, 3], pad: "valid" },
      { name: "stride 2, pad 1", x: [2, 6, 6, 2], filter: [3, 3, 2, 2], strides: 2, pad: 1 },
      { name: "stride 2, explicit", x: [2, 6, 7, 2], filter: [3, 2, 2, 3], strides: 2, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] }
    ]
    const inputsOf = (c: Case, seed: number) => {
      const random = seeded(seed)
      return {
        x: randomArray(random, Checkpoint.elementCount(c.x)),
        filter: randomArray(random, Checkpoint.elementCount(c.filter))
      }
    }
    /** d sum(conv2d(x, w)) / dw, copied out. */
    const filterGradient = (c: Case, inputs: ReturnType<typeof inputsOf>) =>
      tf.tidy(() => {
        const x = tf.tensor4d(inputs.x, c.x)
        const gradient = tf.grad((w: tf.Tensor) => tf.sum(tf.conv2d(x, w as tf.Tensor4D, c.strides, c.pad, "NHWC", 1, c.dimRoundingMode)))
        return gradient(tf.tensor4d(inputs.filter, c.filter)).dataSync().slice() as Float32Array
      })
    /** The kernel itself with a random dy, any output size (rounding modes included). */
    const kernelCases: ReadonlyArray<Case & { readonly dataFormat: "NHWC" | "NCHW" }> = [
      ...cases.map((c) => ({ ...c, dataFormat: "NHWC" as const })),
      { name: "pad 1, ceil", x: [1, 5, 5, 2], filter: [2, 2, 2, 3], strides: 2, pad: 1, dimRoundingMode: "ceil", dataFormat: "NHWC" },
      { name: "pad 2, round", x: [2, 5, 6, 1], filter: [2, 3, 1, 2], strides: 2, pad: 2, dimRoundingMode: "round", dataFormat: "NHWC" },
      { name: "NCHW, same, stride 2", x: [2, 3, 7, 6], filter: [3, 2, 3, 4], strides: 2, pad: "same", dataFormat: "NCHW" }
    ]
    const kernelInputsOf = (c: (typeof kernelCases)[number], seed: number) => {
      const random = seeded(seed)
      const channelsFirst = c.dataFormat === "NCHW" ? "channelsFirst" : "channelsLast"
      const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad, c.dimRoundingMode, false, channelsFirst)
      const dyShape: [number, number, number, number] = c.dataFormat === "NCHW"
        ? [info.batchSize, info.outChannels, info.outHeight, info.outWidth]
        : [info.batchSize, info.outHeight, info.outWidth, info.outChannels]
      return {
        x: randomArray(random, Checkpoint.elementCount(c.x)),
        dy: randomArray(random, Checkpoint.elementCount(dyShape)),
        dyShape
      }
    }
    const runKernel = (
      c: (typeof kernelCases)[number],
      inputs: ReturnType<typeof kernelInputsOf>,
      implementation: "registered" | "composite"
    ) =>
      tf.tidy(() => {
        const x = tf.tensor4d(inputs.x, c.x)
        const dy = tf.tensor4d(inputs.dy, inputs.dyShape)
        const attrs: tf.Conv2DBackpropFilterAttrs = {
          strides: c.strides,
          pad: c.pad,
          dataFormat: c.dataFormat,
          filterShape: c.filter,
          ...(c.dimRoundingMode === undefined ? {} : { dimRoundingMode: c.dimRoundingMode })
        }
        const result = implementation === "composite"
          ? WasmKernels.conv2DBackpropFilter(x, dy, attrs)
          : tf.engine().runKernel(tf.Conv2DBackpropFilter, { x, dy }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor
        assert.deepStrictEqual(result.shape, c.filter)
        return result.dataSync().slice() as Float32Array
      })

    it.effect("the composite matches cpu's own kernel on cpu", () =>
      withDevice("cpu", () =>
        Effect.sync(() => {
          for (const [index, c] of kernelCases.entries()) {
            const inputs = kernelInputsOf(c, 100 + index)
            const error = relativeError(runKernel(c, inputs, "registered"), runKernel(c, inputs, "composite"))
            assert.isBelow(error, 1e-5, c.name)
          }
        })))

    it.effect("wasm matches cpu: tf.grad of conv2d w.r.t. the filter, and the kernel itself", () =>
      Effect.gen(function*() {
        const gradientCases = cases.map((c, index) => ({ c, inputs: inputsOf(c, index + 1) }))
        const kernelRuns = kernelCases.map((c, index) => ({ c, inputs: kernelInputsOf(c, 200 + index) }))
        // One backend at a time: compute on cpu, copy out, then on wasm.
        const onCpu = yield* withDevice("cpu", () =>
          Effect.sync(() => ({
            gradients: gradientCases.map(({ c, inputs }) => filterGradient(c, inputs)),
            kernels: kernelRuns.map(({ c, inputs }) => runKernel(c, inputs, "registered"))
          })))
        const onWasm = yield* withDevice("wasm", () =>
          Effect.sync(() => {
            const before = tf.memory().numTensors
            const result = {
              gradients: gradientCases.map(({ c, inputs }) => filterGradient(c, inputs)),
              kernels: kernelRuns.map(({ c, inputs }) => runKernel(c, inputs, "registered"))
            }
            assert.strictEqual(tf.memory().numTensors, before, "the kernel leaks no tensor")
            return result
          }))
        for (const [index, { c }] of gradientCases.entries()) {
          assert.isBelow(relativeError(onCpu.gradients[index]!, onWasm.gradients[index]!), 1e-5, `grad: ${c.name}`)
        }
        for (const [index, { c }] of kernelRuns.entries()) {
          assert.isBelow(relativeError(onCpu.kernels[index]!, onWasm.kernels[index]!), 1e-5, `kernel: ${c.name}`)
        }
      }))

    it.effect("a small CNN trains on wasm (low-level and tf.layers), with a flat tensor count", () =>
      withDevice("wasm", (device) =>
        Effect.gen(function*() {
          const tf = device.tf
          const random = seeded(7)
          const x = tf.tensor4d(randomArray(random, 8 * 6 * 6 * 1), [8, 6, 6, 1])
          const labels = tf.oneHot(tf.tensor1d(Array.from({ length: 8 }, (_, i) => i % 2), "int32"), 2)
          const kernel = tf.variable(tf.tensor4d(randomArray(random, 3 * 3 * 1 * 4), [3, 3, 1, 4]).mul(0.5))
          const dense = tf.variable(tf.tensor2d(randomArray(random, 3 * 3 * 4 * 2), [3 * 3 * 4, 2]).mul(0.1))
          const optimizer = tf.train.sgd(0.1)
          const loss = () =>
            tf.tidy(() => {
              const features = tf.relu(tf.conv2d(x, kernel as tf.Variable<tf.Rank.R4>, 2, "same"))
              const logits = tf.matMul(tf.reshape(features, [8, -1]), dense)
              return tf.losses.softmaxCrossEntropy(labels, logits) as tf.Scalar
            })
          const losses: Array<number> = []
          let tensorsAfterFirstStep = 0
          for (let step = 0; step < 10; step++) {
            const value = optimizer.minimize(loss, true)!
            losses.push(value.dataSync()[0]!)
            value.dispose()
            if (step === 0) tensorsAfterFirstStep = tf.memory().numTensors
          }
          assert.strictEqual(tf.memory().numTensors, tensorsAfterFirstStep)
          assert.isTrue(losses.every(Number.isFinite))
          assert.isBelow(losses[9]!, losses[0]!)

          const model = tf.sequential({
            layers: [
              tf.layers.conv2d({
                inputShape: [6, 6, 1],
                filters: 3,
                kernelSize: [3, 2],
                strides: 2,
                padding: "same",
                activation: "relu",
                kernelInitializer: tf.initializers.glorotUniform({ seed: 1 })
              }),
              tf.layers.flatten(),
              tf.layers.dense({ units: 2, kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) })
            ]
          })
          model.compile({ optimizer: tf.train.sgd(0.1), loss: "categoricalCrossentropy" })
          const first = yield* Effect.promise(() => model.trainOnBatch(x, labels))
          const second = yield* Effect.promise(() => model.trainOnBatch(x, labels))
          assert.isTrue(Number.isFinite(first as number) && Number.isFinite(second as number))
        })))

    it.effect("registration is idempotent and silent", () =>
      withDevice("wasm", () =>
        Effect.sync(() => {
          const warn = vi.spyOn(console, "warn")
          try {
            assert.deepStrictEqual(WasmKernels.register(), [])
            assert.deepStrictEqual(WasmKernels.register(), [])
            assert.strictEqual(warn.mock.calls.length, 0)
          } finally {
            warn.mockRestore()
          }
        })))

    it.effect("upstream still lacks the kernel (when this fails, compare theirs and drop ours)", () =>
      withDevice("wasm", () =>
        Effect.sync(() => {
          assert.strictEqual(
            tf.getKernel(tf.Conv2DBackpropFilter, "wasm")?.kernelFunc,
            WasmKernels.conv2DBackpropFilterKernel
          )
        })))
  })

  it.effect("issue 15: one short backend line; no tfjs banner on cpu; tfjs-node's absence is a note, not a line of its own", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const capture = Logger.make(({ logLevel, message }) => {
        if (logLevel !== "Debug") lines.push(`${logLevel} ${Array.isArray(message) ? message.join(" ") : String(message)}`)
      })
      const warn = vi.spyOn(console, "warn")
      try {
        yield* withDevice("cpu", (device) => Effect.sync(() => device.tf.tensor([1, 2]).dataSync())).pipe(
          Effect.provideService(Logger.CurrentLoggers, new Set([capture]))
        )
        assert.deepStrictEqual(lines, ["Info backend: cpu"])
        assert.isFalse(warn.mock.calls.some((args) => String(args[0]).includes("Hi, looks like")), "no tfjs banner")
        lines.length = 0
        yield* withDevice("auto", () => Effect.void).pipe(Effect.provideService(Logger.CurrentLoggers, new Set([capture])))
        // tfjs-node is not installed here and no GPU answers: auto comes up on wasm, in one line.
        assert.deepStrictEqual(lines, ["Info backend: wasm (tfjs-node not installed, no GPU adapter)"])
      } finally {
        warn.mockRestore()
      }
    }))
})
