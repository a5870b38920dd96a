/**
 * Pending (needs the FileCheckpointIO change "temporary files of our own pid that this
 * process did not create are stale"): the sweep of temporary files left by dead
 * writers skips every file whose pid is alive, and our own pid is always alive. A
 * process that gets the pid of the one that crashed (a container's main process is
 * pid 1 in every run; pids repeat after a reboot) never sweeps what that one left.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, FileSystem, Layer } from "effect"
import { CheckpointIO } from "../../src/CheckpointIO.ts"
import * as FileCheckpointIO from "../../src/FileCheckpointIO.ts"
import { versioned } from "./powercut.ts"

describe("temporary files left by an earlier process with our pid", () => {
  it.effect("are swept by the first save into the directory", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const io = yield* CheckpointIO
      const dir = yield* fs.makeTempDirectoryScoped({ prefix: "pending-same-pid-" })
      // Same writer identity (host, boot, pid namespace) and pid: an earlier process's.
      const stale = `.0badcafe.${FileCheckpointIO.writerIdentity}.${process.pid}.0123456789.tmp-ckpt`
      yield* fs.writeFileString(`${dir}/${stale}`, "half a checkpoint")
      yield* io.save(versioned(1), `${dir}/last.ckpt`)
      assert.deepStrictEqual(yield* fs.readDirectory(dir), ["last.ckpt"])
    }).pipe(Effect.provide(FileCheckpointIO.layer.pipe(Layer.provideMerge(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))))))
})
