/**
 * bench:ddp: steps/s of the same global batch on `Strategy.dataParallel` vs
 * `singleDevice`, for the MLP (784-256-128-10, global batch 128) and the small CNN
 * (conv 3x3x32, max-pool, dense; global batch 64) of bench:trainer, through
 * Trainer.fit.
 *
 *   npm run bench:ddp [-- --devices 2 --steps 40 --warmup 5 --repeats 3 --backend auto --json <file>]
 *
 * The runs alternate (single, data parallel, single, …) so both see the machine in
 * the same state; each run is timed on rank 0 from the end of its warm-up steps to
 * its last step (worker start-up and backend initialisation excluded). Reported: the
 * median steps/s of each side with min and max, the speed-up of the medians,
 * `deterministic` (the data-parallel MLP's weights after two runs with the same seed
 * are bit-identical), the load average before and after, and a scaling table
 * (1 … `--devices` replicas) when `--scaling` is given.
 *
 * This module is also the entry the data-parallel workers run: with a replica's
 * workerData it runs that run's program (from argv) instead of the benchmark.
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer } from "effect"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import { parseArgs } from "node:util"
import type * as Callback from "../src/Callback.ts"
import * as DataModule from "../src/DataModule.ts"
import * as DataParallel from "../src/DataParallel.ts"
import * as Device from "../src/Device.ts"
import * as Strategy from "../src/Strategy.ts"
import * as Trainer from "../src/Trainer.ts"
import type { TrainingModule } from "../src/TrainingModule.ts"
import { cases, syntheticData } from "./trainer.ts"

type CaseName = "mlp" | "cnn"

/** One run: which network, how many replicas (0: singleDevice), how many steps. */
interface RunConfig {
  readonly case: CaseName
  readonly devices: number
  readonly steps: number
  readonly warmup: number
  readonly backend: Device.BackendChoice
}

/** The bench:trainer models and data, so both benchmarks time the same steps. */
const caseOf = (name: CaseName) => cases.find((c) => c.name === name)!

const module = (name: CaseName): TrainingModule<DataModule.XY> => ({
  name: `bench-${name}`,
  configureModel: caseOf(name).build,
  configureOptimizers: (tfjs) => tfjs.train.adam(1e-3),
  trainingStep: (model, batch, ctx) =>
    ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), model.apply(ctx.tensor(batch.x)) as tf.Tensor) as tf.Scalar
})

/** One run of Trainer.fit; on rank 0: steps/s after the warm-up and the final weights. */
const runOnce = (config: RunConfig) =>
  Effect.gen(function*() {
    const stamps: Array<number> = []
    const cpu: Array<NodeJS.CpuUsage> = []
    const clock: Callback.Callback = {
      name: "bench-clock",
      onTrainBatchEnd: () =>
        Effect.sync(() => {
          stamps.push(performance.now())
          // CPU time of the whole process (every thread), to see how many cores it got.
          cpu.push(process.cpuUsage())
        })
    }
    const total = config.warmup + config.steps
    const strategy = config.devices === 0
      ? Strategy.singleDevice()
      : Strategy.dataParallel({ devices: config.devices, entry: import.meta.url, argv: [JSON.stringify(config)] })
    const layers = Trainer.layer({
      enableProgressBar: false,
      logger: false,
      enableModelSummary: false,
      // Steps only: the default ModelCheckpoint would time checkpoint saves too.
      enableCheckpointing: false,
      maxSteps: total,
      numSanityValSteps: 0,
      seed: 1,
      callbacks: [clock]
    }).pipe(
      Layer.provideMerge(strategy),
      Layer.provideMerge(Device.layer(config.backend)),
      Layer.provideMerge(NodeServices.layer)
    )
    return yield* Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      const m = module(config.case)
      const data = DataModule.fromArrays(syntheticData(caseOf(config.case), total), {
        batchSize: caseOf(config.case).batchSize,
        shuffle: false,
        valFraction: 0
      })
      yield* trainer.fit(m, data)
      const model = yield* Effect.fromOption(trainer.model(m))
      const elapsed = stamps[stamps.length - 1]! - stamps[config.warmup - 1]!
      const used = process.cpuUsage(cpu[config.warmup - 1])
      return {
        stepsPerSecond: (config.steps * 1000) / elapsed,
        cores: (used.user + used.system) / 1000 / elapsed,
        weights: model.weights.map((w) => Float32Array.from(w.read().dataSync() as Float32Array))
      }
    }).pipe(Effect.provide(layers))
  })

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const summary = (xs: ReadonlyArray<number>) => ({
  median: median(xs),
  min: Math.min(...xs),
  max: Math.max(...xs),
  runs: xs
})

const casesOf = (s: { single: Array<number>; parallel: Array<number>; singleCores: Array<number>; parallelCores: Array<number> }) => ({
  single: { ...summary(s.single), coresUsed: summary(s.singleCores) },
  dataParallel: { ...summary(s.parallel), coresUsed: summary(s.parallelCores) }
})

const sameBits = (a: ReadonlyArray<Float32Array>, b: ReadonlyArray<Float32Array>) =>
  a.length === b.length && a.every((t, i) => Buffer.from(t.buffer).equals(Buffer.from(b[i]!.buffer)))

const main = Effect.gen(function*() {
  const { values } = parseArgs({
    options: {
      devices: { type: "string", default: "2" },
      steps: { type: "string", default: "40" },
      warmup: { type: "string", default: "5" },
      repeats: { type: "string", default: "3" },
      backend: { type: "string", default: "auto" },
      json: { type: "string" },
      scaling: { type: "boolean", default: false }
    }
  })
  const devices = Number(values.devices)
  const repeats = Math.max(2, Number(values.repeats))
  const base = { steps: Number(values.steps), warmup: Number(values.warmup), backend: values.backend as Device.BackendChoice }
  const loadBefore = os.loadavg()
  const samples: Record<
    CaseName,
    { single: Array<number>; parallel: Array<number>; singleCores: Array<number>; parallelCores: Array<number> }
  > = {
    mlp: { single: [], parallel: [], singleCores: [], parallelCores: [] },
    cnn: { single: [], parallel: [], singleCores: [], parallelCores: [] }
  }
  const mlpWeights: Array<ReadonlyArray<Float32Array>> = []
  for (let r = 0; r < repeats; r++) {
    for (const name of ["mlp", "cnn"] as const) {
      // Interleaved: single and data-parallel runs alternate within every repeat.
      const single = yield* runOnce({ ...base, case: name, devices: 0 })
      const parallel = yield* runOnce({ ...base, case: name, devices })
      samples[name].single.push(single.stepsPerSecond)
      samples[name].parallel.push(parallel.stepsPerSecond)
      samples[name].singleCores.push(single.cores)
      samples[name].parallelCores.push(parallel.cores)
      if (name === "mlp") mlpWeights.push(parallel.weights)
      console.log(
        `repeat ${r} ${name}: single ${single.stepsPerSecond.toFixed(1)} steps/s, dataParallel(${devices}) ${
          parallel.stepsPerSecond.toFixed(1)
        } steps/s (CPU cores used: ${single.cores.toFixed(2)} vs ${parallel.cores.toFixed(2)})`
      )
    }
  }
  const scaling: Array<{ devices: number; mlp: number; cnn: number }> = []
  if (values.scaling) {
    for (let n = 1; n <= Math.max(devices, os.availableParallelism()); n++) {
      const mlp = yield* runOnce({ ...base, case: "mlp", devices: n })
      const cnn = yield* runOnce({ ...base, case: "cnn", devices: n })
      scaling.push({ devices: n, mlp: mlp.stepsPerSecond, cnn: cnn.stepsPerSecond })
    }
  }
  const result = {
    devices,
    cores: os.availableParallelism(),
    steps: base.steps,
    warmup: base.warmup,
    repeats,
    mlp: casesOf(samples.mlp),
    cnn: casesOf(samples.cnn),
    mlp_speedup: median(samples.mlp.parallel) / median(samples.mlp.single),
    cnn_speedup: median(samples.cnn.parallel) / median(samples.cnn.single),
    // Steps per CPU-second, data parallel ÷ single: the work the replicas add (1: none).
    // With `devices` idle cores, the speed-up would be about devices × this.
    mlp_cpu_efficiency: median(samples.mlp.parallel.map((v, i) => v / samples.mlp.parallelCores[i]!)) /
      median(samples.mlp.single.map((v, i) => v / samples.mlp.singleCores[i]!)),
    cnn_cpu_efficiency: median(samples.cnn.parallel.map((v, i) => v / samples.cnn.parallelCores[i]!)) /
      median(samples.cnn.single.map((v, i) => v / samples.cnn.singleCores[i]!)),
    deterministic: sameBits(mlpWeights[0]!, mlpWeights[1]!),
    loadavg: { before: loadBefore, after: os.loadavg() },
    scaling
  }
  console.log(
    `mlp_speedup ${result.mlp_speedup.toFixed(2)} cnn_speedup ${result.cnn_speedup.toFixed(2)} ` +
      `(per CPU-second: mlp ${result.mlp_cpu_efficiency.toFixed(2)}, cnn ${
        result.cnn_cpu_efficiency.toFixed(2)
      }) deterministic ${result.deterministic} ` +
      `(load average ${loadBefore[0]!.toFixed(1)} → ${result.loadavg.after[0]!.toFixed(1)} on ${result.cores} cores)`
  )
  if (values.json !== undefined) {
    const file = values.json
    yield* Effect.promise(() => fsp.writeFile(file, JSON.stringify(result, null, 2) + "\n"))
  }
})

if (DataParallel.replica !== undefined) {
  NodeRuntime.runMain(runOnce(JSON.parse(process.argv[2]!) as RunConfig), { disableErrorReporting: true })
} else {
  NodeRuntime.runMain(main)
}
