/**
 * Crash consistency under `kill -9`: real child processes train and checkpoint
 * (`train-child.ts`: `ModelCheckpoint(saveLast, everyNTrainSteps, saveTopK 2)` through
 * `FileCheckpointIO`, or `AsyncCheckpointIO` over it) and are killed with SIGKILL at
 * seeded random moments: a delay after training starts, or the k-th storage
 * operation of the journal plus a short delay (which lands inside the save protocol).
 *
 * Trials run in chains over one directory: each child resumes (`ckptPath: "last"`)
 * where the killed one left off, and the last child of a chain runs to its end. After
 * every kill the directory is checked against the child's journal:
 *
 * 1. Integrity: every file under a final name loads and verifies (`FileCheckpointIO.load`,
 *    header and tensor checksums).
 * 2. Atomicity: each final name holds the content of its last committed save (a
 *    `save-end` in the journal), or of the save in flight when the kill came, or nothing
 *    when a remove was in flight (or it was never committed). No other file appears.
 * 3. Resume: the next child resumes from `last.ckpt` at exactly the step found on disk
 *    (a fresh start when there is none), and the last child of the chain continues to
 *    its `maxSteps` and commits `last.ckpt` there.
 * 4. Retention lost no committed checkpoint, defined as:
 *    a. a top-k file is removed only while at least min(k, top-k files ever committed
 *       in the directory) other top-k files are committed and not being removed, and
 *       the directory holds at least that many after the kill (so a rotation never
 *       deletes before its replacement is committed);
 *    b. `last.ckpt` is never older than the save event before the newest committed
 *       top-k file (the callback writes top-k, then last, at one save event, so a kill
 *       between the two leaves `last.ckpt` one event behind, never more).
 * 5. Temporary files: only `.…tmp-ckpt` names, each naming its writer's pid; after a
 *    child has committed a save, no temporary file of an earlier (dead) child is left
 *    (the first save into the directory removes them); a chain that ran to its end
 *    leaves none.
 *
 * Also checked, and reported as a known defect (not a failure, unless
 * `strictTracking`; see `retention.test.ts`): that the ModelCheckpoint state
 * saved in `last.ckpt` tracks no top-k file that is gone from the directory (today a
 * kill between a rotation's remove and the save of `last.ckpt` leaves one, so after the
 * resume `bestModelPath` / `ckptPath: "best"` can name a deleted checkpoint).
 */
import * as nodePath from "node:path"
import {
  type DirState,
  type Failure,
  inspectDir,
  isTopK,
  type JournalEntry,
  makeTempDir,
  modelCheckpointState,
  pool,
  prng,
  removeDir,
  type Result,
  runChild,
  signalAfter,
  trialSeed
} from "./support.ts"

export interface CrashOptions {
  /** SIGKILL trials (default 200). */
  readonly kills?: number
  readonly seed?: number
  /** Kills per chain (one directory); a completion run follows each chain (default 5). */
  readonly killsPerChain?: number
  /** Children at once (default 2). */
  readonly concurrency?: number
  /** Progress lines. */
  readonly log?: (line: string) => void
  /** Only this chain seed (to replay a failure). */
  readonly onlyChainSeed?: number
  /**
   * Count a `last.ckpt` whose saved state tracks a deleted top-k file as a failure
   * (not just a note): what `retention.test.ts` asks for.
   */
  readonly strictTracking?: boolean
}

const K = 2
/** Batches per epoch of `train-child.ts`'s data. */
const CHILD_BATCHES_PER_EPOCH = 8

interface PathState {
  committed: number | undefined
  pending: number | undefined
  removing: boolean
}

/**
 * The save events of the schedule: every `every` steps. As in Lightning 2.6, setting
 * `everyNTrainSteps` leaves `everyNEpochs` at 0, so an epoch's end is no save event
 * (issue 13.3); `perEpoch` only matters for a schedule without `every`.
 */
const isSaveEvent = (step: number, every: number, perEpoch: number) => step > 0 && (every >= 1 ? step % every === 0 : step % perEpoch === 0)
const previousEvent = (step: number, every: number, perEpoch: number): number | undefined => {
  for (let s = step - 1; s > 0; s--) if (isSaveEvent(s, every, perEpoch)) return s
  return undefined
}

interface Checked {
  readonly failures: Array<string>
  readonly state: DirState
  readonly everTopK: Set<string>
  readonly phase: string
  readonly dangling: number
}

/**
 * Checks a directory after a child ended against what its journal says, given the
 * directory's content before the child started (`prior`).
 */
export const checkAgainstJournal = async (
  dir: string,
  journal: ReadonlyArray<JournalEntry>,
  prior: ReadonlyMap<string, number>,
  everTopK: ReadonlySet<string>,
  options: {
    readonly every: number
    readonly batchesPerEpoch?: number
    /** Save events last.ckpt may lag behind the newest top-k file (default 1). */
    readonly lagEvents?: number
    readonly pid: number
    readonly earlierPids: ReadonlyArray<number>
    readonly finished: boolean
  }
): Promise<Checked> => {
  const failures: Array<string> = []
  const paths = new Map<string, PathState>()
  const stateOf = (p: string) => {
    const key = nodePath.resolve(p)
    let s = paths.get(key)
    if (s === undefined) {
      s = { committed: prior.get(key), pending: undefined, removing: false }
      paths.set(key, s)
    }
    return s
  }
  for (const p of prior.keys()) stateOf(p)
  const ever = new Set(everTopK)
  const liveTopK = () => [...paths.entries()].filter(([p, s]) => isTopK(p) && s.committed !== undefined && !s.removing)
  let phase = "between operations"
  let savedHere = false
  for (const entry of journal) {
    switch (entry.op) {
      case "save-begin":
        stateOf(entry.path).pending = entry.step
        phase = "inside a save"
        break
      case "save-end": {
        const s = stateOf(entry.path)
        s.committed = entry.step
        s.pending = undefined
        savedHere = true
        if (isTopK(entry.path)) ever.add(nodePath.resolve(entry.path))
        phase = "between operations"
        break
      }
      case "save-fail":
        stateOf(entry.path).pending = undefined
        phase = "between operations"
        break
      case "copy-begin":
        stateOf(entry.path).pending = stateOf(entry.source).committed
        phase = "inside a copy"
        break
      case "copy-end": {
        const s = stateOf(entry.path)
        s.committed = stateOf(entry.source).committed
        s.pending = undefined
        phase = "between operations"
        break
      }
      case "copy-fail":
        stateOf(entry.path).pending = undefined
        phase = "between operations"
        break
      case "remove-begin": {
        const s = stateOf(entry.path)
        if (isTopK(entry.path)) {
          const others = liveTopK().filter(([p]) => p !== nodePath.resolve(entry.path)).length
          if (others < Math.min(K, ever.size) && s.committed !== undefined) {
            failures.push(
              `retention: ${nodePath.basename(entry.path)} removed while only ${others} other top-k checkpoint(s) were committed ` +
                `(${Math.min(K, ever.size)} required)`
            )
          }
        }
        s.removing = true
        phase = "inside a remove"
        break
      }
      case "remove-end": {
        const s = stateOf(entry.path)
        s.committed = undefined
        s.removing = false
        phase = "between operations"
        break
      }
      case "remove-fail":
        stateOf(entry.path).removing = false
        phase = "between operations"
        break
      default:
        break
    }
  }

  const state = await inspectDir(dir)
  for (const { error, path } of state.broken) failures.push(`integrity: ${nodePath.basename(path)} does not load: ${error}`)
  const onDisk = new Map(state.files)
  for (const { path } of state.broken) onDisk.set(path, Number.NaN)
  for (const p of onDisk.keys()) stateOf(p)
  for (const [p, s] of paths) {
    const actual = onDisk.get(p)
    const allowed = new Set<number | undefined>([s.committed])
    if (s.pending !== undefined) allowed.add(s.pending)
    if (s.removing) allowed.add(undefined)
    if (!allowed.has(actual)) {
      const show = (v: number | undefined) => (v === undefined ? "absent" : Number.isNaN(v) ? "unreadable" : `step ${v}`)
      failures.push(
        `atomicity: ${nodePath.basename(p)} is ${show(actual)}, expected ${[...allowed].map(show).join(" or ")}`
      )
    }
  }

  // Retention (a): enough top-k files after the kill.
  const topKOnDisk = [...state.files.keys()].filter(isTopK)
  if (topKOnDisk.length < Math.min(K, ever.size)) {
    failures.push(`retention: ${topKOnDisk.length} top-k file(s) left, ${Math.min(K, ever.size)} committed before`)
  }
  // Retention (b): last.ckpt at most one save event behind the newest top-k file.
  const last = state.files.get(nodePath.join(dir, "last.ckpt"))
  const newestTopK = Math.max(-1, ...topKOnDisk.map((p) => state.files.get(p)!))
  if (newestTopK > 0) {
    let floor: number | undefined = newestTopK
    for (let k = 0; k < (options.lagEvents ?? 1) && floor !== undefined; k++) {
      floor = previousEvent(floor, options.every, options.batchesPerEpoch ?? CHILD_BATCHES_PER_EPOCH)
    }
    if (floor !== undefined && (last === undefined || last < floor)) {
      failures.push(
        `retention: last.ckpt is at ${last === undefined ? "nothing" : `step ${last}`}, more than ${options.lagEvents ?? 1} ` +
          `save event(s) behind the newest top-k checkpoint (step ${newestTopK})`
      )
    }
  }

  // Temporary files.
  for (const t of state.temporaries) {
    if (t.pid === undefined) failures.push(`temporary file ${t.name} names no pid`)
    else if (t.pid !== options.pid && !options.earlierPids.includes(t.pid)) {
      failures.push(`temporary file ${t.name} of pid ${t.pid}, which never wrote here`)
    } else if (t.pid !== options.pid && savedHere) {
      failures.push(`temporary file ${t.name} of a dead process (pid ${t.pid}) survived a later save`)
    }
  }
  if (options.finished && state.temporaries.length > 0) {
    failures.push(`a finished run left temporary files: ${state.temporaries.map((t) => t.name).join(", ")}`)
  }

  // Tracked-but-missing top-k files in the saved ModelCheckpoint state (a note).
  let dangling = 0
  if (last !== undefined) {
    const saved = await modelCheckpointState(nodePath.join(dir, "last.ckpt"))
    const tracked = saved?.["bestKModels"]
    if (typeof tracked === "object" && tracked !== null) {
      for (const p of Object.keys(tracked)) if (!state.files.has(nodePath.resolve(p))) dangling++
    }
  }
  return { failures, state, everTopK: ever, phase, dangling }
}

interface ChainReport {
  kills: number
  completions: number
  readonly failures: Array<Failure>
  readonly known: Array<Failure>
  readonly phases: Record<string, number>
  dangling: number
  resumed: number
  /** Kills that left a temporary file (each then checked to be swept by the next child's first save). */
  leftovers: number
}

const runChain = async (chainSeed: number, kills: number, log: (line: string) => void, strictTracking: boolean): Promise<ChainReport> => {
  const rng = prng(chainSeed)
  const io = rng.pick(["sync", "async"] as const)
  const saveLast = rng.pick(["true", "link"] as const)
  const every = rng.pick([1, 2, 3])
  const hidden = rng.pick([64, 256])
  const dir = makeTempDir("reliability-crash-")
  const report: ChainReport = { kills: 0, completions: 0, failures: [], known: [], phases: {}, dangling: 0, resumed: 0, leftovers: 0 }
  const fail = (link: number, message: string) =>
    report.failures.push({ seed: chainSeed, message: `[${io} io, saveLast ${saveLast}, every ${every}, child ${link}] ${message}` })
  const base = ["--dir", dir, "--io", io, "--every", String(every), "--save-last", saveLast, "--hidden", String(hidden), "--resume"]
  let prior = new Map<string, number>()
  let ever = new Set<string>()
  const pids: Array<number> = []
  try {
    for (let link = 0; link <= kills; link++) {
      const completion = link === kills
      const lastStep = prior.get(nodePath.join(dir, "last.ckpt"))
      const target = (lastStep ?? 0) + 2 * every + 1
      const byEvent = rng.chance(0.6)
      const delayMs = rng.range(0, 700)
      const eventIndex = rng.range(1, 30)
      const eventDelay = rng.pick(["now", "immediate", 1, 2, 4] as const)
      const args = completion ? [...base, "--max-steps", String(target)] : base
      let storageEvents = 0
      const run = await runChild(args, (entry, _i, child) => {
        if (completion) return
        if (entry.op === "fit-start" && !byEvent) signalAfter(child, "SIGKILL", delayMs)
        if (/-(begin|end)$/.test(entry.op) && byEvent && ++storageEvents === eventIndex) signalAfter(child, "SIGKILL", eventDelay)
      })
      const what = completion
        ? `completion run to step ${target}`
        : byEvent
        ? `kill at storage event ${eventIndex} + ${eventDelay}`
        : `kill ${delayMs} ms after start`
      if (run.timedOut) {
        fail(link, `${what}: the child hung (killed after the timeout)\n${run.output.slice(-800)}`)
        break
      }
      if (completion) {
        report.completions++
        if (run.code !== 0) fail(link, `${what}: exit code ${run.code} (${run.signal})\n${run.output.slice(-800)}`)
        const done = run.journal.find((e) => e.op === "done")
        if (done?.op !== "done" || done.step !== target) fail(link, `${what}: did not reach step ${target} (${JSON.stringify(done)})`)
      } else {
        if (run.signal !== "SIGKILL") {
          fail(link, `${what}: the child was not killed (exit code ${run.code}, signal ${run.signal})\n${run.output.slice(-800)}`)
        }
        report.kills++
      }
      // Resume: from last.ckpt at the step found on disk, or from scratch.
      const start = run.journal.find((e) => e.op === "fit-start")
      if (start?.op === "fit-start") {
        const expected = lastStep === undefined ? null : nodePath.join(dir, "last.ckpt")
        const from = start.resumedFrom === null ? null : nodePath.resolve(start.resumedFrom)
        if (from !== expected || start.step !== (lastStep ?? 0)) {
          fail(link, `${what}: resumed from ${from} at step ${start.step}, expected ${expected} at step ${lastStep ?? 0}`)
        }
        if (from !== null) report.resumed++
      } else if (completion) {
        fail(link, `${what}: never started training`)
      }
      const checked = await checkAgainstJournal(dir, run.journal, prior, ever, {
        every,
        pid: run.pid,
        earlierPids: pids,
        finished: completion
      })
      for (const message of checked.failures) fail(link, `${what}: ${message}`)
      if (completion) {
        const final = checked.state.files.get(nodePath.join(dir, "last.ckpt"))
        if (final !== target) fail(link, `${what}: last.ckpt is at step ${final}, expected ${target}`)
      } else {
        report.phases[checked.phase] = (report.phases[checked.phase] ?? 0) + 1
        if (checked.state.temporaries.some((t) => t.pid === run.pid)) report.leftovers++
      }
      if (checked.dangling > 0) {
        report.dangling++
        const message = `${what}: last.ckpt's saved state tracks ${checked.dangling} top-k file(s) no longer in the directory`
        if (strictTracking) fail(link, message)
        else report.known.push({ seed: chainSeed, message: `[${io} io, saveLast ${saveLast}, every ${every}, child ${link}] ${message}` })
        log(
          `chain ${chainSeed} child ${link} (${io} io, saveLast ${saveLast}): last.ckpt's state tracks ${checked.dangling} deleted top-k file(s)`
        )
      }
      prior = new Map([...checked.state.files].map(([p, s]) => [nodePath.resolve(p), s]))
      ever = checked.everTopK
      pids.push(run.pid)
      log(
        `chain ${chainSeed} child ${link}: ${what}; ${checked.phase}; ${checked.state.files.size} checkpoint(s), ${checked.failures.length} failure(s)`
      )
    }
  } finally {
    if (report.failures.length === 0) removeDir(dir)
    else log(`chain ${chainSeed}: kept ${dir} for inspection`)
  }
  return report
}

/** Runs the SIGKILL trials; see the module notes for what is checked. */
export const runCrashTrials = async (options: CrashOptions = {}): Promise<Result> => {
  const kills = options.kills ?? 200
  const perChain = options.killsPerChain ?? 5
  const seed = options.seed ?? 1
  const log = options.log ?? (() => {})
  const chains = Math.ceil(kills / perChain)
  const seeds = options.onlyChainSeed !== undefined
    ? [options.onlyChainSeed]
    : Array.from({ length: chains }, (_, i) => trialSeed(seed, i))
  const reports = await pool(
    seeds,
    options.concurrency ?? 2,
    (chainSeed, i) => runChain(chainSeed, Math.min(perChain, kills - i * perChain) || perChain, log, options.strictTracking ?? false)
  )
  const phases: Record<string, number> = {}
  for (const r of reports) for (const [k, v] of Object.entries(r.phases)) phases[`killed ${k}`] = (phases[`killed ${k}`] ?? 0) + v
  return {
    category: "crash (SIGKILL)",
    trials: reports.reduce((n, r) => n + r.kills, 0),
    failures: reports.flatMap((r) => r.failures),
    known: reports.flatMap((r) => r.known),
    notes: {
      chains: reports.length,
      "completion runs": reports.reduce((n, r) => n + r.completions, 0),
      "resumed from last": reports.reduce((n, r) => n + r.resumed, 0),
      ...phases,
      "kills leaving a temporary file (swept by the next start)": reports.reduce((n, r) => n + r.leftovers, 0),
      "last.ckpt state tracking a deleted top-k file": reports.reduce((n, r) => n + r.dangling, 0)
    }
  }
}
