/**
 * `WebGPU`: the set-up of TensorFlow.js's `webgpu` backend in Node, on Dawn (the
 * `webgpu` npm package), as a scoped resource. `Device.layer("webgpu")` (and `auto`,
 * when a real GPU answers) uses it; programs rarely need it directly.
 *
 * What acquiring it does, in this order (the backend module reads `navigator.gpu`
 * once, when it is imported, so the order matters):
 * 1. imports `webgpu` (an optional peer) and installs its globals (`GPUBufferUsage`, …);
 * 2. `navigator.gpu = create(flags)`: a Dawn instance with the given toggles
 *    (`backend=opengles`, `adapter=<name>`, …; `EFFECT_TRAINER_WEBGPU_FLAGS`);
 * 3. asks for a `high-performance` adapter, then (unless `requireGpu`) for one at
 *    `featureLevel: "compatibility"` (what OpenGL ES drivers offer), and requests a
 *    GPU device with the limits tfjs asks for;
 * 4. imports `@tensorflow/tfjs-backend-webgpu` and registers `webgpu` on that device.
 *
 * Releasing it removes the backend from tfjs (its buffers are destroyed), destroys
 * the GPU device and puts the previous `navigator.gpu` back.
 *
 * Gotchas:
 * - `dataSync()` throws on this backend (`OffscreenCanvas is not defined`) unless the
 *   tensor was read with `await data()` before: read tensors asynchronously (the
 *   `Device` and the `Trainer` do).
 * - Software adapters (llvmpipe, lavapipe, SwiftShader, or `isFallbackAdapter`) are
 *   CPU emulations: they work, 3-5x slower than `wasm`; `cpuEmulation` says so.
 * - Kept out of the package index: it loads optional peers (with dynamic imports).
 *
 * @since 0.2.0
 */
import * as tf from "@tensorflow/tfjs"
import { Config, Effect, type Scope } from "effect"
import { existsSync } from "node:fs"

/** The Dawn toggles used when none are given: Dawn's own default (Vulkan on Linux, Metal, D3D12). */
export const defaultFlags: ReadonlyArray<string> = []

/** How to bring WebGPU up. */
export interface Options {
  /**
   * Dawn toggles passed to `create()` from the `webgpu` package: `backend=opengles`
   * (or `vulkan`, `metal`, `d3d12`), `adapter=<part of the adapter's name>`, … Default:
   * none.
   */
  readonly flags?: ReadonlyArray<string> | undefined
  /**
   * Refuse CPU emulations (llvmpipe, lavapipe, SwiftShader) and do not ask for a
   * compatibility-level adapter. `auto` sets it; an explicit `webgpu` does not.
   */
  readonly requireGpu?: boolean | undefined
}

/** What a GPU adapter says about itself (the WebGPU `GPUAdapterInfo` fields used here). */
export interface AdapterInfo {
  readonly vendor: string
  readonly architecture: string
  readonly device: string
  readonly description: string
  readonly isFallbackAdapter: boolean
}

/** A live WebGPU set-up: the adapter it runs on and whether that is a CPU emulation. */
export interface Setup {
  readonly adapter: AdapterInfo
  /** The adapter is a software rasteriser on the CPU (see `isCpuEmulation`). */
  readonly cpuEmulation: boolean
  /** `vendor architecture device (description)`, for log lines. */
  readonly name: string
  /** The feature level the adapter was obtained at. */
  readonly featureLevel: "core" | "compatibility"
}

/** The reason a WebGPU set-up failed; `Device` wraps it into a `DeviceError`. */
export interface Failure {
  readonly reason: string
  readonly cause?: unknown
  /** The optional packages are not installed (expected on most machines; `auto` logs it at info level). */
  readonly notInstalled?: boolean
  /** No adapter answered. */
  readonly noAdapter?: boolean
  /** Refused under `requireGpu`: only a CPU emulation answered. */
  readonly cpuEmulation?: boolean
}

/** One line on what a WebGPU adapter needs, for error messages. */
export const driverRequirements =
  "WebGPU needs a GPU driver Dawn accepts: on Linux the Vulkan loader (libvulkan1) and the driver's ICD (NVIDIA: nvidia_icd.json), " +
  "or on CPU Mesa's EGL (libegl1 libegl-mesa0 libgl1-mesa-dri) with EFFECT_TRAINER_WEBGPU_FLAGS=backend=opengles and EGL_PLATFORM=surfaceless " +
  "(scripts/webgpu-drivers.sh); Metal on macOS, D3D12 on Windows; see docs/backends.md"

const emulations = /llvmpipe|lavapipe|swiftshader|softpipe|software rasterizer/i

/**
 * Is this adapter a software rasteriser on the CPU (Mesa's llvmpipe or lavapipe,
 * SwiftShader, or one that says `isFallbackAdapter`)? Such adapters work, slower
 * than `wasm`, so `auto` skips them.
 */
export const isCpuEmulation = (info: AdapterInfo): boolean =>
  info.isFallbackAdapter ||
  [info.vendor, info.architecture, info.device, info.description].some((field) => emulations.test(field))

/**
 * The Dawn toggles from `EFFECT_TRAINER_WEBGPU_FLAGS`: comma-separated
 * (`backend=opengles,adapter=NVIDIA`); none when unset.
 */
export const flagsConfig: Config.Config<ReadonlyArray<string>> = Config.String("EFFECT_TRAINER_WEBGPU_FLAGS").pipe(
  Config.map((text) => text.split(",").map((flag) => flag.trim()).filter((flag) => flag.length > 0)),
  Config.withDefault(defaultFlags)
)

const messageOf = (cause: unknown): string => cause instanceof Error ? cause.message : String(cause)

const isNotInstalled = (cause: unknown): boolean =>
  (typeof cause === "object" && cause !== null && "code" in cause && cause.code === "ERR_MODULE_NOT_FOUND") ||
  /Cannot find (package|module)|Could not resolve|Failed to (load|resolve)/.test(messageOf(cause))

// Minimal structural types for what is used of the WebGPU API: the optional peers'
// own typings are not needed to compile this module.
interface GpuLimits {
  readonly [name: string]: number
}
interface GpuAdapterLike {
  readonly info?: Partial<AdapterInfo> & { readonly isFallbackAdapter?: boolean }
  readonly isFallbackAdapter?: boolean
  readonly features: { has(name: string): boolean }
  readonly limits: GpuLimits
  requestDevice(descriptor: object): Promise<GpuDeviceLike>
}
interface GpuDeviceLike {
  destroy(): void
}
interface GpuLike {
  requestAdapter(options?: object): Promise<GpuAdapterLike | null>
}
interface WebGpuPackage {
  readonly create: (flags: Array<string>) => GpuLike
  readonly globals: object
}
interface BackendPackage {
  readonly WebGPUBackend: new(device: GpuDeviceLike, adapterInfo: unknown) => tf.KernelBackend
}

const importPackage = <A>(name: string) =>
  Effect.tryPromise({
    // A specifier in a variable: TypeScript and bundlers leave the optional peer alone.
    try: () => import(name) as Promise<A>,
    catch: (cause): Failure => ({
      reason: isNotInstalled(cause)
        ? `${name} is not installed (an optional peer dependency)`
        : `${name} failed to load: ${messageOf(cause)}`,
      cause,
      notInstalled: isNotInstalled(cause)
    })
  })

const infoOf = (adapter: GpuAdapterLike): AdapterInfo => {
  const info = adapter.info ?? {}
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    description: info.description ?? "",
    isFallbackAdapter: adapter.isFallbackAdapter === true || info.isFallbackAdapter === true
  }
}

const nameOf = (info: AdapterInfo): string => {
  const name = [info.vendor, info.architecture, info.device].filter((part) => part !== "").join(" ")
  return info.description === "" ? name : `${name} (${info.description})`
}

const navigatorSlot = globalThis as unknown as { navigator: { gpu?: unknown } }

/**
 * Sets `navigator.gpu` (Node's `navigator` has no `gpu`; a data property is defined on
 * it), or deletes it for `undefined`: while a Dawn instance is referenced from a
 * global, Node does not exit (the `webgpu` package's README).
 */
const setNavigatorGpu = (gpu: unknown): void => {
  if (gpu === undefined) {
    delete navigatorSlot.navigator.gpu
    return
  }
  Object.defineProperty(navigatorSlot.navigator, "gpu", { value: gpu, configurable: true, writable: true })
}

/**
 * Whether the Vulkan loader Dawn uses on Linux can be found (always true elsewhere:
 * Metal and D3D12 need no loader): `LD_LIBRARY_PATH` and the usual library folders.
 */
const vulkanLoaderPresent = (): boolean => {
  if (process.platform !== "linux") return true
  const dirs = [
    ...(process.env["LD_LIBRARY_PATH"] ?? "").split(":").filter((d) => d.length > 0),
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/local/lib"
  ]
  return dirs.some((dir) => existsSync(`${dir}/libvulkan.so.1`))
}

/**
 * Brings the `webgpu` backend up in the current scope (see the module header) and
 * registers it with tfjs under the name `webgpu`; the caller then `tf.setBackend`s
 * it. Fails with a `Failure` when a package is missing, no adapter answers (the
 * reason ends with `driverRequirements`), or under `requireGpu` only a CPU
 * emulation does.
 */
export const acquire = (options: Options = {}): Effect.Effect<Setup, Failure, Scope.Scope> =>
  Effect.gen(function*() {
    const flags = [...(options.flags ?? defaultFlags)]
    // Asked for a real GPU on Linux over Vulkan (auto's probe) where no Vulkan loader is
    // installed: Dawn would only print "Couldn't load Vulkan" to stderr, on every run.
    if (options.requireGpu === true && !flags.some((f) => f.startsWith("backend=")) && !vulkanLoaderPresent()) {
      return yield* Effect.fail<Failure>({ reason: `no Vulkan loader (libvulkan.so.1). ${driverRequirements}`, noAdapter: true })
    }
    const webgpu = yield* importPackage<WebGpuPackage>("webgpu")
    const previousGpu = navigatorSlot.navigator.gpu
    const gpu = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          Object.assign(globalThis, webgpu.globals)
          const gpu = webgpu.create(flags)
          setNavigatorGpu(gpu)
          return gpu
        },
        catch: (cause): Failure => ({ reason: `creating the Dawn instance failed: ${messageOf(cause)}`, cause })
      }),
      () => Effect.sync(() => setNavigatorGpu(previousGpu))
    )
    const flagText = flags.length === 0 ? "no Dawn flags" : `Dawn flags ${flags.join(",")}`
    const request = (featureLevel: "core" | "compatibility") =>
      Effect.tryPromise({
        try: () => gpu.requestAdapter({ powerPreference: "high-performance", featureLevel }),
        // Dawn throws when an `adapter=` flag names none of the adapters (and lists them).
        catch: (cause): Failure => ({
          reason: `no WebGPU adapter found (${flagText}): ${messageOf(cause).replaceAll("\n", " ")}. ${driverRequirements}`,
          cause,
          noAdapter: true
        })
      }).pipe(Effect.map((adapter) => adapter === null ? undefined : { adapter, featureLevel }))
    let found = yield* request("core")
    if (found === undefined && options.requireGpu !== true) found = yield* request("compatibility")
    if (found === undefined) {
      return yield* Effect.fail<Failure>({ reason: `no WebGPU adapter found (${flagText}). ${driverRequirements}`, noAdapter: true })
    }
    const { adapter, featureLevel } = found
    const info = infoOf(adapter)
    const cpuEmulation = isCpuEmulation(info)
    if (cpuEmulation && options.requireGpu === true) {
      return yield* Effect.fail<Failure>({
        reason: `the only WebGPU adapter is a CPU emulation (${nameOf(info)}); wasm is faster`,
        cpuEmulation: true
      })
    }
    // The limits tfjs-backend-webgpu asks for when it brings itself up.
    const limits = adapter.limits
    const requiredLimits = Object.fromEntries(
      [
        "maxComputeWorkgroupStorageSize",
        "maxComputeWorkgroupsPerDimension",
        "maxStorageBufferBindingSize",
        "maxBufferSize",
        "maxComputeWorkgroupSizeX",
        "maxComputeInvocationsPerWorkgroup"
      ].map((name) => [name, limits[name]])
    )
    const requiredFeatures = ["timestamp-query"].filter((name) => adapter.features.has(name))
    const device = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => adapter.requestDevice({ requiredFeatures, requiredLimits }),
        catch: (cause): Failure => ({ reason: `requestDevice failed on ${nameOf(info)}: ${messageOf(cause)}`, cause })
      }),
      (device) => Effect.sync(() => device.destroy())
    )
    const backendPackage = yield* importPackage<BackendPackage>("@tensorflow/tfjs-backend-webgpu")
    yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          // The package registered its own factory at import (it asks for an adapter
          // without our flags' feature level): ours, on the device above, replaces it.
          if (tf.findBackendFactory("webgpu") !== null) tf.removeBackend("webgpu")
          tf.registerBackend("webgpu", () => new backendPackage.WebGPUBackend(device, adapter.info), 3)
        },
        catch: (cause): Failure => ({ reason: `registering the webgpu backend failed: ${messageOf(cause)}`, cause })
      }),
      // Removing it disposes the backend (its buffers and textures) before the device goes.
      () => Effect.sync(() => tf.findBackendFactory("webgpu") !== null && tf.removeBackend("webgpu"))
    )
    return { adapter: info, cpuEmulation, name: nameOf(info), featureLevel } satisfies Setup
  })
