/**
 * Worker thread of the corruption fuzzer (`fuzz.ts`): installs the allocation
 * tracker (it replaces global constructors, so it stays in this thread), runs the
 * cases, reports each case before it runs (for the watchdog) and the outcome at the end.
 */
import { parentPort, workerData } from "node:worker_threads"
import { type FuzzOptions, installAllocationTracker, runFuzzCases } from "./fuzz-cases.ts"

const { tracker } = installAllocationTracker()
const options = workerData as FuzzOptions
const outcome = await runFuzzCases(options, (report) => parentPort!.postMessage({ type: "case", report }), tracker)
parentPort!.postMessage({ type: "done", outcome })
