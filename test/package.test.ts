/**
 * The package's public surface: every module in src/ is a subpath export with types
 * and JavaScript, and is re-exported by the index; the testing entry point exists.
 * (What the packed package does in an app is `npm run test:consumer`.)
 */
import { assert, describe, it } from "@effect/vitest"
import { readdirSync, readFileSync } from "node:fs"
import * as path from "node:path"

const repo = path.resolve(import.meta.dirname, "..")
const pkg = JSON.parse(readFileSync(path.join(repo, "package.json"), "utf8")) as {
  exports: Record<string, string | Record<string, string>>
  peerDependencies: Record<string, string>
  dependencies?: Record<string, string>
  files: ReadonlyArray<string>
  bin?: Record<string, string>
}
/**
 * Modules that import an optional peer dependency (S3CheckpointIO: `@aws-sdk/client-s3`;
 * WebGPU: `webgpu` and `@tensorflow/tfjs-backend-webgpu`):
 * reachable only by their subpath (`effect-trainer/S3CheckpointIO`), never from the index.
 */
const optionalPeerModules: ReadonlyArray<string> = ["S3CheckpointIO", "WebGPU"]

const modules = readdirSync(path.join(repo, "src"))
  .filter((f) => f.endsWith(".ts") && f !== "index.ts")
  .map((f) => f.slice(0, -3))
  .sort()

describe("package.json", () => {
  it("exports every module of src/ as a subpath, with types and default", () => {
    const subpaths = Object.keys(pkg.exports).filter((k) => k !== "." && k !== "./testing" && k !== "./package.json")
    assert.deepStrictEqual(subpaths.map((k) => k.slice(2)).sort(), modules)
    for (const [key, target] of Object.entries(pkg.exports)) {
      if (key === "./package.json") continue
      const t = target as Record<string, string>
      assert.deepStrictEqual(Object.keys(t), ["@effect-trainer/source", "types", "default"], key)
      const base = t["@effect-trainer/source"]!.replace(/^\.\/src\//, "").replace(/\.ts$/, "")
      assert.strictEqual(t["types"], `./dist/${base}.d.ts`, key)
      assert.strictEqual(t["default"], `./dist/${base}.js`, key)
    }
  })

  it("the index re-exports every module but the testing ones and those on optional peers", () => {
    const index = readFileSync(path.join(repo, "src", "index.ts"), "utf8")
    // Re-exported, these would break every user without the optional peer installed
    // (and cli, the bin, would pull in the Node runtime).
    const notInIndex = [...optionalPeerModules, "cli"]
    for (const m of modules.filter((m) => m !== "version" && !notInIndex.includes(m))) {
      assert.include(index, `from "./${m}.ts"`, m)
    }
    for (const m of notInIndex) assert.notInclude(index, `from "./${m}.ts"`, m)
  })

  it("effect, platform-node and tfjs are peers, never bundled dependencies", () => {
    for (const name of ["effect", "@effect/platform-node", "@tensorflow/tfjs", "@tensorflow/tfjs-backend-wasm"]) {
      assert.match(pkg.peerDependencies[name] ?? "", /^\^/, name)
      assert.isUndefined(pkg.dependencies?.[name], name)
    }
  })

  it("issue 15: ships the effect-trainer command, built from src/cli.ts, which starts with a shebang", () => {
    assert.deepStrictEqual(pkg.bin, { "effect-trainer": "./dist/cli.js" })
    assert.isTrue(readFileSync(path.join(repo, "src", "cli.ts"), "utf8").startsWith("#!/usr/bin/env node\n"))
  })
})

describe("documentation", () => {
  it("every export of src/ has a doc comment", () => {
    const missing: Array<string> = []
    const walk = (dir: string): Array<string> =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(path.join(dir, e.name)) : e.name.endsWith(".ts") ? [path.join(dir, e.name)] : []
      )
    for (const file of walk(path.join(repo, "src"))) {
      const lines = readFileSync(file, "utf8").split("\n")
      lines.forEach((line, i) => {
        const m = /^export (?:declare )?(?:abstract )?(?:const|function|class|interface|type|let|enum)\s+(\w+)/.exec(line)
        if (m === null) return
        let j = i - 1
        while (j >= 0 && lines[j]!.trim() === "") j--
        if (j < 0 || !lines[j]!.trim().endsWith("*/")) missing.push(`${path.relative(repo, file)}:${i + 1} ${m[1]}`)
      })
    }
    assert.deepStrictEqual(missing, [])
  })
})
