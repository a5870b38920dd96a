/**
 * bench/torch.ts: PyTorch as a peer of the benchmarks, through bench/peer_torch.py:
 * which Python has torch, and a driver for the Python side.
 *
 * `findTorchPython` looks for a Python that imports torch: the one asked for (a
 * `--python` flag or `BENCH_PYTHON`), else `python3` on PATH, then
 * `/usr/bin/python3` (where Debian's `python3-torch` installs it, while a pyenv
 * `python3` often comes first on PATH). `none` asks for no torch side.
 */
import { spawn, spawnSync } from "node:child_process"
import * as nodePath from "node:path"
import * as readline from "node:readline"

/** The default candidates, in order. */
export const pythonCandidates: ReadonlyArray<string> = ["python3", "/usr/bin/python3"]

/** A Python that imports torch, or why there is none (`asked`: a Python, `none`, or undefined for the search). */
export const findTorchPython = (asked?: string | undefined): { readonly python: string } | { readonly skipped: string } => {
  if (asked === "none") return { skipped: "no torch side asked for (--python none)" }
  const candidates = asked !== undefined ? [asked] : pythonCandidates
  for (const python of candidates) {
    const probe = spawnSync(python, ["-c", "import torch"], { stdio: "ignore", timeout: 60_000 })
    if (probe.status === 0) return { python }
  }
  return {
    skipped: `no Python with torch (tried ${candidates.join(", ")}; on Debian: apt-get install python3-torch)`
  }
}

/** A running peer_torch.py: its torch version, one request/answer at a time, and its end. */
export interface TorchPeer {
  readonly version: string
  readonly call: (message: Record<string, unknown>) => Promise<Record<string, unknown>>
  readonly close: () => Promise<void>
}

const torchScript = nodePath.join(import.meta.dirname, "peer_torch.py")

/** Starts bench/peer_torch.py on `python`; `skipped` says why there is none. */
export const startTorch = async (python: string): Promise<TorchPeer | { readonly skipped: string }> => {
  const child = spawn(python, [torchScript], { stdio: ["pipe", "pipe", "inherit"] })
  const spawned = new Promise<string | undefined>((resolve) => {
    child.once("spawn", () => resolve(undefined))
    child.once("error", (error) => resolve(`${python}: ${error.message}`))
  })
  const failure = await spawned
  if (failure !== undefined) return { skipped: `${python} is not available (${failure})` }
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, unknown>> => {
    const { done, value } = await lines.next()
    if (done === true) throw new Error("peer_torch.py ended without an answer")
    return JSON.parse(value as string) as Record<string, unknown>
  }
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const hello = await next().catch((error: Error) => ({ skipped: `peer_torch.py failed to start: ${error.message}` }))
  if ("skipped" in hello) {
    child.stdin.end()
    await exited
    return { skipped: String(hello["skipped"]) }
  }
  const call = async (message: Record<string, unknown>) => {
    child.stdin.write(JSON.stringify(message) + "\n")
    const answer = await next()
    if ("error" in answer) throw new Error(`peer_torch.py ${String(message["op"])}: ${String(answer["error"])}`)
    return answer
  }
  const close = async () => {
    child.stdin.end(JSON.stringify({ op: "quit" }) + "\n")
    await exited
  }
  return { version: String(hello["torch"]), call, close }
}
