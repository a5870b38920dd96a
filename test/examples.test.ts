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

  it("the main job (npm start): MNIST to >= 90% test accuracy, checkpoints, then a visible resume", () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "example-mnist-"))
    try {
      const first = execFileSync(process.execPath, ["examples/mnist.ts", "--default-root-dir", root, "--backend", "wasm"], {
        encoding: "utf8",
        stdio: "pipe"
      })
      const accuracy = Number(/test accuracy: (\d+\.\d+)%/.exec(first)![1])
      assert.isAtLeast(accuracy, 90, first.slice(-400))
      const checkpoints = fs.readdirSync(path.join(root, "mlp", "checkpoints")).sort()
      assert.include(checkpoints, "last.ckpt")
      assert.strictEqual(checkpoints.filter((f) => /^epoch=\d+-step=\d+-val_acc=0\.\d{4}\.ckpt$/.test(f)).length, 2, checkpoints.join(" "))
      const resumed = execFileSync(
        process.execPath,
        ["examples/mnist.ts", "--default-root-dir", root, "--backend", "wasm", "--ckpt-path", "last", "--max-epochs", "4"],
        { encoding: "utf8", stdio: "pipe" }
      )
      assert.match(resumed, /resumed from .*mlp\/checkpoints\/last\.ckpt \(epoch 3, step 375\)/)
      assert.match(resumed, /Epoch 3:/)
      assert.notMatch(resumed, /Epoch 0:/)
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  it("Ctrl-C during the main job saves a checkpoint of the moment and exits 130", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "example-mnist-sigint-"))
    try {
      const child = spawn(process.execPath, ["examples/mnist.ts", "--default-root-dir", root, "--backend", "wasm", "--max-epochs", "50"])
      let output = ""
      const code = await new Promise<number | null>((resolve) => {
        const onData = (chunk: Buffer) => {
          output += chunk.toString()
          if (/Epoch 0:/.test(output) && !child.killed) child.kill("SIGINT")
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", onData)
        child.on("exit", (c) => resolve(c))
      })
      assert.strictEqual(code, 130, output.slice(-500))
      assert.match(output, /resume with: npm start -- .*--ckpt-path last/)
      const files = fs.readdirSync(path.join(root, "mlp", "checkpoints"))
      assert.isTrue(files.some((f) => f.startsWith("exception")), files.join(" "))
      assert.isFalse(files.some((f) => f.includes(".tmp-ckpt")), "no temporary file left")
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })
})
