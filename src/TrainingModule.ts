/**
 * `TrainingModule`: the user's model contract, the counterpart of Lightning's
 * `LightningModule`.
 *
 * It says how to build the model and its optimizer, what a training step computes
 * (the loss), what validation / test / predict steps log or return, and how its own
 * state goes into checkpoints. Steps are synchronous tfjs code: the Trainer runs
 * each inside `tf.tidy`, so intermediate tensors are freed; tensors made from a
 * batch with `ctx.tensor` are freed with them.
 *
 * @example
 * ```ts
 * const classifier: TrainingModule.TrainingModule<DataModule.XY> = {
 *   name: "classifier",
 *   hyperParameters: { hidden: 32, lr: 0.01 },
 *   configureModel: (tf) => tf.sequential({ layers: [
 *     tf.layers.dense({ units: 32, activation: "relu", inputShape: [4], name: "hidden" }),
 *     tf.layers.dense({ units: 3, activation: "softmax", name: "out" })
 *   ] }),
 *   configureOptimizers: (tf) => tf.train.adam(0.01),
 *   trainingStep: (model, batch, ctx) => {
 *     const loss = ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as Tensor)
 *     ctx.log("train_loss", loss)
 *     return loss as Scalar
 *   }
 * }
 * ```
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs"
import type { Json } from "effect/Schema"
import type { HostTensor } from "./Checkpoint.ts"
import type { OptimizerConfiguration } from "./LRScheduler.ts"

/** Where a logged value goes: per step, per epoch (averaged), or both. */
export interface LogOptions {
  /** Record the value of every step (default: true in training, false otherwise). */
  readonly onStep?: boolean | undefined
  /** Record the epoch mean (default: false in training, true otherwise). */
  readonly onEpoch?: boolean | undefined
  /** Show it in the progress bar (default true). */
  readonly progBar?: boolean | undefined
}

/** What a step gets besides the model and the batch. */
export interface StepContext {
  readonly tf: typeof tf
  /** Records a metric (a scalar tensor or a number) for callbacks, loggers and the progress bar. */
  readonly log: (name: string, value: tf.Scalar | tf.Tensor | number, options?: LogOptions) => void
  /** A tfjs tensor of a host tensor (F32, I32, BOOL), freed after the step. */
  readonly tensor: (host: HostTensor) => tf.Tensor
  readonly epoch: number
  readonly globalStep: number
  readonly batchIdx: number
}

/** The user's model (Lightning's `LightningModule`): how to build it and its optimizer, and what each step computes and logs. */
export interface TrainingModule<Batch, Model extends tf.LayersModel = tf.LayersModel> {
  /** A name for logs and errors. */
  readonly name: string
  /** Saved into every checkpoint, and into the CSV logger's run. */
  readonly hyperParameters?: Readonly<Record<string, Json>> | undefined
  /**
   * Builds the model on the active backend. Name your layers (`name: "hidden"`) so
   * that checkpoint tensor names are stable; unnamed layers get tfjs's global
   * counters, and a checkpoint then maps by order and shape instead.
   */
  readonly configureModel: (tfjs: typeof tf) => Model
  /**
   * The optimizer (Adam, SGD, …), alone or with a learning-rate scheduler
   * (Lightning's `{ optimizer, lrScheduler: { scheduler, interval, frequency, monitor } }`,
   * see `LRScheduler`); their states go into checkpoints.
   */
  readonly configureOptimizers: (tfjs: typeof tf, model: Model) => OptimizerConfiguration
  /** One training step: returns the scalar loss to minimise. */
  readonly trainingStep: (model: Model, batch: Batch, ctx: StepContext) => tf.Scalar
  /** One validation step: logs metrics with `ctx.log` (epoch means by default). */
  readonly validationStep?: ((model: Model, batch: Batch, ctx: StepContext) => void) | undefined
  /** One test step: logs metrics with `ctx.log`. */
  readonly testStep?: ((model: Model, batch: Batch, ctx: StepContext) => void) | undefined
  /** One predict step: returns the predictions (copied to host by the Trainer). */
  readonly predictStep?: ((model: Model, batch: Batch, ctx: StepContext) => tf.Tensor) | undefined
  /** Your own entries for a checkpoint (stored as `meta.user`). */
  readonly onSaveCheckpoint?: (() => Readonly<Record<string, Json>>) | undefined
  /** Your own entries back from a checkpoint being resumed. */
  readonly onLoadCheckpoint?: ((user: Readonly<Record<string, Json>>) => void) | undefined
}
