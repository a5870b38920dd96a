/**
 * Kernels the TensorFlow.js wasm backend lacks or computes wrongly, composed from
 * kernels it computes correctly.
 *
 * `@tensorflow/tfjs-backend-wasm@4.22.0`, checked against the cpu backend by
 * `GradientCheck` (`npm run check:gradients`, table in docs/backends.md):
 * - lacks `Conv2DBackpropFilter` (every conv2d filter gradient fails with "Kernel
 *   'Conv2DBackpropFilter' not registered"), `DepthwiseConv2dNativeBackpropFilter`
 *   and `…BackpropInput` (depthwise and separable conv), and `UnsortedSegmentSum`
 *   (the gradient of gather, so of every embedding);
 * - computes `MaxPoolGrad`, `MaxPool3D` and `MaxPool3DGrad` wrongly whenever a
 *   window's maximum is 0 or below (the running maximum starts at the smallest
 *   positive float) and the pool gradients also for overlapping windows, and
 *   `Conv3DBackpropFilterV2` / `Conv3DBackpropInputV2` wrongly (the filter gradient
 *   for strides above 1, the input gradient always).
 * `Device` registers the kernels of this module when it brings up the wasm backend
 * (the missing ones only while still missing, the wrong ones in place of upstream's);
 * `register` is also public for code that sets up tfjs by hand.
 *
 * The conv2d filter gradient is a convolution itself. With `xp` the padded input,
 *
 *     dw[fh, fw, c, o] = Σ_{n, oh, ow} xp[n, fh + oh·sh, fw + ow·sw, c] · dy[n, oh, ow, o]
 *
 * which is a stride-1 `conv2d` of `xp` transposed to `[C, H, W, N]` (batch C, channels
 * N) with `dy` transposed to `[OH, OW, N, O]` as the filter, dilated by the forward
 * stride, giving `[C, FH, FW, O]`, then transposed to `[FH, FW, C, O]`. TensorFlow.js
 * computes conv2d gradients for dilation 1 only (its `Conv2D` gradient refuses
 * others), so the forward dilation never reaches this kernel.
 *
 * Gotchas: the kernels run while the engine executes another kernel, so the tf ops
 * they call are not recorded on a gradient tape (no gradient of the gradient); and
 * the composites cost more ops than a native kernel (the max pool gradient one
 * strided slice, compare and scatter per window offset; the depthwise gradients a
 * full convolution with a block-diagonal filter, C times the depthwise work).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs"

/** The attributes tfjs passes to a `Conv2DBackpropFilter` kernel. */
export type Conv2DBackpropFilterAttrs = tf.Conv2DBackpropFilterAttrs

const pair = (value: number | [number, number]): [number, number] => typeof value === "number" ? [value, value] : value

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
const asTensor = (info: tf.TensorInfo, backend: tf.KernelBackend): tf.Tensor =>
  info instanceof tf.Tensor
    ? info
    : tf.tensor(backend.readSync(info.dataId) as Float32Array | Int32Array, [...info.shape], info.dtype)

const asTensor4D = (info: tf.TensorInfo, backend: tf.KernelBackend): tf.Tensor4D => asTensor(info, backend) as tf.Tensor4D

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

// ---------------------------------------------------------------------------
// Helpers for the composites below: exact data movement only (pad, slice,
// reshape, concat with zeros), so they add no rounding of their own.

/** Inserts `stride - 1` zeros between the elements of `t` along `axis`: length L becomes (L - 1)·stride + 1. */
const dilateAxis = (t: tf.Tensor, axis: number, stride: number): tf.Tensor => {
  if (stride === 1) return t
  const shape = t.shape
  const length = shape[axis]!
  const expanded = tf.expandDims(t, axis + 1)
  const zerosShape = [...expanded.shape]
  zerosShape[axis + 1] = stride - 1
  const interleaved = tf.concat([expanded, tf.zeros(zerosShape, t.dtype)], axis + 1)
  const merged = [...shape]
  merged[axis] = length * stride
  const begin = shape.map(() => 0)
  const size = [...shape]
  size[axis] = (length - 1) * stride + 1
  return tf.slice(tf.reshape(interleaved, merged), begin, size)
}

/**
 * Takes the window `[before_i, before_i + length_i)` of `t` on each spatial axis
 * (1..r), padding with zeros where `t` is shorter: the gradient of the padded
 * input, cropped back to the input.
 */
const cropSpatial = (t: tf.Tensor, before: ReadonlyArray<number>, lengths: ReadonlyArray<number>): tf.Tensor => {
  const pads: Array<[number, number]> = t.shape.map(() => [0, 0])
  let padded = false
  for (const [i, length] of lengths.entries()) {
    const short = before[i]! + length - t.shape[i + 1]!
    if (short > 0) {
      pads[i + 1] = [0, short]
      padded = true
    }
  }
  const full = padded ? tf.pad(t, pads) : t
  const begin = full.shape.map((_, axis) => axis === 0 || axis > lengths.length ? 0 : before[axis - 1]!)
  const size = full.shape.map((extent, axis) => axis === 0 || axis > lengths.length ? extent : lengths[axis - 1]!)
  return tf.slice(full, begin, size)
}

// ---------------------------------------------------------------------------
// Max pooling gradients

/**
 * The values each window offset sees: for every offset (in the order cpu scans a
 * window, first axis outermost), the strided slice of the input padded with
 * -Infinity that holds, at each output position, the input under that offset.
 */
const windows = (
  x: tf.Tensor,
  filter: ReadonlyArray<number>,
  strides: ReadonlyArray<number>,
  before: ReadonlyArray<number>,
  outSpatial: ReadonlyArray<number>
) => {
  const rank = filter.length
  const spatial = x.shape.slice(1, 1 + rank)
  const needed = outSpatial.map((out, i) => (out - 1) * strides[i]! + filter[i]!)
  const pads: Array<[number, number]> = [
    [0, 0],
    ...spatial.map((length, i): [number, number] => [
      before[i]!,
      Math.max(0, needed[i]! - before[i]! - length)
    ]),
    [0, 0]
  ]
  const padded = tf.pad(x, pads, Number.NEGATIVE_INFINITY)
  let offsets: Array<Array<number>> = [[]]
  for (const extent of filter) {
    offsets = offsets.flatMap((prefix) => Array.from({ length: extent }, (_, k) => [...prefix, k]))
  }
  const candidates = offsets.map((offset) =>
    tf.stridedSlice(
      padded,
      [0, ...offset, 0],
      [x.shape[0]!, ...offset.map((k, i) => k + (outSpatial[i]! - 1) * strides[i]! + 1), x.shape[rank + 1]!],
      [1, ...strides, 1]
    )
  )
  return { candidates, offsets }
}

/**
 * A 3-D max pool (NDHWC): the elementwise `maximum` of the window offsets' strided
 * slices. tfjs-backend-wasm 4.22's own `MaxPool3D` starts each window's maximum at
 * the smallest positive float, so a window whose values are all 0 or below comes out
 * as 1.2e-38 instead of its maximum.
 */
export const maxPool3D = (x: tf.Tensor5D, attrs: tf.MaxPool3DAttrs): tf.Tensor5D => {
  const info = tf.backend_util.computePool3DInfo(x.shape, attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode)
  const { candidates } = windows(
    x,
    [info.filterDepth, info.filterHeight, info.filterWidth],
    [info.strideDepth, info.strideHeight, info.strideWidth],
    [info.padInfo.front, info.padInfo.top, info.padInfo.left],
    [info.outDepth, info.outHeight, info.outWidth]
  )
  return candidates.slice(1).reduce((a, b) => tf.maximum(a, b), candidates[0]!) as tf.Tensor5D
}

/** The `MaxPool3D` kernel: see `maxPool3D`. */
export const maxPool3DKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => maxPool3D(asTensor(inputs["x"]!, backend as tf.KernelBackend) as tf.Tensor5D, attrs as unknown as tf.MaxPool3DAttrs))

/**
 * The gradient of a max pool (2-D or 3-D, channels last) with respect to its input,
 * routed to one maximum of each window: the first in row-major order (`ties:
 * "first"`, what tfjs's cpu backend does in 2-D) or the last (`"last"`, what it
 * does in 3-D). `before` is the padding before each spatial axis, `filter` and
 * `strides` per spatial axis; `dy` has the pooled shape.
 *
 * Composed from strided slices of the input (padded with -Infinity), `maximum`,
 * `equal`, logical ops, `mul`, and the exact zero-insertion and padding that put each
 * window offset's share back in place. tfjs-backend-wasm 4.22's own `MaxPoolGrad` and
 * `MaxPool3DGrad` start each window's running maximum at the smallest positive float,
 * so a window whose maximum is 0 or below routes its gradient to the wrong place, and
 * they also misroute overlapping windows (stride below the pool size).
 */
export const maxPoolBackprop = (
  dy: tf.Tensor,
  x: tf.Tensor,
  filter: ReadonlyArray<number>,
  strides: ReadonlyArray<number>,
  before: ReadonlyArray<number>,
  ties: "first" | "last" = "first"
): tf.Tensor => {
  const rank = filter.length
  const spatial = x.shape.slice(1, 1 + rank)
  const { candidates, offsets } = windows(x, filter, strides, before, dy.shape.slice(1, 1 + rank))
  const maximum = candidates.slice(1).reduce((a, b) => tf.maximum(a, b), candidates[0]!)
  let taken = tf.zerosLike(maximum).cast("bool")
  let gradient: tf.Tensor | undefined
  const order = candidates.map((_, index) => index)
  if (ties === "last") order.reverse()
  for (const index of order) {
    const candidate = candidates[index]!
    const first = tf.logicalAnd(tf.equal(candidate, maximum), tf.logicalNot(taken))
    taken = tf.logicalOr(taken, first)
    let share = tf.mul(dy, first.cast(dy.dtype))
    for (let i = 0; i < rank; i++) share = dilateAxis(share, i + 1, strides[i]!)
    const offset = offsets[index]!
    share = tf.pad(share, [[0, 0], ...offset.map((k, i): [number, number] => [k, filter[i]! - 1 - k]), [0, 0]])
    gradient = gradient === undefined ? share : tf.add(gradient, share)
  }
  return cropSpatial(gradient!, before, spatial)
}

/** The `MaxPoolGrad` kernel (2-D, NHWC): see `maxPoolBackprop`. */
export const maxPoolGradKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => {
    const { dimRoundingMode, filterSize, pad, strides } = attrs as unknown as tf.MaxPoolGradAttrs
    const x = asTensor(inputs["input"]!, backend as tf.KernelBackend)
    const info = tf.backend_util.computePool2DInfo(
      x.shape as [number, number, number, number],
      filterSize,
      strides,
      1,
      pad,
      dimRoundingMode
    )
    return maxPoolBackprop(
      asTensor(inputs["dy"]!, backend as tf.KernelBackend),
      x,
      [info.filterHeight, info.filterWidth],
      [info.strideHeight, info.strideWidth],
      [info.padInfo.top, info.padInfo.left]
    )
  })

/** The `MaxPool3DGrad` kernel (NDHWC): see `maxPoolBackprop`. */
export const maxPool3DGradKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => {
    const { dimRoundingMode, filterSize, pad, strides } = attrs as unknown as tf.MaxPool3DGradAttrs
    const x = asTensor(inputs["input"]!, backend as tf.KernelBackend)
    const info = tf.backend_util.computePool3DInfo(
      x.shape as [number, number, number, number, number],
      filterSize,
      strides,
      1,
      pad,
      dimRoundingMode
    )
    return maxPoolBackprop(
      asTensor(inputs["dy"]!, backend as tf.KernelBackend),
      x,
      [info.filterDepth, info.filterHeight, info.filterWidth],
      [info.strideDepth, info.strideHeight, info.strideWidth],
      [info.padInfo.front, info.padInfo.top, info.padInfo.left],
      "last"
    )
  })

// ---------------------------------------------------------------------------
// conv3d gradients

const conv3DInfo = (
  xShape: ReadonlyArray<number>,
  filterShape: ReadonlyArray<number>,
  strides: number | [number, number, number],
  pad: "valid" | "same"
) =>
  tf.backend_util.computeConv3DInfo(
    xShape as [number, number, number, number, number],
    filterShape as [number, number, number, number, number],
    strides,
    1,
    pad
  )

/**
 * The gradient of `conv3d(x, filter, strides, pad)` (NDHWC, dilation 1) with respect
 * to `filter`, as `conv2DBackpropFilter` does in 2-D: a stride-1 `conv3d` of the
 * padded input transposed to `[C, D, H, W, N]` with `dy` transposed to
 * `[OD, OH, OW, N, O]` as the filter, dilated by the forward strides.
 * tfjs-backend-wasm 4.22's own `Conv3DBackpropFilterV2` is wrong for strides above 1.
 */
export const conv3DBackpropFilter = (
  x: tf.Tensor5D,
  dy: tf.Tensor5D,
  filterShape: [number, number, number, number, number],
  strides: number | [number, number, number],
  pad: "valid" | "same"
): tf.Tensor5D => {
  const info = conv3DInfo(x.shape, filterShape, strides, pad)
  const stride = [info.strideDepth, info.strideHeight, info.strideWidth]
  const before = [info.padInfo.front, info.padInfo.top, info.padInfo.left]
  const spatial = x.shape.slice(1, 4)
  const needed = dy.shape.slice(1, 4).map((out, i) => (out - 1) * stride[i]! + filterShape[i]!)
  const padded = tf.pad(x, [
    [0, 0],
    ...spatial.map((length, i): [number, number] => [
      before[i]!,
      Math.max(0, needed[i]! - before[i]! - length)
    ]),
    [0, 0]
  ])
  const cropped = tf.slice(padded, [0, 0, 0, 0, 0], [x.shape[0], needed[0]!, needed[1]!, needed[2]!, x.shape[4]])
  const gradient = tf.conv3d(
    tf.transpose(cropped, [4, 1, 2, 3, 0]) as tf.Tensor5D,
    tf.transpose(dy, [1, 2, 3, 0, 4]) as tf.Tensor5D,
    1,
    "valid",
    "NDHWC",
    stride as [number, number, number]
  )
  return tf.transpose(gradient, [1, 2, 3, 0, 4])
}

/**
 * The gradient of `conv3d(x, filter, strides, pad)` (NDHWC, dilation 1) with respect
 * to `x` of `inputShape`: `dy` dilated by the strides (zeros inserted), padded by
 * the filter size less one, convolved (stride 1) with the filter reversed in space
 * and transposed to `[FD, FH, FW, O, C]`, then cropped to the input. tfjs-backend-wasm
 * 4.22's own `Conv3DBackpropInputV2` is wrong (also at stride 1).
 */
export const conv3DBackpropInput = (
  inputShape: [number, number, number, number, number],
  dy: tf.Tensor5D,
  filter: tf.Tensor5D,
  strides: number | [number, number, number],
  pad: "valid" | "same"
): tf.Tensor5D => {
  const info = conv3DInfo(inputShape, filter.shape, strides, pad)
  const stride = [info.strideDepth, info.strideHeight, info.strideWidth]
  const before = [info.padInfo.front, info.padInfo.top, info.padInfo.left]
  let spread: tf.Tensor = dy
  for (let i = 0; i < 3; i++) spread = dilateAxis(spread, i + 1, stride[i]!)
  const sizes = filter.shape.slice(0, 3)
  const framed = tf.pad(spread, [[0, 0], ...sizes.map((f): [number, number] => [f - 1, f - 1]), [0, 0]])
  const flipped = tf.transpose(tf.reverse(filter, [0, 1, 2]), [0, 1, 2, 4, 3]) as tf.Tensor5D
  const gradient = tf.conv3d(framed as tf.Tensor5D, flipped, 1, "valid")
  return cropSpatial(gradient, before, inputShape.slice(1, 4)) as tf.Tensor5D
}

/** The `Conv3DBackpropFilterV2` kernel: see `conv3DBackpropFilter`. */
export const conv3DBackpropFilterKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => {
    const { filterShape, pad, strides } = attrs as unknown as tf.Conv3DBackpropFilterV2Attrs
    return conv3DBackpropFilter(
      asTensor(inputs["x"]!, backend as tf.KernelBackend) as tf.Tensor5D,
      asTensor(inputs["dy"]!, backend as tf.KernelBackend) as tf.Tensor5D,
      filterShape,
      strides,
      pad
    )
  })

/** The `Conv3DBackpropInputV2` kernel: see `conv3DBackpropInput`. */
export const conv3DBackpropInputKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => {
    const { inputShape, pad, strides } = attrs as unknown as tf.Conv3DBackpropInputV2Attrs
    return conv3DBackpropInput(
      inputShape,
      asTensor(inputs["dy"]!, backend as tf.KernelBackend) as tf.Tensor5D,
      asTensor(inputs["filter"]!, backend as tf.KernelBackend) as tf.Tensor5D,
      strides,
      pad
    )
  })

// ---------------------------------------------------------------------------
// Depthwise conv gradients (missing on wasm)

/**
 * A depthwise filter `[FH, FW, C, M]` as the block-diagonal full filter
 * `[FH, FW, C, C·M]` of the same convolution (output channel c·M + m reads only
 * input channel c).
 */
const blockDiagonal = (filter: tf.Tensor4D): tf.Tensor4D => {
  const [fh, fw, c, m] = filter.shape
  const eye = tf.reshape(tf.eye(c), [1, 1, c, c, 1])
  return tf.reshape(tf.mul(tf.reshape(filter, [fh, fw, c, 1, m]), eye), [fh, fw, c, c * m])
}

/**
 * The gradient of `depthwiseConv2d(x, filter, strides, pad)` (NHWC, dilation 1)
 * with respect to `filter`: the full conv2d filter gradient (`conv2DBackpropFilter`)
 * of its block-diagonal equivalent, keeping the diagonal blocks. Costs C times the
 * depthwise work; wasm 4.22 has no kernel for it.
 */
export const depthwiseConv2DBackpropFilter = (
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  attrs: tf.DepthwiseConv2dNativeBackpropFilterAttrs
): tf.Tensor4D => {
  const [fh, fw, c, m] = attrs.filterShape
  const full = conv2DBackpropFilter(x, dy, {
    strides: attrs.strides,
    pad: attrs.pad,
    dataFormat: "NHWC",
    filterShape: [fh, fw, c, c * m],
    ...(attrs.dimRoundingMode === undefined ? {} : { dimRoundingMode: attrs.dimRoundingMode })
  })
  const eye = tf.reshape(tf.eye(c), [1, 1, c, c, 1])
  return tf.sum(tf.mul(tf.reshape(full, [fh, fw, c, c, m]), eye), 3) as tf.Tensor4D
}

/**
 * The gradient of `depthwiseConv2d(x, filter, strides, pad)` (NHWC, dilation 1)
 * with respect to `x`: wasm's `Conv2DBackpropInput` with the block-diagonal filter.
 */
export const depthwiseConv2DBackpropInput = (
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  attrs: tf.DepthwiseConv2dNativeBackpropInputAttrs
): tf.Tensor4D =>
  tf.engine().runKernel(tf.Conv2DBackpropInput, { dy, filter: blockDiagonal(filter) }, {
    strides: attrs.strides,
    pad: attrs.pad,
    dataFormat: "NHWC",
    dimRoundingMode: attrs.dimRoundingMode,
    inputShape: attrs.inputShape
  } as unknown as tf.NamedAttrMap) as tf.Tensor4D

/** tfjs differentiates depthwise convolutions for dilation 1 only; say so rather than ignore another. */
const assertNoDilation = (kernel: string, dilations: number | [number, number]): void => {
  if (pair(dilations).some((d) => d !== 1)) {
    throw new Error(`${kernel} on wasm (effect-trainer's kernel): dilations above 1 are not supported`)
  }
}

/** The `DepthwiseConv2dNativeBackpropFilter` kernel: see `depthwiseConv2DBackpropFilter`. */
export const depthwiseConv2DBackpropFilterKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => {
    assertNoDilation(tf.DepthwiseConv2dNativeBackpropFilter, (attrs as unknown as tf.DepthwiseConv2dNativeBackpropFilterAttrs).dilations)
    return depthwiseConv2DBackpropFilter(
      asTensor4D(inputs["x"]!, backend as tf.KernelBackend),
      asTensor4D(inputs["dy"]!, backend as tf.KernelBackend),
      attrs as unknown as tf.DepthwiseConv2dNativeBackpropFilterAttrs
    )
  })

/** The `DepthwiseConv2dNativeBackpropInput` kernel: see `depthwiseConv2DBackpropInput`. */
export const depthwiseConv2DBackpropInputKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() => {
    assertNoDilation(tf.DepthwiseConv2dNativeBackpropInput, (attrs as unknown as tf.DepthwiseConv2dNativeBackpropInputAttrs).dilations)
    return depthwiseConv2DBackpropInput(
      asTensor4D(inputs["dy"]!, backend as tf.KernelBackend),
      asTensor4D(inputs["filter"]!, backend as tf.KernelBackend),
      attrs as unknown as tf.DepthwiseConv2dNativeBackpropInputAttrs
    )
  })

// ---------------------------------------------------------------------------
// UnsortedSegmentSum (missing on wasm; the gradient of gather, so of embedding)

/**
 * `unsortedSegmentSum(x, segmentIds, numSegments)`: rows of `x` whose id is outside
 * `[0, numSegments)` are dropped, as on cpu. Composed from `scatterND`, which sums
 * rows sent to the same index; out-of-range ids go to one extra row, sliced off.
 */
export const unsortedSegmentSum = (x: tf.Tensor, segmentIds: tf.Tensor, numSegments: number): tf.Tensor => {
  const idRank = segmentIds.shape.length
  const rows = tf.util.sizeFromShape(segmentIds.shape)
  const rest = x.shape.slice(idRank)
  const ids = tf.reshape(segmentIds, [rows]).cast("int32")
  const inRange = tf.logicalAnd(tf.greaterEqual(ids, 0), tf.less(ids, numSegments))
  const safe = tf.where(inRange, ids, tf.fill([rows], numSegments, "int32"))
  const summed = tf.scatterND(tf.reshape(safe, [rows, 1]), tf.reshape(x, [rows, ...rest]), [numSegments + 1, ...rest])
  return tf.slice(summed, 0, numSegments)
}

/** The `UnsortedSegmentSum` kernel: see `unsortedSegmentSum`. */
export const unsortedSegmentSumKernel: tf.KernelFunc = ({ attrs, backend, inputs }) =>
  tf.tidy(() =>
    unsortedSegmentSum(
      asTensor(inputs["x"]!, backend as tf.KernelBackend),
      asTensor(inputs["segmentIds"]!, backend as tf.KernelBackend),
      (attrs as unknown as tf.UnsortedSegmentSumAttrs).numSegments
    )
  )

// ---------------------------------------------------------------------------
// Registration

/**
 * The kernels this module provides for the wasm backend. Those wasm 4.22 lacks
 * (`missing`) are registered only when no kernel of the name exists, so one shipped
 * upstream one day wins; those it has but computes wrongly (`replaces`) take the
 * place of upstream's.
 */
export const wasmKernels: ReadonlyArray<{ readonly config: tf.KernelConfig; readonly kind: "missing" | "replaces" }> = [
  { kind: "missing", config: { kernelName: tf.Conv2DBackpropFilter, backendName: "wasm", kernelFunc: conv2DBackpropFilterKernel } },
  {
    kind: "missing",
    config: { kernelName: tf.DepthwiseConv2dNativeBackpropFilter, backendName: "wasm", kernelFunc: depthwiseConv2DBackpropFilterKernel }
  },
  {
    kind: "missing",
    config: { kernelName: tf.DepthwiseConv2dNativeBackpropInput, backendName: "wasm", kernelFunc: depthwiseConv2DBackpropInputKernel }
  },
  { kind: "missing", config: { kernelName: tf.UnsortedSegmentSum, backendName: "wasm", kernelFunc: unsortedSegmentSumKernel } },
  { kind: "replaces", config: { kernelName: tf.MaxPoolGrad, backendName: "wasm", kernelFunc: maxPoolGradKernel } },
  { kind: "replaces", config: { kernelName: tf.MaxPool3D, backendName: "wasm", kernelFunc: maxPool3DKernel } },
  { kind: "replaces", config: { kernelName: tf.MaxPool3DGrad, backendName: "wasm", kernelFunc: maxPool3DGradKernel } },
  { kind: "replaces", config: { kernelName: tf.Conv3DBackpropFilterV2, backendName: "wasm", kernelFunc: conv3DBackpropFilterKernel } },
  { kind: "replaces", config: { kernelName: tf.Conv3DBackpropInputV2, backendName: "wasm", kernelFunc: conv3DBackpropInputKernel } }
]

/** The kernels this module provides for the wasm backend, as tfjs configs. */
export const wasmKernelConfigs: ReadonlyArray<tf.KernelConfig> = wasmKernels.map(({ config }) => config)

const upstreamKernels = new Map<string, tf.KernelConfig>()

/**
 * The wasm kernel tfjs-backend-wasm registered under `kernelName` before `register`
 * replaced it, if it did: for tests that check upstream is still wrong.
 */
export const upstreamKernel = (kernelName: string): tf.KernelConfig | undefined => upstreamKernels.get(kernelName)

/**
 * Registers the kernels of `wasmKernels`: a `missing` one when the registry holds
 * none of its name; a `replaces` one in place of upstream's (kept, see
 * `upstreamKernel`) unless it is registered already. Silent (tfjs warns on a second
 * registration; this unregisters first), idempotent, process-wide (the kernel
 * registry is global), and it does not need the wasm backend to be initialised.
 * Returns the names of the kernels it registered now.
 */
export const register = (): ReadonlyArray<string> => {
  const registered: Array<string> = []
  for (const { config, kind } of wasmKernels) {
    const existing = tf.getKernel(config.kernelName, config.backendName)
    if (existing?.kernelFunc === config.kernelFunc) continue
    if (existing !== undefined) {
      if (kind === "missing") continue
      upstreamKernels.set(config.kernelName, existing)
      tf.unregisterKernel(config.kernelName, config.backendName)
    }
    tf.registerKernel(config)
    registered.push(config.kernelName)
  }
  return registered
}
