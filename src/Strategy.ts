/**
 * `Strategy`: where and how the steps run, and which `CheckpointIO` stores the
 * checkpoints (Lightning's `Strategy`, which owns the `checkpoint_io`).
 *
 * The contract is small on purpose (the Trainer is the friendly front): run one
 * optimisation step on the `Device` (whole, or split into compute-gradients and
 * apply for gradient accumulation), stage the model and optimizer state into host
 * memory for a checkpoint, and put such state back. `SingleDeviceStrategy` is the
 * one built in. A strategy declares whether it accepts a custom `CheckpointIO`; one
 * that owns its checkpoint logic refuses it with a `StrategyConfigError` when its
 * layer is built, never mid-training.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Context, Data, Effect, Layer } from "effect"
import type { HostTensor } from "./Checkpoint.ts"
import { RestoreError, type RestoreTarget, type StagedState, type TensorPlan } from "./CheckpointConnector.ts"
import { CheckpointIO, type CheckpointIOShape } from "./CheckpointIO.ts"
import type { CollectiveError } from "./Collective.ts"
import * as DataParallelModule from "./DataParallel.ts"
import { Device, type DeviceError, type DeviceShape } from "./Device.ts"

/** A strategy was configured in a way that can never work. */
export class StrategyConfigError extends Data.TaggedError("StrategyConfigError")<{
  readonly strategy: string
  readonly reason: string
}> {
  override get message(): string {
    return `strategy ${this.strategy}: ${this.reason}`
  }
}

/** A step threw inside tfjs (a shape mismatch, a missing kernel, …). */
export class StepError extends Data.TaggedError("StepError")<{
  readonly step: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `${this.step} failed: ${this.reason}`
  }
}

/**
 * A checkpoint does not fit the model or optimizer (naming the file and the field):
 * defined in `CheckpointConnector`, re-exported here where users import it.
 */
export { RestoreError }

/** Clip gradients by their global norm (`"norm"`, Lightning's default) or element by element (`"value"`). */
export type GradientClipAlgorithm = "norm" | "value"

/** Options of one optimisation step. */
export interface StepOptions {
  /** Clip gradients at this value (by global norm or element value); none when undefined. */
  readonly gradientClipVal?: number | undefined
  readonly gradientClipAlgorithm?: GradientClipAlgorithm | undefined
  /**
   * The metrics the step logs (filled while `loss()` runs). A multi-replica strategy
   * may average them, and the loss, in place with the gradients (one round trip for
   * both); a single device leaves them alone.
   */
  readonly metrics?: Map<string, number> | undefined
}

/** The Strategy contract: steps on the Device, staging for checkpoints, applying restored state. */
export interface StrategyShape {
  readonly name: string
  readonly device: DeviceShape
  /**
   * The `CheckpointIO` given to this strategy (Lightning's
   * `Strategy(checkpoint_io=...)`), if any. The Trainer decides which store a run
   * uses (see `Trainer.resolveCheckpointIO`); a strategy without one leaves the
   * choice to the Trainer's plugins, the context or the default file store.
   */
  readonly checkpointIO: CheckpointIOShape | undefined
  /** Whether it accepts a custom `CheckpointIO` at all (from itself or the Trainer). */
  readonly acceptsCustomCheckpointIO: boolean
  /**
   * One optimisation step: computes `loss()` (inside `tf.tidy`), its gradients with
   * respect to the trainable weights, clips them if asked, applies them. Returns the
   * loss as a number.
   */
  readonly trainingStep: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer,
    loss: () => tf.Scalar,
    options: StepOptions
  ) => Effect.Effect<number, StepError | CollectiveError>
  /**
   * The first half of a step split for gradient accumulation: the gradients of
   * `loss() * scale` with respect to `model.trainableWeights` (in that order) and the
   * unscaled loss. The caller owns (and frees) the gradients.
   */
  readonly computeGradients: (
    model: tf.LayersModel,
    loss: () => tf.Scalar,
    scale: number
  ) => Effect.Effect<{ readonly loss: number; readonly grads: ReadonlyArray<tf.Tensor> }, StepError | CollectiveError>
  /**
   * The second half: clips `grads` (one per trainable weight, in order) if asked and
   * applies them with one optimizer step. `grads` stay the caller's.
   */
  readonly applyGradients: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer,
    grads: ReadonlyArray<tf.Tensor>,
    options: StepOptions
  ) => Effect.Effect<void, StepError | CollectiveError>
  /**
   * Host copies of the model weights and, unless weights only (`optimizer`
   * undefined), the optimizer state, under the device's own names;
   * `CheckpointConnector.dump` gives them their tensor names.
   */
  readonly stage: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer | undefined
  ) => Effect.Effect<StagedState, DeviceError | StepError>
  /** What a checkpoint is restored into (names and shapes, no tensor): `CheckpointConnector.plan` checks against it. */
  readonly describe: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer | undefined
  ) => Effect.Effect<RestoreTarget, StepError>
  /**
   * Puts a validated plan (`CheckpointConnector.plan`) into the model, and into the
   * optimizer when the plan has its state. It checks nothing the plan already did.
   */
  readonly restore: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer | undefined,
    plan: TensorPlan
  ) => Effect.Effect<void, RestoreError | DeviceError>
  /**
   * Multi-replica strategies (`DataParallel`) only; a single-device strategy leaves
   * these out. `isGlobalZero` (default true): whether this replica logs, draws the
   * progress bar and writes checkpoints. `reduceMetrics`: the metrics averaged over
   * the replicas (every replica calls it at the same points). `shard`: this
   * replica's part of a batch. `checkpointIOForRank`: the store as this rank uses it.
   */
  readonly rank?: number | undefined
  readonly worldSize?: number | undefined
  readonly isGlobalZero?: boolean | undefined
  readonly reduceMetrics?:
    | ((metrics: ReadonlyMap<string, number>) => Effect.Effect<ReadonlyMap<string, number>, CollectiveError>)
    | undefined
  readonly shard?: (<B>(batch: B) => B) | undefined
  readonly checkpointIOForRank?: ((io: CheckpointIOShape) => CheckpointIOShape) | undefined
}

/** The Strategy service. Provide it with `singleDevice()` (or `layer`) over a `Device`. */
export class Strategy extends Context.Service<Strategy, StrategyShape>()("effect-trainer/Strategy") {}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** Clips gradients by global norm or by value; returns new tensors (the caller frees both). */
const clipGradients = (tf: DeviceShape["tf"], grads: tf.NamedTensorMap, options: StepOptions): tf.NamedTensorMap => {
  const clip = options.gradientClipVal!
  return tf.tidy(() => {
    const names = Object.keys(grads)
    if (options.gradientClipAlgorithm === "value") {
      return Object.fromEntries(names.map((n) => [n, tf.clipByValue(grads[n]!, -clip, clip)]))
    }
    const total = tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(grads[n]!)))))
    const scale = tf.minimum(tf.scalar(1), tf.div(tf.scalar(clip), tf.add(total, tf.scalar(1e-6))))
    return Object.fromEntries(names.map((n) => [n, tf.mul(grads[n]!, scale)]))
  })
}

/**
 * The step of a single device: tfjs's own minimize, or gradients, clipping and apply;
 * then the loss is read with `await data()` (`webgpu` cannot read synchronously).
 */
const trainingStep = (device: DeviceShape): StrategyShape["trainingStep"] => (model, optimizer, loss, options) =>
  Effect.try({
    try: (): tf.Tensor => {
      const { tf } = device
      // LayerVariable.read() is the variable itself, as tfjs-layers passes to minimize.
      const varList = model.trainableWeights.map((w) => w.read() as tf.Variable)
      if (options.gradientClipVal === undefined) {
        const cost = optimizer.minimize(loss, true, varList)
        if (cost === null) throw new Error("the optimizer returned no loss")
        return cost
      }
      const { grads, value } = optimizer.computeGradients(loss, varList)
      const clipped = clipGradients(tf, grads, options)
      optimizer.applyGradients(clipped)
      tf.dispose([...Object.values(grads), ...Object.values(clipped)])
      return value
    },
    catch: (cause) => new StepError({ step: "training step", reason: messageOf(cause), cause })
  }).pipe(
    Effect.flatMap((cost) =>
      Effect.tryPromise({
        try: () => cost.data().then((data) => data[0] as number),
        catch: (cause) => new StepError({ step: "training step", reason: `reading the loss: ${messageOf(cause)}`, cause })
      }).pipe(Effect.ensuring(Effect.sync(() => cost.dispose())))
    )
  )

const computeGradients = (device: DeviceShape): StrategyShape["computeGradients"] => (model, loss, scale) =>
  Effect.try({
    try: () => {
      const { tf } = device
      const varList = model.trainableWeights.map((w) => w.read() as tf.Variable)
      let raw: tf.Scalar | undefined
      const { grads, value } = tf.variableGrads(() => {
        raw = tf.keep(loss())
        return scale === 1 ? raw : tf.mul(raw, tf.scalar(scale))
      }, varList)
      // With scale 1, `value` is `raw` itself: free it only when it is another tensor.
      if (value !== raw) value.dispose()
      return { raw: raw!, grads: varList.map((v) => grads[v.name]!) }
    },
    catch: (cause) => new StepError({ step: "training step (gradients)", reason: messageOf(cause), cause })
  }).pipe(
    // Read with `await data()`, as the step does (`webgpu` cannot read synchronously).
    Effect.flatMap(({ grads, raw }) =>
      Effect.tryPromise({
        try: () => raw.data().then((data) => ({ loss: data[0] as number, grads })),
        catch: (cause) => {
          device.tf.dispose(grads)
          return new StepError({ step: "training step (gradients)", reason: `reading the loss: ${messageOf(cause)}`, cause })
        }
      }).pipe(Effect.ensuring(Effect.sync(() => raw.dispose())))
    )
  )

const applyGradients = (device: DeviceShape): StrategyShape["applyGradients"] => (model, optimizer, grads, options) =>
  Effect.try({
    try: () => {
      const { tf } = device
      const named: tf.NamedTensorMap = {}
      model.trainableWeights.forEach((w, i) => (named[(w.read() as tf.Variable).name] = grads[i]!))
      if (options.gradientClipVal === undefined) return optimizer.applyGradients(named)
      const clipped = clipGradients(tf, named, options)
      optimizer.applyGradients(clipped)
      tf.dispose(Object.values(clipped))
    },
    catch: (cause) => new StepError({ step: "optimizer step", reason: messageOf(cause), cause })
  })

/**
 * Optimizer variables that `getWeights` leaves out: Adam's and Adamax's running
 * `accBeta1` / `accBeta2`. `setWeights` recomputes them as `beta ** (step + 1)`,
 * which differs in the last bits from the product accumulated step by step; saving
 * them keeps a resumed run bit-identical to an uninterrupted one.
 */
const hiddenState = (
  device: DeviceShape,
  optimizer: tf.Optimizer,
  named: ReadonlyArray<{ readonly tensor: tf.Tensor }>
): Array<[string, tf.Variable]> => {
  const listed = new Set(named.map((w) => w.tensor))
  return Object.entries(optimizer)
    .filter((entry): entry is [string, tf.Variable] =>
      entry[1] instanceof device.tf.Variable && !listed.has(entry[1]) && !entry[1].isDisposed
    )
    .sort(([a], [b]) => (a < b ? -1 : 1))
}

const stage = (device: DeviceShape): StrategyShape["stage"] => (model, optimizer) =>
  Effect.gen(function*() {
    // originalName: tfjs suffixes `name` (`hidden/bias_17`) when a layer name was used before.
    const weights = yield* device.stage(Object.fromEntries(model.weights.map((w, i) => [String(i), w.read()])))
    const staged: Array<readonly [string, HostTensor]> = model.weights.map((w, i) => [w.originalName, weights[String(i)]!])
    if (optimizer === undefined) return { model: staged }
    const named = yield* getWeights(optimizer)
    const hidden = hiddenState(device, optimizer, named)
    const slots: Record<string, tf.Tensor> = {}
    // getWeights / setWeights match slots by position: keep the order.
    named.forEach((w, i) => (slots[`slot/${i}`] = w.tensor))
    for (const [key, variable] of hidden) slots[`state/${key}`] = variable
    const stagedSlots = yield* device.stage(slots).pipe(
      // getWeights makes new tensors for some slots (Adam's `iter`): free those.
      Effect.ensuring(freeFresh(device, named))
    )
    return {
      model: staged,
      optimizer: {
        slots: named.map((w, i) => [w.name, stagedSlots[`slot/${i}`]!] as const),
        state: hidden.map(([key]) => [key, stagedSlots[`state/${key}`]!] as const)
      }
    }
  })

const getWeights = (optimizer: tf.Optimizer) =>
  Effect.tryPromise({
    try: () => optimizer.getWeights(),
    catch: (cause) => new StepError({ step: "optimizer.getWeights", reason: messageOf(cause), cause })
  })

const freeFresh = (device: DeviceShape, named: ReadonlyArray<{ readonly tensor: tf.Tensor }>) =>
  Effect.sync(() => {
    for (const w of named) if (!(w.tensor instanceof device.tf.Variable)) w.tensor.dispose()
  })

const describe = (device: DeviceShape): StrategyShape["describe"] => (model, optimizer) =>
  Effect.gen(function*() {
    const weights = model.weights.map((w) => ({ name: w.originalName, shape: w.shape.map((d) => d ?? -1) }))
    if (optimizer === undefined) return { model: weights }
    const named = yield* getWeights(optimizer)
    const hidden = hiddenState(device, optimizer, named)
    yield* freeFresh(device, named)
    return {
      model: weights,
      optimizer: {
        className: optimizer.getClassName(),
        // The variables the training step hands to the optimizer, in that order.
        variables: model.trainableWeights.map((w) => ({ name: (w.read() as tf.Variable).name, shape: w.shape.map((d) => d ?? -1) })),
        // A fresh optimizer gives its step count only; one that has been stepped or
        // restored has per-variable slots, or a step count above zero.
        slotCount: named.length > 1 || optimizer.iterations > 0 ? named.length : undefined,
        state: hidden.map(([key, variable]) => ({ key, shape: variable.shape }))
      }
    }
  })

const restore = (device: DeviceShape): StrategyShape["restore"] => (model, optimizer, plan) =>
  Effect.gen(function*() {
    const { path } = plan
    const uploaded = yield* device.upload(Object.fromEntries(plan.model.map((t, i) => [String(i), t])))
    yield* Effect.try({
      try: () => model.weights.forEach((w, i) => w.write(uploaded[String(i)]!)),
      catch: (cause) => new RestoreError({ path, field: "model", reason: messageOf(cause), cause })
    }).pipe(Effect.ensuring(Effect.sync(() => device.tf.dispose(Object.values(uploaded)))))
    if (optimizer === undefined || plan.optimizer === undefined) return
    const { slots, state } = plan.optimizer
    const onDevice = yield* device.upload(Object.fromEntries([
      ...slots.map((s, i) => [`slot/${i}`, s.tensor] as const),
      ...state.map((s) => [`state/${s.key}`, s.tensor] as const)
    ]))
    yield* Effect.tryPromise({
      try: () => optimizer.setWeights(slots.map((s, i) => ({ name: s.name, tensor: onDevice[`slot/${i}`]! }))),
      catch: (cause) => new RestoreError({ path, field: "optimizer", reason: messageOf(cause), cause })
    }).pipe(
      Effect.andThen(Effect.try({
        try: () => {
          const hidden = new Map(hiddenState(device, optimizer, []))
          for (const { key } of state) hidden.get(key)?.assign(onDevice[`state/${key}`]!)
        },
        catch: (cause) => new RestoreError({ path, field: "optimizer/state", reason: messageOf(cause), cause })
      })),
      Effect.ensuring(Effect.sync(() => device.tf.dispose(Object.values(onDevice))))
    )
  })

/** What a strategy is called and whether it accepts a custom CheckpointIO. */
export interface MakeOptions {
  readonly name: string
  /** Whether a custom CheckpointIO is accepted (default true). */
  readonly acceptsCustomCheckpointIO?: boolean | undefined
}

/**
 * Builds a strategy on the `Device` in context. `custom` is the CheckpointIO the
 * strategy was given, if any (refused by a strategy that owns its checkpoint logic).
 */
export const make = (
  options: MakeOptions,
  custom?: CheckpointIOShape | undefined
): Effect.Effect<StrategyShape, StrategyConfigError, Device> =>
  Effect.gen(function*() {
    const device = yield* Device
    const accepts = options.acceptsCustomCheckpointIO ?? true
    if (custom !== undefined && !accepts) {
      return yield* new StrategyConfigError({
        strategy: options.name,
        reason: "it owns its checkpoint logic and accepts no custom CheckpointIO"
      })
    }
    return {
      name: options.name,
      device,
      checkpointIO: custom,
      acceptsCustomCheckpointIO: accepts,
      trainingStep: trainingStep(device),
      computeGradients: computeGradients(device),
      applyGradients: applyGradients(device),
      stage: stage(device),
      describe: describe(device),
      restore: restore(device)
    }
  })

/**
 * A strategy layer on the `Device` in context. With `checkpointIO`, that Layer
 * provides the strategy's storage (Lightning's `Strategy(checkpoint_io=...)`), built
 * in the layer's own context (so `AsyncCheckpointIO.layer()` there wraps the
 * CheckpointIO in context); without, the Trainer chooses the store.
 */
export const layer = <E = never, R = never>(
  options: MakeOptions & { readonly checkpointIO?: Layer.Layer<CheckpointIO, E, R> | undefined }
): Layer.Layer<Strategy, StrategyConfigError | E, Device | R> =>
  Layer.effect(
    Strategy,
    Effect.gen(function*() {
      const custom = options.checkpointIO === undefined
        ? undefined
        : yield* Effect.map(Layer.build(options.checkpointIO), (ctx) => Context.get(ctx, CheckpointIO))
      return yield* make(options, custom)
    })
  )

/** The single-device strategy (Lightning's `SingleDeviceStrategy`). */
export const singleDevice = <E = never, R = never>(
  options?: { readonly checkpointIO?: Layer.Layer<CheckpointIO, E, R> | undefined }
): Layer.Layer<Strategy, StrategyConfigError | E, Device | R> =>
  layer({ name: "SingleDeviceStrategy", checkpointIO: options?.checkpointIO })

/**
 * The data-parallel strategy (Lightning's `DDPStrategy`): `devices` replicas on
 * worker threads, gradients averaged before each step, rank 0 alone logging and
 * writing checkpoints. Defined in `DataParallel` (see there and docs/scale-out.md).
 */
export const dataParallel = (
  options: DataParallelModule.DataParallelOptions
): Layer.Layer<Strategy, StrategyConfigError, Device> => Layer.suspend(() => DataParallelModule.layer(options))
