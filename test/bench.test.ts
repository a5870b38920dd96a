import { assert, describe, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

// The benchmarks must keep running; their figures are for notes, never asserted here.
describe("benchmarks (smoke)", () => {
  it("bench:io runs on a small checkpoint and writes its JSON", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-smoke-"))
    try {
      const json = path.join(dir, "io.json")
      // No torch side here (its import alone takes seconds); bench-suite.test.ts drives it with a stand-in.
      const args = ["--mb", "4", "--tensors", "4", "--repeats", "1", "--dir", dir, "--json", json, "--python", "none"]
      execFileSync(process.execPath, ["--expose-gc", "bench/io.ts", ...args], { stdio: "pipe" })
      const result = JSON.parse(fs.readFileSync(json, "utf8")) as Record<string, number | null>
      assert.deepStrictEqual(
        Object.keys(result).sort(),
        ["bytes", "load_vs_raw", "load_vs_torch", "save_vs_atomic", "save_vs_raw", "save_vs_torch"]
      )
      assert.strictEqual(result["bytes"], 4 * 1024 * 1024)
      assert.isAbove(result["save_vs_raw"]!, 0)
      assert.isAbove(result["save_vs_atomic"]!, 0)
      assert.isAbove(result["load_vs_raw"]!, 0)
      assert.isNull(result["save_vs_torch"])
      assert.isNull(result["load_vs_torch"])
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("bench:async runs on a small checkpoint and writes its JSON", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-smoke-"))
    try {
      const json = path.join(dir, "async.json")
      execFileSync(process.execPath, [
        "--expose-gc",
        "bench/async.ts",
        "--mb",
        "8",
        "--tensors",
        "4",
        "--repeats",
        "1",
        "--dir",
        dir,
        "--json",
        json
      ], {
        stdio: "pipe"
      })
      const result = JSON.parse(fs.readFileSync(json, "utf8")) as Record<string, number>
      assert.deepStrictEqual(Object.keys(result).sort(), ["blocking_vs_sync", "step_slowdown"])
      assert.isAbove(result["blocking_vs_sync"]!, 0)
      assert.isAbove(result["step_slowdown"]!, 0)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("bench:trainer runs a few steps of both models and writes its JSON", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-smoke-"))
    try {
      const json = path.join(dir, "trainer.json")
      execFileSync(process.execPath, ["bench/trainer.ts", "--backend", "wasm", "--steps", "6", "--repeats", "1", "--json", json], {
        stdio: "pipe"
      })
      const result = JSON.parse(fs.readFileSync(json, "utf8")) as Record<string, number | string>
      assert.deepStrictEqual(Object.keys(result).sort(), ["backend", "cnn_vs_bare", "mlp_vs_bare"])
      assert.strictEqual(result["backend"], "wasm")
      assert.isAbove(result["mlp_vs_bare"] as number, 0)
      assert.isAbove(result["cnn_vs_bare"] as number, 0)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("bench:s3 runs on a small checkpoint against its own s3rver and writes its JSON", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-smoke-"))
    try {
      const json = path.join(dir, "s3.json")
      const args = ["--mb", "2", "--tensors", "4", "--repeats", "1", "--part-mb", "0.5", "--json", json]
      execFileSync(process.execPath, ["bench/s3.ts", ...args], { stdio: "pipe" })
      const result = JSON.parse(fs.readFileSync(json, "utf8")) as Record<string, number>
      assert.deepStrictEqual(Object.keys(result).sort(), ["bytes", "load_vs_get", "multipart_vs_put", "save_vs_put"])
      assert.isAbove(result["bytes"]!, 2 * 1024 * 1024)
      assert.isAbove(result["save_vs_put"]!, 0)
      assert.isAbove(result["load_vs_get"]!, 0)
      assert.isAbove(result["multipart_vs_put"]!, 0)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
