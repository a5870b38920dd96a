import { assert, describe, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

// The suite must keep running and keep its output's shape; its figures are never
// asserted here (targets are for reports, and this machine is shared and noisy).

interface Stat {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly n: number
  readonly samples: ReadonlyArray<number>
}

interface Ratio {
  readonly id: string
  readonly section: string
  readonly label: string
  readonly target: { readonly op: string; readonly value: number } | null
  readonly zeroAllowed: boolean
  readonly status: "ok" | "skipped" | "error"
  readonly reason?: string
  readonly ratio?: Stat
  readonly measured?: { readonly label: string; readonly unit: string; readonly stat: Stat }
  readonly baseline?: { readonly label: string; readonly unit: string; readonly stat: Stat }
  readonly met?: boolean | null
}

const isFinitePositive = (x: unknown) => typeof x === "number" && Number.isFinite(x) && x > 0

const assertStat = (s: Stat | undefined, where: string, zeroAllowed: boolean) => {
  assert.isDefined(s, where)
  assert.isAbove(s!.n, 0, `${where}: n`)
  assert.strictEqual(s!.samples.length, s!.n, `${where}: samples`)
  for (const x of [s!.median, s!.min, s!.max, ...s!.samples]) {
    assert.isTrue(
      Number.isFinite(x) && (zeroAllowed ? x >= 0 : x > 0),
      `${where}: ${x} is not a ${zeroAllowed ? "non-negative" : "positive"} finite number`
    )
  }
  assert.isTrue(s!.min <= s!.median && s!.median <= s!.max, `${where}: min <= median <= max`)
}

describe("bench suite (smoke)", () => {
  it("--quick writes latest.json and latest.md with a ratio or an explicit skip for every figure", () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), "bench-suite-smoke-"))
    try {
      execFileSync(process.execPath, ["bench/suite.ts", "--quick", "--out", out], { stdio: "pipe", timeout: 170_000 })
      const report = JSON.parse(fs.readFileSync(path.join(out, "latest.json"), "utf8")) as {
        schema: string
        mode: string
        seconds: number
        machine: Record<string, unknown>
        ratios: Array<Ratio>
        parts: Record<string, { seconds: number; result?: unknown; error?: string }>
      }
      assert.strictEqual(report.schema, "effect-trainer-bench/1")
      assert.strictEqual(report.mode, "quick")
      assert.isTrue(isFinitePositive(report.seconds))
      assert.isTrue(isFinitePositive(report.machine["cpus"]))
      assert.deepStrictEqual(
        Object.keys(report.parts).sort(),
        ["async", "io-count", "io-size", "peers", "trainer-cpu", "trainer-tensorflow", "trainer-wasm"]
      )
      for (const [name, part] of Object.entries(report.parts)) assert.isUndefined(part.error, `part ${name} failed`)

      const ids = report.ratios.map((r) => r.id)
      assert.strictEqual(new Set(ids).size, ids.length, "ratio ids are unique")
      for (const r of report.ratios) {
        assert.isString(r.label, r.id)
        assert.isString(r.section, r.id)
        if (r.status === "skipped") {
          assert.isTrue(typeof r.reason === "string" && r.reason.length > 0, `${r.id}: a skip says why`)
          continue
        }
        assert.strictEqual(r.status, "ok", `${r.id}: ${r.reason}`)
        assertStat(r.ratio, `${r.id} ratio`, r.zeroAllowed)
        assertStat(r.measured?.stat, `${r.id} measured`, r.zeroAllowed)
        assertStat(r.baseline?.stat, `${r.id} baseline`, false)
        assert.strictEqual(r.ratio!.n, r.measured!.stat.n, `${r.id}: one ratio per repeat`)
        if (r.target === null) assert.isNull(r.met, r.id)
        else assert.isBoolean(r.met, r.id)
      }

      const ok = (id: string) => {
        const r = report.ratios.find((x) => x.id === id)
        assert.isDefined(r, `missing ${id}`)
        assert.strictEqual(r!.status, "ok", `${id}: ${r!.reason}`)
      }
      const present = (id: string) => assert.isDefined(report.ratios.find((x) => x.id === id), `missing ${id}`)
      for (const mb of [4, 16]) for (const op of ["save", "load"]) ok(`io.size.${mb}MB.${op}_vs_raw`)
      for (const n of [1, 10, 100, 1000, 10000]) for (const op of ["save", "load"]) ok(`io.count.${n}.${op}_vs_raw`)
      for (const id of ["blocking_vs_sync", "background_vs_sync", "step_slowdown", "peak_rss_vs_size", "peak_arraybuffers_vs_size"]) {
        ok(`async.${id}`)
      }
      ok("trainer.wasm.mlp_vs_bare")
      ok("trainer.wasm.cnn_vs_bare")
      ok("trainer.cpu.mlp_vs_bare")
      for (const id of ["trainer.cpu.cnn_vs_bare", "trainer.tensorflow.mlp_vs_bare", "trainer.tensorflow.cnn_vs_bare"]) present(id)
      ok("peers.16MB_16t.save_vs_tfjs")
      ok("peers.16MB_16t.load_vs_tfjs")
      present("peers.16MB_16t.save_vs_torch")
      present("peers.16MB_16t.load_vs_torch")

      const md = fs.readFileSync(path.join(out, "latest.md"), "utf8")
      assert.include(md, "| Figure | Ratio | Spread |")
      for (const r of report.ratios) assert.include(md, r.label)
    } finally {
      fs.rmSync(out, { recursive: true, force: true })
    }
  }, 180_000)

  it("profile.ts profiles one save and prints its top self-time functions", () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), "bench-profile-smoke-"))
    try {
      const text = execFileSync(
        process.execPath,
        ["bench/profile.ts", "save", "--mb", "2", "--tensors", "4", "--repeats", "2", "--top", "5", "--out", out],
        { encoding: "utf8", stdio: "pipe", timeout: 60_000 }
      )
      assert.include(text, "save 2 MB / 4 tensors: median")
      assert.include(text, "self time by origin:")
      assert.include(text, "top self time by function:")
      assert.isTrue(fs.existsSync(path.join(out, "save.cpuprofile")))
    } finally {
      fs.rmSync(out, { recursive: true, force: true })
    }
  }, 90_000)

  // The torch side without torch: a stand-in module (standard library only) that
  // drives bench/peer_torch.py's protocol end to end.
  it("peers.ts drives peer_torch.py (with a stand-in torch module)", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-peers-smoke-"))
    try {
      try {
        execFileSync("python3", ["-c", "import pickle"], { stdio: "pipe" })
      } catch {
        return // no python3 here: the suite records the skip itself
      }
      const fake = path.join(dir, "fake", "torch")
      fs.mkdirSync(fake, { recursive: true })
      fs.writeFileSync(
        path.join(fake, "__init__.py"),
        [
          "import pickle",
          "__version__ = '0.0-stand-in'",
          "class _D:",
          "    def __init__(self, size): self.size = size",
          "float64, float32, float16, bfloat16 = _D(8), _D(4), _D(2), _D(2)",
          "int64, int32, int16, int8, uint8, bool = _D(8), _D(4), _D(2), _D(1), _D(1), _D(1)",
          "class _T:",
          "    def __init__(self, data, dtype, shape): self.data, self.dtype, self.shape = data, dtype, shape",
          "    def reshape(self, shape): return _T(self.data, self.dtype, list(shape))",
          "    def numel(self): return len(self.data) // self.dtype.size",
          "    def element_size(self): return self.dtype.size",
          "def frombuffer(buf, dtype): return _T(bytes(buf), dtype, [len(buf) // dtype.size])",
          "def empty(shape, dtype): return _T(b'', dtype, list(shape))",
          "def save(obj, f): pickle.dump({k: (v.data, v.shape) for k, v in obj.items()}, f)",
          "def load(path, map_location=None, weights_only=False):",
          "    with open(path, 'rb') as f: return pickle.load(f)",
          ""
        ].join("\n")
      )
      const json = path.join(dir, "peers.json")
      execFileSync(
        process.execPath,
        [
          "--expose-gc",
          "bench/peers.ts",
          "--mb",
          "2",
          "--tensors",
          "8",
          "--repeats",
          "2",
          "--dir",
          path.join(dir, "scratch"),
          "--json",
          json
        ],
        { stdio: "pipe", env: { ...process.env, PYTHONPATH: path.join(dir, "fake") }, timeout: 60_000 }
      )
      const result = JSON.parse(fs.readFileSync(json, "utf8")) as Record<string, number>
      assert.deepStrictEqual(Object.keys(result).sort(), ["bytes", "load_vs_tfjs", "load_vs_torch", "save_vs_tfjs", "save_vs_torch"])
      for (const key of ["load_vs_tfjs", "load_vs_torch", "save_vs_tfjs", "save_vs_torch"]) {
        assert.isTrue(isFinitePositive(result[key]), key)
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 90_000)
})
