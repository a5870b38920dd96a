/**
 * Kernels the TensorFlow.js wasm backend lacks, composed from kernels it has.
 *
 * `@tensorflow/tfjs-backend-wasm@4.22.0` registers no `Conv2DBackpropFilter`, so the
 * gradient of every `conv2d` with respect to its filter fails on wasm with
 * "Kernel 'Conv2DBackpropFilter' not registered": no conv model can train there.
 * `Device` registers the kernels of this module when it brings up the wasm backend;
 * `register` is also public for code that sets up tfjs by hand.
 *
 * The filter gradient is a convolution itself. With `xp` the padded input,
 *
 *     dw[fh, fw, c, o] = Σ_{n, oh, ow} xp[n, fh + oh·sh, fw + ow·sw, c] · dy[n, oh, ow, o]
 *
 * which is a stride-1 `conv2d` of `xp` transposed to `[C, H, W, N]` (batch C, channels
 * N) with `dy` transposed to `[OH, OW, N, O]` as the filter, dilated by the forward
 * stride, giving `[C, FH, FW, O]`, then transposed to `[FH, FW, C, O]`. TensorFlow.js
 * computes conv2d gradients for dilation 1 only (its `Conv2D` gradient refuses
 * others), so the forward dilation never reaches this kernel.
 *
 * Gotcha: the kernel runs while the engine executes another kernel, so the tf ops it
 * calls are not recorded on a gradient tape (no gradient of the gradient).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs"

/** The attributes tfjs passes to a `Conv2DBackpropFilter` kernel. */
export type Conv2DBackpropFilterAttrs = tf.Conv2DBackpropFilterAttrs

const pair = (value: number | [number, number]): [number, number] =>
  typeof value === "number" ? [value, value] : value

/**
 * The gradient of `conv2d(x, filter, strides, pad, dilations = 1)` with respect to
 * `filter`, given the gradient `dy` of its output, composed from `pad`, `slice`,
 * `transpose` and a dilated `conv2d`. Works on every backend (the tests compare it
 * with cpu's own kernel); the caller disposes intermediates (run it in `tf.tidy`).
 */
export const conv2DBackpropFilter = (
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  attrs: Conv2DBackpropFilterAttrs
): tf.Tensor4D => {
  const { dataFormat, dimRoundingMode, filterShape, pad, strides } = attrs
  // Everything below is NHWC; filters are [FH, FW, C, O] in both formats.
  const xNhwc = dataFormat === "NCHW" ? tf.transpose(x, [0, 2, 3, 1]) : x
  const dyNhwc = dataFormat === "NCHW" ? tf.transpose(dy, [0, 2, 3, 1]) : dy
  const [n, height, width, channels] = xNhwc.shape
  const [, outHeight, outWidth] = dyNhwc.shape
  const [filterHeight, filterWidth] = filterShape
  const [strideHeight, strideWidth] = pair(strides)
  const { padInfo } = tf.backend_util.computeConv2DInfo(
    [n, height, width, channels],
    filterShape,
    strides,
    1,
    pad,
    dimRoundingMode,
    false,
    "channelsLast"
  )
  // The rows and columns of the padded input the forward pass read, taken from dy's
  // shape rather than recomputed, so every rounding mode agrees with the forward op.
  const neededHeight = (outHeight - 1) * strideHeight + filterHeight
  const neededWidth = (outWidth - 1) * strideWidth + filterWidth
  const bottom = Math.max(0, neededHeight - padInfo.top - height)
  const right = Math.max(0, neededWidth - padInfo.left - width)
  const padded = padInfo.top === 0 && bottom === 0 && padInfo.left === 0 && right === 0
    ? xNhwc
    : tf.pad(xNhwc, [[0, 0], [padInfo.top, bottom], [padInfo.left, right], [0, 0]])
  const cropped = padded.shape[1] === neededHeight && padded.shape[2] === neededWidth
    ? padded
    : tf.slice(padded, [0, 0, 0, 0], [n, neededHeight, neededWidth, channels])
  const gradient = tf.conv2d(
    tf.transpose(cropped, [3, 1, 2, 0]),
    tf.transpose(dyNhwc, [1, 2, 0, 3]),
    1,
    "valid",
    "NHWC",
    [strideHeight, strideWidth]
  )
  return tf.transpose(gradient, [1, 2, 0, 3])
}

/**
 * A kernel input as a tensor. The engine hands kernels the op's own tensors; a bare
 * `TensorInfo` (another kernel calling this one directly) is copied into a fresh
 * tensor rather than sharing its data id, whose reference count the engine would not
 * know about.
 */
const asTensor4D = (info: tf.TensorInfo, backend: tf.KernelBackend): tf.Tensor4D =>
  info instanceof tf.Tensor
    ? info as tf.Tensor4D
    : tf.tensor4d(
      backend.readSync(info.dataId) as Float32Array,
      info.shape as [number, number, number, number],
      info.dtype as "float32"
    )

/**
 * The `Conv2DBackpropFilter` kernel for any backend. It returns a `Tensor` (the
 * engine accepts one in place of a `TensorInfo` and keeps it as the op's output, in
 * the caller's tidy scope); the intermediates die with the inner `tf.tidy`.
 */
export const conv2DBackpropFilterKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() =>
    conv2DBackpropFilter(
      asTensor4D(inputs["x"]!, backend as tf.KernelBackend),
      asTensor4D(inputs["dy"]!, backend as tf.KernelBackend),
      attrs as unknown as Conv2DBackpropFilterAttrs
    )
  )

/** The kernels this module provides for the wasm backend. */
export const wasmKernelConfigs: ReadonlyArray<tf.KernelConfig> = [
  { kernelName: tf.Conv2DBackpropFilter, backendName: "wasm", kernelFunc: conv2DBackpropFilterKernel }
]

/**
 * Registers each kernel of `wasmKernelConfigs` that the registry does not hold yet
 * (tfjs itself warns and overwrites on a second registration; this never does, so a
 * kernel shipped upstream one day wins). Idempotent, process-wide (the kernel
 * registry is global), and it does not need the wasm backend to be initialised.
 * Returns the names of the kernels it registered now.
 */
export const register = (): ReadonlyArray<string> => {
  const registered: Array<string> = []
  for (const config of wasmKernelConfigs) {
    if (tf.getKernel(config.kernelName, config.backendName) === undefined) {
      tf.registerKernel(config)
      registered.push(config.kernelName)
    }
  }
  return registered
}
