/**
 * Untrusted input:
 *
 * - prototype pollution: valid files (checksums recomputed, as an attacker would)
 *   whose tensor names, metadata keys and meta JSON hold `__proto__`, `constructor`,
 *   `prototype`, … load without changing `Object.prototype` (or Array's, Function's),
 *   every object loaded has a plain prototype, and feeding the loaded callback state
 *   to `ModelCheckpoint.loadStateDict` changes nothing either;
 * - loading runs no code: the load path's modules contain no `eval`, `Function`
 *   constructor, `vm` or dynamic `import`/`require` (a source check), and JSON is
 *   parsed without a reviver;
 * - filename templates and metric names (seeded random ones, with separators, `..`,
 *   control characters, format specs, long names) never make `ModelCheckpoint` write
 *   or remove anything outside its `dirpath` through `FileCheckpointIO`: every file
 *   created is directly inside `dirpath`, sentinel files around it stay untouched, and
 *   every failure is typed;
 * - a resumed `ModelCheckpoint` state that names files outside `dirpath` (absolute,
 *   `..`) never gets them removed by rotation.
 *
 * Absurd shapes and sizes are the crafted files of `fuzz-cases.ts` (`mode: "crafted"`).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Cause, Effect, Exit, FileSystem, Logger, Option, Path } from "effect"
import * as fs from "node:fs"
import * as nodePath from "node:path"
import type * as Callback from "../../src/Callback.ts"
import { CheckpointIO, type CheckpointIOShape } from "../../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import { epochEnd, fakeTrainer } from "../support/fakeTrainer.ts"
import { crcHex, crcKey, encode, headerCrcKey, headerText } from "./safetensorsBytes.ts"
import { type Failure, here, makeTempDir, prng, removeDir, type Result, trialSeed } from "./support.ts"

// ---------------------------------------------------------------------------
// Prototype pollution

const prototypes: ReadonlyArray<readonly [string, object]> = [
  ["Object.prototype", Object.prototype],
  ["Array.prototype", Array.prototype],
  ["Function.prototype", Function.prototype],
  ["String.prototype", String.prototype],
  ["Number.prototype", Number.prototype]
]

const snapshotPrototypes = () =>
  prototypes.map(([name, proto]) => ({
    name,
    keys: Reflect.ownKeys(proto).map(String).sort().join(","),
    values: Reflect.ownKeys(proto).map((k) => Object.getOwnPropertyDescriptor(proto, k))
  }))

const changedPrototypes = (before: ReturnType<typeof snapshotPrototypes>): string | undefined => {
  const after = snapshotPrototypes()
  for (const [i, b] of before.entries()) {
    const a = after[i]!
    if (a.keys !== b.keys) return `${b.name} has other keys now`
    for (const [k, d] of b.values.entries()) {
      const e = a.values[k]
      if (d?.value !== e?.value || d?.get !== e?.get || d?.set !== e?.set) return `${b.name} has a changed property`
    }
  }
  if ((({}) as Record<string, unknown>)["polluted"] !== undefined) return "({}).polluted is defined"
  return undefined
}

/** Every object reachable from `value` has a plain prototype (Object's, Array's, a typed array's, or none). */
const plainPrototypes = (value: unknown, seen = new Set<unknown>()): string | undefined => {
  if (typeof value !== "object" || value === null || seen.has(value)) return undefined
  seen.add(value)
  if (ArrayBuffer.isView(value)) return undefined
  const proto = Object.getPrototypeOf(value)
  if (proto !== null && proto !== Object.prototype && proto !== Array.prototype) {
    return `an object with a foreign prototype (${Object.keys(proto as object).join(", ")})`
  }
  for (const key of Object.keys(value)) {
    const problem = plainPrototypes((value as Record<string, unknown>)[key], seen)
    if (problem !== undefined) return `${key}: ${problem}`
  }
  return undefined
}

const hostile = `{"__proto__":{"polluted":"yes"},"constructor":{"prototype":{"polluted":"yes"}},"prototype":{"polluted":"yes"}}`

/** A valid file of ours (checksums right) with hostile keys in the places `name` says. */
const pollutingFile = (variant: number): Uint8Array => {
  const names = ["__proto__", "constructor", "prototype", "hasOwnProperty", "toString", "valueOf", "__defineGetter__"]
  const name = names[variant % names.length]!
  const data = new Uint8Array(8)
  const header: Record<string, unknown> = Object.create(null)
  header[name] = { dtype: "F32", shape: [2], data_offsets: [0, 8] }
  header[`model/${name}`] = { dtype: "U8", shape: [0], data_offsets: [8, 8] }
  const crcs: Record<string, string> = Object.create(null)
  crcs[name] = crcHex(data)
  crcs[`model/${name}`] = crcHex(new Uint8Array(0))
  const meta = `{"formatVersion":1,"libraryVersion":"0.1.0","epoch":0,"globalStep":0,"weightsOnly":false,` +
    `"loops":${hostile},"callbacks":{"ModelCheckpoint":{"bestKModels":${hostile},"__proto__":{"polluted":"yes"}},"__proto__":${hostile}},` +
    `"optimizer":{"className":"Adam","config":${hostile}},"hyperParameters":${hostile},"user":${hostile}}`
  const metadata: Record<string, string> = Object.create(null)
  metadata["effect_trainer.format"] = "1"
  metadata["effect_trainer.meta"] = meta
  metadata[crcKey] = JSON.stringify(crcs)
  metadata[name] = "yes"
  metadata[headerCrcKey] = "00000000"
  header["__metadata__"] = metadata
  // JSON.stringify writes "__proto__" as a plain key; JSON.parse reads it back as one.
  return encode(headerText(header), data, { fixCrc: true })
}

const loadFile = (bytes: Uint8Array) =>
  Effect.gen(function*() {
    const io = yield* CheckpointIO
    const store = yield* MemoryCheckpointIO.MemoryStore
    store.files.set("/hostile.ckpt", { bytes, modifiedAt: 0 })
    return yield* io.load("/hostile.ckpt")
  }).pipe(Effect.provide(MemoryCheckpointIO.layerWithStore))

export const runPrototypeCases = (): Promise<Result> =>
  Effect.runPromise(Effect.gen(function*() {
    const failures: Array<Failure> = []
    const variants = 7
    for (let v = 0; v < variants; v++) {
      const before = snapshotPrototypes()
      const fail = (message: string) => failures.push({ seed: v, message: `hostile keys, variant ${v}: ${message}` })
      const exit = yield* Effect.exit(loadFile(pollutingFile(v)))
      if (Exit.isFailure(exit)) {
        fail(`a valid file did not load: ${Cause.pretty(exit.cause).slice(0, 300)}`)
        continue
      }
      const loaded = exit.value
      const polluted = changedPrototypes(before)
      if (polluted !== undefined) fail(`loading polluted a prototype: ${polluted}`)
      const meta = Option.getOrUndefined(loaded.meta)
      const foreign = plainPrototypes({ meta, extra: { ...loaded.extraMetadata } })
      if (foreign !== undefined) fail(`the loaded meta holds ${foreign}`)
      if (Object.keys(loaded.tensors).length !== 2) fail(`expected 2 tensors, got ${Object.keys(loaded.tensors).join(", ")}`)
      // The callback state, as a resume would hand it over.
      const callback = yield* ModelCheckpoint.make({ dirpath: "/ckpt", monitor: "loss", saveTopK: 2 })
      const state = meta?.callbacks["ModelCheckpoint"]
      const restored = yield* Effect.exit(callback.loadStateDict(state ?? {}))
      if (Exit.isFailure(restored) && !Cause.hasFails(restored.cause)) {
        fail(`loadStateDict died: ${Cause.pretty(restored.cause).slice(0, 300)}`)
      }
      const after = changedPrototypes(before)
      if (after !== undefined) fail(`restoring the callback state polluted a prototype: ${after}`)
    }
    // The load path runs no code: no eval-like construct in its modules.
    const sources = ["SafeTensors.ts", "Checkpoint.ts", "CheckpointIO.ts", "FileCheckpointIO.ts", "MemoryCheckpointIO.ts"]
    for (const file of sources) {
      const text = fs.readFileSync(nodePath.join(here, "../../src", file), "utf8")
      const found = /\beval\s*\(|\bnew\s+Function\s*\(|\bFunction\s*\(|node:vm|\bimport\s*\(|\brequire\s*\(|JSON\.parse\([^)]*,/.exec(text)
      if (found !== null) failures.push({ seed: 0, message: `${file} contains "${found[0]}" on its load path` })
    }
    return {
      category: "untrusted input: prototype pollution",
      trials: variants + sources.length,
      failures,
      notes: { "hostile files": variants, "modules checked for code execution": sources.length }
    }
  }))

// ---------------------------------------------------------------------------
// File names

const metricNames = [
  "loss",
  "val/loss",
  "../x",
  "..",
  ".",
  "/abs",
  "a\\b",
  "\u0000",
  "x\ny",
  "é",
  "💥",
  "~",
  "$HOME",
  "%2F",
  " ",
  "a".repeat(120),
  "con",
  ".hidden",
  "step",
  "epoch",
  "x:y",
  "a.b",
  "\u202e",
  "NUL"
]
const literals = [
  "",
  "-",
  "/",
  "../",
  "..",
  "./",
  "\\",
  "\u0000",
  "\n",
  "x",
  "ckpt",
  " ",
  "%s",
  "~",
  "$(touch pwned)",
  "é",
  ".",
  "//",
  "a/b/c",
  "..\\..\\"
]
const specs = ["", ":.2f", ":03d", ":>10", ":<5", ":+.1e", ":x", ":,", ":%", ":g", ":#x", ":^20", ":s", ":10.3f", ":/", ":../"]
const values = [0, 1, -1, 0.5, 1e300, -1e-300, Number.NaN, Infinity, -Infinity, -0, 123456789]

const walk = (dir: string): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    const full = nodePath.join(dir, d.name)
    return d.isDirectory() ? [full + "/", ...walk(full)] : [full]
  })

export interface FilenameOptions {
  readonly cases?: number
  readonly seed?: number
}

/** Random templates and metric names through ModelCheckpoint and FileCheckpointIO. */
export const runFilenameFuzz = (options: FilenameOptions = {}): Promise<Result> =>
  Effect.runPromise(
    Effect.gen(function*() {
      const cases = options.cases ?? 1000
      const seed = options.seed ?? 1
      const failures: Array<Failure> = []
      let saved = 0
      let configErrors = 0
      let typedErrors = 0
      const root = makeTempDir("reliability-names-", { memory: true })
      const fsService = yield* FileSystem.FileSystem
      const pathService = yield* Path.Path
      const io = yield* FileCheckpointIO.make.pipe(
        Effect.provideService(FileSystem.FileSystem, fsService),
        Effect.provideService(Path.Path, pathService)
      )
      try {
        for (let i = 0; i < cases; i++) {
          const caseSeed = trialSeed(seed, i)
          const rng = prng(caseSeed)
          const caseRoot = nodePath.join(root, `case${i}`)
          const dirpath = nodePath.join(caseRoot, "sub", "ckpt")
          fs.mkdirSync(dirpath, { recursive: true })
          const sentinels = [nodePath.join(caseRoot, "sentinel.ckpt"), nodePath.join(caseRoot, "sub", "sentinel.ckpt")]
          for (const s of sentinels) fs.writeFileSync(s, "sentinel")
          let template = ""
          for (let k = rng.range(1, 5); k > 0; k--) {
            template += rng.chance(0.5) ? rng.pick(literals) : `{${rng.pick(metricNames)}${rng.pick(specs)}}`
          }
          const monitor = rng.chance(0.5) ? rng.pick(metricNames) : undefined
          const fail = (message: string) => failures.push({ seed: caseSeed, message: `template ${JSON.stringify(template)}: ${message}` })
          const made = yield* Effect.exit(ModelCheckpoint.make({
            dirpath,
            filename: template,
            monitor,
            saveTopK: monitor === undefined ? rng.pick([1, -1]) : rng.pick([1, 2, -1]),
            saveLast: rng.pick([true, false, "link"] as const),
            enableVersionCounter: rng.chance(0.7),
            autoInsertMetricName: rng.chance(0.7)
          }))
          if (Exit.isFailure(made)) {
            configErrors++
            if (!Cause.hasFails(made.cause)) fail(`make died: ${Cause.pretty(made.cause).slice(0, 300)}`)
            removeDir(caseRoot)
            continue
          }
          const callback = made.value
          const trainer = fakeTrainer(io, () => [callback as Callback.Callback], caseRoot)
          const run = yield* Effect.exit(Effect.gen(function*() {
            yield* callback.setup(trainer, "fit")
            for (let e = 0; e < 3; e++) {
              const metrics: Record<string, number> = {}
              for (const name of metricNames) if (rng.chance(0.4)) metrics[name] = rng.pick(values)
              if (monitor !== undefined && rng.chance(0.8)) metrics[monitor] = rng.pick(values)
              yield* epochEnd(callback, trainer, e, (e + 1) * 5, metrics)
            }
          }))
          if (Exit.isFailure(run)) {
            if (!Cause.hasFails(run.cause)) fail(`the run died: ${Cause.pretty(run.cause).slice(0, 400)}`)
            else typedErrors++
          } else saved++
          for (const entry of walk(caseRoot)) {
            if (entry.endsWith("/")) {
              if (entry !== nodePath.join(caseRoot, "sub") + "/" && entry !== dirpath + "/") fail(`created the directory ${entry}`)
              continue
            }
            if (sentinels.includes(entry)) continue
            if (nodePath.dirname(entry) !== dirpath) fail(`created ${entry}, outside ${dirpath}`)
            else if (nodePath.basename(entry).startsWith(".")) fail(`left a hidden or temporary file ${nodePath.basename(entry)}`)
          }
          for (const s of sentinels) {
            if (!fs.existsSync(s) || fs.readFileSync(s, "utf8") !== "sentinel") fail(`touched ${s}`)
          }
          removeDir(caseRoot)
        }

        // A resumed state that names files outside dirpath.
        const trials = yield* untrustedState(io, root, failures)
        return {
          category: "untrusted input: file names",
          trials: cases + trials,
          failures,
          notes: {
            "runs that saved": saved,
            "templates refused at make (typed)": configErrors,
            "runs that failed with a typed error": typedErrors,
            "hostile resumed states": trials
          }
        }
      } finally {
        removeDir(root)
      }
    }).pipe(Effect.provide([NodeFileSystem.layer, NodePath.layer, Logger.layer([])]))
  )

/** A ModelCheckpoint state (from an untrusted checkpoint) naming files outside dirpath. */
const untrustedState = (io: CheckpointIOShape, root: string, failures: Array<Failure>) =>
  Effect.gen(function*() {
    const caseRoot = nodePath.join(root, "state")
    const dirpath = nodePath.join(caseRoot, "ckpt")
    fs.mkdirSync(dirpath, { recursive: true })
    const outside = [
      nodePath.join(caseRoot, "sentinel.ckpt"),
      `${dirpath}/../sentinel2.ckpt`,
      `${dirpath}/./../../state/sentinel3.ckpt`,
      `${dirpath}/sub/deeper.ckpt`
    ]
    fs.mkdirSync(nodePath.join(dirpath, "sub"))
    for (const p of outside) fs.writeFileSync(p, "sentinel")
    let trials = 0
    for (const [i, victim] of outside.entries()) {
      trials++
      const callback = yield* ModelCheckpoint.make({ dirpath, monitor: "loss", mode: "min", saveTopK: 1, saveLast: true })
      const trainer = fakeTrainer(io, () => [callback], caseRoot)
      yield* callback.setup(trainer, "fit")
      yield* callback.loadStateDict({
        monitor: "loss",
        mode: "min",
        bestModelScore: 100,
        bestModelPath: victim,
        currentScore: 100,
        dirpath,
        bestKModels: { [victim]: 100 },
        kthBestModelPath: victim,
        kthValue: 100,
        lastModelPath: victim
      })
      const run = yield* Effect.exit(Effect.gen(function*() {
        for (let e = 0; e < 3; e++) yield* epochEnd(callback, trainer, e, (e + 1) * 3, { loss: 10 - e })
      }))
      if (Exit.isFailure(run)) {
        failures.push({ seed: i, message: `hostile state ${victim}: the run failed: ${Cause.pretty(run.cause).slice(0, 300)}` })
      }
      for (const p of outside) {
        if (!fs.existsSync(p)) {
          failures.push({ seed: i, message: `a resumed state naming ${victim} got ${p} removed` })
        }
      }
    }
    return trials
  })
