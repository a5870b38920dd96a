/**
 * `Strategy`: where and how the steps run, and which `CheckpointIO` stores the
 * checkpoints (Lightning's `Strategy`, which owns the `checkpoint_io`).
 *
 * The contract is small on purpose (the Trainer is the friendly front): run one
 * optimisation step on the `Device`, stage the model and optimizer state into host
 * memory for a checkpoint, and put such state back. `SingleDeviceStrategy` is the
 * one built in. A strategy declares whether it accepts a custom `CheckpointIO`; one
 * that owns its checkpoint logic refuses it with a `StrategyConfigError` when its
 * layer is built, never mid-training.
 *
 * @since 0.1.0
 */
import type * as tf from "@tensorflow/tfjs"
import { Context, Data, Effect, Layer } from "effect"
import { type HostTensor, modelPrefix, optimizerPrefix } from "./Checkpoint.ts"
import { CheckpointIO, type CheckpointIOShape } from "./CheckpointIO.ts"
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

/** Restoring a checkpoint into a model or optimizer failed (missing tensors, other shapes). */
export class RestoreError extends Data.TaggedError("RestoreError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `cannot restore checkpoint: ${this.reason}`
  }
}

export type GradientClipAlgorithm = "norm" | "value"

export interface StepOptions {
  /** Clip gradients at this value (by global norm or element value); none when undefined. */
  readonly gradientClipVal?: number | undefined
  readonly gradientClipAlgorithm?: GradientClipAlgorithm | undefined
}

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
  ) => Effect.Effect<number, StepError>
  /** Host copies of the model weights (`model/<name>`) and, unless weights only, the optimizer state (`optimizer/<name>`). */
  readonly stage: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer | undefined
  ) => Effect.Effect<Record<string, HostTensor>, DeviceError | StepError>
  /** Puts staged state back into a model (and optimizer, when its tensors are there). */
  readonly restore: (
    model: tf.LayersModel,
    optimizer: tf.Optimizer | undefined,
    tensors: Readonly<Record<string, HostTensor>>
  ) => Effect.Effect<void, RestoreError | DeviceError>
}

export class Strategy extends Context.Service<Strategy, StrategyShape>()("effect-trainer/Strategy") {}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** The step of a single device: tfjs's own minimize, or gradients, clipping and apply. */
const trainingStep = (device: DeviceShape): StrategyShape["trainingStep"] => (model, optimizer, loss, options) =>
  Effect.try({
    try: () => {
      const { tf } = device
      // LayerVariable.read() is the variable itself, as tfjs-layers passes to minimize.
      const varList = model.trainableWeights.map((w) => w.read() as tf.Variable)
      if (options.gradientClipVal === undefined) {
        const cost = optimizer.minimize(loss, true, varList)
        if (cost === null) throw new Error("the optimizer returned no loss")
        const value = cost.dataSync()[0]!
        cost.dispose()
        return value
      }
      const clip = options.gradientClipVal
      const { grads, value } = optimizer.computeGradients(loss, varList)
      const clipped = tf.tidy(() => {
        const names = Object.keys(grads)
        if (options.gradientClipAlgorithm === "value") {
          return Object.fromEntries(names.map((n) => [n, tf.clipByValue(grads[n]!, -clip, clip)]))
        }
        const total = tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(grads[n]!)))))
        const scale = tf.minimum(tf.scalar(1), tf.div(tf.scalar(clip), tf.add(total, tf.scalar(1e-6))))
        return Object.fromEntries(names.map((n) => [n, tf.mul(grads[n]!, scale)]))
      })
      optimizer.applyGradients(clipped)
      tf.dispose([...Object.values(grads), ...Object.values(clipped)])
      const result = value.dataSync()[0]!
      value.dispose()
      return result
    },
    catch: (cause) => new StepError({ step: "training step", reason: messageOf(cause), cause })
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
    const tensors: Record<string, tf.Tensor> = {}
    // originalName: tfjs suffixes `name` (`hidden/bias_17`) when a layer name was used before.
    for (const w of model.weights) tensors[`${modelPrefix}${w.originalName}`] = w.read()
    const staged = yield* device.stage(tensors)
    if (optimizer === undefined) return staged
    const named = yield* Effect.tryPromise({
      try: () => optimizer.getWeights(),
      catch: (cause) => new StepError({ step: "optimizer.getWeights", reason: messageOf(cause), cause })
    })
    const slots: Record<string, tf.Tensor> = {}
    // getWeights / setWeights match slots by position: the index keeps the order.
    named.forEach((w, i) => (slots[`${optimizerPrefix}${String(i).padStart(4, "0")}/${w.name}`] = w.tensor))
    for (const [key, variable] of hiddenState(device, optimizer, named)) slots[`${optimizerPrefix}state/${key}`] = variable
    const stagedSlots = yield* device.stage(slots).pipe(
      // getWeights makes new tensors for some slots (Adam's `iter`): free those.
      Effect.ensuring(Effect.sync(() => {
        for (const w of named) if (!(w.tensor instanceof device.tf.Variable)) w.tensor.dispose()
      }))
    )
    return { ...staged, ...stagedSlots }
  })

/**
 * Matches checkpoint tensors to model weights: by name when every name matches,
 * otherwise by order when the count and every shape match (tfjs names unnamed layers
 * with global counters, so a rebuilt model may be `dense_Dense3` where the saved one
 * was `dense_Dense1`).
 */
const matchWeights = (
  model: tf.LayersModel,
  tensors: Readonly<Record<string, HostTensor>>
): Array<HostTensor> | RestoreError => {
  const saved = Object.keys(tensors).filter((k) => k.startsWith(modelPrefix))
  const byName = model.weights.map((w) => tensors[`${modelPrefix}${w.originalName}`])
  const candidates = byName.every((t) => t !== undefined) ? byName as Array<HostTensor> : saved.map((k) => tensors[k]!)
  if (candidates.length !== model.weights.length) {
    return new RestoreError({
      reason: `the model has ${model.weights.length} weights, the checkpoint ${saved.length} (${saved.slice(0, 4).join(", ")}…)`
    })
  }
  for (let i = 0; i < candidates.length; i++) {
    const expected = model.weights[i]!.shape.join(",")
    if (candidates[i]!.shape.join(",") !== expected) {
      return new RestoreError({
        reason: `weight ${model.weights[i]!.name} has shape [${expected}], the checkpoint [${candidates[i]!.shape.join(",")}]`
      })
    }
  }
  return candidates
}

const restore = (device: DeviceShape): StrategyShape["restore"] => (model, optimizer, tensors) =>
  Effect.gen(function*() {
    const weights = matchWeights(model, tensors)
    if (weights instanceof RestoreError) return yield* weights
    const uploaded = yield* device.upload(Object.fromEntries(weights.map((t, i) => [String(i), t])))
    yield* Effect.try({
      try: () => model.weights.forEach((w, i) => w.write(uploaded[String(i)]!)),
      catch: (cause) => new RestoreError({ reason: messageOf(cause), cause })
    }).pipe(Effect.ensuring(Effect.sync(() => device.tf.dispose(Object.values(uploaded)))))
    const statePrefix = `${optimizerPrefix}state/`
    const slotNames = Object.keys(tensors).filter((k) => k.startsWith(optimizerPrefix) && !k.startsWith(statePrefix)).sort()
    const stateNames = Object.keys(tensors).filter((k) => k.startsWith(statePrefix))
    if (optimizer === undefined || slotNames.length === 0) return
    const slots = yield* device.upload(Object.fromEntries([...slotNames, ...stateNames].map((k) => [k, tensors[k]!])))
    yield* Effect.tryPromise({
      try: () =>
        optimizer.setWeights(slotNames.map((k) => ({ name: k.slice(k.indexOf("/", optimizerPrefix.length) + 1), tensor: slots[k]! }))),
      catch: (cause) => new RestoreError({ reason: `optimizer state: ${messageOf(cause)}`, cause })
    }).pipe(
      Effect.andThen(Effect.try({
        try: () => {
          const hidden = new Map(hiddenState(device, optimizer, []))
          for (const name of stateNames) hidden.get(name.slice(statePrefix.length))?.assign(slots[name]!)
        },
        catch: (cause) => new RestoreError({ reason: `optimizer state: ${messageOf(cause)}`, cause })
      })),
      Effect.ensuring(Effect.sync(() => device.tf.dispose(Object.values(slots))))
    )
  })

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
      stage: stage(device),
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
