import { assert, describe, it } from "@effect/vitest"
import { execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

// Every example runs here, so that none rots.
describe("examples", () => {
  it("train-iris trains, saves a checkpoint and reports test accuracy", () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "example-iris-"))
    try {
      const out = execFileSync(process.execPath, ["examples/train-iris.ts", "--max-epochs", "30", "--root", root, "--backend", "wasm"], {
        encoding: "utf8"
      })
      assert.match(out, /test accuracy: \d+\.\d%/)
      const accuracy = Number(/test accuracy: (\d+\.\d)%/.exec(out)![1])
      assert.isAbove(accuracy, 80)
      assert.isTrue(fs.existsSync(path.join(root, "final.ckpt")))
      assert.isTrue(fs.existsSync(path.join(root, "logs", "version_0", "metrics.csv")))
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  it("Ctrl-C during fit: onException, a clear message, exit code 130", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "example-sigint-"))
    try {
      const child = spawn(process.execPath, ["examples/train-iris.ts", "--max-epochs", "100000", "--root", root, "--backend", "wasm"])
      let output = ""
      const code = await new Promise<number | null>((resolve) => {
        const onData = (chunk: Buffer) => {
          output += chunk.toString()
          if (/Epoch 3:/.test(output) && !child.killed) child.kill("SIGINT")
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", onData)
        child.on("exit", (c) => resolve(c))
      })
      assert.strictEqual(code, 130, output.slice(-500))
      assert.match(output, /fit interrupted at epoch \d+, step \d+/)
      assert.notMatch(output, /test accuracy/)
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })
})
