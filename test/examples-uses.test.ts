import { assert, describe, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type { Checkpoint } from "../src/Checkpoint.ts"
import { CheckpointIO } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"

// The examples of each use (custom IO, async IO, storage in tests, a custom checkpoint
// callback, reading a checkpoint from Python) run here as child processes, as a user
// would run them, so that none rots.

const repo = fileURLToPath(new URL("..", import.meta.url))

const tempDir = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), `examples-uses-${prefix}-`))

interface Run {
  readonly stdout: string
  readonly stderr: string
  readonly status: number | null
}

const spawn = (command: string, args: ReadonlyArray<string>, cwd = repo): Run => {
  const result = spawnSync(command, args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, EFFECT_TRAINER_BACKEND: "wasm" },
    timeout: 60_000
  })
  return { stdout: result.stdout, stderr: result.stderr, status: result.status }
}

/** Runs an example with Node (the Node running the tests: 24, which runs .ts directly); it must exit 0. */
const example = (file: string, args: ReadonlyArray<string> = [], cwd = repo): string => {
  const run = spawn(process.execPath, [path.join(repo, "examples", file), ...args], cwd)
  assert.strictEqual(run.status, 0, `${file} exited with ${run.status}\n${run.stdout}\n${run.stderr}`)
  return run.stdout
}

/** The value after `label` on its line. */
const field = (out: string, label: string): string => {
  const line = out.split("\n").find((l) => l.startsWith(label))
  assert.isDefined(line, `no line starting with "${label}" in:\n${out}`)
  return line!.slice(label.length)
}

/** `save=5 load=1 …` as numbers. */
const counts = (out: string): Record<string, number> =>
  Object.fromEntries(
    field(out, "custom IO saw: ").split(" ").map((kv) => {
      const [k, v] = kv.split("=")
      return [k!, Number(v)]
    })
  )

const load = (file: string): Promise<Checkpoint> =>
  Effect.runPromise(
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      return yield* io.load(file)
    }).pipe(Effect.provide(FileCheckpointIO.layerNode))
  )

const metaOf = (checkpoint: Checkpoint) => Option.getOrThrow(checkpoint.meta)

describe("examples of each use", () => {
  it("evaluate-best: test with ckptPath \"best\", then loadFromCheckpoint (strict and non-strict)", () => {
    const root = tempDir("evaluate")
    try {
      const out = example("evaluate-best.ts", ["--root", root, "--max-epochs", "3"])
      const best = field(out, "best: ").split(" ")[0]!
      assert.match(best, /^epoch=\d-step=\d+\.ckpt$/)
      assert.include(fs.readdirSync(path.join(root, "checkpoints")), best)
      assert.isAbove(Number(field(out, "test_acc of the best checkpoint: ")), 0.5)
      assert.strictEqual(field(out, "loadFromCheckpoint gives the tested weights: "), "true")
      assert.match(field(out, "strict: "), /^WeightsMismatch: .*missing key\(s\): model\/head\/kernel, model\/head\/bias/)
      assert.strictEqual(field(out, "non-strict missing: "), "model/head/kernel, model/head/bias")
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  it("custom-io-trainer: every storage call of the Trainer and ModelCheckpoint goes through the custom IO", async () => {
    const root = tempDir("trainer")
    try {
      const out = example("custom-io-trainer.ts", ["--root", root, "--max-epochs", "2"])
      const seen = counts(out)
      // Each call printed a line, and was counted once.
      for (const op of ["save", "load", "exists", "list", "remove", "copy", "flush"]) {
        assert.strictEqual(out.split("\n").filter((l) => l.startsWith(`[io] ${op} `)).length, seen[op], op)
      }
      // Two epochs: an epoch checkpoint and last.ckpt each time, then final.ckpt.
      assert.isAtLeast(seen["save"]!, 5)
      assert.strictEqual(seen["load"], 1)
      assert.isAtLeast(seen["list"]!, 1) // ModelCheckpoint lists its directory at setup
      assert.isAtLeast(seen["remove"]!, 1) // and rotates epoch 0 out through the store
      assert.isAtLeast(seen["flush"]!, 1) // the Trainer flushes at the end of fit
      // What the store removed is gone; what it kept is what is on disk.
      for (const line of out.split("\n").filter((l) => l.startsWith("[io] remove "))) {
        assert.isFalse(fs.existsSync(line.slice("[io] remove ".length)), line)
      }
      const kept = field(out, "kept by ModelCheckpoint: ").split(", ")
      assert.deepStrictEqual(kept, fs.readdirSync(path.join(root, "checkpoints")).sort())
      assert.include(kept, "last.ckpt")
      // The final checkpoint, read back here independently of the example.
      const final = await load(path.join(root, "final.ckpt"))
      assert.strictEqual(metaOf(final).globalStep, 12) // 90 rows in batches of 16: 6 steps an epoch
      assert.strictEqual(metaOf(final).epoch, 2)
      assert.include(Object.keys(final.tensors), "model/hidden/kernel")
      assert.match(out, new RegExp(`loaded .*final\\.ckpt: epoch 2, step 12, ${Object.keys(final.tensors).length} tensors`))
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  it("custom-io-strategy: the strategy's memory store serves every Trainer on it; nothing touches the disk", () => {
    const cwd = tempDir("strategy")
    try {
      const out = example("custom-io-strategy.ts", [], cwd)
      assert.strictEqual(field(out, "strategy has a custom CheckpointIO: "), "true")
      assert.strictEqual(field(out, "the Trainer uses the strategy's: "), "true")
      assert.strictEqual(field(out, "resumed from "), "ckpts/last.ckpt and trained to step 18")
      const stored = out.split("\n").filter((l) => l.startsWith("stored: ")).map((l) => l.split(" ")[1])
      assert.deepStrictEqual(stored, ["ckpts/epoch=2-step=18.ckpt", "ckpts/last.ckpt", "final.ckpt"])
      assert.match(field(out, "both at once: "), /^TrainerConfigError: .*both to the Trainer \(plugins\) and to the strategy/)
      const seen = counts(out)
      assert.strictEqual(out.split("\n").filter((l) => l.startsWith("[io] save ")).length, seen["save"])
      assert.strictEqual(seen["load"], 1) // the resume
      // The whole run happened in memory: the working directory is still empty.
      assert.deepStrictEqual(fs.readdirSync(cwd), [])
    } finally {
      fs.rmSync(cwd, { recursive: true, force: true })
    }
  })

  it("async-io: save returns before the write, flush waits, and the pool's guarantees hold", () => {
    const root = tempDir("async")
    try {
      const out = example("async-io.ts", ["--root", root])
      // Part 1: over the file store.
      assert.match(out, /ms {2}save returned; big\.ckpt on disk: no\n/)
      assert.match(out, /ms {2}flush returned; big\.ckpt on disk: yes\n/)
      assert.include(out, "written value: 1.5 (the caller's array now holds 0)")
      assert.strictEqual(fs.statSync(path.join(root, "big.ckpt")).size > 64 * 1024 * 1024, true)
      // Part 2: over the custom store, in the order the lines were printed.
      const part2 = out.slice(out.indexOf("Part 2"))
      const events = [...part2.matchAll(/^ *(\d+) ms {2}(.*)$/gm)].map((m) => ({ ms: Number(m[1]), text: m[2]! }))
      const at = (text: string) => {
        const index = events.findIndex((e) => e.text.startsWith(text))
        assert.notStrictEqual(index, -1, `no event "${text}" in:\n${part2}`)
        return index
      }
      const ms = (text: string) => events[at(text)]!.ms
      // save returns before the store commits; a load of that path waits for it.
      assert.isBelow(at("save a.ckpt returned"), at("[store] committed a.ckpt"))
      assert.isBelow(at("[store] committed a.ckpt"), at("load a.ckpt returned epoch 1"))
      // maxPending 2: b and c are taken at once, d waits until b's 200 ms write is done.
      assert.isBelow(at("save c.ckpt returned"), at("[store] committed b.ckpt"))
      assert.isBelow(at("[store] committed b.ckpt"), at("save d.ckpt returned"))
      assert.isAtLeast(ms("save d.ckpt returned") - ms("[store] writing b.ckpt"), 190)
      // flush waits for every queued save.
      assert.isBelow(at("[store] committed d.ckpt"), at("flush returned"))
      // A failed background save: reported by flush, naming the file and the reason, once.
      assert.match(events[at("flush failed: ")]!.text, /BackgroundSaveFailed: .*readonly\/e\.ckpt.*PermissionDenied/)
      assert.isBelow(at("flush failed: "), at("flush again: ok"))
      // Closing the scope writes what is still queued.
      assert.isBelow(at("[store] committed z.ckpt"), at("scope closed"))
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  it("schedules: EarlyStopping, a schedule, accumulation and minEpochs; a resume inside a window is bit-identical", () => {
    const out = example("schedules.ts")
    assert.match(out, /straight: 5 epochs, 15 optimizer steps/)
    assert.match(out, /early stopping: stopped epoch 4/)
    assert.match(out, /stopped at step 4, inside an accumulation window/)
    assert.match(out, /resumed from inside an accumulation window: bit-identical weights/)
  })

  it("memory-io-in-tests: the memory store, a damaged file, and a disk that fills up at the rename", () => {
    const out = example("memory-io-in-tests.ts")
    assert.strictEqual(out.split("\n").filter((l) => l.startsWith("ok - ")).length, 3, out)
    assert.strictEqual(field(out, "  stored: "), "ckpts/epoch-002.ckpt, ckpts/epoch-003.ckpt")
    assert.match(out, /CheckpointCorrupt: .*epoch-007\.ckpt.*fails its checksum/)
    assert.match(out, /CheckpointStorageError \(operation save, reason NoSpace\)/)
    // The write protocol, as the fault-injecting file system saw it: the temporary file
    // is written and fsynced before the rename that failed.
    const steps = field(out, "  the save's steps: ").split(", ")
    for (const [before, after] of [["open", "write"], ["write", "sync"], ["sync", "rename"]] as const) {
      assert.isBelow(steps.indexOf(before), steps.lastIndexOf(after), `${before} before ${after}: ${steps}`)
    }
    assert.strictEqual(field(out, "  directory after the failure: "), "model.ckpt")
  })

  it("custom-checkpoint-callback: saves every 3 steps, keeps the newest 2 and the one resumed from", async () => {
    const root = tempDir("callback")
    try {
      const out = example("custom-checkpoint-callback.ts", ["--root", root])
      // Checkpoint callbacks run after the others, whatever order they were given in.
      assert.strictEqual(field(out, "run order: "), "PrintEpoch, EveryNSteps, ModelCheckpoint")
      assert.strictEqual(field(out, "checkpoint callbacks: "), "EveryNSteps, ModelCheckpoint")
      assert.strictEqual(field(out, "steps/ after 2 epochs: "), "step=000009.ckpt, step=000012.ckpt")
      assert.strictEqual(field(out, "resumed from "), "step=000012.ckpt, trained to step 18")
      const after = field(out, "steps/ after the resumed run: ")
      assert.strictEqual(after, "step=000012.ckpt, step=000015.ckpt, step=000018.ckpt")
      assert.strictEqual(after, fs.readdirSync(path.join(root, "steps")).sort().join(", "))
      const newest = await load(path.join(root, "steps", "step=000018.ckpt"))
      assert.strictEqual(metaOf(newest).globalStep, 18)
      // ModelCheckpoint alongside: the one best file, named from its score.
      const best = fs.readdirSync(path.join(root, "best"))
      assert.strictEqual(best.length, 1)
      const [name, score] = field(out, "best by val_acc: ").split(" ")
      assert.strictEqual(best[0], name)
      assert.include(name!, `val_acc=${Number(score!.slice(1, -1)).toFixed(3)}`)
    } finally {
      fs.rmSync(root, { recursive: true, force: true })
    }
  })

  // python3 with numpy is on the machines this project builds on (STACK.md); where it
  // is not, these tests fail with the reason rather than silently not running.
  describe("read_checkpoint.py (python3 with numpy)", () => {
    it("python3 with numpy is there", () => {
      const probe = spawnSync("python3", ["-c", "import numpy"], { encoding: "utf8" })
      assert.strictEqual(probe.status, 0, `python3 -c "import numpy" failed: ${probe.stderr ?? probe.error}`)
    })
    const python = (args: ReadonlyArray<string>) => spawn("python3", [path.join(repo, "examples", "read_checkpoint.py"), ...args])

    it("reads back every tensor write-for-python wrote, checksums verified", () => {
      const dir = tempDir("python")
      try {
        const file = path.join(dir, "for-python.ckpt")
        const written = example("write-for-python.ts", ["--out", file])
        const expected = JSON.parse(field(written, "expected: "))
        const run = python([file, "--json"])
        assert.strictEqual(run.status, 0, run.stderr)
        const read = JSON.parse(run.stdout)
        assert.strictEqual(read.checksums, "ok")
        assert.deepStrictEqual(read.tensors, expected.tensors)
        assert.strictEqual(read.meta.epoch, expected.epoch)
        assert.strictEqual(read.meta.globalStep, expected.globalStep)
        assert.deepStrictEqual(read.extra, { written_by: "examples/write-for-python.ts" })
        // The summary form runs too.
        const summary = python([file])
        assert.strictEqual(summary.status, 0, summary.stderr)
        assert.include(summary.stdout, "11 tensors, every checksum ok")
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })

    it("reads a checkpoint of a training run: the same tensors as effect-trainer loads", async () => {
      const root = tempDir("python-iris")
      try {
        example("train-iris.ts", ["--max-epochs", "2", "--root", root, "--backend", "wasm"])
        const file = path.join(root, "final.ckpt")
        const run = python([file, "--json"])
        assert.strictEqual(run.status, 0, run.stderr)
        const read = JSON.parse(run.stdout) as {
          tensors: Record<string, { dtype: string; shape: Array<number>; values: Array<number> }>
          meta: { epoch: number; globalStep: number }
        }
        const loaded = await load(file)
        assert.deepStrictEqual(Object.keys(read.tensors).sort(), Object.keys(loaded.tensors).sort())
        for (const [name, t] of Object.entries(loaded.tensors)) {
          assert.strictEqual(read.tensors[name]!.dtype, t.dtype, name)
          assert.deepStrictEqual(read.tensors[name]!.shape, [...t.shape], name)
          assert.deepStrictEqual(read.tensors[name]!.values, Array.from(t.data as ArrayLike<number>).slice(0, 8), name)
        }
        assert.deepStrictEqual(read.tensors["model/hidden/kernel"]!.shape, [4, 16])
        assert.deepStrictEqual(read.tensors["model/out/kernel"]!.shape, [16, 3])
        assert.strictEqual(read.meta.globalStep, metaOf(loaded).globalStep)
        assert.strictEqual(read.meta.epoch, metaOf(loaded).epoch)
      } finally {
        fs.rmSync(root, { recursive: true, force: true })
      }
    })

    it("refuses damaged files: a tensor byte, a header digit", () => {
      const dir = tempDir("python-damaged")
      try {
        const file = path.join(dir, "for-python.ckpt")
        example("write-for-python.ts", ["--out", file])
        const bytes = fs.readFileSync(file)

        const data = Buffer.from(bytes)
        data[data.length - 1]! ^= 0x01 // the last tensor's last byte
        fs.writeFileSync(file, data)
        const tensor = python([file])
        assert.strictEqual(tensor.status, 1)
        assert.match(tensor.stderr, /corrupt: tensor ".*" fails its checksum/)

        // The global step, inside the meta JSON in the header: still valid JSON, wrong value.
        const header = Buffer.from(bytes)
        const at = header.indexOf("\\\"globalStep\\\":42")
        assert.isAbove(at, 0)
        header.write("\\\"globalStep\\\":43", at)
        fs.writeFileSync(file, header)
        const digit = python([file])
        assert.strictEqual(digit.status, 1)
        assert.match(digit.stderr, /corrupt: the header fails its checksum/)
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })
  })
})
