import { assert, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

// Issue 15: the main job (npm start) as a person uses it in a terminal, run as a child
// process: every failure is one line on stderr with exit code 1, and runs of
// different models do not mix.

const repo = path.resolve(import.meta.dirname, "..")

const mnist = (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const result = spawnSync(process.execPath, [path.join(repo, "examples", "mnist.ts"), ...args], {
    cwd: repo,
    encoding: "utf8",
    env: { ...process.env, ...env },
    timeout: 300_000
  })
  return { stdout: result.stdout, stderr: result.stderr, status: result.status }
}

/** The run failed with exit code 1 and exactly one line on stderr, matching `pattern`; no stack anywhere. */
const failsWithOneLine = (run: ReturnType<typeof mnist>, pattern: RegExp) => {
  const context = `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`
  assert.strictEqual(run.status, 1, context)
  const lines = run.stderr.split("\n").filter((l) => l.length > 0)
  assert.strictEqual(lines.length, 1, context)
  assert.match(lines[0]!, /^error: /, context)
  assert.match(lines[0]!, pattern, context)
  assert.notMatch(run.stdout + run.stderr, /^\s+at /m, "no stack lines")
  assert.notMatch(run.stdout, /USAGE|FLAGS/, "no help dump")
}

const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), "example-terminal-"))

describe("the main job in a terminal (issue 15)", () => {
  it("issue 15: each failure is one line (what, which file, what to do) with exit code 1, flags and environment checked before any work", () => {
    const root = tempDir()
    try {
      const wasm = ["--backend", "wasm", "--default-root-dir", root]
      failsWithOneLine(mnist([...wasm, "--ckpt-path", path.join(root, "missing.ckpt")]), /no checkpoint at .*missing\.ckpt; check the path/)
      const corrupt = path.join(root, "corrupt.ckpt")
      fs.writeFileSync(corrupt, Buffer.from("not a checkpoint at all, just some bytes"))
      failsWithOneLine(mnist([...wasm, "--ckpt-path", corrupt]), /checkpoint .*corrupt\.ckpt is corrupt: .*; .*effect-trainer verify/)

      // Refused before the device comes up: nothing on stdout.
      const early = [
        mnist(["--max-epochs", "-1"]),
        mnist(["--model", "transformer"]),
        mnist(["--default-root-dir", "/proc/x"]),
        mnist(["--default-root-dir", path.join(corrupt, "x")]),
        mnist(["--default-root-dir", "ftp://host/runs"]),
        mnist(["--default-root-dir", root], { EFFECT_TRAINER_BACKEND: "bogus" })
      ]
      const patterns = [
        /--max-epochs must be at least 1, got -1; see effect-trainer-mnist --help$/,
        /--model: "transformer"/,
        /\/proc\/x is on the virtual file system \/proc/,
        /corrupt\.ckpt is not a directory/,
        /ftp:\/\/host\/runs is a URL; only local directories and s3:\/\/bucket\/prefix are supported/,
        /EFFECT_TRAINER_BACKEND=bogus is not a backend; use one of auto, tensorflow, webgpu, wasm, cpu/
      ]
      early.forEach((run, i) => {
        failsWithOneLine(run, patterns[i]!)
        assert.strictEqual(run.stdout, "", "no work was done")
      })
      assert.notMatch(early[5]!.stderr, /--backend/, "the variable is blamed, not a flag never passed")
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  it(
    "issue 15: two models are two experiments; --ckpt-path last and best resume the right one, another model's checkpoint is refused",
    () => {
      const root = tempDir()
      try {
        const base = ["--backend", "wasm", "--default-root-dir", root]
        const cnn = mnist([...base, "--model", "cnn", "--max-epochs", "1"])
        assert.strictEqual(cnn.status, 0, cnn.stderr)
        const mlp = mnist([...base, "--max-epochs", "2"])
        assert.strictEqual(mlp.status, 0, mlp.stderr)
        // The end-of-fit lines: why it stopped, where everything is, all absolute.
        assert.match(mlp.stdout, /^fit stopped: maxEpochs=2 reached/m)
        assert.include(mlp.stdout, `last checkpoint: ${path.join(root, "mlp", "checkpoints", "last.ckpt")}\n`)
        assert.match(
          mlp.stdout,
          new RegExp(`^best checkpoint: ${root}/mlp/checkpoints/epoch=\\d-step=\\d+-val_acc=0\\.\\d{4}\\.ckpt$`, "m")
        )
        assert.include(mlp.stdout, `metrics: ${path.join(root, "mlp", "logs", "version_0", "metrics.csv")}`)
        assert.isTrue(fs.existsSync(path.join(root, "mlp", "logs", "version_0", "metrics.svg")))
        // Only test metrics in the test table.
        assert.match(mlp.stdout, /│ test_acc +│/)
        assert.notMatch(mlp.stdout, /│ (train|val)_/)

        // The default model is mlp: last resumes the MLP experiment, whatever ran since.
        const last = mnist([...base, "--ckpt-path", "last", "--max-epochs", "3"])
        assert.strictEqual(last.status, 0, last.stderr)
        assert.match(last.stdout + last.stderr, new RegExp(`resumed from ${root}/mlp/checkpoints/last\\.ckpt \\(epoch 2, step 250\\)`))
        assert.match(last.stdout, /^Epoch 2: /m)
        assert.notMatch(last.stdout, /^Epoch [01]: /m)
        const cnnLast = mnist([...base, "--model", "cnn", "--ckpt-path", "last", "--max-epochs", "1"])
        assert.strictEqual(cnnLast.status, 0, cnnLast.stderr)
        assert.match(
          cnnLast.stdout + cnnLast.stderr,
          new RegExp(`resumed from ${root}/cnn/checkpoints/last\\.ckpt \\(epoch 1, step 125\\)`)
        )
        assert.match(cnnLast.stdout, /^fit stopped: nothing left to train: the run is at epoch 1, maxEpochs=1/m)

        // best, in a new process: the best of the MLP experiment, as its last checkpoint recorded it.
        const bestName = /^best checkpoint: (.*)$/m.exec(last.stdout)![1]!
        const best = mnist([...base, "--ckpt-path", "best", "--max-epochs", "4"])
        assert.strictEqual(best.status, 0, best.stderr)
        assert.include(best.stdout + best.stderr, `resumed from ${bestName}`)

        // The CNN's checkpoint into the MLP: refused, naming the file and the hyperparameter.
        const cnnFile = path.join(root, "cnn", "checkpoints", "last.ckpt")
        failsWithOneLine(
          mnist([...base, "--ckpt-path", cnnFile]),
          new RegExp(`${cnnFile}: .*model: "cnn" in the checkpoint, "mlp" in this run`)
        )
      } finally {
        fs.rmSync(root, { recursive: true, force: true })
      }
    },
    600_000
  ) // six training processes: a hang watchdog, not a time limit
})
