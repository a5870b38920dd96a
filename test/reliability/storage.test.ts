/**
 * Pending (needs the ModelCheckpoint option `saveErrors: "stop" | "warn"`): on a storage
 * error, training stops with the typed error (`"stop"`, the default and today's
 * behaviour, covered by storage.test.ts) or goes on with a warning (`"warn"`), and in
 * that case the callback tracks only checkpoints that are in storage.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Effect, Exit, FileSystem, Layer, Logger } from "effect"
import * as nodeFs from "node:fs"
import * as AsyncCheckpointIO from "../../src/AsyncCheckpointIO.ts"
import { CheckpointIO } from "../../src/CheckpointIO.ts"
import * as Device from "../../src/Device.ts"
import { FaultInjector, type FaultPoint } from "../../src/FaultyFileSystem.ts"
import * as FaultyFileSystem from "../../src/FaultyFileSystem.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import * as Strategy from "../../src/Strategy.ts"
import * as Trainer from "../../src/Trainer.ts"
import { irisClassifier, irisData } from "../support/iris.ts"
import { inspectDir } from "./support.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)
const devices = Strategy.singleDevice().pipe(Layer.provideMerge(Device.layer("wasm")), Layer.provideMerge(node))

describe("ModelCheckpoint saveErrors", () => {
  it.effect("an invalid value is a configuration error", () =>
    Effect.gen(function*() {
      const made = yield* Effect.exit(ModelCheckpoint.make({ saveErrors: "ignore" } as unknown as ModelCheckpoint.Options))
      assert.isTrue(Exit.isFailure(made))
    }))

  for (const io of ["sync", "async"] as const) {
    for (const step of ["open", "write", "rename", "syncDirectory", "remove"] as const satisfies ReadonlyArray<FaultPoint>) {
      it.effect(`"warn" (${io} io, ENOSPC at ${step}): a warning, training goes on, tracked checkpoints all exist`, () =>
        Effect.gen(function*() {
          const fs = yield* FileSystem.FileSystem
          const root = yield* fs.makeTempDirectoryScoped({ prefix: "pending-warn-" })
          const dir = `${root}/checkpoints`
          const stack = yield* Layer.build(
            FileCheckpointIO.layer.pipe(Layer.provideMerge(FaultyFileSystem.layer), Layer.provideMerge(node))
          )
          const base = Layer.succeed(CheckpointIO, Context.get(stack, CheckpointIO))
          const plugin = io === "sync" ? base : AsyncCheckpointIO.layer({ checksumWorker: false }).pipe(Layer.provide(base))
          const checkpoint = yield* ModelCheckpoint.make({
            dirpath: dir,
            monitor: "loss",
            saveTopK: 2,
            saveLast: true,
            everyNTrainSteps: 2,
            saveErrors: "warn"
          } as ModelCheckpoint.Options)
          const trainer = yield* Trainer.make({
            enableProgressBar: false,
            logger: false,
            numSanityValSteps: 0,
            maxEpochs: 3,
            defaultRootDir: root,
            callbacks: [checkpoint],
            plugins: { checkpointIO: plugin }
          })
          // A rotation's remove, not a backup's (whose failure the store absorbs by design).
          const target = (p: string) => p.startsWith(dir) && (step !== "remove" || !FileCheckpointIO.isTemporaryName(p.split("/").pop()!))
          Context.get(stack, FaultInjector).inject({ at: step, code: "ENOSPC", after: step === "remove" ? 1 : 5, path: target })
          const logs: Array<string> = []
          const collector = Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))
          const exit = yield* Effect.exit(trainer.fit(irisClassifier("warn"), irisData())).pipe(Effect.provide(Logger.layer([collector])))
          assert.isTrue(Exit.isSuccess(exit), Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "")
          assert.strictEqual(Context.get(stack, FaultInjector).fired(), 1)
          assert.isTrue(logs.some((l) => l.startsWith("Warn") && /NoSpace|ENOSPC/.test(l)), logs.join("\n"))
          const state = yield* Effect.promise(() => inspectDir(dir))
          assert.deepStrictEqual(state.broken, [])
          assert.strictEqual(state.files.get(`${dir}/last.ckpt`), 18, "the last save of the run happened")
          for (const tracked of [...checkpoint.bestKModels.keys(), checkpoint.bestModelPath, checkpoint.lastModelPath]) {
            assert.isTrue(tracked !== undefined && nodeFs.existsSync(tracked), `tracked ${tracked} exists`)
          }
        }).pipe(Effect.provide(devices)))
    }
  }
})
