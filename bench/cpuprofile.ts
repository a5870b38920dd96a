/**
 * bench/cpuprofile.ts: the top self-time functions of a V8 CPU profile (a
 * `.cpuprofile` written by `node --cpu-prof`), to say where a benchmark's time goes.
 *
 *   node bench/cpuprofile.ts <file.cpuprofile> [--top 15]
 *
 * Self time is the sampled time spent in a function's own code (not its callees),
 * summed over all its call sites. `(idle)` is the main thread waiting (for I/O that
 * runs on libuv's threads, for a worker, for the disk), `(garbage collector)` is
 * V8's GC, `(program)` is native code V8 cannot attribute (the embedder, the
 * kernel's time in syscalls made from the main thread). The main thread only:
 * worker threads and libuv's pool are not sampled. Gotcha: explicit `gc()` calls
 * (the benchmarks make one before each timing) count as `(garbage collector)` too;
 * bench/profile.ts profiles one operation without them.
 */
import * as fs from "node:fs"
import * as nodePath from "node:path"
import { parseArgs } from "node:util"

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
}

interface Profile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly startTime: number
  readonly endTime: number
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

export interface SelfTime {
  /** `function  file:line`, or a V8 category such as `(idle)`. */
  readonly name: string
  readonly ms: number
  /** Share of the profile's wall time. */
  readonly share: number
}

const nameOf = (node: ProfileNode): string => {
  const { functionName, lineNumber, url } = node.callFrame
  if (url === "") {
    return functionName === ""
      ? "(anonymous native)"
      : functionName.startsWith("(")
      ? functionName
      : `${functionName} (native)`
  }
  const file = url.includes("/node_modules/")
    ? url.slice(url.lastIndexOf("/node_modules/") + 14)
    : url.startsWith("file://")
    ? nodePath.relative(process.cwd(), new URL(url).pathname)
    : url
  return `${functionName === "" ? "(anonymous)" : functionName}  ${file}:${lineNumber + 1}`
}

/** Self time per function of a profile, largest first. */
export const selfTimes = (profile: Profile): Array<SelfTime> => {
  const byId = new Map<number, string>()
  for (const node of profile.nodes) byId.set(node.id, nameOf(node))
  const totals = new Map<string, number>()
  // timeDeltas[i] is the time before samples[i]; attribute it to that sample.
  for (let i = 0; i < profile.samples.length; i++) {
    const name = byId.get(profile.samples[i]!) ?? "(unknown)"
    totals.set(name, (totals.get(name) ?? 0) + (profile.timeDeltas[i] ?? 0))
  }
  const wall = Math.max(1, profile.endTime - profile.startTime)
  return [...totals.entries()]
    .map(([name, us]) => ({ name, ms: us / 1000, share: us / wall }))
    .sort((a, b) => b.ms - a.ms)
}

/** Where a file's code comes from: its npm package, `src/`, `bench/`, `node:` internals, or a V8 category. */
const originOf = (node: ProfileNode): string => {
  const { functionName, url } = node.callFrame
  if (url === "") return functionName.startsWith("(") ? functionName : "(native)"
  if (url.startsWith("node:")) return "node: internals"
  const at = url.lastIndexOf("/node_modules/")
  if (at >= 0) {
    const parts = url.slice(at + 14).split("/")
    return parts[0]!.startsWith("@") ? `${parts[0]}/${parts[1]}` : parts[0]!
  }
  if (url.startsWith("wasm://")) return "(wasm)"
  const file = url.startsWith("file://") ? nodePath.relative(process.cwd(), new URL(url).pathname) : url
  return file.split("/")[0] === "src" || file.split("/")[0] === "bench" ? `${file.split("/")[0]}/` : file
}

/** Self time per origin (package, `src/`, `bench/`, V8 category), largest first. */
export const selfTimesByOrigin = (profile: Profile): Array<SelfTime> => {
  const byId = new Map<number, string>()
  for (const node of profile.nodes) byId.set(node.id, originOf(node))
  const totals = new Map<string, number>()
  for (let i = 0; i < profile.samples.length; i++) {
    const name = byId.get(profile.samples[i]!) ?? "(unknown)"
    totals.set(name, (totals.get(name) ?? 0) + (profile.timeDeltas[i] ?? 0))
  }
  const wall = Math.max(1, profile.endTime - profile.startTime)
  return [...totals.entries()].map(([name, us]) => ({ name, ms: us / 1000, share: us / wall })).sort((a, b) => b.ms - a.ms)
}

/** Reads a `.cpuprofile` and returns its `top` self-time entries and its wall time in ms. */
export const summarize = (
  file: string,
  top = 15
): { readonly wallMs: number; readonly top: Array<SelfTime>; readonly origins: Array<SelfTime> } => {
  const profile = JSON.parse(fs.readFileSync(file, "utf8")) as Profile
  return {
    wallMs: (profile.endTime - profile.startTime) / 1000,
    top: selfTimes(profile).slice(0, top),
    origins: selfTimesByOrigin(profile).slice(0, 8)
  }
}

/** The summary as text lines. */
export const format = (summary: ReturnType<typeof summarize>): Array<string> => {
  const line = (e: SelfTime) => `${e.ms.toFixed(0).padStart(8)} ms ${(e.share * 100).toFixed(1).padStart(5)}%  ${e.name}`
  return [
    `wall ${(summary.wallMs / 1000).toFixed(2)} s; self time by origin:`,
    ...summary.origins.map(line),
    "top self time by function:",
    ...summary.top.map(line)
  ]
}

if (import.meta.main) {
  const { positionals, values } = parseArgs({ allowPositionals: true, options: { top: { type: "string", default: "15" } } })
  for (const file of positionals) {
    console.log(file)
    for (const line of format(summarize(file, Number(values.top)))) console.log(line)
  }
}
