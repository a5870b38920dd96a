/**
 * bench/peers.ts: our save and load (FileCheckpointIO, checksums on) against other
 * libraries' own paths, on the same tensors, the same disk, in the same run.
 *
 *   node --expose-gc bench/peers.ts [--mb 256 --tensors 16 --repeats 5 --dir <dir> --python <python|none> --json <file>]
 *
 * - tfjs: TensorFlow.js's own saving path: `tf.io.encodeWeights` of the tensors
 *   (which gathers them into one new buffer), then a write of `weights.bin` and
 *   `model.json` (the weights manifest), each fsynced as ours is; loading reads both
 *   files and runs `tf.io.decodeWeights`. The tensors live on tfjs's `cpu` backend,
 *   where a tensor made from a Float32Array keeps that very array: the bytes are
 *   exactly the ones we save. Loading ends with tfjs tensors (disposed untimed), ours
 *   with host tensors. tfjs writes no checksum; we write and check one per tensor.
 * - torch: `torch.save` (with flush and fsync) and `torch.load` of the same tensors
 *   as a dict of torch tensors, run by `bench/peer_torch.py` in a python3 process
 *   started once and driven line by line, so its timings interleave with ours.
 *   The Python is the first of `python3` and `/usr/bin/python3` that imports torch
 *   (see bench/torch.ts); without one it prints one line and records a skip.
 *
 * Ratios are peer time ÷ our time: 1.0 or more means we are at least as fast.
 * Each round rotates which side goes first; garbage is collected before each timing.
 *
 * `measurePeers` is the measurement itself, for the suite (bench/suite.ts).
 */
import type * as tfType from "@tensorflow/tfjs"
import { Effect } from "effect"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as nodePath from "node:path"
import { parseArgs } from "node:util"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import { makeCheckpoint, median, rawRead, time } from "./io.ts"
import { findTorchPython, startTorch } from "./torch.ts"

export interface PeerOptions {
  readonly totalBytes: number
  readonly tensorCount: number
  readonly repeats: number
  /** Where the files go (created if missing; the files are removed afterwards). */
  readonly dir: string
  /** The Python for the torch side (default: the first of `python3`, `/usr/bin/python3` with torch; `none`: no torch side). */
  readonly python?: string | undefined
}

/** The torch side: its timings, or why it did not run. */
export type TorchSamples =
  | { readonly skipped: string }
  | { readonly version: string; readonly save: Array<number>; readonly load: Array<number>; readonly fileBytes: number }

/** Seconds per repeat of each side (the warm-up round is not included). */
export interface PeerSamples {
  readonly bytes: number
  readonly tensorCount: number
  readonly save: Array<number>
  readonly load: Array<number>
  readonly tfjsSave: Array<number>
  readonly tfjsLoad: Array<number>
  readonly tfjsFileBytes: number
  readonly ourFileBytes: number
  readonly torch: TorchSamples
}

// ---------------------------------------------------------------------------
// TensorFlow.js's own path

let tfPromise: Promise<typeof tfType> | undefined
/** tfjs on its `cpu` backend, imported once (the import takes a second or two). */
const loadTfjs = (): Promise<typeof tfType> =>
  tfPromise ??= (async () => {
    const tf = await import("@tensorflow/tfjs")
    if (!(await tf.setBackend("cpu"))) throw new Error("tfjs: the cpu backend did not come up")
    await tf.ready()
    return tf
  })()

const writeAndSync = async (file: string, data: Uint8Array | string) => {
  const handle = await fsp.open(file, "w")
  try {
    await handle.writeFile(data)
    await handle.sync()
  } finally {
    await handle.close()
  }
}

const tfjsSave = async (tf: typeof tfType, tensors: tfType.NamedTensorMap, dir: string) => {
  const { data, specs } = await tf.io.encodeWeights(tensors)
  const buffers = Array.isArray(data) ? data : [data]
  const weights = buffers.length === 1 ? new Uint8Array(buffers[0]!) : new Uint8Array(await new Blob(buffers).arrayBuffer())
  await writeAndSync(nodePath.join(dir, "weights.bin"), weights)
  const modelJson = { format: "weights-only", weightsManifest: [{ paths: ["weights.bin"], weights: specs }] }
  await writeAndSync(nodePath.join(dir, "model.json"), JSON.stringify(modelJson))
}

const tfjsLoad = async (tf: typeof tfType, dir: string) => {
  const manifest = JSON.parse(await fsp.readFile(nodePath.join(dir, "model.json"), "utf8")) as {
    weightsManifest: Array<{ paths: Array<string>; weights: Array<tfType.io.WeightsManifestEntry> }>
  }
  const group = manifest.weightsManifest[0]!
  const bytes = await rawRead(nodePath.join(dir, group.paths[0]!))
  return tf.io.decodeWeights(bytes.buffer as ArrayBuffer, group.weights)
}

// ---------------------------------------------------------------------------

/**
 * Save and load of one checkpoint by us, by tfjs and (when importable) by torch:
 * one warm-up round, then `repeats` rounds, rotating which side goes first.
 */
export const measurePeers = async (options: PeerOptions): Promise<PeerSamples> => {
  const { dir, repeats, tensorCount, totalBytes } = options
  const tf = await loadTfjs()
  await fsp.mkdir(nodePath.join(dir, "tfjs"), { recursive: true })
  const ckpt = makeCheckpoint(totalBytes, tensorCount)
  const bytes = Checkpoint.byteSize(ckpt)
  const named: tfType.NamedTensorMap = {}
  for (const [name, t] of Object.entries(ckpt.tensors)) named[name] = tf.tensor(t.data as Float32Array, [...t.shape], "float32")

  const io = await Effect.runPromise(Effect.provide(CheckpointIO, FileCheckpointIO.layerNode))
  const ourFile = nodePath.join(dir, "ours.ckpt")
  const tfjsDir = nodePath.join(dir, "tfjs")
  const torchFile = nodePath.join(dir, "torch.pt")

  const sides: Array<{ name: string; save: () => Promise<unknown>; load: () => Promise<unknown> }> = [
    { name: "ours", save: () => Effect.runPromise(io.save(ckpt, ourFile)), load: () => Effect.runPromise(io.load(ourFile)) },
    {
      name: "tfjs",
      save: () => tfjsSave(tf, named, tfjsDir),
      load: async () => tf.dispose(Object.values(await tfjsLoad(tf, tfjsDir)))
    }
  ]
  // Ours first, so that the torch side can read the tensors from our file.
  await sides[0]!.save()
  const found = findTorchPython(options.python)
  const torch = "python" in found ? await startTorch(found.python) : found
  const torchSeconds = { save: [] as Array<number>, load: [] as Array<number> }
  if ("call" in torch) {
    const peer = torch
    const prepared = await peer.call({ op: "prepare", source: ourFile })
    if (prepared["bytes"] !== bytes) throw new Error(`peer_torch.py read ${String(prepared["bytes"])} bytes, expected ${bytes}`)
    sides.push({
      name: "torch",
      save: async () => torchSeconds.save.push(Number((await peer.call({ op: "save", path: torchFile }))["seconds"])),
      load: async () => torchSeconds.load.push(Number((await peer.call({ op: "load", path: torchFile }))["seconds"]))
    })
  } else {
    console.log(`torch: skipped (${torch.skipped})`)
  }

  const seconds: Record<string, { save: Array<number>; load: Array<number> }> = {}
  for (const side of sides) seconds[side.name] = { save: [], load: [] }
  try {
    for (let r = -1; r < repeats; r++) {
      const order = sides.map((_, i) => sides[(i + Math.max(r, 0)) % sides.length]!)
      for (const phase of ["save", "load"] as const) {
        for (const side of order) {
          const s = await time(side[phase])
          if (r >= 0) seconds[side.name]![phase].push(s)
        }
      }
    }
  } finally {
    if ("call" in torch) await torch.close()
  }
  const tfjsFileBytes = (await fsp.stat(nodePath.join(tfjsDir, "weights.bin"))).size +
    (await fsp.stat(nodePath.join(tfjsDir, "model.json"))).size
  const ourFileBytes = (await fsp.stat(ourFile)).size
  // The Python side times itself (no process round trip in its figures); its warm-up round is dropped.
  const torchSamples: TorchSamples = "call" in torch
    ? {
      version: torch.version,
      save: torchSeconds.save.slice(1),
      load: torchSeconds.load.slice(1),
      fileBytes: (await fsp.stat(torchFile)).size
    }
    : torch
  tf.dispose(Object.values(named))
  await fsp.rm(ourFile, { force: true })
  await fsp.rm(tfjsDir, { recursive: true, force: true })
  await fsp.rm(torchFile, { force: true })
  return {
    bytes,
    tensorCount,
    save: seconds["ours"]!.save,
    load: seconds["ours"]!.load,
    tfjsSave: seconds["tfjs"]!.save,
    tfjsLoad: seconds["tfjs"]!.load,
    tfjsFileBytes,
    ourFileBytes,
    torch: torchSamples
  }
}

const main = async () => {
  const { values } = parseArgs({
    options: {
      mb: { type: "string", default: "256" },
      tensors: { type: "string", default: "16" },
      repeats: { type: "string", default: "5" },
      dir: { type: "string" },
      python: { type: "string", default: process.env["BENCH_PYTHON"] },
      json: { type: "string" }
    }
  })
  const dir = values.dir ?? (await fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-peers-")))
  const s = await measurePeers({
    totalBytes: Number(values.mb) * 1024 * 1024,
    tensorCount: Number(values.tensors),
    repeats: Number(values.repeats),
    dir,
    python: values.python
  })
  if (values.dir === undefined) await fsp.rm(dir, { recursive: true, force: true })
  const f = (xs: ReadonlyArray<number>) => `${median(xs).toFixed(3)} s (${xs.map((x) => x.toFixed(2)).join(" ")})`
  console.log(`checkpoint: ${(s.bytes / 1048576).toFixed(0)} MiB in ${s.tensorCount} float32 tensors, ${values.repeats} repeats, medians`)
  console.log(`ours save ${f(s.save)} | tfjs save ${f(s.tfjsSave)} | tfjs ÷ ours ${(median(s.tfjsSave) / median(s.save)).toFixed(3)}`)
  console.log(`ours load ${f(s.load)} | tfjs load ${f(s.tfjsLoad)} | tfjs ÷ ours ${(median(s.tfjsLoad) / median(s.load)).toFixed(3)}`)
  const result: Record<string, unknown> = {
    bytes: s.bytes,
    save_vs_tfjs: median(s.tfjsSave) / median(s.save),
    load_vs_tfjs: median(s.tfjsLoad) / median(s.load)
  }
  if ("skipped" in s.torch) {
    result["torch"] = { skipped: s.torch.skipped }
  } else {
    console.log(`torch ${s.torch.version}: save ${f(s.torch.save)} | load ${f(s.torch.load)}`)
    result["save_vs_torch"] = median(s.torch.save) / median(s.save)
    result["load_vs_torch"] = median(s.torch.load) / median(s.load)
  }
  if (values.json !== undefined) await fsp.writeFile(values.json, JSON.stringify(result, null, 2) + "\n")
}

if (import.meta.main) await main()
