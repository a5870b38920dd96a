/**
 * The corruption fuzzer (see `fuzz-cases.ts` for the mutations and the oracle), run
 * in a worker thread under a watchdog: a case that makes no progress for
 * `hangMs` is a hang, reported with its seed, and the worker is terminated.
 */
import { Worker } from "node:worker_threads"
import { type CaseReport, type FuzzOptions, type FuzzOutcome } from "./fuzz-cases.ts"
import type { Result } from "./support.ts"

export const runCorruptionFuzz = (options: FuzzOptions & { readonly hangMs?: number } = {}): Promise<Result> =>
  new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./fuzz-worker.ts", import.meta.url), { workerData: options })
    let current: CaseReport | undefined
    let lastProgress = Date.now()
    const hangMs = options.hangMs ?? 60_000
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress < hangMs) return
      clearInterval(watchdog)
      void worker.terminate()
      resolve({
        category: options.mode === "crafted" ? "untrusted input: absurd sizes" : "corruption fuzz",
        trials: (current?.index ?? 0) + 1,
        failures: [{ seed: current?.seed ?? -1, message: `${current?.kind}: no progress for ${hangMs} ms (a hang)` }],
        notes: {}
      })
    }, 500)
    worker.on("message", (message: { type: "case"; report: CaseReport } | { type: "done"; outcome: FuzzOutcome }) => {
      lastProgress = Date.now()
      if (message.type === "case") current = message.report
      else {
        clearInterval(watchdog)
        void worker.terminate()
        resolve({ category: options.mode === "crafted" ? "untrusted input: absurd sizes" : "corruption fuzz", ...message.outcome })
      }
    })
    worker.on("error", (error) => {
      clearInterval(watchdog)
      reject(error)
    })
  })
