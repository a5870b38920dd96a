#!/usr/bin/env node
/**
 * `effect-trainer`: the command-line tool shipped with the package (`bin`), and the
 * small pieces a training script needs to behave well in a terminal.
 *
 * ```sh
 * effect-trainer inspect runs/mlp/checkpoints/last.ckpt   # tensors, training state, hyperparameters, checksums
 * effect-trainer verify runs/                             # exit 0 only if every checkpoint is intact
 * effect-trainer diff a.ckpt b.ckpt                       # which tensors differ, and by how much
 * effect-trainer plot runs/mlp/logs/version_0/metrics.csv # an SVG of the curves
 * ```
 *
 * For scripts: `runMain` runs a program as `NodeRuntime.runMain` does, but reports a
 * failure as one line on stderr (what failed, which file, what to do), with exit code
 * 1 (130 after Ctrl-C); the full cause only with `--log-level debug`. `runCommand`
 * does the same for an `effect/cli` command, whose invalid flags get one line too,
 * not the whole help.
 *
 * Importing this module runs nothing; the tool starts only when the file is the
 * program (`node dist/cli.js`, or the `effect-trainer` bin).
 *
 * @since 0.2.0
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Console, Data, Effect, Exit, FileSystem, Option, Path, Result } from "effect"
import { Argument, CliError, CliOutput, Command, Flag } from "effect/cli"
import { realpathSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { type Checkpoint, elementCount, type HostTensor } from "./Checkpoint.ts"
import { CheckpointIO, type CheckpointIOShape } from "./CheckpointIO.ts"
import * as FileCheckpointIO from "./FileCheckpointIO.ts"
import * as Plot from "./Plot.ts"
import * as SafeTensors from "./SafeTensors.ts"
import { libraryVersion } from "./version.ts"

// ---------------------------------------------------------------------------
// Reporting failures

/**
 * A failure a command reports itself: `message` (one line) goes to stderr and the
 * process exits with `code`; an empty message prints nothing (the command already
 * said what it had to, as `verify` does).
 */
export class CommandFailed extends Data.TaggedError("CommandFailed")<{
  readonly message: string
  readonly code: number
}> {}

/** What to do about a failure, by its tag (and reason): the end of the one-line report. */
const hintFor = (error: unknown): string | undefined => {
  if (typeof error !== "object" || error === null || !("_tag" in error)) return undefined
  const field = "field" in error ? error.field : undefined
  switch (error._tag) {
    case "CheckpointNotFound":
      return "check the path; --ckpt-path last resumes the experiment's newest checkpoint"
    case "CheckpointCorrupt":
      return "`effect-trainer verify <directory>` lists the intact checkpoints; resume from one of those"
    case "CheckpointTooLarge":
      return "load it on a machine with more memory, or raise maxLoadBytes"
    case "RestoreError":
      return field === "meta.hyperParameters"
        ? "resume with the settings it was saved with, or train this configuration without --ckpt-path"
        : "the checkpoint belongs to another model or run; resume from one of this experiment's checkpoints"
    case "CheckpointStorageError":
    case "BackgroundSaveFailed":
      return "check that the directory exists, is writable and has space"
    case "DeviceError":
      return "try --backend wasm (or EFFECT_TRAINER_BACKEND=wasm)"
  }
  return undefined
}

/** A message on one line: line breaks and runs of spaces become single spaces. */
const singleLine = (text: string): string => text.replace(/\s*\n\s*/g, " ").trim()

/** The first failure of a cause as `Error` or its message. */
const firstError = (cause: Cause.Cause<unknown>): unknown => {
  const failure = cause.reasons.find(Cause.isFailReason)
  if (failure !== undefined) return failure.error
  const defect = cause.reasons.find(Cause.isDieReason)
  return defect === undefined ? undefined : defect.defect
}

/**
 * The one-line report of a failed program: `error: <what failed, naming the file>;
 * <what to do>`. Interruption (Ctrl-C) gives `interrupted`.
 */
export const describeFailure = (cause: Cause.Cause<unknown>): string => {
  if (Cause.hasInterruptsOnly(cause)) return "interrupted"
  const error = firstError(cause)
  const message = error instanceof Error || (typeof error === "object" && error !== null && "message" in error)
    ? String((error as { message: unknown }).message)
    : String(error)
  const tag = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : undefined
  // Our errors' messages say what failed and where; a bare tag is only a fallback.
  const what = message.length > 0 ? message : tag ?? "unknown failure"
  const hint = hintFor(error)
  return `error: ${singleLine(what)}${hint === undefined ? "" : `; ${hint}`}`
}

/** The exit code of a finished program: 0, 130 after an interruption, a `CommandFailed`'s code, else 1. */
export const exitCodeOf = (exit: Exit.Exit<unknown, unknown>): number => {
  if (Exit.isSuccess(exit)) return 0
  if (Cause.hasInterruptsOnly(exit.cause)) return 130
  const error = firstError(exit.cause)
  return error instanceof CommandFailed ? error.code : 1
}

const debugRequested = (argv: ReadonlyArray<string>): boolean =>
  argv.some((arg, i) =>
    /^--log-level=(debug|trace|all)$/.test(arg) || (arg === "--log-level" && /^(debug|trace|all)$/.test(argv[i + 1] ?? ""))
  )

/** Options of `runMain`. */
export interface RunMainOptions {
  /** Printed (on stderr) after an interruption, e.g. how to resume. */
  readonly onInterrupt?: string | undefined
}

/**
 * Runs `program` as the process's main program (`NodeRuntime.runMain`: SIGINT and
 * SIGTERM interrupt it) and reports its end: nothing on success; one line on stderr
 * and exit code 1 on failure (the `CommandFailed` code where one is given); exit
 * code 130 after Ctrl-C. The full cause is printed too with `--log-level debug`.
 * An invalid command line (an `effect/cli` error) was reported by the command
 * already and is not repeated.
 */
export const runMain = <E, A>(program: Effect.Effect<A, E>, options: RunMainOptions = {}): void =>
  NodeRuntime.runMain(program, {
    disableErrorReporting: true,
    teardown: (exit, onExit) => {
      if (Exit.isFailure(exit)) {
        const error = firstError(exit.cause)
        const reported = CliError.isCliError(error) || (error instanceof CommandFailed && error.message === "")
        if (!reported) process.stderr.write(`${describeFailure(exit.cause)}\n`)
        if (Cause.hasInterruptsOnly(exit.cause) && options.onInterrupt !== undefined) process.stderr.write(`${options.onInterrupt}\n`)
        if (debugRequested(process.argv)) process.stderr.write(`${Cause.pretty(exit.cause)}\n`)
      }
      onExit(exitCodeOf(exit))
    }
  })

/**
 * A CLI presenter that reports an invalid command line in one line (`error: …; see
 * --help`) instead of the whole help followed by the error; help and version as
 * usual.
 */
export const presenter: CliOutput.Presenter = {
  present: (event) =>
    event._tag === "InvalidInvocation"
      ? Console.error(
        `error: ${singleLine(event.errors.map((e) => e.message).join("; "))}; see ${[...event.commandPath, "--help"].join(" ")}`
      )
      : CliOutput.defaultPresenter.present(event)
}

/**
 * Runs an `effect/cli` command as the main program: arguments from the process,
 * `NodeServices` provided, one-line errors (`presenter`, `runMain`).
 */
export const runCommand = <Name extends string, Input, E>(
  command: Command.Command<Name, Input, {}, E, NodeServices.NodeServices>,
  options: RunMainOptions & { readonly version?: string | undefined } = {}
): void =>
  runMain(
    Command.run(command, { version: options.version ?? libraryVersion }).pipe(
      Effect.provide(CliOutput.layerPresenter(presenter)),
      Effect.provide(NodeServices.layer)
    ),
    options
  )

// ---------------------------------------------------------------------------
// Reading checkpoints

const formatBytes = (bytes: number): string =>
  bytes < 1024
    ? `${bytes} B`
    : bytes < 1024 ** 2
    ? `${(bytes / 1024).toFixed(1)} KiB`
    : bytes < 1024 ** 3
    ? `${(bytes / 1024 ** 2).toFixed(1)} MiB`
    : `${(bytes / 1024 ** 3).toFixed(2)} GiB`

const shapeText = (shape: ReadonlyArray<number>) => `[${shape.join(",")}]`

/** How many checksums the file's header carries: the tensors' and the header's own. */
const readChecksums = (file: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    return yield* Effect.scoped(Effect.gen(function*() {
      const handle = yield* fs.open(file, { flag: "r" })
      const prefix = new Uint8Array(8)
      yield* handle.read(prefix)
      const length = Number(new DataView(prefix.buffer).getBigUint64(0, true))
      const header = new Uint8Array(Math.min(length, SafeTensors.maxHeaderBytes))
      yield* handle.read(header)
      const parsed = JSON.parse(new TextDecoder().decode(header)) as Record<string, unknown>
      const metadata = (parsed[SafeTensors.metadataKey] ?? {}) as Record<string, string>
      const crcs = metadata[SafeTensors.crcKey] === undefined ? {} : JSON.parse(metadata[SafeTensors.crcKey]) as Record<string, string>
      return { tensors: Object.keys(crcs).length, header: metadata[SafeTensors.headerCrcKey] !== undefined }
    }))
  }).pipe(Effect.orElseSucceed(() => ({ tensors: 0, header: false })))

const jsonInline = (record: Readonly<Record<string, unknown>>): string =>
  Object.entries(record).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")

/** The lines `inspect` prints for a loaded checkpoint. */
export const describeCheckpoint = (
  file: string,
  size: number,
  checkpoint: Checkpoint,
  checksums: { readonly tensors: number; readonly header: boolean }
): Array<string> => {
  const names = Object.keys(checkpoint.tensors).sort()
  const total = names.reduce((n, name) => n + checkpoint.tensors[name]!.data.byteLength, 0)
  const lines = [`file: ${file} (${formatBytes(size)})`]
  lines.push(
    checksums.tensors > 0 || checksums.header
      ? `checksums: verified (${checksums.header ? "header and " : ""}${checksums.tensors} tensors)`
      : "checksums: none in this file (not written by effect-trainer); the header and sizes were validated"
  )
  if (Option.isSome(checkpoint.meta)) {
    const meta = checkpoint.meta.value
    const fit = meta.loops["fit"] as { nextEpoch?: number; nextBatch?: number } | undefined
    const next = fit?.nextEpoch === undefined ? "" : `, resumes at epoch ${fit.nextEpoch} batch ${fit.nextBatch ?? 0}`
    lines.push(
      `training state: epoch ${meta.epoch}, global step ${meta.globalStep}${next}${meta.weightsOnly ? " (weights only)" : ""}`,
      `optimizer: ${meta.optimizer === null ? "none saved" : `${meta.optimizer.className} ${JSON.stringify(meta.optimizer.config)}`}`,
      `hyperparameters: ${Object.keys(meta.hyperParameters).length === 0 ? "none" : jsonInline(meta.hyperParameters)}`,
      `callbacks: ${Object.keys(meta.callbacks).length === 0 ? "none" : Object.keys(meta.callbacks).join(", ")}`,
      `written by: effect-trainer ${meta.libraryVersion}`
    )
  } else {
    lines.push("training state: none (a safetensors file from another tool)")
  }
  const extra = Object.keys(checkpoint.extraMetadata)
  if (extra.length > 0) lines.push(`other metadata: ${jsonInline(checkpoint.extraMetadata)}`)
  lines.push(`tensors: ${names.length}, ${formatBytes(total)}`)
  const width = Math.max(4, ...names.map((n) => n.length))
  for (const name of names) {
    const t = checkpoint.tensors[name]!
    lines.push(`  ${name.padEnd(width)}  ${t.dtype.padEnd(4)}  ${shapeText(t.shape).padEnd(12)}  ${formatBytes(t.data.byteLength)}`)
  }
  return lines
}

const sizeOf = (file: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    return yield* fs.stat(file).pipe(
      Effect.map((info) => Number(info.size)),
      Effect.orElseSucceed(() => 0)
    )
  })

const loadAll = (io: CheckpointIOShape, file: string) => io.load(file, { dtypes: "preserve" })

const inspect = Command.make("inspect", {
  file: Argument.String("file").pipe(Argument.withDescription("a checkpoint (.ckpt or .safetensors)"))
}, ({ file }) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const io = yield* CheckpointIO
    const absolute = path.resolve(file)
    const checkpoint = yield* loadAll(io, absolute)
    const lines = describeCheckpoint(absolute, yield* sizeOf(absolute), checkpoint, yield* readChecksums(absolute))
    yield* Console.log(lines.join("\n"))
  })).pipe(Command.withDescription("show a checkpoint: tensors (dtype, shape, bytes), training state, hyperparameters; checksums verified"))

/** Every checkpoint file under `root` (itself when it is a file), sorted; temporary files left out. */
const checkpointFiles = (root: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const info = yield* fs.stat(root)
    if (info.type !== "Directory") return [root]
    const entries = yield* fs.readDirectory(root, { recursive: true })
    return entries
      .filter((entry) => /\.(ckpt|safetensors)$/.test(entry) && !FileCheckpointIO.isTemporaryName(path.basename(entry)))
      .map((entry) => path.join(root, entry))
      .sort()
  })

const verify = Command.make("verify", {
  target: Argument.String("path").pipe(Argument.withDescription("a checkpoint file, or a directory searched recursively"))
}, ({ target }) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const io = yield* CheckpointIO
    const root = path.resolve(target)
    const files = yield* checkpointFiles(root)
    if (files.length === 0) {
      return yield* new CommandFailed({ message: `no checkpoint (.ckpt, .safetensors) under ${root}`, code: 1 })
    }
    let bad = 0
    for (const file of files) {
      const loaded = yield* Effect.result(loadAll(io, file))
      if (Result.isSuccess(loaded)) {
        yield* Console.log(`ok       ${file}`)
      } else {
        bad++
        yield* Console.log(`FAILED   ${file}: ${singleLine(loaded.failure.message)}`)
      }
    }
    yield* Console.log(`${files.length - bad} of ${files.length} checkpoints intact`)
    if (bad > 0) return yield* new CommandFailed({ message: "", code: 1 })
  })).pipe(Command.withDescription("check every checkpoint (header, sizes, checksums); exit code 0 only if all are intact"))

/** How two tensors of the same name differ, or `undefined` when they are equal. */
export const compareTensors = (a: HostTensor, b: HostTensor): string | undefined => {
  if (a.dtype !== b.dtype) return `dtype ${a.dtype} vs ${b.dtype}`
  if (shapeText(a.shape) !== shapeText(b.shape)) return `shape ${shapeText(a.shape)} vs ${shapeText(b.shape)}`
  let differing = 0
  let maxAbs = 0
  let sumAbs = 0
  const n = elementCount(a.shape)
  for (let i = 0; i < n; i++) {
    const x = Number(a.data[i])
    const y = Number(b.data[i])
    if (x === y || (Number.isNaN(x) && Number.isNaN(y))) continue
    differing++
    const d = Math.abs(x - y)
    sumAbs += d
    if (!(d <= maxAbs)) maxAbs = d
  }
  if (differing === 0) return undefined
  return `${differing}/${n} values differ, max |a-b| ${maxAbs.toPrecision(3)}, mean |a-b| ${(sumAbs / n).toPrecision(3)}`
}

const diff = Command.make("diff", {
  a: Argument.String("a").pipe(Argument.withDescription("a checkpoint")),
  b: Argument.String("b").pipe(Argument.withDescription("another checkpoint"))
}, ({ a, b }) =>
  Effect.gen(function*() {
    const path = yield* Path.Path
    const io = yield* CheckpointIO
    const left = yield* loadAll(io, path.resolve(a))
    const right = yield* loadAll(io, path.resolve(b))
    const names = [...new Set([...Object.keys(left.tensors), ...Object.keys(right.tensors)])].sort()
    let differing = 0
    for (const name of names) {
      const x = left.tensors[name]
      const y = right.tensors[name]
      const what = x === undefined ? "only in b" : y === undefined ? "only in a" : compareTensors(x, y)
      if (what === undefined) continue
      differing++
      yield* Console.log(`${name}: ${what}`)
    }
    const metaA = Option.getOrUndefined(left.meta)
    const metaB = Option.getOrUndefined(right.meta)
    if (metaA !== undefined && metaB !== undefined) {
      if (metaA.globalStep !== metaB.globalStep || metaA.epoch !== metaB.epoch) {
        yield* Console.log(`training state: epoch ${metaA.epoch} step ${metaA.globalStep} vs epoch ${metaB.epoch} step ${metaB.globalStep}`)
      }
      if (JSON.stringify(metaA.hyperParameters) !== JSON.stringify(metaB.hyperParameters)) {
        yield* Console.log(`hyperparameters: ${jsonInline(metaA.hyperParameters)} vs ${jsonInline(metaB.hyperParameters)}`)
      }
    }
    yield* Console.log(`${differing} of ${names.length} tensors differ`)
    if (differing > 0) return yield* new CommandFailed({ message: "", code: 1 })
  })).pipe(Command.withDescription("compare two checkpoints tensor by tensor; exit code 0 only if all tensors are equal"))

const plot = Command.make("plot", {
  file: Argument.String("metrics.csv").pipe(Argument.withDescription("a CsvLogger metrics file")),
  output: Flag.String("output").pipe(
    Flag.withAlias("o"),
    Flag.optional,
    Flag.withDescription("the SVG to write (default: metrics.svg next to the CSV file)")
  )
}, ({ file, output }) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const csv = path.resolve(file)
    const text = yield* fs.readFileString(csv)
    const target = Option.isSome(output) ? path.resolve(output.value) : path.join(path.dirname(csv), Plot.svgFileName)
    const title = path.relative(process.cwd(), path.dirname(csv)) || csv
    yield* fs.writeFileString(target, Plot.fromCsv(text, { title }))
    yield* Console.log(target)
  })).pipe(Command.withDescription("draw the curves of a metrics.csv as an SVG (opens in a browser)"))

/** The `effect-trainer` command and its subcommands. */
export const command = Command.make("effect-trainer").pipe(
  Command.withDescription("look at checkpoints and training curves"),
  Command.withSubcommands([inspect, verify, diff, plot]),
  Command.provide(FileCheckpointIO.layer)
)

/** Is this file the program being run (the bin), rather than an import? */
const isEntryPoint = (): boolean => {
  const main = (import.meta as { main?: boolean }).main
  if (main !== undefined) return main
  const argv1 = process.argv[1]
  if (argv1 === undefined) return false
  try {
    return realpathSync(argv1) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isEntryPoint()) runCommand(command)
