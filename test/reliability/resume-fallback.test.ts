/**
 * With ModelCheckpoint, a corrupt (or huge, issue 12.6) newest checkpoint makes
 * `ckptPath: "last"` resume from the previous good one, with a warning naming the
 * corrupt file; when none loads, the fit fails with the typed corrupt error (it never
 * trains from scratch silently).
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, FileSystem, Layer, Logger } from "effect"
import * as nodeFs from "node:fs"
import * as Device from "../../src/Device.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import * as ModelCheckpoint from "../../src/ModelCheckpoint.ts"
import * as Strategy from "../../src/Strategy.ts"
import { foreignFile } from "../../src/testing/CheckpointIOSuite.ts"
import * as Trainer from "../../src/Trainer.ts"
import { irisClassifier, irisData } from "../support/iris.ts"

const node = Layer.mergeAll(NodeFileSystem.layer, NodePath.layer)
const devices = Strategy.singleDevice().pipe(Layer.provideMerge(Device.layer("wasm")), Layer.provideMerge(node))

/** Flips one byte in the tensor data of a checkpoint file. */
const corrupt = (file: string) => {
  const bytes = nodeFs.readFileSync(file)
  const headerLength = Number(bytes.readBigUInt64LE(0))
  const at = 8 + headerLength + Math.floor((bytes.length - 8 - headerLength) / 2)
  bytes[at] = bytes[at]! ^ 0x10
  nodeFs.writeFileSync(file, bytes)
}

describe("ckptPath \"last\" falls back past a corrupt checkpoint", () => {
  const fit = (root: string, maxEpochs: number, ckptPath?: string) =>
    Effect.scoped(Effect.gen(function*() {
      const checkpoint = yield* ModelCheckpoint.make({ dirpath: `${root}/checkpoints`, monitor: "loss", saveTopK: 2, saveLast: true })
      const trainer = yield* Trainer.make({
        enableProgressBar: false,
        logger: false,
        numSanityValSteps: 0,
        maxEpochs,
        seed: 3,
        defaultRootDir: root,
        callbacks: [checkpoint],
        plugins: { checkpointIO: FileCheckpointIO.layerNode }
      })
      const exit = yield* Effect.exit(trainer.fit(irisClassifier("fallback"), irisData(), ckptPath === undefined ? {} : { ckptPath }))
      return { exit, trainer }
    }))

  it.effect("resumes from the newest checkpoint that loads, with a warning", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "pending-fallback-" })
      const dir = `${root}/checkpoints`
      const first = yield* fit(root, 3)
      assert.isTrue(Exit.isSuccess(first.exit))
      corrupt(`${dir}/last.ckpt`)
      // The newest of the others, by modification time: where a resume must pick up.
      const others = nodeFs.readdirSync(dir).filter((n) => n !== "last.ckpt")
        .map((n) => ({ path: `${dir}/${n}`, mtime: nodeFs.statSync(`${dir}/${n}`).mtimeMs }))
        .sort((a, b) => b.mtime - a.mtime)
      const logs: Array<string> = []
      const collector = Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))
      const resumed = yield* fit(root, 4, "last").pipe(Effect.provide(Logger.layer([collector])))
      assert.isTrue(Exit.isSuccess(resumed.exit), Exit.isFailure(resumed.exit) ? Cause.pretty(resumed.exit.cause) : "")
      assert.strictEqual(resumed.trainer.state.resumedFrom, others[0]!.path)
      assert.strictEqual(resumed.trainer.state.globalStep, 24, "continued to the end of epoch 4")
      assert.isTrue(logs.some((l) => l.startsWith("Warn") && l.includes("last.ckpt") && /corrupt/.test(l)), logs.join("\n"))
    }).pipe(Effect.provide(devices)))

  it.effect("fails with the typed corrupt error when no checkpoint loads", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "pending-fallback-" })
      const dir = `${root}/checkpoints`
      assert.isTrue(Exit.isSuccess((yield* fit(root, 2)).exit))
      for (const name of nodeFs.readdirSync(dir)) corrupt(`${dir}/${name}`)
      const resumed = yield* fit(root, 3, "last")
      assert.isTrue(Exit.isFailure(resumed.exit))
      const error = Exit.isFailure(resumed.exit) ? resumed.exit.cause.reasons.find(Cause.isFailReason)?.error : undefined
      assert.strictEqual((error as { _tag?: string } | undefined)?._tag, "CheckpointCorrupt")
    }).pipe(Effect.provide(devices)))

  it.effect("issue 12.6: a huge but honest last.ckpt (one 4 TiB tensor, a sparse file; the issue had 30 GiB) is refused typed and the fallback resumes from the previous", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const root = yield* fs.makeTempDirectoryScoped({ prefix: "huge-fallback-" })
      const dir = `${root}/checkpoints`
      assert.isTrue(Exit.isSuccess((yield* fit(root, 3)).exit))
      const others = nodeFs.readdirSync(dir).filter((n) => n !== "last.ckpt")
        .map((n) => ({ path: `${dir}/${n}`, mtime: nodeFs.statSync(`${dir}/${n}`).mtimeMs }))
        .sort((a, b) => b.mtime - a.mtime)
      const bytes = 4 * 2 ** 40
      const header = foreignFile({ huge: { dtype: "F32", shape: [bytes / 4], data_offsets: [0, bytes] } }, new Uint8Array(0))
      nodeFs.writeFileSync(`${dir}/last.ckpt`, header)
      nodeFs.truncateSync(`${dir}/last.ckpt`, header.byteLength + bytes)
      const logs: Array<string> = []
      const collector = Logger.make((o) => void logs.push(`${o.logLevel}: ${(o.message as Array<unknown>).join(" ")}`))
      const resumed = yield* fit(root, 4, "last").pipe(Effect.provide(Logger.layer([collector])))
      assert.isTrue(Exit.isSuccess(resumed.exit), Exit.isFailure(resumed.exit) ? Cause.pretty(resumed.exit.cause) : "")
      assert.strictEqual(resumed.trainer.state.resumedFrom, others[0]!.path)
      assert.isTrue(logs.some((l) => l.startsWith("Warn") && l.includes("last.ckpt")), logs.join("\n"))
    }).pipe(Effect.provide(devices)))
})
