/**
 * Issue 12.2 and 12.9: background save failures and retention errors reach
 * `ModelCheckpoint` and are handled by its `saveErrors` policy, never by poisoning an
 * unrelated save. Driven by the fake Trainer (no tfjs).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, FileSystem, Layer, Logger, Option } from "effect"
import * as posix from "node:path/posix"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import { CheckpointIO, type CheckpointIOShape, CheckpointStorageError } from "../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as MemoryCheckpointIO from "../src/MemoryCheckpointIO.ts"
import * as ModelCheckpoint from "../src/ModelCheckpoint.ts"
import { epochEnd, type FakeTrainer, fakeTrainer } from "./support/fakeTrainer.ts"

/** The memory store, failing the saves whose path ends with one of `failing`. */
const failingMemory = (files: Map<string, MemoryCheckpointIO.StoredFile>, failing: Set<string>) =>
  Effect.map(
    Effect.provideService(MemoryCheckpointIO.make, MemoryCheckpointIO.MemoryStore, { files }),
    (inner): CheckpointIOShape => ({
      ...inner,
      save: (checkpoint, path, options) =>
        [...failing].some((name) => path.endsWith(name))
          ? Effect.fail(new CheckpointStorageError({ operation: "save", path, reason: "NoSpace", cause: new Error("ENOSPC: injected") }))
          : inner.save(checkpoint, path, options)
    })
  )

/** An asynchronous pool over the failing memory store. */
const asyncOver = (base: CheckpointIOShape) =>
  AsyncCheckpointIO.make({ checksumWorker: false }).pipe(Effect.provideService(CheckpointIO, base))

const collect = () => {
  const logs: Array<string> = []
  const layer = Logger.layer([Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))])
  return { logs, layer }
}

/** One training step ending at `step` (everyNTrainSteps: 1 saves at each). */
const stepEnd = (cb: ModelCheckpoint.ModelCheckpoint, t: FakeTrainer, step: number) =>
  Effect.suspend(() => {
    t.globalStep = step
    return cb.onTrainBatchEnd(t, { loss: 1 / step }, step - 1)
  })

const names = (files: Map<string, unknown>, dir: string) =>
  [...files.keys()].filter((p) => posix.dirname(p) === dir).map((p) => posix.basename(p)).sort()

describe("ModelCheckpoint and failed saves", () => {
  it.effect("issue 12.2: a failed background save drops no healthy save (files for steps 1,3,4,5; the warning names step 2)", () => {
    const { layer, logs } = collect()
    return Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* asyncOver(yield* failingMemory(files, new Set(["step=2.ckpt"])))
      const cb = yield* ModelCheckpoint.make({ dirpath: "/m", everyNTrainSteps: 1, saveTopK: -1, saveErrors: "warn" })
      const t = fakeTrainer(io, () => [cb])
      yield* cb.setup(t, "fit")
      for (let step = 1; step <= 5; step++) {
        yield* stepEnd(cb, t, step)
        // The background save has finished (exists waits for it, and takes no failure).
        yield* io.exists(`/m/epoch=0-step=${step}.ckpt`)
      }
      yield* cb.onFitEnd(t)
      yield* io.flush
      assert.deepStrictEqual(names(files, "/m"), [1, 3, 4, 5].map((s) => `epoch=0-step=${s}.ckpt`))
      const warnings = logs.filter((l) => l.startsWith("Warn"))
      assert.strictEqual(warnings.length, 1, logs.join("\n"))
      assert.include(warnings[0]!, "/m/epoch=0-step=2.ckpt")
      assert.include(warnings[0]!, "NoSpace")
    }).pipe(Effect.provide(layer))
  })

  it.effect("issue 12.2: saveErrors stop fails at the next save event naming the failed file, and that event's save still happens", () =>
    Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* asyncOver(yield* failingMemory(files, new Set(["step=2.ckpt"])))
      const cb = yield* ModelCheckpoint.make({ dirpath: "/m", everyNTrainSteps: 1, saveTopK: -1, saveLast: true })
      const t = fakeTrainer(io, () => [cb])
      yield* cb.setup(t, "fit")
      yield* stepEnd(cb, t, 1)
      yield* stepEnd(cb, t, 2)
      yield* io.exists("/m/epoch=0-step=2.ckpt")
      const error = yield* Effect.flip(stepEnd(cb, t, 3))
      assert.strictEqual(error._tag, "BackgroundSaveFailed")
      assert.include(error.message, "/m/epoch=0-step=2.ckpt")
      yield* io.flush
      assert.deepStrictEqual(names(files, "/m"), ["epoch=0-step=1.ckpt", "epoch=0-step=3.ckpt", "last.ckpt"])
      assert.isFalse([...cb.bestKModels.keys()].some((p) => p.endsWith("step=2.ckpt")), "the failed file is not tracked")
    }))

  it.effect("issue 12.9: at the end of the fit, saveErrors warn takes the failures so the final flush does not fail the run", () => {
    const { layer, logs } = collect()
    return Effect.gen(function*() {
      for (const saveErrors of ["warn", "stop"] as const) {
        const files = new Map<string, MemoryCheckpointIO.StoredFile>()
        const io = yield* asyncOver(yield* failingMemory(files, new Set(["step=3.ckpt"])))
        const cb = yield* ModelCheckpoint.make({ dirpath: "/m", saveErrors })
        const t = fakeTrainer(io, () => [cb])
        yield* cb.setup(t, "fit")
        yield* epochEnd(cb, t, 0, 3, {})
        const end = yield* Effect.exit(cb.onFitEnd(t))
        if (saveErrors === "warn") {
          assert.strictEqual(end._tag, "Success")
          yield* io.flush // what the Trainer does next: nothing left to fail it
          assert.isTrue(logs.some((l) => l.startsWith("Warn") && l.includes("/m/epoch=0-step=3.ckpt")), logs.join("\n"))
          assert.isUndefined(cb.bestModelPath, "the failed file is forgotten")
        } else {
          assert.strictEqual(end._tag, "Failure")
          assert.include(String(end), "/m/epoch=0-step=3.ckpt")
        }
      }
    }).pipe(Effect.provide(layer))
  })

  it.effect("issue 12.9: a retention target that is a symlink to a directory does not abort a warn run; stop still stops", () => {
    const { layer, logs } = collect()
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "retention-" })
      const io = yield* FileCheckpointIO.make
      for (const saveErrors of ["warn", "stop"] as const) {
        const dir = `${root}/${saveErrors}`
        const cb = yield* ModelCheckpoint.make({ dirpath: dir, saveErrors })
        const t = fakeTrainer(io, () => [cb])
        yield* cb.setup(t, "fit")
        yield* epochEnd(cb, t, 0, 1, {})
        // Someone put a symlink to a directory where the checkpoint to rotate out was.
        yield* fs.makeDirectory(`${root}/${saveErrors}-target`)
        yield* fs.remove(`${dir}/epoch=0-step=1.ckpt`)
        yield* fs.symlink(`${root}/${saveErrors}-target`, `${dir}/epoch=0-step=1.ckpt`)
        const next = yield* Effect.exit(epochEnd(cb, t, 1, 2, {}))
        assert.isTrue(yield* fs.exists(`${dir}/epoch=1-step=2.ckpt`), "the new checkpoint is saved")
        if (saveErrors === "warn") {
          assert.strictEqual(next._tag, "Success", String(next))
          assert.strictEqual(cb.bestModelPath, `${dir}/epoch=1-step=2.ckpt`)
          assert.isTrue(logs.some((l) => l.startsWith("Warn") && l.includes("could not remove")), logs.join("\n"))
          yield* epochEnd(cb, t, 2, 3, {}) // and training goes on saving
          assert.isTrue(yield* fs.exists(`${dir}/epoch=2-step=3.ckpt`))
        } else {
          assert.strictEqual(next._tag, "Failure")
        }
      }
    }).pipe(Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, layer)))
  })

  it.effect("issue 12.9: \"saved\" is logged for an exception checkpoint only once it is committed", () => {
    const { layer, logs } = collect()
    return Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const io = yield* asyncOver(yield* failingMemory(files, new Set(["exception-epoch=0-step=2.ckpt"])))
      const cb = yield* ModelCheckpoint.make({ dirpath: "/m", saveOnException: true })
      const t = fakeTrainer(io, () => [cb])
      yield* cb.setup(t, "fit")
      yield* epochEnd(cb, t, 0, 1, {})
      t.globalStep = 2
      yield* cb.onException(t, new Error("boom"))
      assert.isFalse(logs.some((l) => l.includes("; saved ")), logs.join("\n"))
      assert.isTrue(
        logs.some((l) => l.startsWith("Warn") && l.includes("exception-epoch=0-step=2.ckpt could not be saved")),
        logs.join("\n")
      )
      assert.deepStrictEqual((yield* io.takeFailures).map((f) => posix.basename(f.path)), ["exception-epoch=0-step=2.ckpt"])
    }).pipe(Effect.provide(layer))
  })

  it.effect("issue 12.9: a top-k file committed just before a kill (no last.ckpt yet) is taken over on resume, not left untracked", () =>
    Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const memory = yield* Effect.provideService(MemoryCheckpointIO.make, MemoryCheckpointIO.MemoryStore, { files })
      let killed = false
      // The first run is killed at step 3, after its top-k file and before last.ckpt.
      const io: CheckpointIOShape = {
        ...memory,
        save: (c, p, o) =>
          !killed && p.endsWith("last.ckpt") && Option.getOrUndefined(c.meta)?.globalStep === 3
            ? Effect.andThen(Effect.sync(() => void (killed = true)), Effect.die(new Error("SIGKILL")))
            : memory.save(c, p, o)
      }
      const options: ModelCheckpoint.Options = { dirpath: "/m", monitor: "val_loss", saveTopK: 2, saveLast: true }
      const first = yield* ModelCheckpoint.make(options)
      const t1 = fakeTrainer(io, () => [first])
      yield* first.setup(t1, "fit")
      yield* epochEnd(first, t1, 0, 1, { val_loss: 5 })
      yield* epochEnd(first, t1, 1, 2, { val_loss: 4 })
      yield* Effect.exit(epochEnd(first, t1, 2, 3, { val_loss: 3 }))
      assert.isTrue(files.has("/m/epoch=2-step=3.ckpt"), "the top-k file was committed before the kill")

      // Resume from last.ckpt (step 2), as the Trainer does, and reach step 3 again.
      const resumed = yield* ModelCheckpoint.make(options)
      const t2 = fakeTrainer(io, () => [resumed])
      t2.resumedFrom = "/m/last.ckpt"
      yield* resumed.setup(t2, "fit")
      const meta = Option.getOrThrow((yield* io.load("/m/last.ckpt")).meta)
      yield* resumed.loadStateDict(meta.callbacks[resumed.stateKey]!)
      yield* resumed.onLoadCheckpoint(t2, meta)
      yield* epochEnd(resumed, t2, 2, 3, { val_loss: 3 })
      yield* epochEnd(resumed, t2, 3, 4, { val_loss: 2 })
      assert.deepStrictEqual([...resumed.bestKModels.keys()].sort(), ["/m/epoch=2-step=3.ckpt", "/m/epoch=3-step=4.ckpt"])
      // No `-v1` copy, and the file left by the kill is tracked (so rotation will handle it).
      assert.deepStrictEqual(names(files, "/m"), ["epoch=2-step=3.ckpt", "epoch=3-step=4.ckpt", "last.ckpt"])
    }))
})

describe("ModelCheckpoint: storage that cannot answer", () => {
  it.effect("issue 12.9: #forgetMissing no longer swallows every error: an exists that fails keeps its file tracked, with a warning, and the others are still checked", () => {
    const { layer, logs } = collect()
    return Effect.gen(function*() {
      const files = new Map<string, MemoryCheckpointIO.StoredFile>()
      const base = yield* failingMemory(files, new Set(["step=2.ckpt"]))
      let existsFails = false
      const flaky: CheckpointIOShape = {
        ...base,
        exists: (path) =>
          existsFails && path.endsWith("step=1.ckpt")
            ? Effect.fail(new CheckpointStorageError({ operation: "exists", path, reason: "IO", cause: new Error("EIO: injected") }))
            : base.exists(path)
      }
      const io = yield* asyncOver(flaky)
      const cb = yield* ModelCheckpoint.make({
        dirpath: "/m",
        monitor: "loss",
        mode: "min",
        everyNTrainSteps: 1,
        saveTopK: -1,
        saveErrors: "warn"
      })
      const t = fakeTrainer(io, () => [cb])
      yield* cb.setup(t, "fit")
      for (const step of [1, 2]) {
        t.callbackMetrics.set("loss", 1 / step)
        yield* stepEnd(cb, t, step)
        yield* io.exists(`/m/epoch=0-step=${step}.ckpt`)
      }
      assert.strictEqual(cb.bestKModels.size, 2)
      // Step 3's save event takes step 2's failure and checks what is still stored;
      // the store cannot say for step 1.
      existsFails = true
      t.callbackMetrics.set("loss", 1 / 3)
      yield* stepEnd(cb, t, 3)
      yield* io.flush
      const tracked = [...cb.bestKModels.keys()].map((p) => posix.basename(p)).sort()
      assert.deepStrictEqual(tracked, ["epoch=0-step=1.ckpt", "epoch=0-step=3.ckpt"], "step 2 forgotten, step 1 kept")
      assert.isTrue(
        logs.some((l) => l.startsWith("Warn") && l.includes("cannot tell whether /m/epoch=0-step=1.ckpt exists")),
        logs.join("\n")
      )
    }).pipe(Effect.provide(layer))
  })
})
