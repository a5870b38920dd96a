/**
 * `Device`: the TensorFlow.js backend a run computes on, as an Effect service.
 *
 * The counterpart of Lightning's accelerator: a Layer picks and readies the backend
 * (`tensorflow` from `@tensorflow/tfjs-node-gpu` / `@tensorflow/tfjs-node`, `webgpu`
 * on Dawn (see `WebGPU`), `wasm`, or `cpu`), the service hands out the `tf`
 * namespace to compute with, and moves tensors between tfjs and host memory (`stage`
 * for checkpoints, `upload` for restores). The Layer's scope is the run: on release, every tensor and variable
 * the run allocated is disposed.
 *
 * Gotchas:
 * - TensorFlow.js is a process-global singleton (one engine, one active backend, one
 *   kernel registry), so only one `Device` may be live at a time: acquiring a second
 *   one while another is live fails with `DeviceError`. Build the Layer once and
 *   share it; acquire a new one after the previous scope closed.
 * - Do not call `tf.setBackend` yourself while a `Device` is live.
 * - `tensorflow` needs the optional peers `@tensorflow/tfjs-node(-gpu)`, which
 *   download libtensorflow on install; they are loaded with a dynamic `import()`,
 *   and `auto` falls back to `webgpu` (only on a real GPU adapter, never a CPU
 *   emulation), then `wasm`, then `cpu`, with a log line.
 * - `webgpu` needs the optional peers `webgpu` and `@tensorflow/tfjs-backend-webgpu`
 *   and a GPU driver (docs/backends.md); its tensors cannot be read with `dataSync()`,
 *   so `stage` reads with `await data()`.
 * - On `wasm`, kernels the backend lacks or computes wrongly are registered (see
 *   `WasmKernels`), so conv, pooling and embedding models train there on the same
 *   gradients as on `cpu` (`GradientCheck` holds them to it).
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs"
import "@tensorflow/tfjs-backend-wasm"
import { Config, Context, Data, Effect, Layer, Scope } from "effect"
import { elementCount, type HostTensor } from "./Checkpoint.ts"
import * as WasmKernels from "./WasmKernels.ts"
import * as WebGPU from "./WebGPU.ts"

/** The backends a `Device` can run on, in `auto`'s order. */
export const backendNames = ["tensorflow", "webgpu", "wasm", "cpu"] as const

/** A tfjs backend effect-trainer can run on. */
export type BackendName = typeof backendNames[number]

/** What to ask for: a backend by name, or `auto` (the fastest that comes up). */
export const backendChoices = ["auto", ...backendNames] as const

/** A backend to use, or `"auto"`: the first that loads of tfjs-node-gpu, tfjs-node, webgpu (on a real GPU), wasm, cpu. */
export type BackendChoice = typeof backendChoices[number]

/**
 * The backend could not be brought up, or a tensor could not be moved. `backend` is
 * the backend (or `auto`) concerned; `reason` says what went wrong and names the
 * tensor where there is one.
 */
export class DeviceError extends Data.TaggedError("DeviceError")<{
  readonly backend: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `device ${this.backend}: ${this.reason}`
  }
}

/** The service. */
export interface DeviceShape {
  /** The tfjs namespace to compute with (the process-global one, on `backend`). */
  readonly tf: typeof tf
  /** The active backend. */
  readonly backend: BackendName
  /**
   * Whether tfjs computes on a GPU: `tf.backend().isUsingGpuDevice` on `tensorflow`;
   * on `webgpu`, whether the adapter is not a CPU emulation; `false` otherwise.
   */
  readonly isGpu: boolean
  /**
   * Copies tensors to host memory: float32, int32 and bool become `F32`, `I32` and
   * `BOOL`; other dtypes fail with `DeviceError` naming the tensor. The copy is a
   * snapshot that never aliases tfjs memory, read with `await data()` (on `cpu` and
   * `webgpu` that is the tensor's own, or cached, array, so it is copied; on `wasm` it
   * already copies out of the heap, so it is taken as is; `webgpu` cannot read
   * synchronously at all). The tensors stay the caller's.
   */
  readonly stage: (tensors: Readonly<Record<string, tf.Tensor>>) => Effect.Effect<Record<string, HostTensor>, DeviceError>
  /**
   * Builds tfjs tensors from host tensors (`F32`, `I32`, `BOOL`; any other dtype, a
   * data length that does not match the shape, or a typed array of the wrong kind
   * fails with `DeviceError` naming the tensor, and nothing is left allocated). The
   * tensors never alias the host arrays. The caller owns them and disposes them;
   * those still alive when the `Device` is released are disposed then.
   */
  readonly upload: (tensors: Readonly<Record<string, HostTensor>>) => Effect.Effect<Record<string, tf.Tensor>, DeviceError>
}

/** The service key. Provide it with `layer(choice)` or `layerConfig`. */
export class Device extends Context.Service<Device, DeviceShape>()("effect-trainer/Device") {}

// ---------------------------------------------------------------------------
// Bringing a backend up

/** Where the `tensorflow` backend comes from, in order of preference. */
export const tensorflowPackages = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"] as const

const messageOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

/** Is this import failure "the package is not installed" (rather than "it is broken")? */
const isNotInstalled = (cause: unknown): boolean => {
  if (typeof cause === "object" && cause !== null && "code" in cause && cause.code === "ERR_MODULE_NOT_FOUND") {
    return true
  }
  // Bundlers and test runners (vite, vitest) word it their own way.
  return /Cannot find (package|module)|Could not resolve|Failed to (load|resolve)/.test(messageOf(cause))
}

interface ImportFailure {
  readonly packageName: string
  readonly cause: unknown
}

const describeFailure = ({ cause, packageName }: ImportFailure): string =>
  `${packageName}: ${isNotInstalled(cause) ? "not installed" : messageOf(cause)}`

/**
 * Registers the `tensorflow` backend by importing the first of `tensorflowPackages`
 * that loads (each registers it on import). Nothing to do when it is registered
 * already (the user imported tfjs-node).
 */
const loadTensorflow: Effect.Effect<void, DeviceError> = Effect.suspend(() => {
  const failures: Array<ImportFailure> = []
  const tryNext = (index: number): Effect.Effect<void, DeviceError> => {
    if (tf.findBackendFactory("tensorflow") !== null) return Effect.void
    const packageName = tensorflowPackages[index]
    if (packageName === undefined) {
      return Effect.fail(
        new DeviceError({
          backend: "tensorflow",
          reason: `no TensorFlow.js native binding loads (${failures.map(describeFailure).join("; ")})`,
          cause: failures.map((failure) => failure.cause)
        })
      )
    }
    return Effect.tryPromise({
      // A specifier in a variable: TypeScript and bundlers leave the optional peer alone.
      try: () => import(packageName),
      catch: (cause) => cause
    }).pipe(
      Effect.catch((cause) => Effect.sync(() => void failures.push({ packageName, cause }))),
      Effect.andThen(Effect.suspend(() => tryNext(index + 1)))
    )
  }
  return tryNext(0)
})

const setBackend = (name: BackendName): Effect.Effect<void, DeviceError> =>
  Effect.gen(function*() {
    // setBackend throws for a name that is not registered, and resolves to false
    // when the backend's initialisation fails: both end up here as a DeviceError.
    const initialised = yield* Effect.tryPromise({
      try: () => tf.setBackend(name),
      catch: (cause) => new DeviceError({ backend: name, reason: `tf.setBackend failed: ${messageOf(cause)}`, cause })
    })
    if (!initialised) {
      return yield* new DeviceError({ backend: name, reason: "the backend failed to initialise (tf.setBackend returned false)" })
    }
    yield* Effect.tryPromise({
      try: () => tf.ready(),
      catch: (cause) => new DeviceError({ backend: name, reason: `tf.ready failed: ${messageOf(cause)}`, cause })
    })
    if (tf.getBackend() !== name) {
      return yield* new DeviceError({ backend: name, reason: `tfjs reports backend ${tf.getBackend()} after setBackend` })
    }
  })

/** How a `Device` brings its backend up, beyond the choice of backend. */
export interface Options {
  /**
   * Dawn toggles for `webgpu` (`["backend=opengles"]`, `["adapter=NVIDIA"]`, …); when
   * absent, read from `EFFECT_TRAINER_WEBGPU_FLAGS` (comma-separated; none when unset).
   */
  readonly webgpuFlags?: ReadonlyArray<string> | undefined
}

/** What bringing a backend up found out: whether it computes on a GPU. */
interface Activated {
  readonly isGpu: boolean
}

/** `WebGPU.acquire` as a `DeviceError`; `auto` asks for a real GPU only. */
const activateWebGPU = (options: Options, auto: boolean): Effect.Effect<Activated, DeviceError, Scope.Scope> =>
  Effect.gen(function*() {
    const flags = options.webgpuFlags ?? (yield* WebGPU.flagsConfig.pipe(
      Effect.mapError((cause) => new DeviceError({ backend: "webgpu", reason: `EFFECT_TRAINER_WEBGPU_FLAGS: ${messageOf(cause)}`, cause }))
    ))
    const setup = yield* WebGPU.acquire({ flags, requireGpu: auto }).pipe(
      Effect.mapError((failure) =>
        new DeviceError({
          backend: "webgpu",
          reason: failure.reason,
          cause: failure.noAdapter === true || failure.cpuEmulation === true ? noGpuHere : failure.cause
        })
      )
    )
    if (setup.cpuEmulation) {
      yield* Effect.logInfo(
        `Device: webgpu runs on ${setup.name}, a CPU emulation (${setup.featureLevel} feature level): expect it slower than wasm`
      )
    } else {
      yield* Effect.logInfo(`Device: webgpu adapter ${setup.name}`)
    }
    return { isGpu: !setup.cpuEmulation }
  })

/**
 * The cause of a webgpu failure that is the normal case on a machine without a GPU
 * (no adapter, or only a CPU emulation): `auto` logs it at info level, not as a warning.
 */
const noGpuHere = { reason: "no GPU adapter on this machine" } as const

/** Makes `name` the active backend, with everything it needs registered. */
const activate = (name: BackendName, options: Options, auto: boolean): Effect.Effect<Activated, DeviceError, Scope.Scope> =>
  Effect.gen(function*() {
    let activated: Activated = { isGpu: false }
    if (name === "tensorflow") yield* loadTensorflow
    if (name === "webgpu") activated = yield* activateWebGPU(options, auto)
    if (name === "wasm") {
      yield* Effect.try({
        try: () => WasmKernels.register(),
        catch: (cause) => new DeviceError({ backend: name, reason: `registering wasm kernels failed: ${messageOf(cause)}`, cause })
      })
    }
    yield* setBackend(name)
    // tfjs's cpu backend prints a banner ("Hi, looks like you are running TensorFlow.js
    // in Node.js…") at its first tensor: the user chose cpu, or auto fell back to it
    // with a line that says so.
    if (name === "cpu") {
      const backend = tf.backend() as unknown as { firstUse?: boolean }
      if (typeof backend.firstUse === "boolean") backend.firstUse = false
    }
    return name === "tensorflow" ? { isGpu: isUsingGpu(name) } : activated
  })

/**
 * Runs `self` in a child scope of the current one that is closed at once when `self`
 * fails: what a failed set-up acquired is released before anything else is tried;
 * what one that succeeds acquired lives as long as the Device.
 */
const releasedOnFailure = <A, E>(self: Effect.Effect<A, E, Scope.Scope>): Effect.Effect<A, E, Scope.Scope> =>
  Effect.gen(function*() {
    const child = yield* Scope.fork(yield* Effect.scope)
    return yield* self.pipe(
      Scope.provide(child),
      Effect.onExit((exit) => exit._tag === "Failure" ? Scope.close(child, exit) : Effect.void)
    )
  })

/** The backend that came up, what it found, and notes for the backend line. */
type Chosen = readonly [BackendName, Activated, ReadonlyArray<string>]

/**
 * Brings up the first backend of `auto`'s order that works, logging each fallback
 * that is worth a warning; an optional native package that is simply not installed,
 * or no GPU adapter, is expected, and only noted on the backend line (`backend: wasm
 * (tfjs-node not installed, no GPU adapter)`).
 */
const activateAuto = (options: Options): Effect.Effect<Chosen, DeviceError, Scope.Scope> => {
  const reasons: Array<string> = []
  const notes: Array<string> = []
  const tryNext = (index: number): Effect.Effect<Chosen, DeviceError, Scope.Scope> => {
    const name = backendNames[index]
    if (name === undefined) {
      return Effect.fail(new DeviceError({ backend: "auto", reason: `no backend comes up: ${reasons.join("; ")}` }))
    }
    const next = backendNames[index + 1]
    return releasedOnFailure(activate(name, options, true)).pipe(
      Effect.map((activated): Chosen => [name, activated, notes]),
      Effect.catch((error) => {
        reasons.push(`${name}: ${error.reason}`)
        const causes = Array.isArray(error.cause) ? error.cause : [error.cause]
        // An optional package that is simply absent is expected; anything else is worth a warning.
        if (name === "tensorflow" && causes.every(isNotInstalled)) {
          notes.push("tfjs-node not installed")
          return Effect.logDebug(`Device: backend ${name} unavailable (${error.reason})`).pipe(Effect.andThen(tryNext(index + 1)))
        }
        if (name === "webgpu" && (error.cause === noGpuHere || causes.every(isNotInstalled))) {
          notes.push(error.cause === noGpuHere ? "no GPU adapter" : "webgpu not installed")
          return Effect.logDebug(`Device: backend ${name} unavailable (${error.reason})`).pipe(Effect.andThen(tryNext(index + 1)))
        }
        const line = `Device: backend ${name} unavailable (${error.reason})` +
          (next === undefined ? "" : `, trying ${next}`)
        return Effect.andThen(Effect.logWarning(line), tryNext(index + 1))
      })
    )
  }
  return Effect.suspend(() => tryNext(0))
}

// ---------------------------------------------------------------------------
// The one live Device

// Kept on globalThis like tfjs keeps its engine, so that two copies of this module
// (bundling, test isolation quirks) still see each other.
const liveKey = Symbol.for("effect-trainer/Device/live")
const liveSlot = globalThis as unknown as { [liveKey]?: BackendChoice | undefined }

const claim = (choice: BackendChoice): Effect.Effect<void, DeviceError> =>
  Effect.suspend(() => {
    const live = liveSlot[liveKey]
    if (live !== undefined) {
      return Effect.fail(
        new DeviceError({
          backend: choice,
          reason: `another Device (${live}) is live; TensorFlow.js is process-global, so release it first`
        })
      )
    }
    liveSlot[liveKey] = choice
    return Effect.void
  })

const unclaim = Effect.sync(() => {
  liveSlot[liveKey] = undefined
})

type EngineScope = ReturnType<typeof tf.engine>["state"]["activeScope"]

/**
 * The engine keeps every tensor created in a scope in the scope's `track` array
 * until the scope ends; a run-long scope would so hold on to every tensor of every
 * step (the objects, not their memory) and grow without bound. This `push` drops
 * disposed tensors whenever the array has doubled since the last sweep.
 */
const compactingTrack = (track: Array<tf.Tensor>): void => {
  const push = Array.prototype.push
  let limit = 1024
  Object.defineProperty(track, "push", {
    configurable: true,
    value: (...items: Array<tf.Tensor>): number => {
      if (track.length >= limit) {
        let kept = 0
        for (const tensor of track) if (!tensor.isDisposed) track[kept++] = tensor
        track.length = kept
        limit = Math.max(1024, kept * 2)
      }
      return push.apply(track, items)
    }
  })
}

interface Run {
  readonly backend: BackendName
  readonly baselineTensors: number
  readonly variablesBefore: ReadonlySet<string>
  readonly scope: EngineScope
  released: boolean
}

const startRun = (backend: BackendName): Run => {
  const engine = tf.engine()
  const baselineTensors = tf.memory().numTensors
  const variablesBefore = new Set(Object.keys(engine.state.registeredVariables))
  engine.startScope("effect-trainer/Device")
  const scope = engine.state.activeScope
  compactingTrack(scope.track)
  return { backend, baselineTensors, variablesBefore, scope, released: false }
}

/** Runs a foreign cleanup step; a throw becomes a warning (a release never fails). */
const cleanup = (what: string, f: () => void): Effect.Effect<void> =>
  Effect.try({ try: f, catch: (cause) => cause }).pipe(
    Effect.catch((cause) => Effect.logWarning(`Device: ${what} failed: ${messageOf(cause)}`))
  )

const endRun = (run: Run): Effect.Effect<void> =>
  Effect.gen(function*() {
    run.released = true
    const engine = tf.engine()
    const depth = engine.state.scopeStack.indexOf(run.scope)
    if (depth === -1) {
      yield* Effect.logWarning("Device: its tfjs scope was ended by someone else; tensors of the run may leak")
    } else {
      const open = engine.state.scopeStack.length - 1 - depth
      if (open > 0) {
        yield* Effect.logWarning(`Device: ${open} tfjs scope(s) opened during the run were never ended; ending them`)
      }
      yield* cleanup("ending the tfjs scope", () => {
        while (engine.state.scopeStack.length > depth) engine.endScope()
      })
    }
    // Only the variables the run registered: those that were there before are not ours.
    yield* cleanup("disposing variables", () => {
      for (const [name, variable] of Object.entries(engine.state.registeredVariables)) {
        if (!run.variablesBefore.has(name)) variable.dispose()
      }
    })
    const leaked = tf.memory().numTensors - run.baselineTensors
    if (leaked > 0) {
      yield* Effect.logWarning(
        `Device: ${leaked} tensor(s) outlived the run (kept with tf.keep, or created in a scope the Device does not own)`
      )
    }
  }).pipe(Effect.ensuring(unclaim))

const isUsingGpu = (backend: BackendName): boolean =>
  backend === "tensorflow" && (tf.backend() as { readonly isUsingGpuDevice?: unknown }).isUsingGpuDevice === true

// ---------------------------------------------------------------------------
// Moving tensors

const hostDTypes = { float32: "F32", int32: "I32", bool: "BOOL" } as const

type TfDType = keyof typeof hostDTypes

const tfDTypes = { F32: "float32", I32: "int32", BOOL: "bool" } as const

type TfHostDType = keyof typeof tfDTypes

const isTfDType = (dtype: string): dtype is TfDType => Object.hasOwn(hostDTypes, dtype)

const isTfHostDType = (dtype: string): dtype is TfHostDType => Object.hasOwn(tfDTypes, dtype)

/** Does `data()` of this tensor return a fresh array? Only when wasm owns its data (it slices the heap). */
const readsFreshCopy = (tensor: tf.Tensor): boolean => {
  const engine = tf.engine()
  const owner = engine.state.tensorInfo.get(tensor.dataId)?.backend
  return owner !== undefined && owner === engine.registry["wasm"]
}

/**
 * Reads a tensor into a host tensor. Asynchronously: `webgpu` cannot read
 * synchronously (`dataSync()` needs an `OffscreenCanvas`), and on the others
 * `data()` returns what `dataSync()` does.
 */
const snapshot = (tensor: tf.Tensor, dtype: TfDType): Promise<HostTensor> =>
  tensor.data().then((data) => copied(tensor, dtype, data as tf.TypedArray))

const copied = (tensor: tf.Tensor, dtype: TfDType, data: tf.TypedArray): HostTensor => {
  const fresh = readsFreshCopy(tensor)
  const shape = [...tensor.shape]
  switch (dtype) {
    case "float32":
      return { dtype: "F32", shape, data: data instanceof Float32Array ? (fresh ? data : data.slice()) : new Float32Array(data) }
    case "int32":
      return { dtype: "I32", shape, data: data instanceof Int32Array ? (fresh ? data : data.slice()) : new Int32Array(data) }
    case "bool":
      return { dtype: "BOOL", shape, data: data instanceof Uint8Array ? (fresh ? data : data.slice()) : new Uint8Array(data) }
  }
}

const expectedArray = { F32: Float32Array, I32: Int32Array, BOOL: Uint8Array } as const

const make_ = (backend: BackendName, run: Run, isGpu: boolean): DeviceShape => {
  const released = (operation: string) => new DeviceError({ backend, reason: `${operation} on a Device that was released` })

  const stage = Effect.fn("Device.stage")(function*(tensors: Readonly<Record<string, tf.Tensor>>) {
    if (run.released) return yield* released("stage")
    const staged: Record<string, HostTensor> = {}
    for (const name of Object.keys(tensors)) {
      const tensor = tensors[name]!
      const dtype = tensor.dtype
      if (!isTfDType(dtype)) {
        return yield* new DeviceError({
          backend,
          reason: `cannot stage tensor "${name}": dtype ${dtype} has no host dtype (float32, int32, bool)`
        })
      }
      if (tensor.isDisposed) {
        return yield* new DeviceError({ backend, reason: `cannot stage tensor "${name}": it is disposed` })
      }
      staged[name] = yield* Effect.tryPromise({
        try: () => snapshot(tensor, dtype),
        catch: (cause) => new DeviceError({ backend, reason: `cannot stage tensor "${name}": ${messageOf(cause)}`, cause })
      })
    }
    return staged
  })

  const check = (name: string, host: HostTensor): DeviceError | TfHostDType => {
    const fail = (reason: string) => new DeviceError({ backend, reason: `cannot upload tensor "${name}": ${reason}` })
    if (!isTfHostDType(host.dtype)) {
      return fail(`dtype ${host.dtype} has no TensorFlow.js dtype (F32, I32, BOOL); convert it first`)
    }
    if (!(host.data instanceof expectedArray[host.dtype])) {
      return fail(`${host.dtype} data must be a ${expectedArray[host.dtype].name}`)
    }
    const count = elementCount(host.shape)
    if (host.data.length !== count) {
      return fail(`shape [${host.shape.join(", ")}] holds ${count} elements, data has ${host.data.length}`)
    }
    return host.dtype
  }

  const upload = Effect.fn("Device.upload")(function*(tensors: Readonly<Record<string, HostTensor>>) {
    if (run.released) return yield* released("upload")
    const names = Object.keys(tensors)
    const dtypes: Array<TfHostDType> = []
    // Check everything before allocating anything.
    for (const name of names) {
      const checked = check(name, tensors[name]!)
      if (checked instanceof DeviceError) return yield* checked
      dtypes.push(checked)
    }
    const uploaded: Record<string, tf.Tensor> = {}
    let current = ""
    return yield* Effect.try({
      try: () => {
        for (const [index, name] of names.entries()) {
          current = name
          const host = tensors[name]!
          // cpu (and tfjs-node) keep the array they are given when its type needs no
          // conversion; wasm copies it into its heap.
          const data = backend === "wasm" ? host.data : host.data.slice()
          uploaded[name] = tf.tensor(data as Float32Array | Int32Array | Uint8Array, [...host.shape], tfDTypes[dtypes[index]!])
        }
        return uploaded
      },
      catch: (cause) => {
        for (const tensor of Object.values(uploaded)) tensor.dispose()
        return new DeviceError({ backend, reason: `cannot upload tensor "${current}": ${messageOf(cause)}`, cause })
      }
    })
  })

  return { tf, backend, isGpu, stage, upload }
}

/**
 * Acquires a `Device` in the current scope: claims the process's one live slot,
 * brings up the backend (`choice`, default `auto`: tfjs-node-gpu, then tfjs-node,
 * then webgpu on a real GPU, then wasm, then cpu), and starts a tfjs scope. Closing the scope ends it: the
 * tensors and variables the run created are disposed, a warning is logged if the
 * tensor count is still above where it was at acquire, and the slot is freed.
 */
export const make: (choice?: BackendChoice, options?: Options) => Effect.Effect<DeviceShape, DeviceError, Scope.Scope> = Effect.fn(
  "Device.make"
)(function*(choice: BackendChoice = "auto", options: Options = {}) {
  return yield* Effect.acquireRelease(
    Effect.gen(function*() {
      yield* claim(choice)
      // The backend's own resources (webgpu's GPU device) are released after the run's
      // tensors: their finalizers are added to the scope before the run's.
      const [backend, activated, notes] = yield* (choice === "auto"
        ? activateAuto(options)
        : releasedOnFailure(activate(choice, options, false)).pipe(
          Effect.map((activated): Chosen => [choice, activated, []])
        )).pipe(Effect.onError(() => unclaim))
      const all = [activated.isGpu ? "on a GPU" : undefined, ...notes].filter((n) => n !== undefined)
      yield* Effect.logInfo(`backend: ${backend}${all.length === 0 ? "" : ` (${all.join(", ")})`}`)
      const run = startRun(backend)
      return { run, shape: make_(backend, run, activated.isGpu) }
    }),
    ({ run }) => endRun(run)
  ).pipe(Effect.map(({ shape }) => shape))
})

/** The `Device` on `choice` (default `auto`), for the Layer's scope; `options` as for `make`. */
export const layer = (choice: BackendChoice = "auto", options: Options = {}): Layer.Layer<Device, DeviceError> =>
  Layer.effect(Device, make(choice, options))

/** The backend choice from the environment variable `EFFECT_TRAINER_BACKEND` (default `auto`). */
export const backendConfig: Config.Config<BackendChoice> = Config.Literals(backendChoices, "EFFECT_TRAINER_BACKEND")
  .pipe(Config.withDefault("auto" as const))

/**
 * The `Device` on the backend `EFFECT_TRAINER_BACKEND` names (`auto`, `tensorflow`,
 * `webgpu`, `wasm`, `cpu`; default `auto`); `webgpu`'s Dawn toggles from
 * `EFFECT_TRAINER_WEBGPU_FLAGS`.
 */
export const layerConfig: Layer.Layer<Device, DeviceError | Config.ConfigError> = Layer.effect(
  Device,
  Effect.flatMap(backendConfig, make)
)
