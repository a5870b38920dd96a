/**
 * The package as a user gets it: build, pack, install the tarball into a fresh app
 * beside the newest compatible effect / platform-node / tfjs, then
 *
 * 1. one copy of effect in the app (`npm ls effect`);
 * 2. the app type-checks and compiles under a standard strict tsconfig (no special
 *    flag but `skipLibCheck`, which tfjs's own typings need);
 * 3. the README's program (extracted from README.md) runs with plain `node` on the
 *    compiled JavaScript, type stripping off: nothing of the package is TypeScript;
 * 4. the package's `effect-trainer` command verifies the program's checkpoints;
 * 5. the CheckpointIO conformance suite (`effect-trainer/testing`) passes against the
 *    custom store of docs/custom-checkpoint-io.md, extracted from that page.
 *
 * Code blocks are taken from the pages by their `<!-- consumer-test: <file> -->`
 * marker. Usage: `npm run test:consumer [-- --keep]` (`--keep` leaves the app).
 */
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"

const repo = path.resolve(import.meta.dirname, "..")
const keep = process.argv.includes("--keep")
const node = process.execPath
const npm = process.platform === "win32" ? "npm.cmd" : "npm"
const started = performance.now()

const step = (title: string) => console.log(`\n== ${title} (${((performance.now() - started) / 1000).toFixed(1)} s)`)

/** Runs a command, echoing it; returns its stdout. Without .npmrc's source condition. */
const run = (command: string, args: ReadonlyArray<string>, cwd: string, env: Record<string, string> = {}): string => {
  console.log(`$ ${[command, ...args].join(" ")}   (in ${cwd})`)
  const { NODE_OPTIONS: _, npm_config_node_options: __, ...rest } = process.env
  return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], env: { ...rest, ...env } })
}

/** The code blocks marked `<!-- consumer-test: <file> -->` in a markdown page. */
const blocks = (page: string): Map<string, string> => {
  const text = readFileSync(path.join(repo, page), "utf8")
  const out = new Map<string, string>()
  for (const m of text.matchAll(/<!-- consumer-test: (\S+) -->\s*```ts\n([\s\S]*?)```/g)) out.set(m[1]!, m[2]!)
  if (out.size === 0) throw new Error(`${page}: no consumer-test block`)
  return out
}

const peerVersion = (name: string): string => {
  const pkg = JSON.parse(readFileSync(path.join(repo, "package.json"), "utf8")) as {
    peerDependencies: Record<string, string>
    devDependencies: Record<string, string>
  }
  return pkg.peerDependencies[name] ?? pkg.devDependencies[name]!
}

const app = mkdtempSync(path.join(tmpdir(), "effect-trainer-consumer-"))
try {
  step("build and pack")
  run(npm, ["run", "build"], repo)
  run(npm, ["pack", "--pack-destination", app], repo)
  const tarball = readdirSync(app).find((f) => f.endsWith(".tgz"))!
  console.log(`packed ${tarball}`)

  step("a fresh app")
  const files = new Map([...blocks("README.md"), ...blocks("docs/custom-checkpoint-io.md")])
  for (const [file, code] of files) {
    mkdirSync(path.join(app, path.dirname(file)), { recursive: true })
    writeFileSync(path.join(app, file), code)
  }
  writeFileSync(
    path.join(app, "package.json"),
    JSON.stringify(
      {
        name: "consumer-app",
        private: true,
        type: "module",
        dependencies: {
          "effect-trainer": `file:./${tarball}`,
          // The newest compatible versions, as a new app would take them.
          "effect": peerVersion("effect"),
          "@effect/platform-node": peerVersion("@effect/platform-node"),
          "@tensorflow/tfjs": peerVersion("@tensorflow/tfjs"),
          "@tensorflow/tfjs-backend-wasm": peerVersion("@tensorflow/tfjs-backend-wasm")
        },
        devDependencies: {
          "@effect/vitest": peerVersion("@effect/vitest"),
          "@types/node": peerVersion("@types/node"),
          // Pinned as in this repository (STACK.md: vite 8.4 does not install here).
          "vite": peerVersion("vite"),
          "vitest": peerVersion("vitest")
        }
      },
      null,
      2
    )
  )
  writeFileSync(
    path.join(app, "tsconfig.json"),
    JSON.stringify(
      {
        compilerOptions: {
          target: "ES2023",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          exactOptionalPropertyTypes: true,
          skipLibCheck: true,
          types: ["node"],
          rootDir: ".",
          outDir: "out"
        },
        include: ["src", "test"]
      },
      null,
      2
    )
  )
  run(npm, ["install", "--no-audit", "--no-fund", "--loglevel", "error"], app)

  step("one copy of effect")
  console.log(run(npm, ["ls", "effect"], app).trim())
  const copies = run(npm, ["ls", "effect", "--all", "--parseable"], app).trim().split("\n")
    .filter((p) => p.replaceAll("\\", "/").endsWith("node_modules/effect"))
  if (new Set(copies).size !== 1) throw new Error(`expected one copy of effect, found ${copies.length}: ${copies.join(", ")}`)
  const effectVersion = (JSON.parse(readFileSync(path.join(copies[0]!, "package.json"), "utf8")) as { version: string }).version
  console.log(`one effect: ${effectVersion} at ${copies[0]}`)

  step("type-check and compile the app (strict tsconfig)")
  run(node, [path.join(repo, "node_modules", "typescript", "bin", "tsc"), "-p", "."], app)

  step("the README's program on plain node, type stripping off")
  const out = run(node, ["--no-experimental-strip-types", path.join("out", "src", "main.js")], app)
  process.stdout.write(out)
  const accuracy = /test accuracy (\d\.\d+)/.exec(out)
  if (accuracy === null) throw new Error("the README program printed no test accuracy")
  for (const file of ["last.ckpt", "final.ckpt"]) {
    if (!existsSync(path.join(app, "runs", "spirals", file))) throw new Error(`the README program left no runs/spirals/${file}`)
  }
  console.log(`runs/spirals: ${readdirSync(path.join(app, "runs", "spirals")).join(", ")}`)

  step("the effect-trainer command from the installed package")
  const npx = process.platform === "win32" ? "npx.cmd" : "npx"
  const verified = run(npx, ["--no-install", "effect-trainer", "verify", "runs/spirals"], app)
  process.stdout.write(verified)
  if (!/checkpoints intact/.test(verified)) throw new Error("effect-trainer verify did not report the checkpoints intact")

  step("the conformance suite against the docs' custom store")
  process.stdout.write(run(node, [path.join(app, "node_modules", "vitest", "vitest.mjs"), "run", "--dir", "test"], app))

  step(`passed`)
} finally {
  if (keep) console.log(`app kept at ${app}`)
  else rmSync(app, { recursive: true, force: true })
}
