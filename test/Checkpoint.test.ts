import { assert, describe, it } from "@effect/vitest"
import { Option } from "effect"
import * as fs from "node:fs"
import * as Checkpoint from "../src/Checkpoint.ts"
import { libraryVersion } from "../src/version.ts"

describe("Checkpoint", () => {
  it("records the library version of package.json", () => {
    const pkg = JSON.parse(fs.readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }
    assert.strictEqual(libraryVersion, pkg.version)
    assert.strictEqual(Checkpoint.makeMeta({ epoch: 0, globalStep: 0 }).libraryVersion, pkg.version)
  })

  it("make fills the meta defaults and keeps the tensors", () => {
    const t = Checkpoint.tensor("F32", [2], Float32Array.of(1, 2))
    const ckpt = Checkpoint.make({ tensors: { "model/w": t }, meta: { epoch: 3, globalStep: 30, user: { a: 1 } } })
    assert.strictEqual(ckpt.tensors["model/w"], t)
    const meta = Option.getOrThrow(ckpt.meta)
    assert.deepStrictEqual(meta, {
      formatVersion: 1,
      libraryVersion,
      epoch: 3,
      globalStep: 30,
      weightsOnly: false,
      loops: {},
      callbacks: {},
      optimizer: null,
      hyperParameters: {},
      user: { a: 1 }
    })
    assert.strictEqual(Checkpoint.byteSize(ckpt), 8)
    assert.isTrue(Option.isNone(Checkpoint.make({ tensors: {} }).meta))
  })

  it("knows each dtype's element size", () => {
    assert.deepStrictEqual(
      Checkpoint.DTypes.map(Checkpoint.bytesPerElement),
      [8, 4, 2, 2, 8, 4, 2, 1, 8, 4, 2, 1, 1, 1, 1]
    )
    assert.strictEqual(Checkpoint.elementCount([]), 1)
    assert.strictEqual(Checkpoint.elementCount([3, 0]), 0)
  })
})
