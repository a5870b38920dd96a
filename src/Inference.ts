/**
 * `Inference`: a checkpoint's weights in a model, outside a fit (Lightning's
 * `LightningModule.load_from_checkpoint`).
 *
 * `loadFromCheckpoint(module, path)` builds the module's model on the `Device` in
 * context (`configureModel`) and loads the model weights of the checkpoint at `path`
 * into it, through the `CheckpointIO` in context; `loadWeights(model, path)` does the
 * same into a model you already have. Only the model's weights are read (no
 * optimizer, no loop state); which tensor goes into which weight is decided by
 * `CheckpointConnector.matchWeights`, the module that owns the tensor names:
 *
 * - `strict: true` (the default): every weight of the model must be in the checkpoint
 *   and every model tensor of the checkpoint must be a weight of the model (by name,
 *   or by order with equal shapes when every name differs); otherwise a
 *   `WeightsMismatch` names the missing and the unexpected tensors;
 * - `strict: false`: the names that match are loaded, the rest is reported in
 *   `missing` / `unexpected` (another shape under the same name is an error either way).
 *
 * @example
 * ```ts
 * const { model } = yield* Inference.loadFromCheckpoint(module, "runs/checkpoints/epoch=9-step=60.ckpt")
 * const scores = model.predict(input)
 * ```
 *
 * @since 0.3.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Effect, Result } from "effect"
import * as Callback from "./Callback.ts"
import * as CheckpointConnector from "./CheckpointConnector.ts"
import { CheckpointIO, type CheckpointIOError } from "./CheckpointIO.ts"
import { Device, type DeviceError } from "./Device.ts"
import type { TrainingModule } from "./TrainingModule.ts"

/**
 * Options of `loadFromCheckpoint` and `loadWeights`.
 *
 * @since 0.3.0
 */
export interface LoadWeightsOptions {
  /** Require an exact match of names (default true), as `load_state_dict(strict=True)`. */
  readonly strict?: boolean | undefined
}

/**
 * A model with a checkpoint's weights, and what a non-strict load left out.
 *
 * @since 0.3.0
 */
export interface Loaded<M extends tf.LayersModel> {
  readonly model: M
  readonly path: string
  /** Weights of the model that kept their values (`model/<variable>`; non-strict only). */
  readonly missing: ReadonlyArray<string>
  /** Model tensors of the checkpoint that went nowhere (non-strict only). */
  readonly unexpected: ReadonlyArray<string>
}

/**
 * What loading weights can fail with.
 *
 * @since 0.3.0
 */
export type LoadWeightsError = CheckpointIOError | CheckpointConnector.WeightsMismatch | CheckpointConnector.RestoreError | DeviceError

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/**
 * Loads the model weights of the checkpoint at `path` into `model`. Nothing is
 * written into the model unless the whole match succeeded.
 *
 * @since 0.3.0
 */
export const loadWeights: <M extends tf.LayersModel>(
  model: M,
  path: string,
  options?: LoadWeightsOptions
) => Effect.Effect<Loaded<M>, LoadWeightsError, Device | CheckpointIO> = Effect.fn("Inference.loadWeights")(
  function*<M extends tf.LayersModel>(model: M, path: string, options?: LoadWeightsOptions) {
    const device = yield* Device
    const io = yield* CheckpointIO
    const record = yield* io.load(path, { dtypes: "tfjs" })
    const specs = model.weights.map((w) => ({ name: w.originalName, shape: w.shape.map((d) => d ?? -1) }))
    const matched = CheckpointConnector.matchWeights(record, path, specs, { strict: options?.strict })
    if (Result.isFailure(matched)) return yield* matched.failure
    const plan = matched.success
    const uploaded = yield* device.upload(Object.fromEntries(plan.assignments.map((a) => [String(a.index), a.tensor])))
    yield* Effect.try({
      try: () => plan.assignments.forEach((a) => model.weights[a.index]!.write(uploaded[String(a.index)]!)),
      catch: (cause) => new CheckpointConnector.RestoreError({ path, field: "model", reason: messageOf(cause), cause })
    }).pipe(Effect.ensuring(Effect.sync(() => device.tf.dispose(Object.values(uploaded)))))
    return { model, path, missing: plan.missing, unexpected: plan.unexpected }
  }
)

/**
 * Builds `module`'s model on the `Device` in context and loads the model weights of
 * the checkpoint at `path` into it (Lightning's `load_from_checkpoint`). A throw in
 * `configureModel` is a `CallbackError`.
 *
 * @since 0.3.0
 */
export const loadFromCheckpoint: <B, M extends tf.LayersModel>(
  module: TrainingModule<B, M>,
  path: string,
  options?: LoadWeightsOptions
) => Effect.Effect<Loaded<M>, LoadWeightsError | Callback.CallbackError, Device | CheckpointIO> = Effect.fn(
  "Inference.loadFromCheckpoint"
)(function*<B, M extends tf.LayersModel>(module: TrainingModule<B, M>, path: string, options?: LoadWeightsOptions) {
  const device = yield* Device
  const model = yield* Effect.try({
    try: () => module.configureModel(device.tf),
    catch: (cause) => new Callback.CallbackError({ callback: module.name, reason: `building the model failed: ${messageOf(cause)}`, cause })
  })
  return yield* loadWeights(model, path, options)
})
