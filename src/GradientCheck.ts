/**
 * A cross-backend gradient check: the gradients of every weight and of the input of
 * each layer type tfjs-layers offers (and of the common losses), computed on `cpu`
 * (the reference) and on another backend, compared within a tolerance relative to
 * the gradient's magnitude.
 *
 * Each `Case` builds a small model from a seeded generator (`Random`), so both
 * backends see the same inputs and the same weights; its inputs have mixed signs,
 * zeros and ties (and, for pooling, all-negative and relu-like inputs). The check
 * goes through `Device.make`, so on wasm it runs with the kernels `WasmKernels`
 * registers, as training does. `npm run check:gradients` prints the full table;
 * `docs/backends.md` holds its latest result.
 *
 * Gotcha: TensorFlow.js is process-global, so `check` acquires one `Device` per
 * backend in turn, and fails with `DeviceError` while another `Device` is live.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Effect } from "effect"
import * as Device from "./Device.ts"
import * as Random from "./Random.ts"

type Tf = typeof tf

/** A seeded stream of floats in [0, 1) over `Random.next`. */
export interface Generator {
  readonly next: () => number
}

/** A generator seeded with `seed`. */
export const generator = (seed: number): Generator => {
  let state = seed >>> 0
  return {
    next: () => {
      const [s, r] = Random.next(state)
      state = s
      return r
    }
  }
}

/**
 * What an input holds: `mixed` (uniform in [-1, 1), a quarter of it zeros or
 * repeated values, so windows hold ties), `negative` (all below 0), `relu` (mixed,
 * negatives set to 0: many zeros and ties), `positive`.
 */
export type InputKind = "mixed" | "negative" | "relu" | "positive"

/** `n` values of `kind` drawn from `random`. */
export const fill = (kind: InputKind, n: number, random: Generator): Float32Array => {
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    const u = random.next()
    // One value in eight is 0, one in eight a repeat of a few fixed values.
    let v = u < 0.125 ? 0 : u < 0.25 ? [0.5, -0.5, 0.25][Math.floor(random.next() * 3)]! : random.next() * 2 - 1
    if (kind === "negative") v = -Math.abs(v) - 0.01
    if (kind === "positive") v = Math.abs(v) + 0.01
    if (kind === "relu") v = Math.max(0, v)
    out[i] = v
  }
  return out
}

/**
 * One check: `gradients` builds a model on the active backend from `random` and
 * returns its gradients by name, copied to host memory. Called once per backend
 * with a generator seeded alike.
 */
export interface Case {
  /** The layer (or op, or loss) under test. */
  readonly layer: string
  /** What varies: shape, stride, padding, input kind. */
  readonly name: string
  /** The largest relative error accepted: max |a - b| over max |a|, per gradient. */
  readonly tolerance: number
  /**
   * Set when tfjs itself has no gradient for the case on any backend (cpu included):
   * why. Its row is then `unsupported` rather than failed, as long as cpu fails too.
   */
  readonly unsupported?: string
  readonly gradients: (tf: Tf, random: Generator) => Record<string, Float32Array>
}

/** One line of the table: a case on a backend against cpu. */
export interface Row {
  readonly layer: string
  readonly name: string
  readonly backend: Device.BackendName
  /** The largest absolute difference over all gradients of the case. */
  readonly worstAbs: number
  /** The largest relative difference (over the gradient's largest magnitude on cpu). */
  readonly worstRel: number
  /** The gradient the worst relative difference was found in. */
  readonly worst: string
  readonly tolerance: number
  readonly pass: boolean
  /** Why the case did not run on this backend (the error's message), if it did not. */
  readonly error?: string
  /** The case's `unsupported` reason, when cpu could not compute it either (then `pass` is false). */
  readonly unsupported?: string
}

/** How large the models are: `quick` for `npm test`, `full` for `npm run check:gradients`. */
export interface Sizes {
  readonly batch: number
  readonly spatial: number
  readonly channels: number
}

/** The sizes `npm test` uses. */
export const quick: Sizes = { batch: 2, spatial: 5, channels: 2 }

/** The sizes `npm run check:gradients` uses. */
export const full: Sizes = { batch: 3, spatial: 9, channels: 4 }

/** Default relative tolerance: float32 sums in another order. */
export const defaultTolerance = 1e-4

const size = (shape: ReadonlyArray<number>): number => shape.reduce((a, b) => a * b, 1)

/** Gradients of `f` with respect to each named variable, copied out. */
const gradientsOf = (
  tfjs: Tf,
  f: () => tf.Scalar,
  variables: Record<string, tf.Variable>
): Record<string, Float32Array> => {
  const names = Object.keys(variables)
  const { grads, value } = tfjs.variableGrads(f, names.map((name) => variables[name]!))
  const out: Record<string, Float32Array> = {}
  for (const name of names) {
    const gradient = grads[variables[name]!.name]
    out[name] = gradient === undefined ? new Float32Array(0) : Float32Array.from(gradient.dataSync())
  }
  tfjs.dispose([value, ...Object.values(grads)])
  return out
}

interface LayerOptions {
  readonly kind?: InputKind
  readonly training?: boolean
  /** Integer inputs in [0, n) (embedding): no gradient for the input. */
  readonly integers?: number
  /** More than one input (merge layers). */
  readonly inputs?: number
  readonly tolerance?: number
  readonly unsupported?: string
}

/**
 * A case for a tfjs-layers layer: inputs of `shape` (one per input), the layer's
 * weights set from the generator, loss `sum(layer(x) * r)` with a fixed random `r`,
 * gradients of every trainable weight and of each float input; the layer's output
 * is compared too (as `output`).
 */
export const layerCase = (
  layer: string,
  name: string,
  shape: ReadonlyArray<number>,
  make: (tf: Tf) => tf.layers.Layer,
  options: LayerOptions = {}
): Case => ({
  layer,
  name,
  tolerance: options.tolerance ?? defaultTolerance,
  ...(options.unsupported === undefined ? {} : { unsupported: options.unsupported }),
  gradients: (tfjs, random) =>
    tfjs.tidy(() => {
      const count = options.inputs ?? 1
      const inputs: Array<tf.Tensor> = []
      const variables: Record<string, tf.Variable> = {}
      for (let i = 0; i < count; i++) {
        if (options.integers !== undefined) {
          const ids = Int32Array.from({ length: size(shape) }, () => Math.floor(random.next() * options.integers!))
          inputs.push(tfjs.tensor(ids, [...shape], "int32"))
        } else {
          const x = tfjs.variable(tfjs.tensor(fill(options.kind ?? "mixed", size(shape), random), [...shape]))
          variables[`input${count > 1 ? i : ""}`] = x
          inputs.push(x)
        }
      }
      // Initializers draw from Math.random: seed them too, although every weight is set below.
      const state: Random.State = { value: 12345 }
      const model = Random.withSeeded(state, () => make(tfjs))
      const args = options.training === undefined ? {} : { training: options.training }
      const apply = () => model.apply(count > 1 ? inputs : inputs[0]!, args) as tf.Tensor
      const probe = Random.withSeeded(state, apply)
      model.setWeights(model.weights.map((weight) => {
        const shape = weight.shape as Array<number>
        const values = fill("mixed", size(shape), random)
        // Variances must stay positive.
        if (/variance/.test(weight.name)) { for (let i = 0; i < values.length; i++) values[i] = 0.5 + Math.abs(values[i]!) }
        return tfjs.tensor(values, shape)
      }))
      const r = tfjs.tensor(fill("mixed", probe.size, random), probe.shape)
      for (const [index, weight] of model.trainableWeights.entries()) {
        variables[`${index}:${weight.originalName.split("/").pop()}`] = weight.read() as tf.Variable
      }
      const output = Float32Array.from(apply().dataSync())
      return { output, ...gradientsOf(tfjs, () => tfjs.sum(tfjs.mul(apply(), r)) as tf.Scalar, variables) }
    })
})

/**
 * A case for a function of tensors (an op or a loss): the inputs of `shapes` drawn
 * as `kinds`, loss `sum(f(...inputs))` (or `f` itself when scalar), gradients of the
 * inputs whose `differentiate` is not false; `f`'s value is compared too (`output`).
 */
export const opCase = (
  layer: string,
  name: string,
  inputs: ReadonlyArray<{ readonly shape: ReadonlyArray<number>; readonly kind: InputKind; readonly differentiate?: boolean }>,
  f: (tf: Tf, ...xs: Array<tf.Tensor>) => tf.Tensor,
  tolerance = defaultTolerance
): Case => ({
  layer,
  name,
  tolerance,
  gradients: (tfjs, random) =>
    tfjs.tidy(() => {
      const variables: Record<string, tf.Variable> = {}
      const xs = inputs.map(({ differentiate, kind, shape }, index) => {
        const x = tfjs.tensor(fill(kind, size(shape), random), [...shape])
        if (differentiate === false) return x
        const v = tfjs.variable(x)
        variables[`x${index}`] = v
        return v
      })
      const probe = f(tfjs, ...xs)
      const r = tfjs.tensor(fill("mixed", probe.size, random), probe.shape)
      const output = Float32Array.from(probe.dataSync())
      return { output, ...gradientsOf(tfjs, () => tfjs.sum(tfjs.mul(f(tfjs, ...xs), r)) as tf.Scalar, variables) }
    })
})

type Padding = "valid" | "same"

const strides = [1, 2] as const
const paddings: ReadonlyArray<Padding> = ["valid", "same"]
const kinds: ReadonlyArray<InputKind> = ["mixed", "negative", "relu", "positive"]

/**
 * Every case: dense, conv1d/2d/3d and conv2d/3d transposes, depthwise and separable
 * conv, max/average/global pooling 1d/2d/3d, batch and layer normalization, dropout
 * in training mode with a fixed seed, embedding, simple RNN, GRU, LSTM, activations,
 * reshape/flatten/concatenate, the common losses, and the MaxPoolGrad reproduction
 * of issue 20, at `sizes`.
 */
export const cases = (sizes: Sizes): ReadonlyArray<Case> => {
  const { batch: b, channels: c, spatial: s } = sizes
  const out: Array<Case> = []
  const add = (...more: Array<Case>) => void out.push(...more)

  // The reproduction from issue 20: d sum(maxPool(x, 2, 2, "valid") * r) / dx, x [2, 8, 8, 3].
  for (const kind of kinds) {
    add(
      opCase(
        "tf.maxPool (issue 20)",
        `[2,8,8,3] pool 2 stride 2 valid, ${kind}`,
        [{ shape: [2, 8, 8, 3], kind }],
        (t, x) => t.maxPool(x as tf.Tensor4D, 2, 2, "valid"),
        1e-6
      )
    )
  }

  add(layerCase("dense", `[${b},${2 * c}] -> 3, bias`, [b, 2 * c], (t) => t.layers.dense({ units: 3 })))
  add(
    layerCase(
      "dense",
      `[${b},3,${c}] -> 2, relu, no bias`,
      [b, 3, c],
      (t) => t.layers.dense({ units: 2, activation: "relu", useBias: false }),
      { kind: "relu" }
    )
  )

  for (const stride of strides) {
    for (const padding of paddings) {
      const conf = `stride ${stride}, ${padding}`
      add(
        layerCase(
          "conv1d",
          `kernel 3, ${conf}`,
          [b, s + 2, c],
          (t) => t.layers.conv1d({ filters: 3, kernelSize: 3, strides: stride, padding })
        )
      )
      add(
        layerCase(
          "conv2d",
          `kernel 3x2, ${conf}`,
          [b, s, s + 1, c],
          (t) => t.layers.conv2d({ filters: 3, kernelSize: [3, 2], strides: stride, padding })
        )
      )
      add(
        layerCase(
          "conv3d",
          `kernel 2x3x2, ${conf}`,
          [b, s - 1, s, s - 1, c],
          (t) => t.layers.conv3d({ filters: 2, kernelSize: [2, 3, 2], strides: stride, padding })
        )
      )
      add(
        layerCase(
          "conv2dTranspose",
          `kernel 3, ${conf}`,
          [b, s - 1, s, c],
          (t) => t.layers.conv2dTranspose({ filters: 3, kernelSize: 3, strides: stride, padding })
        )
      )
      add(
        layerCase(
          "conv3dTranspose",
          `kernel 2x3x2, ${conf}`,
          [b, s - 2, s - 1, s - 2, c],
          (t) => t.layers.conv3dTranspose({ filters: 2, kernelSize: [2, 3, 2], strides: stride, padding }),
          {
            unsupported: "tfjs 4.22 registers no gradient for Conv3DBackpropInputV2 (any backend)"
          }
        )
      )
      add(
        layerCase(
          "depthwiseConv2d",
          `kernel 3, multiplier 2, ${conf}`,
          [b, s, s + 1, c],
          (t) => t.layers.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, strides: stride, padding })
        )
      )
      add(
        layerCase(
          "separableConv2d",
          `kernel 3x2, multiplier 2, ${conf}`,
          [b, s, s + 1, c],
          (t) => t.layers.separableConv2d({ filters: 3, kernelSize: [3, 2], depthMultiplier: 2, strides: stride, padding })
        )
      )
    }
  }

  for (const stride of strides) {
    for (const padding of paddings) {
      for (const kind of kinds) {
        const conf = `pool 2, stride ${stride}, ${padding}, ${kind}`
        add(
          layerCase("maxPooling1d", conf, [b, s + 2, c], (t) => t.layers.maxPooling1d({ poolSize: 2, strides: stride, padding }), { kind })
        )
        add(
          layerCase("maxPooling2d", conf, [b, s, s + 1, c], (t) => t.layers.maxPooling2d({ poolSize: 2, strides: stride, padding }), {
            kind
          })
        )
        add(
          layerCase(
            "maxPooling3d",
            conf,
            [b, s - 1, s, s - 1, c],
            (t) => t.layers.maxPooling3d({ poolSize: 2, strides: stride, padding }),
            { kind }
          )
        )
        add(
          layerCase("averagePooling1d", conf, [b, s + 2, c], (t) => t.layers.averagePooling1d({ poolSize: 2, strides: stride, padding }), {
            kind
          })
        )
        add(
          layerCase(
            "averagePooling2d",
            conf,
            [b, s, s + 1, c],
            (t) => t.layers.averagePooling2d({ poolSize: 2, strides: stride, padding }),
            { kind }
          )
        )
        add(
          layerCase(
            "averagePooling3d",
            conf,
            [b, s - 1, s, s - 1, c],
            (t) => t.layers.averagePooling3d({ poolSize: 2, strides: stride, padding }),
            { kind }
          )
        )
      }
    }
    // Overlapping windows: pool 3.
    add(
      layerCase(
        "maxPooling2d",
        `pool 3, stride ${stride}, same, mixed`,
        [b, s, s + 1, c],
        (t) => t.layers.maxPooling2d({ poolSize: 3, strides: stride, padding: "same" })
      )
    )
    add(
      layerCase(
        "maxPooling3d",
        `pool 3, stride ${stride}, same, mixed`,
        [b, s, s, s, c],
        (t) => t.layers.maxPooling3d({ poolSize: 3, strides: stride, padding: "same" })
      )
    )
  }
  for (const kind of kinds) {
    add(layerCase("globalMaxPooling1d", kind, [b, s, c], (t) => t.layers.globalMaxPooling1d({}), { kind }))
    add(layerCase("globalMaxPooling2d", kind, [b, s, s + 1, c], (t) => t.layers.globalMaxPooling2d({}), { kind }))
    add(layerCase("globalAveragePooling1d", kind, [b, s, c], (t) => t.layers.globalAveragePooling1d({}), { kind }))
    add(layerCase("globalAveragePooling2d", kind, [b, s, s + 1, c], (t) => t.layers.globalAveragePooling2d({}), { kind }))
  }

  add(
    layerCase("batchNormalization", "training, [b,h,w,c]", [b + 2, s, s, c], (t) => t.layers.batchNormalization({}), {
      training: true,
      tolerance: 1e-3
    })
  )
  add(layerCase("batchNormalization", "inference, [b,f]", [b + 2, 2 * c], (t) => t.layers.batchNormalization({}), { training: false }))
  add(layerCase("layerNormalization", "[b,t,f]", [b, 3, 2 * c], (t) => t.layers.layerNormalization({}), { tolerance: 1e-3 }))
  add(layerCase("dropout", "rate 0.4, seed 7, training", [b, s, c], (t) => t.layers.dropout({ rate: 0.4, seed: 7 }), { training: true }))
  add(
    layerCase("embedding", "vocabulary 7, dimension 3", [b, s], (t) => t.layers.embedding({ inputDim: 7, outputDim: 3 }), { integers: 7 })
  )
  add(
    layerCase("simpleRNN", "4 units, sequences", [b, 4, c], (t) => t.layers.simpleRNN({ units: 4, returnSequences: true }), {
      tolerance: 1e-3
    })
  )
  add(layerCase("gru", "4 units", [b, 4, c], (t) => t.layers.gru({ units: 4 }), { tolerance: 1e-3 }))
  add(layerCase("lstm", "4 units, sequences", [b, 4, c], (t) => t.layers.lstm({ units: 4, returnSequences: true }), { tolerance: 1e-3 }))

  const activations = [
    "linear",
    "relu",
    "elu",
    "relu6",
    "sigmoid",
    "hardSigmoid",
    "selu",
    "softmax",
    "softplus",
    "softsign",
    "tanh",
    "swish",
    "mish",
    "gelu",
    "gelu_new"
  ] as const
  for (const activation of activations) {
    add(
      layerCase("activation", activation, [b, 3 * c], (t) => t.layers.activation({ activation: activation as "relu" }), { tolerance: 1e-3 })
    )
  }
  add(layerCase("leakyReLU", "alpha 0.3", [b, 3 * c], (t) => t.layers.leakyReLU({ alpha: 0.3 })))
  add(layerCase("prelu", "per unit", [b, 3 * c], (t) => t.layers.prelu({})))
  add(layerCase("thresholdedReLU", "theta 0.1", [b, 3 * c], (t) => t.layers.thresholdedReLU({ theta: 0.1 }), {
    unsupported: "tfjs 4.22 registers no gradient for Greater (any backend)"
  }))
  add(layerCase("reshape", `[${b},6,${c}] -> [3,${2 * c}]`, [b, 6, c], (t) => t.layers.reshape({ targetShape: [3, 2 * c] })))
  add(layerCase("flatten", `[${b},3,${s},${c}]`, [b, 3, s, c], (t) => t.layers.flatten({})))
  add(layerCase("concatenate", "two inputs, last axis", [b, 3, c], (t) => t.layers.concatenate({}), { inputs: 2 }))

  // Losses: the gradient with respect to the prediction (and the label where it has one).
  const n = b + 2
  const k = 3
  const classes = (t: Tf, x: tf.Tensor) => t.oneHot(t.argMax(x, -1), k).toFloat()
  const lossCases: ReadonlyArray<[string, InputKind, (t: Tf, yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Tensor]> = [
    ["meanSquaredError", "mixed", (t, y, p) => t.losses.meanSquaredError(y, p)],
    ["absoluteDifference", "mixed", (t, y, p) => t.losses.absoluteDifference(y, p)],
    ["huberLoss", "mixed", (t, y, p) => t.losses.huberLoss(y, p, undefined, 0.3)],
    ["hingeLoss", "mixed", (t, y, p) => t.losses.hingeLoss(t.step(y), p)],
    ["logLoss", "positive", (t, y, p) => t.losses.logLoss(t.step(t.sub(y, 0.5)), t.sigmoid(p))],
    ["sigmoidCrossEntropy", "mixed", (t, y, p) => t.losses.sigmoidCrossEntropy(t.step(y), p)],
    ["softmaxCrossEntropy", "mixed", (t, y, p) => t.losses.softmaxCrossEntropy(classes(t, y), p)],
    ["cosineDistance", "mixed", (t, y, p) => t.losses.cosineDistance(y, p, 1)],
    ["metrics.categoricalCrossentropy", "mixed", (t, y, p) => t.metrics.categoricalCrossentropy(classes(t, y), t.softmax(p))],
    ["metrics.binaryCrossentropy", "mixed", (t, y, p) => t.metrics.binaryCrossentropy(t.step(y), t.sigmoid(p))],
    ["metrics.meanAbsolutePercentageError", "mixed", (t, y, p) => t.metrics.meanAbsolutePercentageError(t.add(t.abs(y), 0.5), p)]
  ]
  for (const [name, kind, loss] of lossCases) {
    add(
      opCase(
        "loss",
        name,
        [{ shape: [n, k], kind, differentiate: false }, { shape: [n, k], kind: "mixed" }],
        (t, y, p) => loss(t, y!, p!),
        1e-3
      )
    )
  }
  return out
}

/**
 * How far `actual` is from `expected`: the largest absolute difference and that
 * divided by the largest magnitude of `expected` (0 when they are equal; a NaN on
 * either side counts as an infinite difference). The measure of every row.
 */
export const difference = (
  expected: ArrayLike<number>,
  actual: ArrayLike<number>
): { readonly abs: number; readonly rel: number } => {
  let abs = 0
  let scale = 0
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(expected[i]! - actual[i]!)
    abs = Math.max(abs, Number.isNaN(d) ? Infinity : d)
    scale = Math.max(scale, Math.abs(expected[i]!))
  }
  return { abs, rel: abs === 0 ? 0 : abs / scale }
}

const compare = (
  c: Case,
  backend: Device.BackendName,
  expected: Record<string, Float32Array>,
  actual: Record<string, Float32Array>
): Row => {
  let worstAbs = 0
  let worstRel = 0
  let worst = ""
  for (const name of Object.keys(expected)) {
    const a = expected[name]!
    const b = actual[name]
    if (b === undefined || b.length !== a.length) {
      return {
        layer: c.layer,
        name: c.name,
        backend,
        worstAbs: Infinity,
        worstRel: Infinity,
        worst: name,
        tolerance: c.tolerance,
        pass: false,
        error: `gradient ${name} has another shape`
      }
    }
    const { abs: diff, rel } = difference(a, b)
    worstAbs = Math.max(worstAbs, diff)
    if (rel > worstRel || worst === "") {
      worstRel = Math.max(worstRel, rel)
      worst = name
    }
  }
  return { layer: c.layer, name: c.name, backend, worstAbs, worstRel, worst, tolerance: c.tolerance, pass: worstRel <= c.tolerance }
}

/** Runs `f`, then disposes the variables it created (the inputs and the layers' weights). */
const withVariablesDisposed = <A>(tfjs: Tf, f: () => A): A => {
  const before = new Set(Object.keys(tfjs.engine().state.registeredVariables))
  try {
    return f()
  } finally {
    for (const [name, variable] of Object.entries(tfjs.engine().state.registeredVariables)) {
      if (!before.has(name)) variable.dispose()
    }
  }
}

type Outcome = { readonly gradients: Record<string, Float32Array> } | { readonly error: string }

/** Runs every case on `backend` through a `Device` of its own, released at the end. */
const runOn = (
  backend: Device.BackendName,
  all: ReadonlyArray<Case>,
  seed: number
): Effect.Effect<Array<Outcome>, Device.DeviceError> =>
  Effect.scoped(Effect.gen(function*() {
    const device = yield* Device.make(backend)
    return yield* Effect.forEach(all, (c, index) =>
      Effect.try({
        try: (): Outcome => ({
          gradients: withVariablesDisposed(device.tf, () => c.gradients(device.tf, generator(Random.mix(seed, index))))
        }),
        catch: (cause): Outcome => ({ error: cause instanceof Error ? cause.message : String(cause) })
      }).pipe(Effect.catch((outcome) => Effect.succeed(outcome))))
  }))

/** What `check` compares. */
export interface CheckOptions {
  /** The cases (default: `cases(quick)`). */
  readonly cases?: ReadonlyArray<Case>
  /** The backends compared with cpu (default: `["wasm"]`). */
  readonly backends?: ReadonlyArray<Device.BackendName>
  /** The seed of every case's generator (default 20). */
  readonly seed?: number
}

/**
 * Computes every case on cpu, then on each backend, and returns one `Row` per case
 * and backend. A case that throws on a backend is a failed row with its message
 * (`error`); one that throws on cpu is reported against cpu. Fails with
 * `DeviceError` only when a backend does not come up.
 */
export const check = Effect.fn("GradientCheck.check")(function*(options: CheckOptions = {}) {
  const all = options.cases ?? cases(quick)
  const seed = options.seed ?? 20
  const reference = yield* runOn("cpu", all, seed)
  const rows: Array<Row> = []
  for (const backend of options.backends ?? ["wasm"]) {
    const outcomes = yield* runOn(backend, all, seed)
    for (const [index, c] of all.entries()) {
      const expected = reference[index]!
      const actual = outcomes[index]!
      const failed = "error" in expected ?
        { backend: "cpu" as const, error: expected.error } :
        "error" in actual ?
        { backend, error: actual.error } :
        undefined
      if (failed !== undefined) {
        const unsupported = failed.backend === "cpu" && c.unsupported !== undefined ? { unsupported: c.unsupported } : {}
        rows.push({
          layer: c.layer,
          name: c.name,
          backend: failed.backend,
          worstAbs: Infinity,
          worstRel: Infinity,
          worst: "",
          tolerance: c.tolerance,
          pass: false,
          error: failed.error,
          ...unsupported
        })
      } else if ("gradients" in expected && "gradients" in actual) {
        rows.push(compare(c, backend, expected.gradients, actual.gradients))
      }
    }
  }
  return rows
})

const formatNumber = (x: number): string => x === 0 ? "0" : Number.isFinite(x) ? x.toExponential(1) : String(x)

/**
 * The rows as a Markdown table (layer, case, backend, worst abs/rel error, tolerance,
 * pass); with `perLayer`, one line per layer and backend holding its worst case.
 */
export const table = (rows: ReadonlyArray<Row>, perLayer = false): string => {
  let shown: ReadonlyArray<Row & { readonly cases?: number }> = rows
  if (perLayer) {
    const groups = new Map<string, Row & { cases: number; allPass: boolean }>()
    for (const row of rows) {
      const key = `${row.layer}\u0000${row.backend}`
      const group = groups.get(key)
      if (group === undefined) groups.set(key, { ...row, cases: 1, allPass: row.pass })
      else {
        const worse = row.worstRel > group.worstRel || (!row.pass && group.pass)
        groups.set(key, {
          ...(worse ? row : group),
          worstAbs: Math.max(group.worstAbs, row.worstAbs),
          cases: group.cases + 1,
          allPass: group.allPass && row.pass
        })
      }
    }
    shown = [...groups.values()].map((g) => ({ ...g, pass: g.allPass }))
  }
  const header = perLayer
    ? "| layer | cases | worst case | backend | worst abs | worst rel | tolerance | pass |\n|---|---|---|---|---|---|---|---|"
    : "| layer | case | backend | worst abs | worst rel | tolerance | pass |\n|---|---|---|---|---|---|---|"
  const lines = shown.map((row) => {
    const verdict = row.pass
      ? "yes"
      : row.unsupported !== undefined
      ? `n/a: ${row.unsupported}`
      : row.error === undefined
      ? "**no**"
      : `**no**: ${row.error.replace(/\|/g, "/").slice(0, 80)}`
    const cells = perLayer
      ? [row.layer, String(row.cases), row.name, row.backend]
      : [row.layer, row.name, row.backend]
    const errors = row.error === undefined ? [formatNumber(row.worstAbs), formatNumber(row.worstRel)] : ["—", "—"]
    return `| ${[...cells, ...errors, formatNumber(row.tolerance), verdict].join(" | ")} |`
  })
  return [header, ...lines].join("\n")
}
