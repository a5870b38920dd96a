/**
 * `CheckpointConnector`: what a checkpoint contains (Lightning's checkpoint
 * connector).
 *
 * One module owns the content of a checkpoint, so that the format is written and
 * read by the same code:
 * - **dump**: the Trainer's loop state, the callbacks' and the module's state and the
 *   tensors the Strategy staged → a `Checkpoint` record;
 * - **restore**: a loaded record → a `RestorePlan`, validated against the model and
 *   optimizer being restored into and against the data, *before* anything is applied
 *   or "resumed from" is logged; anything that does not fit is a `RestoreError`
 *   naming the file and the field;
 * - **the tensor names**: `model/<variable>`, `optimizer/<index>/<slot>` and
 *   `optimizer/state/<key>`. The optimizer index is ordered numerically, never as a
 *   string (tfjs restores slots by position; `"10000" < "9999"` as strings);
 * - **the loop state** `meta.loops.fit`, decoded with a Schema at the boundary:
 *   the position, the random state, the learning-rate schedulers' states, the time
 *   trained (`maxTime`) and how many batches the partial gradient sum of an
 *   unfinished accumulation window holds; that sum itself is saved as tensors
 *   `trainer/accumulatedGrads/<index>/<variable>` (one per trainable weight).
 *
 * Everything here is pure or runs user code through the typed error channel; it
 * never touches tfjs. The Strategy stages device tensors (`StagedState`), describes
 * what it restores into (`RestoreTarget`) and applies a plan on the device; the
 * Trainer sequences.
 *
 * @since 0.2.0
 */
import { Data, Effect, Option, Result, Schema, type SchemaIssue } from "effect"
import type { Json } from "effect/Schema"
import * as Callback from "./Callback.ts"
import {
  type Checkpoint,
  type CheckpointMeta,
  type HostTensor,
  make as makeCheckpoint,
  modelPrefix,
  type OptimizerConfig,
  optimizerPrefix
} from "./Checkpoint.ts"
import { SchedulerState } from "./LRScheduler.ts"

/**
 * A checkpoint does not fit what it is restored into: a missing or extra tensor,
 * another shape, another optimizer, a loop position that cannot be, or a model or
 * optimizer that refused the values. `path` is the checkpoint file, `field` the
 * tensor name or meta field at fault (`model`, `optimizer`, a tensor name,
 * `meta.loops.fit.nextBatch`, …).
 *
 * @since 0.1.0
 */
export class RestoreError extends Data.TaggedError("RestoreError")<{
  readonly path: string
  readonly field: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `cannot restore ${this.path}: ${this.field}: ${this.reason}`
  }
}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

// ---------------------------------------------------------------------------
// Tensor names

/**
 * Section prefix of the optimizer's variables that `getWeights` leaves out (Adam's
 * running `accBeta1` / `accBeta2`).
 *
 * @since 0.2.0
 */
export const optimizerStatePrefix = `${optimizerPrefix}state/`

/**
 * The tensor name of a model weight: `model/<variable>`.
 *
 * @since 0.2.0
 */
export const modelTensorName = (variable: string): string => `${modelPrefix}${variable}`

/**
 * The tensor name of the optimizer slot at `index` (its position in
 * `optimizer.getWeights()`): `optimizer/<index>/<slot>`. The index is zero-padded to
 * four digits (files written before 0.2 read the same); readers parse it as an
 * integer, so 10,000 slots and more keep their order.
 *
 * @since 0.2.0
 */
export const optimizerSlotName = (index: number, slot: string): string => `${optimizerPrefix}${String(index).padStart(4, "0")}/${slot}`

/**
 * The tensor name of an optimizer variable that `getWeights` leaves out: `optimizer/state/<key>`.
 *
 * @since 0.2.0
 */
export const optimizerStateName = (key: string): string => `${optimizerStatePrefix}${key}`

/**
 * Section prefix of the partial gradient sum of an unfinished accumulation window.
 *
 * @since 0.3.0
 */
export const accumulatedGradPrefix = "trainer/accumulatedGrads/"

/**
 * The tensor name of the partial gradient of the trainable weight at `index`:
 * `trainer/accumulatedGrads/<index>/<variable>` (index zero-padded, parsed as an integer).
 *
 * @since 0.3.0
 */
export const accumulatedGradName = (index: number, variable: string): string =>
  `${accumulatedGradPrefix}${String(index).padStart(4, "0")}/${variable}`

/**
 * What a tensor name says: a model weight, an optimizer slot (with its numeric
 * index), an optimizer state variable, a name in no section of ours (kept, ignored
 * on restore), or a malformed optimizer name.
 *
 * @since 0.2.0
 */
export type TensorName =
  | { readonly section: "model"; readonly variable: string }
  | { readonly section: "optimizerSlot"; readonly index: number; readonly slot: string }
  | { readonly section: "optimizerState"; readonly key: string }
  | { readonly section: "other" }
  | { readonly section: "malformed"; readonly reason: string }

const slotPattern = /^(\d{1,9})\/(.+)$/

/**
 * Parses a tensor name of a checkpoint. The optimizer index is a decimal integer
 * (any zero padding), at most nine digits.
 *
 * @since 0.2.0
 */
export const parseTensorName = (name: string): TensorName => {
  if (name.startsWith(modelPrefix)) return { section: "model", variable: name.slice(modelPrefix.length) }
  if (name.startsWith(optimizerStatePrefix)) {
    const key = name.slice(optimizerStatePrefix.length)
    return key === "" ? { section: "malformed", reason: "an optimizer state tensor without a key" } : { section: "optimizerState", key }
  }
  if (!name.startsWith(optimizerPrefix)) return { section: "other" }
  const match = slotPattern.exec(name.slice(optimizerPrefix.length))
  if (match === null) return { section: "malformed", reason: "an optimizer tensor is optimizer/<index>/<slot> or optimizer/state/<key>" }
  return { section: "optimizerSlot", index: Number.parseInt(match[1]!, 10), slot: match[2]! }
}

/**
 * One optimizer slot of a checkpoint, with its tensor name and numeric index.
 *
 * @since 0.2.0
 */
export interface SlotEntry {
  readonly tensorName: string
  readonly index: number
  readonly slot: string
}

/**
 * The optimizer slots among `names`, in numeric index order. The indices must be
 * exactly 0, 1, …, n-1 (each once), since tfjs restores slots by position.
 *
 * @since 0.2.0
 */
export const orderedSlots = (path: string, names: Iterable<string>): Result.Result<Array<SlotEntry>, RestoreError> => {
  const slots: Array<SlotEntry> = []
  for (const tensorName of names) {
    const parsed = parseTensorName(tensorName)
    if (parsed.section === "malformed") return Result.fail(new RestoreError({ path, field: tensorName, reason: parsed.reason }))
    if (parsed.section === "optimizerSlot") slots.push({ tensorName, index: parsed.index, slot: parsed.slot })
  }
  slots.sort((a, b) => a.index - b.index)
  for (let i = 0; i < slots.length; i++) {
    if (slots[i]!.index !== i) {
      const reason = slots[i]!.index < i
        ? `optimizer slot index ${slots[i]!.index} appears twice (also ${slots[i - 1]!.tensorName})`
        : `optimizer slot index ${i} is missing (the indices must run 0..${slots.length - 1})`
      return Result.fail(new RestoreError({ path, field: slots[i]!.tensorName, reason }))
    }
  }
  return Result.succeed(slots)
}

// ---------------------------------------------------------------------------
// Loop state

const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/**
 * The fit loop's position in a checkpoint (`meta.loops.fit`): the epoch and batch a
 * resumed run starts at, the optimizer steps taken, and the seeded random state of
 * the user's code (a 32-bit unsigned integer) when the run was seeded.
 *
 * @since 0.2.0
 */
export const FitLoopState = Schema.Struct({
  nextEpoch: NonNegativeInt,
  nextBatch: NonNegativeInt,
  globalStep: Schema.optional(NonNegativeInt),
  rng: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 0xffffffff }))),
  /** The learning-rate schedulers' states, in configuration order. */
  lrSchedulers: Schema.optional(Schema.Array(SchedulerState)),
  /** Milliseconds of fit so far, for `maxTime`. */
  timeElapsedMs: Schema.optional(Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))),
  /** Batches summed into the saved partial gradients of an unfinished accumulation window. */
  accumulatedBatches: Schema.optional(NonNegativeInt)
})

/** @since 0.2.0 */
export type FitLoopState = typeof FitLoopState.Type

/** The first path and message of a Schema issue. */
const firstIssue = (
  issue: SchemaIssue.Issue,
  path: ReadonlyArray<PropertyKey> = []
): { path: ReadonlyArray<PropertyKey>; message: string } => {
  if (issue._tag === "Pointer") return firstIssue(issue.issue, [...path, ...issue.path])
  if (issue._tag === "Composite" || issue._tag === "AnyOf") {
    const first = issue.issues[0]
    if (first !== undefined) return firstIssue(first, path)
  }
  return { path, message: String(issue).split("\n")[0]! }
}

/**
 * Decodes `meta.loops.fit` of the checkpoint at `path`; a value that is not a
 * `FitLoopState` is a `RestoreError` naming the field.
 *
 * @since 0.2.0
 */
export const decodeFitLoop = (path: string, value: unknown): Result.Result<FitLoopState, RestoreError> =>
  Result.mapError(Schema.decodeUnknownResult(FitLoopState)(value), (error) => {
    const { path: at, message } = firstIssue(error.issue)
    return new RestoreError({
      path,
      field: ["meta.loops.fit", ...at.map(String)].join("."),
      reason: `${message} (got ${
        JSON.stringify(at.reduce<unknown>((v, k) => (v as Record<PropertyKey, unknown> | undefined)?.[k], value)) ?? "nothing"
      })`,
      cause: error
    })
  })

// ---------------------------------------------------------------------------
// Dump

/**
 * Host copies of the state of a model and its optimizer, under the names the device
 * knows them by: what `Strategy.stage` returns. `dump` gives them their tensor names.
 *
 * @since 0.2.0
 */
export interface StagedState {
  /** The model's weights by variable name (tfjs's `originalName`), in model order. */
  readonly model: ReadonlyArray<readonly [variable: string, tensor: HostTensor]>
  /** The optimizer's state; absent for a weights-only checkpoint. */
  readonly optimizer?: {
    /** `optimizer.getWeights()` in order: `iter`, then per-variable slots (`hidden/kernel/m`, …). */
    readonly slots: ReadonlyArray<readonly [slot: string, tensor: HostTensor]>
    /** Variables `getWeights` leaves out (Adam's `accBeta1` / `accBeta2`), by key. */
    readonly state: ReadonlyArray<readonly [key: string, tensor: HostTensor]>
  } | undefined
}

/**
 * The tensors of a checkpoint from staged state: the one place names are encoded.
 *
 * @since 0.2.0
 */
export const encodeTensors = (staged: StagedState): Record<string, HostTensor> => {
  const tensors: Record<string, HostTensor> = {}
  for (const [variable, t] of staged.model) tensors[modelTensorName(variable)] = t
  if (staged.optimizer !== undefined) {
    staged.optimizer.slots.forEach(([slot, t], i) => (tensors[optimizerSlotName(i, slot)] = t))
    for (const [key, t] of staged.optimizer.state) tensors[optimizerStateName(key)] = t
  }
  return tensors
}

/**
 * What `dump` needs besides the staged tensors. The module's hooks and the callbacks'
 * `stateDict` are user code: a throw there is a typed `CallbackError`.
 *
 * @since 0.2.0
 */
export interface DumpInput {
  readonly staged: StagedState
  readonly epoch: number
  readonly globalStep: number
  readonly loop: FitLoopState
  /** Model weights only: no optimizer state, no callback states, no user entries. */
  readonly weightsOnly: boolean
  readonly callbacks: ReadonlyArray<Callback.Callback>
  readonly optimizer: OptimizerConfig | null
  /** The partial gradient sum of an unfinished accumulation window, per trainable weight in order (by `originalName`). */
  readonly accumulatedGrads?: ReadonlyArray<readonly [variable: string, tensor: HostTensor]> | undefined
  readonly module: {
    readonly name: string
    readonly hyperParameters?: Readonly<Record<string, Json>> | undefined
    readonly onSaveCheckpoint?: (() => Readonly<Record<string, Json>>) | undefined
  }
}

const fitLoopJson = (loop: FitLoopState): Json => {
  const json: Record<string, Json> = { nextEpoch: loop.nextEpoch, nextBatch: loop.nextBatch }
  if (loop.globalStep !== undefined) json["globalStep"] = loop.globalStep
  if (loop.rng !== undefined) json["rng"] = loop.rng
  if (loop.lrSchedulers !== undefined) json["lrSchedulers"] = loop.lrSchedulers.map((st) => JSON.parse(JSON.stringify(st)) as Json)
  if (loop.timeElapsedMs !== undefined) json["timeElapsedMs"] = loop.timeElapsedMs
  if (loop.accumulatedBatches !== undefined) json["accumulatedBatches"] = loop.accumulatedBatches
  return json
}

/**
 * Builds the checkpoint record of the current state. Fails with a `CallbackError`
 * when a callback's `stateDict` or the module's `onSaveCheckpoint` throws.
 *
 * @since 0.2.0
 */
export const dump: (input: DumpInput) => Effect.Effect<Checkpoint, Callback.CallbackError> = Effect.fn(
  "CheckpointConnector.dump"
)(function*(input: DumpInput) {
  const callbackStates: Record<string, Json> = {}
  if (!input.weightsOnly) {
    for (const cb of input.callbacks) {
      const stateDict = cb.stateDict
      if (stateDict === undefined) continue
      callbackStates[Callback.stateKeyOf(cb)] = yield* Effect.try({
        try: () => stateDict.call(cb),
        catch: (cause) => new Callback.CallbackError({ callback: cb.name, reason: `stateDict failed: ${messageOf(cause)}`, cause })
      })
    }
  }
  const onSave = input.module.onSaveCheckpoint
  const user = input.weightsOnly || onSave === undefined ? {} : yield* Effect.try({
    try: () => ({ ...onSave() }),
    catch: (cause) =>
      new Callback.CallbackError({ callback: input.module.name, reason: `onSaveCheckpoint failed: ${messageOf(cause)}`, cause })
  })
  const staged = input.weightsOnly ? { model: input.staged.model } : input.staged
  const tensors = encodeTensors(staged)
  if (!input.weightsOnly) input.accumulatedGrads?.forEach(([variable, t], i) => (tensors[accumulatedGradName(i, variable)] = t))
  return makeCheckpoint({
    tensors,
    meta: {
      epoch: input.epoch,
      globalStep: input.globalStep,
      weightsOnly: input.weightsOnly,
      loops: { fit: fitLoopJson(input.loop) },
      callbacks: callbackStates,
      optimizer: input.weightsOnly ? null : input.optimizer,
      hyperParameters: { ...input.module.hyperParameters },
      user
    }
  })
})

// ---------------------------------------------------------------------------
// Restore

/**
 * A variable as the restore target has it: name and shape.
 *
 * @since 0.2.0
 */
export interface VariableSpec {
  readonly name: string
  readonly shape: ReadonlyArray<number>
}

/**
 * What a checkpoint is restored into, described by the Strategy without handing
 * over any tensor.
 *
 * @since 0.2.0
 */
export interface RestoreTarget {
  /** The model's weights in order, by variable name (tfjs's `originalName`). */
  readonly model: ReadonlyArray<VariableSpec>
  readonly optimizer?: {
    /** `optimizer.getClassName()`. */
    readonly className: string
    /** The variables it updates, in the order it keeps per-variable slots. */
    readonly variables: ReadonlyArray<VariableSpec>
    /**
     * The number of slots `getWeights` gives now when the optimizer is not fresh
     * (stepped, or restored): a checkpoint must then bring exactly as many.
     */
    readonly slotCount: number | undefined
    /** Variables `getWeights` leaves out (Adam's `accBeta1` / `accBeta2`). */
    readonly state: ReadonlyArray<{ readonly key: string; readonly shape: ReadonlyArray<number> }>
  } | undefined
}

/**
 * What the data says about the run being resumed; `numTrainBatches` bounds the
 * batch position when known.
 *
 * @since 0.2.0
 */
export interface RestoreContext {
  readonly numTrainBatches?: number | undefined
  /** The kinds of the module's learning-rate schedulers, in order: saved states must match. */
  readonly lrSchedulers?: ReadonlyArray<string> | undefined
  /** `accumulateGradBatches` at an epoch: a saved partial window must fit it. */
  readonly accumulateGradBatches?: ((epoch: number) => number) | undefined
  /**
   * The run's hyperparameters (`TrainingModule.hyperParameters`): a checkpoint that
   * saved hyperparameters must agree with them, key by key, or it is refused before
   * any tensor is looked at (another model's file says "model: cnn", not a shape).
   */
  readonly hyperParameters?: Readonly<Record<string, Json>> | undefined
}

const jsonText = (value: Json | undefined): string => value === undefined ? "(unset)" : JSON.stringify(value)

/**
 * The hyperparameters on which a checkpoint and the run disagree, as
 * `name: <saved> in the checkpoint, <run> in this run` texts (empty when they
 * agree). A side that has none (a file written by another tool, a module without
 * hyperparameters) agrees with anything.
 *
 * @since 0.2.0
 */
export const hyperParameterDifferences = (
  saved: Readonly<Record<string, Json>>,
  run: Readonly<Record<string, Json>>
): Array<string> => {
  if (Object.keys(saved).length === 0 || Object.keys(run).length === 0) return []
  const names = [...new Set([...Object.keys(saved), ...Object.keys(run)])].sort()
  return names
    .filter((name) => !(name in saved) || !(name in run) || JSON.stringify(saved[name]) !== JSON.stringify(run[name]))
    .map((name) => `${name}: ${jsonText(saved[name])} in the checkpoint, ${jsonText(run[name])} in this run`)
}

/**
 * The tensors to put on the device, resolved and checked: what `Strategy.restore`
 * applies.
 *
 * @since 0.2.0
 */
export interface TensorPlan {
  /** The checkpoint file, for errors. */
  readonly path: string
  /** One tensor per weight of `RestoreTarget.model`, in that order. */
  readonly model: ReadonlyArray<HostTensor>
  /** The optimizer's slots in `getWeights` order and its other state; absent: leave the optimizer as it is. */
  readonly optimizer?: {
    readonly slots: ReadonlyArray<{ readonly name: string; readonly tensor: HostTensor }>
    readonly state: ReadonlyArray<{ readonly key: string; readonly tensor: HostTensor }>
  } | undefined
}

/**
 * A validated restore: the tensors, and the loop position (absent for a file written
 * by another tool, which carries no training state).
 *
 * @since 0.2.0
 */
export interface RestorePlan extends TensorPlan {
  readonly loop: {
    readonly nextEpoch: number
    readonly nextBatch: number
    readonly globalStep: number
    readonly rng: number | undefined
    /** The schedulers' states; absent: the checkpoint has none (start them fresh). */
    readonly lrSchedulers: ReadonlyArray<SchedulerState> | undefined
    readonly timeElapsedMs: number
    /** The partial gradient sum of an unfinished accumulation window, per trainable weight in order; empty when none. */
    readonly accumulatedGrads: ReadonlyArray<HostTensor>
    readonly accumulatedBatches: number
  } | undefined
  readonly meta: Option.Option<CheckpointMeta>
}

const sameShape = (a: ReadonlyArray<number>, b: ReadonlyArray<number>) => a.length === b.length && a.every((d, i) => d === b[i])

const shapeText = (shape: ReadonlyArray<number>) => `[${shape.join(",")}]`

/**
 * Matches checkpoint tensors to model weights: by name when every name matches,
 * otherwise by order when the count and every shape match (tfjs names unnamed layers
 * with global counters, so a rebuilt model may be `dense_Dense3` where the saved one
 * was `dense_Dense1`).
 */
const matchModel = (
  path: string,
  tensors: Readonly<Record<string, HostTensor>>,
  model: ReadonlyArray<VariableSpec>
): Result.Result<Array<HostTensor>, RestoreError> => {
  const saved = Object.keys(tensors).filter((k) => k.startsWith(modelPrefix))
  const byName = model.map((w) => tensors[modelTensorName(w.name)])
  const byNameComplete = byName.every((t) => t !== undefined)
  const candidates = byNameComplete ? byName as Array<HostTensor> : saved.map((k) => tensors[k]!)
  const names = byNameComplete ? model.map((w) => modelTensorName(w.name)) : saved
  if (candidates.length !== model.length) {
    return Result.fail(
      new RestoreError({
        path,
        field: "model",
        reason: `the model has ${model.length} weights, the checkpoint ${saved.length} (${saved.slice(0, 4).join(", ")}${
          saved.length > 4 ? ", …" : ""
        })`
      })
    )
  }
  for (let i = 0; i < candidates.length; i++) {
    if (!sameShape(candidates[i]!.shape, model[i]!.shape)) {
      return Result.fail(
        new RestoreError({
          path,
          field: names[i]!,
          reason: `weight ${model[i]!.name} has shape ${shapeText(model[i]!.shape)}, the checkpoint ${shapeText(candidates[i]!.shape)}`
        })
      )
    }
  }
  return Result.succeed(candidates)
}

/** The variable a slot name (`<variable>/<slot>`) belongs to by name, if there is one. */
const ownerByName = (slot: string, byName: ReadonlyMap<string, VariableSpec>): VariableSpec | undefined => {
  const cut = slot.lastIndexOf("/")
  return cut <= 0 ? undefined : byName.get(slot.slice(0, cut))
}

const matchOptimizer = (
  path: string,
  tensors: Readonly<Record<string, HostTensor>>,
  meta: Option.Option<CheckpointMeta>,
  target: NonNullable<RestoreTarget["optimizer"]>
): Result.Result<TensorPlan["optimizer"], RestoreError> => {
  const fail = (field: string, reason: string) => Result.fail(new RestoreError({ path, field, reason }))
  const ordered = orderedSlots(path, Object.keys(tensors))
  if (Result.isFailure(ordered)) return Result.fail(ordered.failure)
  const slots = ordered.success
  const stateNames = Object.keys(tensors).filter((k) => parseTensorName(k).section === "optimizerState").sort()
  const savedOptimizer = Option.isSome(meta) ? meta.value.optimizer : null
  if (savedOptimizer !== null && savedOptimizer.className !== target.className) {
    return fail(
      "meta.optimizer.className",
      `the checkpoint holds the state of ${savedOptimizer.className}, the module's optimizer is ${target.className}`
    )
  }
  if (slots.length === 0) {
    if (savedOptimizer !== null) {
      return fail(
        "optimizer",
        `the checkpoint's meta says a ${savedOptimizer.className} optimizer was saved, but it holds no optimizer/<index>/<slot> tensor`
      )
    }
    if (target.slotCount !== undefined) {
      return fail(
        "optimizer",
        `the optimizer has state (${target.slotCount} slots), the checkpoint has none: it would keep state that does not belong to these weights`
      )
    }
    if (stateNames.length > 0) return fail(stateNames[0]!, "optimizer state without optimizer slots")
    return Result.succeed(undefined)
  }
  if (target.slotCount !== undefined && target.slotCount !== slots.length) {
    return fail("optimizer", `the optimizer has ${target.slotCount} slots, the checkpoint ${slots.length}`)
  }
  // tfjs's optimizers put the step count first (`iter`, a scalar), then per-variable
  // slots in groups of one per variable, each group in variable order.
  const first = slots[0]!
  const hasIter = first.slot === "iter"
  if (hasIter && tensors[first.tensorName]!.shape.length !== 0) {
    return fail(first.tensorName, `the step count is a scalar, the checkpoint has shape ${shapeText(tensors[first.tensorName]!.shape)}`)
  }
  const perVariable = hasIter ? slots.slice(1) : slots
  const variables = target.variables
  const byName = new Map(variables.map((v) => [v.name, v]))
  // setWeights restores by position: judge by position when the slots divide among
  // the variables; otherwise (a variable that got no gradient has no slots) by the
  // variable name in each slot's name, in groups that repeat the same variables.
  const grouped = variables.length > 0 && perVariable.length % variables.length === 0
  const owners: Array<VariableSpec> = []
  for (let j = 0; j < perVariable.length; j++) {
    const entry = perVariable[j]!
    const owner = grouped ? variables[j % variables.length] : ownerByName(entry.slot, byName)
    if (owner === undefined) {
      return fail(
        entry.tensorName,
        `${perVariable.length} per-variable slots do not divide among the optimizer's ${variables.length} variables`
      )
    }
    owners.push(owner)
  }
  if (!grouped && perVariable.length > 0) {
    const groupSize = new Set(owners).size
    const regular = perVariable.length % groupSize === 0 && owners.every((o, j) => o === owners[j % groupSize])
    if (!regular) {
      return fail("optimizer", `${perVariable.length} per-variable slots do not divide among the optimizer's ${variables.length} variables`)
    }
  }
  for (let j = 0; j < perVariable.length; j++) {
    const entry = perVariable[j]!
    const owner = owners[j]!
    const shape = tensors[entry.tensorName]!.shape
    if (!sameShape(shape, owner.shape)) {
      return fail(
        entry.tensorName,
        `the slot belongs to ${owner.name} of shape ${shapeText(owner.shape)}, the checkpoint has ${shapeText(shape)}`
      )
    }
  }
  const stateSpecs = new Map(target.state.map((s) => [s.key, s.shape]))
  const state: Array<{ key: string; tensor: HostTensor }> = []
  for (const name of stateNames) {
    const key = name.slice(optimizerStatePrefix.length)
    const expected = stateSpecs.get(key)
    if (expected === undefined) return fail(name, `${target.className} has no state variable ${key}`)
    if (!sameShape(tensors[name]!.shape, expected)) {
      return fail(name, `${key} has shape ${shapeText(expected)}, the checkpoint ${shapeText(tensors[name]!.shape)}`)
    }
    state.push({ key, tensor: tensors[name]! })
  }
  return Result.succeed({ slots: slots.map((s) => ({ name: s.slot, tensor: tensors[s.tensorName]! })), state })
}

const matchLoop = (
  path: string,
  meta: CheckpointMeta,
  tensors: Readonly<Record<string, HostTensor>>,
  target: RestoreTarget,
  context: RestoreContext
): Result.Result<NonNullable<RestorePlan["loop"]>, RestoreError> => {
  const raw = meta.loops["fit"]
  if (raw === undefined) {
    return Result.succeed({
      nextEpoch: meta.epoch + 1,
      nextBatch: 0,
      globalStep: meta.globalStep,
      rng: undefined,
      lrSchedulers: undefined,
      timeElapsedMs: 0,
      accumulatedGrads: [],
      accumulatedBatches: 0
    })
  }
  const decoded = decodeFitLoop(path, raw)
  if (Result.isFailure(decoded)) return Result.fail(decoded.failure)
  const fit = decoded.success
  if (fit.globalStep !== undefined && fit.globalStep !== meta.globalStep) {
    return Result.fail(
      new RestoreError({
        path,
        field: "meta.loops.fit.globalStep",
        reason: `${fit.globalStep} disagrees with meta.globalStep ${meta.globalStep}`
      })
    )
  }
  const batches = context.numTrainBatches
  if (batches !== undefined && fit.nextBatch > batches) {
    return Result.fail(
      new RestoreError({ path, field: "meta.loops.fit.nextBatch", reason: `${fit.nextBatch} is beyond the ${batches} batches of an epoch` })
    )
  }
  const fail = (field: string, reason: string) => Result.fail(new RestoreError({ path, field, reason }))
  if (fit.lrSchedulers !== undefined && context.lrSchedulers !== undefined) {
    const saved = fit.lrSchedulers.map((st) => st.kind)
    if (saved.length !== context.lrSchedulers.length || saved.some((k, i) => k !== context.lrSchedulers![i])) {
      return fail(
        "meta.loops.fit.lrSchedulers",
        `the checkpoint has schedulers [${saved.join(", ")}], the module configures [${context.lrSchedulers.join(", ")}]`
      )
    }
  }
  // The partial gradients of an unfinished accumulation window.
  const gradNames = Object.keys(tensors).filter((k) => k.startsWith(accumulatedGradPrefix))
    .map((k) => ({ k, index: Number.parseInt(k.slice(accumulatedGradPrefix.length), 10) }))
    .sort((a, b) => a.index - b.index)
  const accumulated = fit.accumulatedBatches ?? 0
  if ((accumulated > 0) !== (gradNames.length > 0)) {
    return fail(
      "meta.loops.fit.accumulatedBatches",
      `${accumulated} batches accumulated, but the checkpoint holds ${gradNames.length} ${accumulatedGradPrefix}* tensors`
    )
  }
  const variables = target.optimizer?.variables
  if (accumulated > 0 && variables !== undefined) {
    if (gradNames.length !== variables.length) {
      return fail(accumulatedGradPrefix, `${gradNames.length} partial gradients for the optimizer's ${variables.length} variables`)
    }
    for (let i = 0; i < gradNames.length; i++) {
      const { k, index } = gradNames[i]!
      if (index !== i) return fail(k, `partial gradient index ${i} is missing`)
      if (!sameShape(tensors[k]!.shape, variables[i]!.shape)) {
        return fail(
          k,
          `the gradient of ${variables[i]!.name} has shape ${shapeText(variables[i]!.shape)}, the checkpoint ${
            shapeText(tensors[k]!.shape)
          }`
        )
      }
    }
  }
  if (accumulated > 0 && context.accumulateGradBatches !== undefined) {
    const n = context.accumulateGradBatches(fit.nextEpoch)
    if (fit.nextBatch % n !== accumulated) {
      return fail(
        "meta.loops.fit.accumulatedBatches",
        `${accumulated} batches accumulated at batch ${fit.nextBatch} do not fit accumulateGradBatches ${n}`
      )
    }
  }
  return Result.succeed({
    nextEpoch: fit.nextEpoch,
    nextBatch: fit.nextBatch,
    globalStep: meta.globalStep,
    rng: fit.rng,
    lrSchedulers: fit.lrSchedulers,
    timeElapsedMs: fit.timeElapsedMs ?? 0,
    accumulatedGrads: accumulated > 0 ? gradNames.map(({ k }) => tensors[k]!) : [],
    accumulatedBatches: accumulated
  })
}

/**
 * Validates a loaded checkpoint against what it is restored into and returns what to
 * apply. Nothing is applied here: a `RestoreError` (naming `path` and the field)
 * means the model, the optimizer and the loop are untouched.
 *
 * Checks: the hyperparameters (when the context gives the run's), model weights by name (or by order) and shape; optimizer class, slot
 * names, numeric indices 0..n-1, slot count (against a non-fresh optimizer), the
 * step count's and every slot's shape against the variable it belongs to, state
 * variables; missing optimizer tensors when the meta says an optimizer was saved;
 * the loop position (`FitLoopState`, `nextBatch` within an epoch when known,
 * `globalStep` consistent); the schedulers' kinds against the module's; the partial
 * gradients of an accumulation window (one per trainable weight, shapes, the batch
 * count against `accumulateGradBatches`).
 *
 * @since 0.2.0
 */
export const plan = (
  record: Checkpoint,
  path: string,
  target: RestoreTarget,
  context: RestoreContext = {}
): Result.Result<RestorePlan, RestoreError> => {
  if (Option.isSome(record.meta) && context.hyperParameters !== undefined) {
    const differences = hyperParameterDifferences(record.meta.value.hyperParameters, context.hyperParameters)
    if (differences.length > 0) {
      return Result.fail(
        new RestoreError({
          path,
          field: "meta.hyperParameters",
          reason: `the checkpoint was saved with other hyperparameters (${differences.join("; ")})`
        })
      )
    }
  }
  const model = matchModel(path, record.tensors, target.model)
  if (Result.isFailure(model)) return Result.fail(model.failure)
  let optimizer: TensorPlan["optimizer"] = undefined
  if (target.optimizer !== undefined) {
    const matched = matchOptimizer(path, record.tensors, record.meta, target.optimizer)
    if (Result.isFailure(matched)) return Result.fail(matched.failure)
    optimizer = matched.success
  }
  let loop: RestorePlan["loop"] = undefined
  if (Option.isSome(record.meta)) {
    const matched = matchLoop(path, record.meta.value, record.tensors, target, context)
    if (Result.isFailure(matched)) return Result.fail(matched.failure)
    loop = matched.success
  }
  return Result.succeed({ path, model: model.success, optimizer, loop, meta: record.meta })
}

/**
 * The state keys of a checkpoint's callbacks that no callback of this Trainer has
 * (Lightning warns about them on resume), in the file's order.
 *
 * @since 0.3.0
 */
export const unknownCallbackStates = (meta: CheckpointMeta, callbacks: ReadonlyArray<Callback.Callback>): Array<string> => {
  const known = new Set(callbacks.filter((cb) => cb.stateDict !== undefined || cb.loadStateDict !== undefined).map(Callback.stateKeyOf))
  return Object.keys(meta.callbacks).filter((key) => !known.has(key))
}

/**
 * Gives the saved states back to the stateful callbacks (`loadStateDict`) and the
 * module's own entries to `onLoadCheckpoint`. A throw in that user code is a
 * `CallbackError`, as is a failure of the hooks' effects.
 *
 * @since 0.2.0
 */
export const restoreUserState: (
  meta: CheckpointMeta,
  callbacks: ReadonlyArray<Callback.Callback>,
  module: {
    readonly name: string
    readonly onLoadCheckpoint?: ((user: Readonly<Record<string, Json>>) => void) | undefined
  }
) => Effect.Effect<void, Callback.HookError> = Effect.fn("CheckpointConnector.restoreUserState")(function*(meta, callbacks, module) {
  const unknown = unknownCallbackStates(meta, callbacks)
  if (unknown.length > 0) {
    // Lightning's warning: the state of these callbacks is in the file but goes nowhere.
    yield* Effect.logWarning(
      `Be aware that when using ckptPath, callbacks used to create the checkpoint need to be provided during Trainer ` +
        `instantiation. Please add the following callbacks: [${unknown.map((k) => JSON.stringify(k)).join(", ")}].`
    )
  }
  for (const cb of callbacks) {
    const saved = meta.callbacks[Callback.stateKeyOf(cb)]
    const load = cb.loadStateDict
    if (saved === undefined || load === undefined) continue
    yield* Effect.flatten(Effect.try({
      try: () => load.call(cb, saved),
      catch: (cause) => new Callback.CallbackError({ callback: cb.name, reason: `loadStateDict failed: ${messageOf(cause)}`, cause })
    }))
  }
  const onLoad = module.onLoadCheckpoint
  if (onLoad !== undefined) {
    yield* Effect.try({
      try: () => onLoad(meta.user),
      catch: (cause) => new Callback.CallbackError({ callback: module.name, reason: `onLoadCheckpoint failed: ${messageOf(cause)}`, cause })
    })
  }
})

// ---------------------------------------------------------------------------
// Weights for inference (`loadFromCheckpoint`, `ckptPath` of validate / test / predict)

/**
 * The model tensors of a checkpoint do not match the model they are loaded into
 * (Lightning's `load_state_dict` error): `missing` are weights of the model the
 * checkpoint has no tensor for, `unexpected` tensors of the checkpoint the model has
 * no weight for, `shapes` names present on both sides with other shapes.
 *
 * @since 0.3.0
 */
export class WeightsMismatch extends Data.TaggedError("WeightsMismatch")<{
  readonly path: string
  readonly missing: ReadonlyArray<string>
  readonly unexpected: ReadonlyArray<string>
  readonly shapes: ReadonlyArray<
    { readonly name: string; readonly model: ReadonlyArray<number>; readonly checkpoint: ReadonlyArray<number> }
  >
}> {
  override get message(): string {
    const parts = [
      this.missing.length > 0 ? `missing key(s): ${this.missing.join(", ")}` : undefined,
      this.unexpected.length > 0 ? `unexpected key(s): ${this.unexpected.join(", ")}` : undefined,
      ...this.shapes.map((s) => `${s.name}: the model has shape ${shapeText(s.model)}, the checkpoint ${shapeText(s.checkpoint)}`)
    ].filter((p) => p !== undefined)
    return `cannot load the weights of ${this.path}: ${parts.join("; ")}`
  }
}

/**
 * Which checkpoint tensor goes into which model weight. `assignments` index into the
 * model's weights; `missing` / `unexpected` are what a non-strict load left out.
 *
 * @since 0.3.0
 */
export interface WeightsPlan {
  readonly path: string
  readonly assignments: ReadonlyArray<{ readonly index: number; readonly tensor: HostTensor }>
  /** Weight names (`model/<variable>`) the checkpoint had no tensor for (non-strict only). */
  readonly missing: ReadonlyArray<string>
  /** Checkpoint tensor names the model had no weight for (non-strict only). */
  readonly unexpected: ReadonlyArray<string>
}

/**
 * Matches a checkpoint's model tensors (`model/<variable>`; optimizer and other
 * tensors are ignored) to the weights of `model`, like `load_state_dict(strict)`:
 *
 * - every name matches: by name;
 * - otherwise, when the counts and every shape agree in order: by order (tfjs names
 *   unnamed layers with process-wide counters, so the same architecture built again
 *   is `dense_Dense3` where the saved one was `dense_Dense1`);
 * - otherwise `strict` (the default) fails with `WeightsMismatch` naming the missing
 *   and unexpected tensors; non-strict loads the names that match (with equal
 *   shapes; another shape is an error either way) and reports the rest.
 *
 * @since 0.3.0
 */
export const matchWeights = (
  record: Checkpoint,
  path: string,
  model: ReadonlyArray<VariableSpec>,
  options: { readonly strict?: boolean | undefined } = {}
): Result.Result<WeightsPlan, WeightsMismatch> => {
  const saved = Object.keys(record.tensors).filter((k) => k.startsWith(modelPrefix))
  const wanted = model.map((w) => modelTensorName(w.name))
  const byName = wanted.every((name) => record.tensors[name] !== undefined) && saved.length === wanted.length
  if (!byName && saved.length === model.length && saved.every((k, i) => sameShape(record.tensors[k]!.shape, model[i]!.shape))) {
    return Result.succeed({
      path,
      assignments: saved.map((k, i) => ({ index: i, tensor: record.tensors[k]! })),
      missing: [],
      unexpected: []
    })
  }
  const wantedSet = new Set(wanted)
  const missing = wanted.filter((name) => record.tensors[name] === undefined)
  const unexpected = saved.filter((name) => !wantedSet.has(name))
  const shapes: Array<{ name: string; model: ReadonlyArray<number>; checkpoint: ReadonlyArray<number> }> = []
  const assignments: Array<{ index: number; tensor: HostTensor }> = []
  wanted.forEach((name, index) => {
    const tensor = record.tensors[name]
    if (tensor === undefined) return
    if (!sameShape(tensor.shape, model[index]!.shape)) shapes.push({ name, model: model[index]!.shape, checkpoint: tensor.shape })
    else assignments.push({ index, tensor })
  })
  const strict = options.strict ?? true
  if (shapes.length > 0 || (strict && (missing.length > 0 || unexpected.length > 0))) {
    return Result.fail(new WeightsMismatch({ path, missing, unexpected, shapes }))
  }
  return Result.succeed({ path, assignments, missing, unexpected })
}
