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

  it("the index re-exports every module but the testing ones", () => {
    const index = readFileSync(path.join(repo, "src", "index.ts"), "utf8")
    // cli is the bin (and the helpers of scripts' main): importing it from the index would pull in the Node runtime.
    for (const m of modules.filter((m) => m !== "version" && m !== "cli")) assert.include(index, `from "./${m}.ts"`, m)
    assert.notInclude(index, "./cli.ts")
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
