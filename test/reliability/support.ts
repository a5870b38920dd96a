/**
 * Shared pieces of the reliability harnesses: results, a seeded PRNG, child
 * processes with a journal, and a look at a checkpoint directory through
 * `FileCheckpointIO` (every final-name file loaded with all its checksums).
 *
 * Nothing here imports vitest: `scripts/reliability.ts` runs the same harnesses with
 * the full trial counts.
 */
import { Effect, Option } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import { fileURLToPath } from "node:url"
import { CheckpointIO, type CheckpointIOShape } from "../../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import { seeded } from "../support/random.ts"

/** One broken invariant, with what is needed to replay it. */
export interface Failure {
  readonly seed: number
  readonly message: string
}

/** What a harness did: how many trials, which failed, and counts worth printing. */
export interface Result {
  readonly category: string
  readonly trials: number
  readonly failures: ReadonlyArray<Failure>
  /**
   * Broken invariants of a known defect that has a proposed fix and a pending test
   * (`pending-*.test.ts`): reported apart, so that the harness still fails on anything new.
   */
  readonly known?: ReadonlyArray<Failure> | undefined
  readonly notes: Readonly<Record<string, number | string>>
}

export const formatFailures = (result: Result, max = 10, which: "failures" | "known" = "failures"): string => {
  const list = (which === "known" ? result.known : result.failures) ?? []
  return list.slice(0, max).map((f) => `  [${result.category}] seed ${f.seed}: ${f.message}`).join("\n") +
    (list.length > max ? `\n  … and ${list.length - max} more` : "")
}

/** The seeded generator of test/support/random.ts (mulberry32, `src/Random.ts`). */
export const prng = seeded
export type Prng = ReturnType<typeof prng>

/** Mixes a base seed and indices into a trial seed. */
export const trialSeed = (base: number, ...parts: ReadonlyArray<number>): number => {
  let h = (base ^ 0x9e3779b9) >>> 0
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x01000193) >>> 0
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0
  }
  return h >>> 0
}

/** Runs `task` over `items` with at most `limit` at once, results in order. */
export const pool = async <A, B>(items: ReadonlyArray<A>, limit: number, task: (a: A, i: number) => Promise<B>) => {
  const out = new Array<B>(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await task(items[i]!, i)
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker))
  return out
}

// ---------------------------------------------------------------------------
// Child processes

export const here = nodePath.dirname(fileURLToPath(import.meta.url))
export const trainChild = nodePath.join(here, "train-child.ts")

/** One journal entry of `train-child.ts`. */
export type JournalEntry =
  | { readonly op: "fit-start"; readonly resumedFrom: string | null; readonly step: number; readonly pid: number }
  | { readonly op: "save-begin" | "save-end" | "save-fail"; readonly path: string; readonly step: number }
  | { readonly op: "copy-begin" | "copy-end" | "copy-fail"; readonly source: string; readonly path: string }
  | { readonly op: "remove-begin" | "remove-end" | "remove-fail"; readonly path: string }
  | { readonly op: "done"; readonly step: number }
  | { readonly op: "released"; readonly live: boolean; readonly tensors: number }

/**
 * A store that reports each save, copy and remove of `base` (when it begins, ends or
 * fails) to `write`, as `train-child.ts` journals them.
 */
export const journaling = (
  base: CheckpointIOShape,
  write: (entry: JournalEntry & { readonly error?: string }) => void
): CheckpointIOShape => ({
  ...base,
  save: (checkpoint, path, options) => {
    const step = Option.match(checkpoint.meta, { onNone: () => -1, onSome: (m) => m.globalStep })
    return Effect.suspend(() => {
      write({ op: "save-begin", path, step })
      return base.save(checkpoint, path, options)
    }).pipe(
      Effect.tap(() => Effect.sync(() => write({ op: "save-end", path, step }))),
      Effect.tapError((e) => Effect.sync(() => write({ op: "save-fail", path, step, error: e.message })))
    )
  },
  copy: (source, path) =>
    Effect.suspend(() => {
      write({ op: "copy-begin", source, path })
      return base.copy(source, path)
    }).pipe(
      Effect.tap(() => Effect.sync(() => write({ op: "copy-end", source, path }))),
      Effect.tapError((e) => Effect.sync(() => write({ op: "copy-fail", source, path, error: e.message })))
    ),
  remove: (path) =>
    Effect.suspend(() => {
      write({ op: "remove-begin", path })
      return base.remove(path)
    }).pipe(
      Effect.tap(() => Effect.sync(() => write({ op: "remove-end", path }))),
      Effect.tapError((e) => Effect.sync(() => write({ op: "remove-fail", path, error: e.message })))
    )
})

export interface ChildRun {
  readonly pid: number
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly journal: ReadonlyArray<JournalEntry>
  /** stdout lines that are not journal lines, and stderr. */
  readonly output: string
  /** What the trigger did: the signal it sent and when, or nothing. */
  readonly sent: string | undefined
}

/**
 * Runs a child and lets `onEntry` decide, at each journal line, whether to signal it
 * (return a signal and a delay: "now", "immediate" (after I/O callbacks) or a number
 * of milliseconds). `timeoutMs` kills a child that runs too long (a hang: the
 * caller reports it).
 */
export const runChild = (
  args: ReadonlyArray<string>,
  onEntry: (entry: JournalEntry, index: number, child: ChildProcess) => void,
  timeoutMs = 60_000
): Promise<ChildRun & { readonly timedOut: boolean }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [trainChild, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      // Node's compile cache: a quarter of a child's start-up is compiling the same modules.
      env: { ...process.env, NODE_COMPILE_CACHE: nodePath.join(os.tmpdir(), "effect-trainer-reliability-compile-cache") }
    })
    const journal: Array<JournalEntry> = []
    let output = ""
    let pending = ""
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill("SIGKILL")
    }, timeoutMs)
    child.stdout!.on("data", (chunk: Buffer) => {
      pending += chunk.toString("utf8")
      let nl: number
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl)
        pending = pending.slice(nl + 1)
        if (line.startsWith("J ")) {
          const entry = JSON.parse(line.slice(2)) as JournalEntry
          journal.push(entry)
          onEntry(entry, journal.length - 1, child)
        } else {
          output += line + "\n"
        }
      }
    })
    child.stderr!.on("data", (chunk: Buffer) => {
      output += chunk.toString("utf8")
    })
    child.on("error", reject)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      if (pending.startsWith("J ")) {
        try {
          journal.push(JSON.parse(pending.slice(2)) as JournalEntry)
        } catch {
          // A line cut by the kill: never the case with writeSync, but harmless.
        }
      }
      resolve({ pid: child.pid ?? -1, code, signal, journal, output, sent: undefined, timedOut })
    })
  })

/** Sends `signal` now, after pending I/O callbacks, or after `delay` ms. */
export const signalAfter = (child: ChildProcess, signal: NodeJS.Signals, delay: "now" | "immediate" | number) => {
  const send = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
  }
  if (delay === "now") send()
  else if (delay === "immediate") setImmediate(send)
  else setTimeout(send, delay)
}

// ---------------------------------------------------------------------------
// Looking at a checkpoint directory

const ownerPidOf = (name: string): number | undefined => {
  const match = /\.(\d+)\.[a-z0-9]+\.tmp-ckpt$/.exec(name)
  return match ? Number(match[1]) : undefined
}

export interface DirState {
  /** Final-name files that loaded and verified: path → global step. */
  readonly files: Map<string, number>
  /** Final-name files that did not load, with the error. */
  readonly broken: ReadonlyArray<{ readonly path: string; readonly error: string }>
  /** Temporary files, with their owner pid (undefined: not our pattern). */
  readonly temporaries: ReadonlyArray<{ readonly name: string; readonly pid: number | undefined }>
}

/** Loads every final-name file of `dir` (all checksums) and lists the temporary files. */
export const inspectDir = (dir: string): Promise<DirState> =>
  Effect.runPromise(
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const files = new Map<string, number>()
      const broken: Array<{ path: string; error: string }> = []
      const temporaries: Array<{ name: string; pid: number | undefined }> = []
      const names = fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []
      for (const name of names) {
        if (FileCheckpointIO.isTemporaryName(name)) {
          temporaries.push({ name, pid: ownerPidOf(name) })
          continue
        }
        const path = nodePath.join(dir, name)
        const loaded = yield* Effect.result(io.load(path))
        if (loaded._tag === "Failure") broken.push({ path, error: loaded.failure.message })
        else files.set(path, Option.match(loaded.success.meta, { onNone: () => -1, onSome: (m) => m.globalStep }))
      }
      return { files, broken, temporaries }
    }).pipe(Effect.provide(FileCheckpointIO.layerNode))
  )

/** Reads the ModelCheckpoint state saved in a checkpoint (bestKModels, bestModelPath, …). */
export const modelCheckpointState = (path: string): Promise<Record<string, unknown> | undefined> =>
  Effect.runPromise(
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      const loaded = yield* io.load(path, { weightsOnly: true })
      if (Option.isNone(loaded.meta)) return undefined
      const entry = Object.entries(loaded.meta.value.callbacks).find(([key]) => key.startsWith("ModelCheckpoint"))
      return entry?.[1] as Record<string, unknown> | undefined
    }).pipe(Effect.provide(FileCheckpointIO.layerNode), Effect.orElseSucceed(() => undefined))
  )

/**
 * A fresh directory under the system's temporary directory, or, with `memory`, under
 * /dev/shm where there is one (a tmpfs: fsync is free, for harnesses that model
 * durability themselves and only need the file system's semantics).
 */
export const makeTempDir = (prefix: string, options?: { readonly memory?: boolean }): string => {
  const base = options?.memory === true && fs.existsSync("/dev/shm") ? "/dev/shm" : process.env["TMPDIR"] ?? "/tmp"
  return fs.mkdtempSync(nodePath.join(fs.realpathSync(base), prefix))
}

export const removeDir = (dir: string) => fs.rmSync(dir, { recursive: true, force: true })

export const lastPattern = /^last(?:-v\d+)?\.ckpt$/
export const isTopK = (path: string) => {
  const name = nodePath.basename(path)
  return !lastPattern.test(name) && !name.startsWith("exception-")
}
