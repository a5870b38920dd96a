/**
 * Runs every reliability category and prints a summary table: what `npm run
 * test:reliability` (scripts/reliability.ts) runs with the full counts. The vitest
 * files in this folder run the same harnesses with small counts inside `npm test`.
 *
 * Everything is seeded: a failure prints its trial seed, and `--seed` reproduces a run.
 */
import { runCrashTrials } from "./crash.ts"
import { runCorruptionFuzz } from "./fuzz.ts"
import { runInterruptTrials } from "./interrupt.ts"
import { runPowerCutTrials } from "./powercut.ts"
import { runStorageFaults } from "./storage.ts"
import { formatFailures, type Result } from "./support.ts"
import { runFilenameFuzz, runPrototypeCases } from "./untrusted.ts"

export interface Counts {
  readonly kills: number
  readonly fuzzCases: number
  readonly filenameCases: number
  readonly powerCutRandomPerPoint: number
  readonly powerCutEvents: number
  readonly storagePositions: number
  readonly interrupts: number
  readonly interruptFollowUpEvery: number
}

/** The full run (`npm run test:reliability`). */
export const full: Counts = {
  kills: 200,
  fuzzCases: 10_000,
  filenameCases: 2_000,
  powerCutRandomPerPoint: 5,
  powerCutEvents: 8,
  storagePositions: 3,
  interrupts: 40,
  interruptFollowUpEvery: 1
}

/** The quick run (`--quick`), about what `npm test` runs. */
export const quick: Counts = {
  kills: 20,
  fuzzCases: 1_000,
  filenameCases: 200,
  powerCutRandomPerPoint: 1,
  powerCutEvents: 4,
  storagePositions: 1,
  interrupts: 4,
  interruptFollowUpEvery: 4
}

export const categories = ["crash", "powercut", "fuzz", "storage", "interrupt", "untrusted"] as const
export type Category = typeof categories[number]

export interface RunOptions {
  readonly counts: Counts
  readonly seed: number
  readonly only?: ReadonlyArray<Category> | undefined
  readonly log: (line: string) => void
  readonly verbose?: boolean | undefined
}

const timed = async (run: () => Promise<Result>) => {
  const started = Date.now()
  const out = await run()
  return { ...out, seconds: (Date.now() - started) / 1000 }
}

export const runAll = async (options: RunOptions): Promise<ReadonlyArray<Result & { readonly seconds: number }>> => {
  const { counts, log, seed } = options
  const want = (c: Category) => options.only === undefined || options.only.includes(c)
  const progress = options.verbose ? log : () => {}
  const results: Array<Result & { readonly seconds: number }> = []
  const step = async (name: Category, ...runs: ReadonlyArray<() => Promise<Result>>) => {
    if (!want(name)) return
    log(`running ${name} …`)
    for (const run of runs) results.push(await timed(run))
  }
  await step("crash", () => runCrashTrials({ kills: counts.kills, seed, log: progress }))
  await step("powercut", () =>
    runPowerCutTrials({
      seed,
      randomPerPoint: counts.powerCutRandomPerPoint,
      modelCheckpointEvents: counts.powerCutEvents,
      includePending: true,
      log: progress
    }))
  await step("fuzz", () => runCorruptionFuzz({ cases: counts.fuzzCases, seed }))
  await step("storage", () => runStorageFaults({ seed, positions: counts.storagePositions, log: progress }))
  await step(
    "interrupt",
    () => runInterruptTrials({ trials: counts.interrupts, seed, followUpEvery: counts.interruptFollowUpEvery, log: progress })
  )
  await step(
    "untrusted",
    () => runPrototypeCases(),
    () => runCorruptionFuzz({ mode: "crafted" }),
    () => runFilenameFuzz({ cases: counts.filenameCases, seed })
  )
  return results
}

/** The summary table, one row per category, then the notes and the failures. */
export const summary = (results: ReadonlyArray<Result & { readonly seconds: number }>): string => {
  const rows = results.map((
    r
  ) => [r.category, String(r.trials), String(r.failures.length), String(r.known?.length ?? 0), r.seconds.toFixed(1)])
  const header = ["category", "trials run", "failures found", "known defects (pending fix)", "seconds"]
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  const total = results.reduce((n, r) => n + r.failures.length, 0)
  const out = [
    line(header),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...rows.map(line),
    widths.map((w) => "-".repeat(w)).join("  "),
    line([
      "total",
      String(results.reduce((n, r) => n + r.trials, 0)),
      String(total),
      String(results.reduce((n, r) => n + (r.known?.length ?? 0), 0)),
      results.reduce((n, r) => n + r.seconds, 0).toFixed(1)
    ]),
    ""
  ]
  for (const r of results) {
    const notes = Object.entries(r.notes)
    if (notes.length === 0) continue
    out.push(`${r.category}:`)
    for (const [k, v] of notes) out.push(`  ${k}: ${v}`)
  }
  if (results.some((r) => (r.known?.length ?? 0) > 0)) {
    out.push("", "KNOWN DEFECTS (proposed fixes and pending tests: the tests in test/reliability):")
    for (const r of results) if ((r.known?.length ?? 0) > 0) out.push(formatFailures(r, 5, "known"))
  }
  if (total > 0) {
    out.push("", "FAILURES (each with the seed of its trial):")
    for (const r of results) if (r.failures.length > 0) out.push(formatFailures(r, 20))
  }
  return out.join("\n")
}
