/**
 * bench/profile.ts: a V8 CPU profile of one operation the suite measures, alone (no
 * baseline runs, no explicit `gc()` between runs), summarised: where the time of a
 * missed target goes.
 *
 *   node bench/profile.ts save    [--mb 256 --tensors 16 --repeats 7]
 *   node bench/profile.ts load    [--mb 256 --tensors 16 --repeats 7]
 *   node bench/profile.ts trainer [--backend cpu --model mlp --steps 20 --repeats 2]
 *                                 [--top 15 --out <dir for the .cpuprofile>]
 *
 * Runs the operation in a child `node --cpu-prof` and prints the median time per
 * operation, then the self time by origin (package, `src/`, V8's GC, idle) and by
 * function (see bench/cpuprofile.ts). The profile covers the whole child, module
 * loading and building the checkpoint included (they show as `node:` internals and
 * `bench/`); `--repeats` makes the operation dominate. Only the main thread is
 * sampled: time the main thread spends waiting for the disk or libuv's pool shows
 * as `(idle)`.
 */
import { spawnSync } from "node:child_process"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as nodePath from "node:path"
import { parseArgs } from "node:util"
import * as CpuProfile from "./cpuprofile.ts"

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    mb: { type: "string", default: "256" },
    tensors: { type: "string", default: "16" },
    repeats: { type: "string" },
    backend: { type: "string", default: "cpu" },
    model: { type: "string", default: "mlp" },
    steps: { type: "string", default: "20" },
    top: { type: "string", default: "15" },
    out: { type: "string" },
    child: { type: "boolean", default: false },
    dir: { type: "string" }
  }
})
const op = positionals[0]
if (op !== "save" && op !== "load" && op !== "trainer") {
  console.error("usage: node bench/profile.ts save|load|trainer [options] (see the header of bench/profile.ts)")
  process.exit(2)
}
const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const child = async () => {
  if (op === "trainer") {
    const { runTrainer } = await import("./trainer.ts")
    const model = values.model === "cnn" ? "cnn" : "mlp"
    const backend = values.backend === "wasm" || values.backend === "tensorflow" ? values.backend : "cpu"
    const s = await runTrainer(backend, { cases: [{ name: model, steps: Number(values.steps) }], repeats: Number(values.repeats ?? 2) })
    for (const c of s.cases) {
      console.log(
        `${backend} ${c.name}: Trainer.fit ÷ bare ${c.ratios.map((x) => x.toFixed(3)).join(" ")}; ` +
          `GC ms/step in the Trainer's window ${c.gcTrainerMsPerStep.map((x) => x.toFixed(1)).join(" ")}, ` +
          `in the bare loop's ${c.gcBareMsPerStep.map((x) => x.toFixed(1)).join(" ")}`
      )
    }
    return
  }
  const { Effect } = await import("effect")
  const { CheckpointIO } = await import("../src/CheckpointIO.ts")
  const FileCheckpointIO = await import("../src/FileCheckpointIO.ts")
  const { makeCheckpoint } = await import("./io.ts")
  const dir = values.dir!
  await fsp.mkdir(dir, { recursive: true })
  const ckpt = makeCheckpoint(Number(values.mb) * 1024 * 1024, Number(values.tensors))
  const io = await Effect.runPromise(Effect.provide(CheckpointIO, FileCheckpointIO.layerNode))
  const file = nodePath.join(dir, "profile.ckpt")
  await Effect.runPromise(io.save(ckpt, file))
  const times: Array<number> = []
  for (let r = 0; r < Number(values.repeats ?? 7); r++) {
    const start = performance.now()
    await Effect.runPromise(op === "save" ? io.save(ckpt, file) : io.load(file))
    times.push(performance.now() - start)
  }
  console.log(
    `${op} ${values.mb} MB / ${values.tensors} tensors: median ${median(times).toFixed(0)} ms ` +
      `(${times.map((x) => x.toFixed(0)).join(" ")})`
  )
}

const parent = async () => {
  const out = values.out ?? (await fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-profile-")))
  const dir = await fsp.mkdtemp(nodePath.join(os.tmpdir(), "bench-profile-files-"))
  const name = `${op}.cpuprofile`
  const args = process.argv.slice(2)
  const result = spawnSync(
    process.execPath,
    ["--cpu-prof", `--cpu-prof-dir=${out}`, `--cpu-prof-name=${name}`, import.meta.filename, ...args, "--child", "--dir", dir],
    { stdio: "inherit" }
  )
  await fsp.rm(dir, { recursive: true, force: true })
  if (result.status !== 0) process.exit(result.status ?? 1)
  const file = nodePath.join(out, name)
  console.log(file)
  for (const line of CpuProfile.format(CpuProfile.summarize(file, Number(values.top)))) console.log(line)
}

await (values.child ? child() : parent())
