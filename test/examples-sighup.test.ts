import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

describe("examples: SIGHUP", () => {
  it("issue 12.9: SIGHUP during the main job saves a checkpoint of the moment, flushes, and exits 130", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "example-mnist-sighup-"))
    try {
      const child = spawn(process.execPath, ["examples/mnist.ts", "--default-root-dir", root, "--backend", "wasm", "--max-epochs", "50"])
      let output = ""
      const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        const onData = (chunk: Buffer) => {
          output += chunk.toString()
          if (/Epoch 0:/.test(output) && !child.killed) child.kill("SIGHUP")
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", onData)
        child.on("exit", (code, signal) => resolve({ code, signal }))
      })
      assert.strictEqual(exit.signal, null, `killed by ${exit.signal}: ${output.slice(-500)}`)
      assert.strictEqual(exit.code, 130, output.slice(-500))
      // The exception checkpoint was saved in the background (AsyncCheckpointIO) and
      // flushed before exit: committed, no temporary file left.
      // One experiment per model (issue 15): <root>/mlp/checkpoints.
      const files = fs.readdirSync(path.join(root, "mlp", "checkpoints"))
      assert.isTrue(files.some((f) => f.startsWith("exception")), files.join(" "))
      assert.isTrue(files.includes("last.ckpt"), files.join(" "))
      assert.isFalse(files.some((f) => f.includes(".tmp-ckpt")), "no temporary file left")
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  }, 120_000)
})
