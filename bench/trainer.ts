/**
 * bench:trainer: steps/s of Trainer.fit against a bare tfjs loop doing the same
 * steps (same model, optimizer, batches, backend), side by side in one run, for an
 * MLP (784-256-128-10, batch 128) and a small CNN (conv 3x3x32, max-pool, dense;
 * batch 64).
 *
 *   npm run bench:trainer [-- --backend auto|webgpu|wasm|cpu|tensorflow --steps 60 --repeats 3 --json <file>]
 *
 * On `webgpu` without a GPU: `EGL_PLATFORM=surfaceless EFFECT_TRAINER_WEBGPU_FLAGS=backend=opengles`
 * (docs/backends.md).
 *
 * Both sides read the loss of every step with `await data()` (as the Trainer does for
 * its metrics; `webgpu` cannot read synchronously), and
 * both time only the steps (not building the model). The two run interleaved, step
 * by step (see `interleaved`); the ratio is the median Trainer steps/s ÷ the median
 * bare steps/s of a run, and the figure printed is the median over the repeats.
 *
 * `measureTrainer` / `runTrainer` are the measurement itself, for the suite
 * (bench/suite.ts), which can give each model its own step count (on `cpu` a CNN
 * step takes seconds).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer } from "effect"
import * as fsp from "node:fs/promises"
import { PerformanceObserver } from "node:perf_hooks"
import { parseArgs } from "node:util"
import type * as Callback from "../src/Callback.ts"
import * as DataModule from "../src/DataModule.ts"
import * as Device from "../src/Device.ts"
import * as Random from "../src/Random.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { TrainingModule } from "../src/TrainingModule.ts"

export const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

export type CaseName = "mlp" | "cnn"

/** A benchmark model: its batch, input shape and layers (also used by bench/ddp.ts). */
export interface Case {
  readonly name: CaseName
  readonly batchSize: number
  readonly inputShape: ReadonlyArray<number>
  readonly build: (tfjs: typeof tf) => tf.LayersModel
}

/** The MLP and the CNN every trainer benchmark times. */
export const cases: ReadonlyArray<Case> = [
  {
    name: "mlp",
    batchSize: 128,
    inputShape: [784],
    build: (tfjs) =>
      tfjs.sequential({
        layers: [
          tfjs.layers.dense({ units: 256, activation: "relu", inputShape: [784], name: "h1" }),
          tfjs.layers.dense({ units: 128, activation: "relu", name: "h2" }),
          tfjs.layers.dense({ units: 10, activation: "softmax", name: "out" })
        ]
      })
  },
  {
    name: "cnn",
    batchSize: 64,
    inputShape: [28, 28, 1],
    build: (tfjs) =>
      tfjs.sequential({
        layers: [
          tfjs.layers.conv2d({ filters: 32, kernelSize: 3, activation: "relu", inputShape: [28, 28, 1], name: "conv" }),
          tfjs.layers.maxPooling2d({ poolSize: 2, name: "pool" }),
          tfjs.layers.flatten({ name: "flat" }),
          tfjs.layers.dense({ units: 10, activation: "softmax", name: "out" })
        ]
      })
  }
]

/** Synthetic inputs and one-hot labels for `steps` batches, from a seed. */
export const syntheticData = (c: Case, count: number): DataModule.XY => {
  const rowSize = c.inputShape.reduce((a, b) => a * b, 1)
  const n = count * c.batchSize
  const x = new Float32Array(n * rowSize)
  let state = 12345
  for (let i = 0; i < x.length; i++) {
    const [s, r] = Random.next(state)
    state = s
    x[i] = r
  }
  const labels = Array.from({ length: n }, (_, i) => (i * 7) % 10)
  return { x: { dtype: "F32", shape: [n, ...c.inputShape], data: x }, y: DataModule.oneHot(labels, 10) }
}

const lossOf = (tfjs: typeof tf, model: tf.LayersModel, x: tf.Tensor, y: tf.Tensor) =>
  tfjs.losses.softmaxCrossEntropy(y, model.apply(x) as tf.Tensor) as tf.Scalar

/** The bare loop's step: a batch sliced from the same arrays, tfjs's minimize, the loss read (resolves when read). */
const bareStepper = (tfjs: typeof tf, c: Case, data: DataModule.XY) => {
  const model = c.build(tfjs)
  const optimizer = tfjs.train.adam(1e-3)
  const rowSize = data.x.data.length / data.x.shape[0]!
  const batches = data.x.shape[0]! / c.batchSize
  const step = (b: number): Promise<void> => {
    const at = b % batches
    const cost = tfjs.tidy(() => {
      const x = tfjs.tensor((data.x.data as Float32Array).subarray(at * c.batchSize * rowSize, (at + 1) * c.batchSize * rowSize), [
        c.batchSize,
        ...c.inputShape
      ])
      const y = tfjs.tensor((data.y.data as Float32Array).subarray(at * c.batchSize * 10, (at + 1) * c.batchSize * 10), [c.batchSize, 10])
      return optimizer.minimize(() => lossOf(tfjs, model, x, y), true)!
    })
    return cost.data().then(() => cost.dispose(), (error: unknown) => {
      cost.dispose()
      throw error
    })
  }
  const dispose = () => {
    tfjs.dispose(model.weights.map((w) => w.read()))
    optimizer.dispose()
  }
  return { step, dispose }
}

const module = (c: Case): TrainingModule<DataModule.XY> => ({
  name: `bench-${c.name}`,
  configureModel: (tfjs) => c.build(tfjs),
  configureOptimizers: (tfjs) => tfjs.train.adam(1e-3),
  trainingStep: (model, batch, ctx) => lossOf(ctx.tf, model, ctx.tensor(batch.x), ctx.tensor(batch.y))
})

/**
 * Trainer.fit over the batches (no shuffle), with a bare step run between every two
 * Trainer steps, so that both sides see the same machine at the same moment (this
 * machine is shared and its speed drifts by tens of percent within a minute). A
 * Trainer step is timed from one onTrainBatchStart to the next, less the bare step
 * run in between: it includes everything the Trainer does per step.
 *
 * Garbage-collection pauses (V8's `gc` performance entries) are attributed to the
 * side whose window they fall in and returned as ms per step: GC work that V8 runs
 * as a task lands where the event loop turns, which is inside the Trainer's window
 * (the bare step yields only to microtasks on cpu and wasm), whichever side allocated
 * the garbage.
 */
const interleaved = (tfjs: typeof tf, c: Case, data: DataModule.XY, count: number) =>
  Effect.gen(function*() {
    const bare = bareStepper(tfjs, c, data)
    const trainerTimes: Array<number> = []
    const bareTimes: Array<number> = []
    const trainerWindows: Array<readonly [number, number]> = []
    const bareWindows: Array<readonly [number, number]> = []
    const pauses: Array<readonly [number, number]> = []
    const observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) pauses.push([e.startTime, e.duration])
    })
    observer.observe({ entryTypes: ["gc"] })
    let previousStart = 0
    let bareInBetween = 0
    const clock: Callback.Callback = {
      name: "bench-clock",
      onTrainBatchStart: (_t, i) =>
        Effect.sync(() => {
          const now = performance.now()
          // The first 3 steps of each side warm up.
          if (i > 3) {
            trainerTimes.push(now - previousStart - bareInBetween)
            trainerWindows.push([previousStart, now])
          }
          previousStart = now
        }),
      onTrainBatchEnd: (_t, _o, i) =>
        Effect.suspend(() => {
          const start = performance.now()
          return Effect.promise(() => bare.step(i)).pipe(Effect.map(() => {
            const end = performance.now()
            bareInBetween = end - start
            if (i >= 3) {
              bareTimes.push(bareInBetween)
              bareWindows.push([start, end])
            }
          }))
        })
    }
    const trainer = yield* Trainer.make({
      enableProgressBar: false,
      logger: false,
      // The Trainer's loop against a bare loop: no checkpoint saves, no model summary.
      enableCheckpointing: false,
      enableModelSummary: false,
      maxEpochs: 1,
      numSanityValSteps: 0,
      callbacks: [clock]
    })
    const dm = DataModule.fromArrays(data, { batchSize: c.batchSize, shuffle: false, valFraction: 0 })
    yield* trainer.fit(module(c), dm).pipe(Effect.ensuring(Effect.sync(bare.dispose)))
    void count
    for (const e of observer.takeRecords()) pauses.push([e.startTime, e.duration])
    observer.disconnect()
    const gcIn = (windows: ReadonlyArray<readonly [number, number]>) =>
      pauses.reduce((sum, [at, ms]) => (windows.some(([a, b]) => at >= a && at < b) ? sum + ms : sum), 0)
    const gcBare = gcIn(bareWindows)
    return {
      trainer: 1000 / median(trainerTimes),
      bare: 1000 / median(bareTimes),
      // Trainer windows contain the bare windows: take those out.
      gcTrainerMsPerStep: (gcIn(trainerWindows) - gcIn(bareWindows.filter(([a]) => trainerWindows.some(([x, y]) => a >= x && a < y)))) /
        Math.max(1, trainerWindows.length),
      gcBareMsPerStep: gcBare / Math.max(1, bareWindows.length)
    }
  })

export interface TrainerOptions {
  /** The models to run, each with its number of timed steps per repeat. */
  readonly cases: ReadonlyArray<{ readonly name: CaseName; readonly steps: number }>
  readonly repeats: number
}

/** Per model, one value per repeat: steps/s of each side (medians over the run's steps) and their ratio. */
export interface TrainerCaseSamples {
  readonly name: CaseName
  readonly steps: number
  readonly batchSize: number
  readonly bare: Array<number>
  readonly trainer: Array<number>
  readonly ratios: Array<number>
  /** GC pause ms per step that fell in each side's window (see `interleaved`). */
  readonly gcTrainerMsPerStep: Array<number>
  readonly gcBareMsPerStep: Array<number>
}

export interface TrainerSamples {
  readonly backend: Device.BackendName
  readonly isGpu: boolean
  readonly cases: Array<TrainerCaseSamples>
}

/** The measurement, on the `Device` in context. */
export const measureTrainer = (options: TrainerOptions) =>
  Effect.gen(function*() {
    const device = yield* Device.Device
    const tfjs = device.tf
    const out: Array<TrainerCaseSamples> = []
    for (const { name, steps } of options.cases) {
      const c = cases.find((x) => x.name === name)!
      const data = syntheticData(c, steps + 3)
      const samples: TrainerCaseSamples = {
        name,
        steps,
        batchSize: c.batchSize,
        bare: [],
        trainer: [],
        ratios: [],
        gcTrainerMsPerStep: [],
        gcBareMsPerStep: []
      }
      for (let r = 0; r < options.repeats; r++) {
        const { bare, gcBareMsPerStep, gcTrainerMsPerStep, trainer } = yield* interleaved(tfjs, c, data, steps)
        samples.gcBareMsPerStep.push(gcBareMsPerStep)
        samples.gcTrainerMsPerStep.push(gcTrainerMsPerStep)
        samples.bare.push(bare)
        samples.trainer.push(trainer)
        samples.ratios.push(trainer / bare)
      }
      out.push(samples)
    }
    return { backend: device.backend, isGpu: device.isGpu, cases: out } satisfies TrainerSamples
  })

/** `measureTrainer` on a fresh `Device` for `backend` (fails with `DeviceError` when it does not come up). */
export const runTrainer = (backend: Device.BackendChoice, options: TrainerOptions): Promise<TrainerSamples> =>
  Effect.runPromise(
    measureTrainer(options).pipe(
      Effect.provide(Strategy.singleDevice().pipe(Layer.provideMerge(Device.layer(backend)))),
      Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)),
      Effect.scoped
    )
  )

const main = async () => {
  const { values } = parseArgs({
    options: {
      backend: { type: "string", default: "auto" },
      steps: { type: "string", default: "60" },
      repeats: { type: "string", default: "3" },
      json: { type: "string" }
    }
  })
  const steps = Number(values.steps)
  const repeats = Number(values.repeats)
  const backend = Device.backendChoices.find((b) => b === values.backend) ?? "auto"
  const measured = await runTrainer(backend, { cases: cases.map((c) => ({ name: c.name, steps })), repeats })
  const lines = measured.cases.map(({ bare, name, ratios, trainer }) =>
    `${name}: bare ${median(bare).toFixed(2)} steps/s, Trainer.fit ${median(trainer).toFixed(2)} steps/s, ` +
    `ratio ${median(ratios).toFixed(3)} (target >= 0.97; per repeat ${ratios.map((x) => x.toFixed(3)).join(" ")})`
  )
  const ratioOf = (name: CaseName) => median(measured.cases.find((c) => c.name === name)!.ratios)
  const result = { mlp_vs_bare: ratioOf("mlp"), cnn_vs_bare: ratioOf("cnn"), backend: measured.backend }
  console.log(`backend ${measured.backend}${measured.isGpu ? " (GPU)" : ""}, ${steps} timed steps per run, ${repeats} repeats, medians`)
  for (const line of lines) console.log(line)
  if (values.json !== undefined) await fsp.writeFile(values.json, JSON.stringify(result, null, 2) + "\n")
}

if (import.meta.main) await main()
