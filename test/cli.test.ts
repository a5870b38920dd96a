import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointCorrupt, CheckpointIO } from "../src/CheckpointIO.ts"
import * as cli from "../src/cli.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as Plot from "../src/Plot.ts"

// The effect-trainer command, run as a user runs it (a child process on src/cli.ts),
// over checkpoints written by FileCheckpointIO.

const repo = path.resolve(import.meta.dirname, "..")

const run = (args: ReadonlyArray<string>) => {
  const result = spawnSync(process.execPath, [path.join(repo, "src", "cli.ts"), ...args], { cwd: repo, encoding: "utf8", timeout: 60_000 })
  return { stdout: result.stdout, stderr: result.stderr, status: result.status }
}

const record = (scale: number, hyperParameters: Record<string, string | number> = { model: "mlp" }) =>
  Checkpoint.make({
    tensors: {
      "model/dense/kernel": Checkpoint.tensor("F32", [2, 3], new Float32Array([1, 2, 3, 4, 5, 6].map((v) => v * scale))),
      "model/dense/bias": Checkpoint.tensor("F32", [3], new Float32Array([0, 0, 0]))
    },
    meta: { epoch: 2, globalStep: 30, hyperParameters }
  })

const save = (dir: string, name: string, checkpoint: Checkpoint.Checkpoint) =>
  Effect.runPromise(
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      yield* io.save(checkpoint, path.join(dir, name))
    }).pipe(Effect.provide(FileCheckpointIO.layerNode))
  )

const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), "cli-test-"))

describe("effect-trainer (src/cli.ts)", () => {
  it("issue 15: inspect shows tensors with dtype, shape and bytes, the training state, the hyperparameters and verified checksums", async () => {
    const dir = tempDir()
    try {
      await save(dir, "a.ckpt", record(1))
      const out = run(["inspect", path.join(dir, "a.ckpt")])
      assert.strictEqual(out.status, 0, out.stderr)
      assert.match(out.stdout, /checksums: verified \(header and 2 tensors\)/)
      assert.match(out.stdout, /training state: epoch 2, global step 30/)
      assert.match(out.stdout, /hyperparameters: model="mlp"/)
      assert.match(out.stdout, /model\/dense\/kernel\s+F32\s+\[2,3\]\s+24 B/)
      assert.match(out.stdout, /model\/dense\/bias\s+F32\s+\[3\]\s+12 B/)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("issue 15: verify exits 0 only when every checkpoint under a directory is intact; diff names the tensors that differ", async () => {
    const dir = tempDir()
    try {
      fs.mkdirSync(path.join(dir, "mlp"))
      await save(dir, "a.ckpt", record(1))
      await save(path.join(dir, "mlp"), "b.ckpt", record(2))
      const intact = run(["verify", dir])
      assert.strictEqual(intact.status, 0, intact.stdout + intact.stderr)
      assert.match(intact.stdout, /2 of 2 checkpoints intact/)

      const differ = run(["diff", path.join(dir, "a.ckpt"), path.join(dir, "mlp", "b.ckpt")])
      assert.strictEqual(differ.status, 1)
      assert.match(differ.stdout, /model\/dense\/kernel: 6\/6 values differ, max \|a-b\| 6\.00/)
      assert.notMatch(differ.stdout, /model\/dense\/bias/)
      assert.match(differ.stdout, /1 of 2 tensors differ/)

      // One flipped byte in a tensor: verify fails, naming the file.
      const file = path.join(dir, "mlp", "b.ckpt")
      const bytes = fs.readFileSync(file)
      bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff
      fs.writeFileSync(file, bytes)
      const broken = run(["verify", dir])
      assert.strictEqual(broken.status, 1)
      assert.match(broken.stdout, /FAILED .*b\.ckpt: .*corrupt/)
      assert.match(broken.stdout, /1 of 2 checkpoints intact/)

      const missing = run(["inspect", path.join(dir, "nope.ckpt")])
      assert.strictEqual(missing.status, 1)
      assert.deepStrictEqual(missing.stderr.trim().split("\n").length, 1, missing.stderr)
      assert.match(missing.stderr, /^error: .*nope\.ckpt/)
      const badFlag = run(["verify", "--bogus", dir])
      assert.strictEqual(badFlag.status, 1)
      assert.strictEqual(badFlag.stdout, "", "no help dump on a bad flag")
      assert.match(badFlag.stderr.trim(), /^error: .*--bogus.*; see effect-trainer verify --help$/)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("issue 15: plot writes an SVG of the curves next to metrics.csv", () => {
    const dir = tempDir()
    try {
      const csv = path.join(dir, "metrics.csv")
      fs.writeFileSync(
        csv,
        "epoch,step,loss,train_loss,val_acc,val_loss\n0,1,2.3,2.3,,\n0,2,1.9,1.9,,\n0,2,,,0.6,1.5\n1,3,1.2,1.2,,\n1,4,0.9,0.9,,\n1,4,,,0.8,0.9\n"
      )
      const out = run(["plot", csv])
      assert.strictEqual(out.status, 0, out.stderr)
      const svgPath = path.join(dir, Plot.svgFileName)
      assert.strictEqual(out.stdout.trim(), svgPath)
      const svg = fs.readFileSync(svgPath, "utf8")
      assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
      for (const name of ["train_loss", "val_loss", "val_acc"]) assert.include(svg, `<title>${name}</title>`)
      // The Trainer's loss duplicates train_loss: left out.
      assert.notInclude(svg, "<title>loss</title>")
      assert.include(svg, `data-kind="loss"`)
      assert.include(svg, `data-kind="accuracy"`)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("issue 15: a failure is one line (what, which file, what to do) and exit code 1; an interruption is 130", () => {
    const corrupt = Cause.fail(new CheckpointCorrupt({ path: "/runs/mlp/last.ckpt", reason: "header checksum mismatch" }))
    const line = cli.describeFailure(corrupt)
    assert.notInclude(line, "\n")
    assert.match(line, /^error: checkpoint \/runs\/mlp\/last\.ckpt is corrupt: header checksum mismatch; .*verify/)
    assert.strictEqual(cli.exitCodeOf(Exit.failCause(corrupt)), 1)
    assert.strictEqual(cli.exitCodeOf(Exit.interrupt(1)), 130)
    assert.strictEqual(cli.exitCodeOf(Exit.succeed(1)), 0)
    assert.strictEqual(cli.describeFailure(Cause.die(new Error("line one\n  line two"))), "error: line one line two")
  })
})
