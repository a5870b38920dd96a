/**
 * bench:io: FileCheckpointIO save and load of a 256 MB float32 checkpoint (checksums
 * on), as ratios of a raw write+fsync, an atomic raw write and a raw read of the same
 * bytes on the same disk, and of torch.save / torch.load of the same tensors (when a
 * Python with torch is found, see bench/torch.ts), measured side by side in one run.
 *
 *   npm run bench:io [-- --mb 256 --tensors 16 --repeats 7 --dir <dir> --json <file> --python <python|none>]
 *
 * Ratios are throughput ratios (their time ÷ our time): 1.0 means disk speed (or
 * torch's speed). `--json` writes `save_vs_raw`, `save_vs_atomic`, `load_vs_raw`,
 * `save_vs_torch`, `load_vs_torch` (null without torch) and `bytes`.
 * The raw write hands the tensors' own memory to `writev` (up to 1024 tensors a
 * call), then fsyncs: the fastest plain way to put the same bytes on disk, whatever
 * the tensor count. The raw read lands in a freshly allocated buffer, as a load must.
 * Both reads find the file in the page cache (it was just written): they measure
 * the software path, not the device.
 *
 * `measureSaveLoad` is the measurement itself, for the suite (bench/suite.ts).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as nodePath from "node:path"
import { parseArgs } from "node:util"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import { findTorchPython, startTorch, type TorchPeer } from "./torch.ts"

export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** Element counts of `tensorCount` float32 tensors that add up to `totalBytes` (the last takes the remainder). */
const elementCounts = (totalBytes: number, tensorCount: number): Array<number> => {
  const total = Math.floor(totalBytes / 4)
  const per = Math.floor(total / tensorCount)
  return Array.from({ length: tensorCount }, (_, i) => (i === tensorCount - 1 ? total - per * (tensorCount - 1) : per))
}

// Not a constant fill (a file system or a device could treat zeros or repeats
// specially), but cheap: one period of a sine, copied, and one value per tensor changed.
const pattern = Float32Array.from({ length: 65521 }, (_, k) => Math.sin(k))

/**
 * A checkpoint of `tensorCount` float32 tensors, `totalBytes` in all, each tensor in
 * its own buffer (as staging makes them), named `model/layer<i>/kernel`; above
 * 100,000 tensors named `w<i>`, so that the header of 1,000,000 tensors (~90 MB)
 * stays under the format's 100 MB header cap.
 */
export const makeCheckpoint = (totalBytes: number, tensorCount: number): Checkpoint.Checkpoint => {
  const tensors: Record<string, Checkpoint.HostTensor> = {}
  elementCounts(totalBytes, tensorCount).forEach((count, i) => {
    const data = new Float32Array(count)
    for (let at = 0; at < count; at += pattern.length) data.set(pattern.subarray(0, Math.min(pattern.length, count - at)), at)
    if (count > 0) data[0] = i
    const shape = count % 256 === 0 ? [count / 256, 256] : [count]
    tensors[tensorCount > 100_000 ? `w${i}` : `model/layer${i}/kernel`] = Checkpoint.tensor("F32", shape, data)
  })
  return Checkpoint.make({ tensors, meta: { epoch: 1, globalStep: 1000 } })
}

const byteView = (t: Checkpoint.HostTensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)

/** Writes all of `buffers` at the file's current position (writev, finishing any short write). */
const writevFully = async (handle: fsp.FileHandle, buffers: ReadonlyArray<Uint8Array>) => {
  const { bytesWritten } = await handle.writev(buffers as Array<Uint8Array>)
  let skip = bytesWritten
  for (const b of buffers) {
    if (skip >= b.byteLength) {
      skip -= b.byteLength
      continue
    }
    let rest = b.subarray(skip)
    skip = 0
    while (rest.byteLength > 0) rest = rest.subarray((await handle.write(rest)).bytesWritten)
  }
}

const writeTensors = async (handle: fsp.FileHandle, ckpt: Checkpoint.Checkpoint) => {
  let batch: Array<Uint8Array> = []
  let batchBytes = 0
  for (const t of Object.values(ckpt.tensors)) {
    const bytes = byteView(t)
    // IOV_MAX is 1024; one call stays well under the 2 GiB a write may move.
    if (batch.length === 1024 || batchBytes + bytes.byteLength > 1 << 30) {
      await writevFully(handle, batch)
      batch = []
      batchBytes = 0
    }
    batch.push(bytes)
    batchBytes += bytes.byteLength
  }
  if (batch.length > 0) await writevFully(handle, batch)
}

/** The raw baseline for a save: the same bytes, straight from the tensors' memory, into the file (truncated), then fsync. */
export const rawWrite = async (file: string, ckpt: Checkpoint.Checkpoint): Promise<void> => {
  const handle = await fsp.open(file, "w")
  try {
    await writeTensors(handle, ckpt)
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/**
 * A second, context baseline: the same bytes written crash-safely with no format at
 * all: a new temporary file, fsync, rename over the previous file, fsync of the
 * directory. What any atomic replace costs on this disk (new blocks while the old
 * file still exists, then freeing the old file's blocks).
 */
export const rawAtomicWrite = async (file: string, ckpt: Checkpoint.Checkpoint): Promise<void> => {
  const tmp = `${file}.tmp`
  const handle = await fsp.open(tmp, "w")
  try {
    await writeTensors(handle, ckpt)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await fsp.rename(tmp, file)
  const dir = await fsp.open(nodePath.dirname(file), "r")
  try {
    await dir.sync()
  } finally {
    await dir.close()
  }
}

/** The raw baseline for a load: the whole file into one fresh buffer. */
export const rawRead = async (file: string): Promise<Uint8Array> => {
  const handle = await fsp.open(file, "r")
  try {
    const { size } = await handle.stat()
    const out = new Uint8Array(size)
    let done = 0
    while (done < size) {
      const { bytesRead } = await handle.read(out, done, size - done, done)
      if (bytesRead === 0) break
      done += bytesRead
    }
    return out
  } finally {
    await handle.close()
  }
}

// Collect garbage before each timed run (node --expose-gc), so that no side pays for
// the other's allocations.
export const gc: () => void = (globalThis as { gc?: () => void }).gc ?? (() => {})

/** Seconds taken by `f`, after a garbage collection. */
export const time = async (f: () => Promise<unknown>): Promise<number> => {
  gc()
  const start = performance.now()
  await f()
  return (performance.now() - start) / 1000
}

export interface SaveLoadOptions {
  readonly totalBytes: number
  readonly tensorCount: number
  readonly repeats: number
  /** Where the files go (created if missing; the files are removed afterwards). */
  readonly dir: string
  /** The Python for the torch side (see `findTorchPython`; `none`: no torch side). */
  readonly python?: string | undefined
}

/** The torch side: seconds per repeat (timed by Python itself), or why it did not run. */
export type TorchSamples =
  | { readonly skipped: string }
  | { readonly version: string; readonly save: Array<number>; readonly load: Array<number> }

/** Seconds per repeat of each side, in run order (the warm-up round is not included). */
export interface SaveLoadSamples {
  /** Tensor bytes (the payload both sides write and read). */
  readonly bytes: number
  readonly tensorCount: number
  readonly rawWrite: Array<number>
  /** The atomic raw write (see `rawAtomicWrite`). */
  readonly rawAtomic: Array<number>
  readonly save: Array<number>
  readonly rawRead: Array<number>
  readonly load: Array<number>
  readonly torch: TorchSamples
}

/**
 * FileCheckpointIO save and load (checksums on) against a raw write+fsync and a raw
 * read of the same tensors (and the atomic raw write, for context), interleaved: one
 * warm-up round, then `repeats` rounds, alternating which side goes first.
 */
export const measureSaveLoad = async (options: SaveLoadOptions): Promise<SaveLoadSamples> => {
  const { dir, repeats, tensorCount, totalBytes } = options
  await fsp.mkdir(dir, { recursive: true })
  const ckpt = makeCheckpoint(totalBytes, tensorCount)
  const bytes = Checkpoint.byteSize(ckpt)
  const layer = FileCheckpointIO.layer.pipe(Layer.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)))
  const io = await Effect.runPromise(Effect.provide(CheckpointIO, layer))
  const rawFile = nodePath.join(dir, "raw.bin")
  const ckptFile = nodePath.join(dir, "bench.ckpt")
  const atomicFile = nodePath.join(dir, "atomic.bin")
  const run = <A>(effect: Effect.Effect<A, unknown>) => Effect.runPromise(effect)

  // Warm-up: one of each, not counted.
  await rawWrite(rawFile, ckpt)
  await rawAtomicWrite(atomicFile, ckpt)
  await run(io.save(ckpt, ckptFile))
  await rawRead(rawFile)
  await run(io.load(ckptFile))

  // torch, when found: the same tensors (read from our file), its own warm-up round.
  const found = findTorchPython(options.python)
  const started = "python" in found ? await startTorch(found.python) : found
  const peer: TorchPeer | undefined = "call" in started ? started : undefined
  const torchFile = nodePath.join(dir, "bench.pt")
  const torchSave: Array<number> = []
  const torchLoad: Array<number> = []
  const torch = {
    save: async () => torchSave.push(Number((await peer!.call({ op: "save", path: torchFile }))["seconds"])),
    load: async () => torchLoad.push(Number((await peer!.call({ op: "load", path: torchFile }))["seconds"]))
  }
  if (peer !== undefined) {
    const prepared = await peer.call({ op: "prepare", source: ckptFile })
    if (prepared["bytes"] !== bytes) throw new Error(`peer_torch.py read ${String(prepared["bytes"])} bytes, expected ${bytes}`)
    await torch.save()
    await torch.load()
    torchSave.length = 0
    torchLoad.length = 0
  }

  const samples: SaveLoadSamples = {
    bytes,
    tensorCount,
    rawWrite: [],
    rawAtomic: [],
    save: [],
    rawRead: [],
    load: [],
    torch: peer === undefined
      ? { skipped: "skipped" in started ? started.skipped : "torch did not start" }
      : { version: peer.version, save: torchSave, load: torchLoad }
  }
  try {
    for (let r = 0; r < repeats; r++) {
      // Alternate the order so that drift in the machine's load hits both sides.
      if (r % 2 === 0) {
        samples.rawWrite.push(await time(() => rawWrite(rawFile, ckpt)))
        samples.save.push(await time(() => run(io.save(ckpt, ckptFile))))
        samples.rawAtomic.push(await time(() => rawAtomicWrite(atomicFile, ckpt)))
        samples.rawRead.push(await time(() => rawRead(rawFile)))
        samples.load.push(await time(() => run(io.load(ckptFile))))
        if (peer !== undefined) {
          await torch.save()
          await torch.load()
        }
      } else {
        if (peer !== undefined) {
          await torch.save()
          await torch.load()
        }
        samples.rawAtomic.push(await time(() => rawAtomicWrite(atomicFile, ckpt)))
        samples.save.push(await time(() => run(io.save(ckpt, ckptFile))))
        samples.rawWrite.push(await time(() => rawWrite(rawFile, ckpt)))
        samples.load.push(await time(() => run(io.load(ckptFile))))
        samples.rawRead.push(await time(() => rawRead(rawFile)))
      }
    }
  } finally {
    if (peer !== undefined) await peer.close()
    await fsp.rm(torchFile, { force: true })
    await fsp.rm(rawFile, { force: true })
    await fsp.rm(ckptFile, { force: true })
    await fsp.rm(atomicFile, { force: true })
  }
  return samples
}

const main = async () => {
  const { values } = parseArgs({
    options: {
      mb: { type: "string", default: "256" },
      tensors: { type: "string", default: "16" },
      repeats: { type: "string", default: "7" },
      dir: { type: "string" },
      json: { type: "string" },
      python: { type: "string", default: process.env["BENCH_PYTHON"] }
    }
  })
  const tensorCount = Number(values.tensors)
  const repeats = Number(values.repeats)
  const dir = values.dir ?? (await fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-io-")))
  const samples = await measureSaveLoad({
    totalBytes: Number(values.mb) * 1024 * 1024,
    tensorCount,
    repeats,
    dir,
    python: values.python
  })
  if (values.dir === undefined) await fsp.rm(dir, { recursive: true, force: true })

  const { bytes, torch } = samples
  const m = {
    rawWrite: median(samples.rawWrite),
    rawAtomic: median(samples.rawAtomic),
    save: median(samples.save),
    rawRead: median(samples.rawRead),
    load: median(samples.load)
  }
  const result = {
    save_vs_raw: m.rawWrite / m.save,
    save_vs_atomic: m.rawAtomic / m.save,
    load_vs_raw: m.rawRead / m.load,
    save_vs_torch: "skipped" in torch ? null : median(torch.save) / m.save,
    load_vs_torch: "skipped" in torch ? null : median(torch.load) / m.load,
    bytes
  }
  const mbps = (s: number) => `${(bytes / s / 1e6).toFixed(0)} MB/s`
  const spread = (xs: ReadonlyArray<number>) => xs.map((x) => x.toFixed(3)).join(" ")
  console.log(`checkpoint: ${(bytes / 1048576).toFixed(0)} MiB in ${tensorCount} float32 tensors, ${repeats} repeats, medians`)
  console.log(`raw write+fsync   ${m.rawWrite.toFixed(3)} s  ${mbps(m.rawWrite)}`)
  console.log(
    `raw write, atomic ${m.rawAtomic.toFixed(3)} s  ${mbps(m.rawAtomic)}   (new file + fsync + rename + dir fsync)`
  )
  console.log(
    `save (crc, fsync) ${m.save.toFixed(3)} s  ${mbps(m.save)}   save_vs_raw = ${result.save_vs_raw.toFixed(3)} (target >= 0.85), ` +
      `save_vs_atomic = ${result.save_vs_atomic.toFixed(3)} (target >= 0.95)`
  )
  console.log(`raw read          ${m.rawRead.toFixed(3)} s  ${mbps(m.rawRead)}`)
  console.log(`load (crc)        ${m.load.toFixed(3)} s  ${mbps(m.load)}   load_vs_raw = ${result.load_vs_raw.toFixed(3)} (target >= 0.85)`)
  if ("skipped" in torch) {
    console.log(`torch: skipped (${torch.skipped})`)
  } else {
    console.log(
      `torch ${torch.version}: save ${median(torch.save).toFixed(3)} s (save_vs_torch = ${result.save_vs_torch!.toFixed(3)}), ` +
        `load ${median(torch.load).toFixed(3)} s (load_vs_torch = ${result.load_vs_torch!.toFixed(3)}) (targets >= 1)`
    )
  }
  console.log(`spread: save ${spread(samples.save)} | raw write ${spread(samples.rawWrite)} | atomic ${spread(samples.rawAtomic)}`)
  console.log(`spread: load ${spread(samples.load)} | raw read ${spread(samples.rawRead)}`)
  if (!("skipped" in torch)) console.log(`spread: torch.save ${spread(torch.save)} | torch.load ${spread(torch.load)}`)
  if (values.json !== undefined) {
    await fsp.writeFile(values.json, JSON.stringify(result, null, 2) + "\n")
  }
}

if (import.meta.main) await main()
