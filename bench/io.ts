/**
 * bench:io: FileCheckpointIO save and load of a 256 MB float32 checkpoint (checksums
 * on), as ratios of a raw write+fsync and a raw read of the same bytes on the same
 * disk, measured side by side in one run.
 *
 *   npm run bench:io [-- --mb 256 --repeats 7 --dir <dir> --json <file>]
 *
 * Ratios are throughput ratios (raw time ÷ our time): 1.0 means disk speed.
 * The raw read lands in a freshly allocated buffer, as a load must.
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

const { values } = parseArgs({
  options: {
    mb: { type: "string", default: "256" },
    tensors: { type: "string", default: "16" },
    repeats: { type: "string", default: "7" },
    dir: { type: "string" },
    json: { type: "string" }
  }
})

const totalBytes = Number(values.mb) * 1024 * 1024
const tensorCount = Number(values.tensors)
const repeats = Number(values.repeats)

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const makeCheckpoint = () => {
  const tensors: Record<string, Checkpoint.HostTensor> = {}
  const per = totalBytes / 4 / tensorCount
  for (let i = 0; i < tensorCount; i++) {
    const data = new Float32Array(per)
    for (let k = 0; k < per; k++) data[k] = Math.sin(i * per + k)
    tensors[`model/layer${i}/kernel`] = Checkpoint.tensor("F32", [per / 256, 256], data)
  }
  return Checkpoint.make({ tensors, meta: { epoch: 1, globalStep: 1000 } })
}

const rawWrite = async (file: string, ckpt: Checkpoint.Checkpoint) => {
  const handle = await fsp.open(file, "w")
  try {
    for (const t of Object.values(ckpt.tensors)) {
      await handle.write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))
    }
    await handle.sync()
  } finally {
    await handle.close()
  }
}

const rawRead = async (file: string) => {
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
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})

const time = async (f: () => Promise<unknown>) => {
  gc()
  const start = performance.now()
  await f()
  return (performance.now() - start) / 1000
}

const main = async () => {
  const dir = values.dir ?? (await fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-io-")))
  await fsp.mkdir(dir, { recursive: true })
  const ckpt = makeCheckpoint()
  const bytes = Checkpoint.byteSize(ckpt)
  const layer = FileCheckpointIO.layer.pipe(Layer.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)))
  const io = await Effect.runPromise(Effect.provide(CheckpointIO, layer))
  const rawFile = nodePath.join(dir, "raw.bin")
  const ckptFile = nodePath.join(dir, "bench.ckpt")
  const run = <A>(effect: Effect.Effect<A, unknown>) => Effect.runPromise(effect)

  // Warm-up: one of each, not counted.
  await rawWrite(rawFile, ckpt)
  await run(io.save(ckpt, ckptFile))
  await rawRead(rawFile)
  await run(io.load(ckptFile))

  const samples = { rawWrite: [] as Array<number>, save: [] as Array<number>, rawRead: [] as Array<number>, load: [] as Array<number> }
  for (let r = 0; r < repeats; r++) {
    // Alternate the order so that drift in the machine's load hits both sides.
    if (r % 2 === 0) {
      samples.rawWrite.push(await time(() => rawWrite(rawFile, ckpt)))
      samples.save.push(await time(() => run(io.save(ckpt, ckptFile))))
      samples.rawRead.push(await time(() => rawRead(rawFile)))
      samples.load.push(await time(() => run(io.load(ckptFile))))
    } else {
      samples.save.push(await time(() => run(io.save(ckpt, ckptFile))))
      samples.rawWrite.push(await time(() => rawWrite(rawFile, ckpt)))
      samples.load.push(await time(() => run(io.load(ckptFile))))
      samples.rawRead.push(await time(() => rawRead(rawFile)))
    }
  }
  await fsp.rm(rawFile, { force: true })
  await fsp.rm(ckptFile, { force: true })
  if (values.dir === undefined) await fsp.rm(dir, { recursive: true, force: true })

  const m = {
    rawWrite: median(samples.rawWrite),
    save: median(samples.save),
    rawRead: median(samples.rawRead),
    load: median(samples.load)
  }
  const result = { save_vs_raw: m.rawWrite / m.save, load_vs_raw: m.rawRead / m.load, bytes }
  const mbps = (s: number) => `${(bytes / s / 1e6).toFixed(0)} MB/s`
  console.log(`checkpoint: ${(bytes / 1048576).toFixed(0)} MiB in ${tensorCount} float32 tensors, ${repeats} repeats, medians`)
  console.log(`raw write+fsync  ${m.rawWrite.toFixed(3)} s  ${mbps(m.rawWrite)}`)
  console.log(`save (crc, fsync) ${m.save.toFixed(3)} s  ${mbps(m.save)}   save_vs_raw = ${result.save_vs_raw.toFixed(3)} (target >= 0.85)`)
  console.log(`raw read         ${m.rawRead.toFixed(3)} s  ${mbps(m.rawRead)}`)
  console.log(`load (crc)        ${m.load.toFixed(3)} s  ${mbps(m.load)}   load_vs_raw = ${result.load_vs_raw.toFixed(3)} (target >= 0.70)`)
  console.log(`spread: save ${samples.save.map((s) => s.toFixed(2)).join(" ")} | raw write ${samples.rawWrite.map((s) => s.toFixed(2)).join(" ")}`)
  console.log(`spread: load ${samples.load.map((s) => s.toFixed(2)).join(" ")} | raw read ${samples.rawRead.map((s) => s.toFixed(2)).join(" ")}`)
  if (values.json !== undefined) {
    await fsp.writeFile(values.json, JSON.stringify(result, null, 2) + "\n")
  }
}

await main()
