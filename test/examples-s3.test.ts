/**
 * Issue 18: the main job (`npm start -- --default-root-dir s3://bucket/runs`) with its
 * checkpoints on S3: a child process trains against s3rver started here (endpoint and
 * credentials from the environment), then `--ckpt-path last` resumes from S3.
 */
import { GetObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Exit, Option, Scope } from "effect"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as S3CheckpointIO from "../src/S3CheckpointIO.ts"
import { type TestS3, testS3 } from "./support/s3Server.ts"

const repo = path.resolve(import.meta.dirname, "..")
const scope = Effect.runSync(Scope.make())
let s3: TestS3
beforeAll(() => Effect.runPromise(Effect.provideService(testS3("runs"), Scope.Scope, scope)).then((server) => void (s3 = server)))
afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

interface Run {
  readonly stdout: string
  readonly stderr: string
  readonly status: number | null
  readonly signal: NodeJS.Signals | null
}

/** The main job as a child process (asynchronously: s3rver answers from this process). */
const start = (cwd: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const child = spawn(process.execPath, ["--conditions=@effect-trainer/source", path.join(repo, "examples", "mnist.ts"), ...args], {
    cwd,
    env: {
      ...process.env,
      AWS_ENDPOINT_URL: s3.directEndpoint,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "S3RVER",
      AWS_SECRET_ACCESS_KEY: "S3RVER",
      EFFECT_TRAINER_S3_FORCE_PATH_STYLE: "true",
      ...env
    },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout.on("data", (c: Buffer) => void (stdout += c.toString()))
  child.stderr.on("data", (c: Buffer) => void (stderr += c.toString()))
  const done = new Promise<Run>((resolve) => child.on("close", (status, signal) => resolve({ stdout, stderr, status, signal })))
  return { child, done }
}

const mnist = (cwd: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.promise(() => start(cwd, args, env).done)

const keys = (prefix: string) =>
  Effect.promise(() => s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix })))
    .pipe(Effect.map((page) => (page.Contents ?? []).map((o) => o.Key!).sort()))

describe("the main job with checkpoints on S3 (issue 18)", () => {
  it.effect(
    "issue 18.1: --default-root-dir s3://bucket/runs trains 1 epoch onto S3, the CSV logs stay local, --ckpt-path last resumes from S3",
    () =>
      Effect.gen(function*() {
        const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "example-s3-"))
        yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(cwd, { recursive: true, force: true })))
        const root = `s3://${s3.bucket}/runs`
        const base = ["--backend", "wasm", "--default-root-dir", root]
        const first = yield* mnist(cwd, [...base, "--max-epochs", "1"])
        assert.strictEqual(first.status, 0, first.stderr)
        assert.include(first.stdout, `last checkpoint: ${root}/mlp/checkpoints/last.ckpt\n`)
        assert.match(first.stdout, new RegExp(`^best checkpoint: ${root}/mlp/checkpoints/epoch=0-step=125-val_acc=0\\.\\d{4}\\.ckpt$`, "m"))
        const saved = yield* keys("runs/mlp/checkpoints/")
        assert.include(saved, "runs/mlp/checkpoints/last.ckpt")
        assert.isTrue(saved.some((k) => /epoch=0-step=125/.test(k)), saved.join(", "))
        // The CSV logger stays local: ./runs/<model>/logs under the working directory.
        const csv = path.join(fs.realpathSync(cwd), "runs", "mlp", "logs", "version_0", "metrics.csv")
        assert.include(first.stdout, `metrics: ${csv}`)
        assert.isTrue(fs.existsSync(csv))
        assert.deepStrictEqual(s3.pendingUploads(), [])

        const resumed = yield* mnist(cwd, [...base, "--ckpt-path", "last", "--max-epochs", "2"])
        assert.strictEqual(resumed.status, 0, resumed.stderr)
        assert.match(
          resumed.stdout + resumed.stderr,
          new RegExp(`resumed from ${root}/mlp/checkpoints/last\\.ckpt \\(epoch 1, step 125\\)`)
        )
        assert.match(resumed.stdout, /^Epoch 1: /m)
        assert.notMatch(resumed.stdout, /^Epoch 0: /m)
        assert.isTrue((yield* keys("runs/mlp/checkpoints/")).some((k) => /epoch=1-step=250/.test(k)))

        // Without the optional AWS SDK (its resolution fails, as when it is not installed),
        // other schemes, and a URL without a bucket: one-line refusals, before any work.
        const hook = path.join(cwd, "no-aws-sdk.mjs")
        fs.writeFileSync(
          hook,
          `import { registerHooks } from "node:module"
registerHooks({ resolve(specifier, context, next) {
  if (specifier.startsWith("@aws-sdk/")) throw Object.assign(new Error("Cannot find package '" + specifier + "'"), { code: "ERR_MODULE_NOT_FOUND" })
  return next(specifier, context)
} })
`
        )
        const noSdk = { NODE_OPTIONS: `${process.env["NODE_OPTIONS"] ?? ""} --import=${hook}` }
        const refusals = [
          [[...base], noSdk, /S3 checkpoints need the optional package @aws-sdk\/client-s3; npm install @aws-sdk\/client-s3$/],
          [["--default-root-dir", "file:///tmp/runs"], {}, /is a URL; only local directories and s3:\/\/bucket\/prefix/],
          [["--default-root-dir", "s3://"], {}, /names no bucket/]
        ] as const
        for (const [args, env, pattern] of refusals) {
          const refused = yield* mnist(cwd, args, env)
          assert.strictEqual(refused.status, 1, refused.stderr)
          assert.strictEqual(refused.stdout, "")
          const lines = refused.stderr.split("\n").filter((l) => l.length > 0)
          assert.strictEqual(lines.length, 1, refused.stderr)
          assert.match(lines[0]!, pattern)
        }
      }),
    600_000
  ) // two training processes: a hang watchdog, not a time limit

  // Live clock: the stale-upload cutoff compares the server's start times with the time now.
  it.live(
    "issue 18.2: SIGKILL during a multipart save of last.ckpt leaves the previous object intact; the stale upload is listed, aborted at the next store's start, and --ckpt-path last resumes",
    () =>
      Effect.gen(function*() {
        const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "example-s3-crash-"))
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            s3.setFaults(undefined)
            fs.rmSync(cwd, { recursive: true, force: true })
          })
        )
        const root = `s3://${s3.bucket}/crash`
        const last = "crash/mlp/checkpoints/last.ckpt"
        // Through the proxy, synchronous saves, 64 KiB parts: every checkpoint (~1.2 MB) is a multipart upload.
        const env = { AWS_ENDPOINT_URL: s3.endpoint, EFFECT_TRAINER_S3_PART_SIZE: String(64 * 1024) }
        const base = ["--backend", "wasm", "--sync-io", "--default-root-dir", root]
        const first = yield* mnist(cwd, [...base, "--max-epochs", "1"], env)
        assert.strictEqual(first.status, 0, first.stderr)
        const readLast = Effect.promise(() =>
          s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: last })).then((r) => r.Body!.transformToByteArray())
        )
        const before = yield* readLast
        assert.isAbove(before.byteLength, 10 * 64 * 1024)

        // The resumed run hangs in part 2 of its upload of last.ckpt; the test kills it there.
        let sawPart2: () => void = () => {}
        const part2 = new Promise<void>((resolve) => void (sawPart2 = resolve))
        s3.setFaults(({ method, url }) => {
          if (method === "PUT" && url.includes(`/${last}?`) && /[?&]partNumber=2(&|$)/.test(url)) {
            sawPart2()
            return "hang"
          }
          return undefined
        })
        const crashed = start(cwd, [...base, "--ckpt-path", "last", "--max-epochs", "3"], env)
        yield* Effect.promise(() => part2)
        crashed.child.kill("SIGKILL")
        const killed = yield* Effect.promise(() => crashed.done)
        assert.strictEqual(killed.signal, "SIGKILL")
        s3.setFaults(undefined)

        // The previous object is intact: the same bytes, and it loads with every CRC checked.
        assert.deepStrictEqual(yield* readLast, before)
        const storeOptions: S3CheckpointIO.Options = {
          endpoint: s3.endpoint,
          region: "us-east-1",
          forcePathStyle: true,
          credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" }
        }
        const io = yield* S3CheckpointIO.make(storeOptions)
        const record = yield* io.load(`${root}/mlp/checkpoints/last.ckpt`)
        assert.strictEqual(Option.getOrThrow(record.meta).globalStep, 125)
        // The killed upload is still open (its parts are stored, and billed on S3) ...
        const stale = s3.pendingUploads()
        assert.strictEqual(stale.length, 1, stale.join(", "))
        // ... until a store started with abortUploadsOlderThanMs aborts it (or a lifecycle rule does).
        const aborted = yield* S3CheckpointIO.abortIncompleteUploads(root, { ...storeOptions, olderThanMs: 60_000 })
        assert.deepStrictEqual(aborted, [], "not older than a minute: left alone")
        yield* S3CheckpointIO.make({ ...storeOptions, bucket: s3.bucket, prefix: "crash", abortUploadsOlderThanMs: 0 })
        assert.deepStrictEqual(s3.pendingUploads(), [])
        assert.isTrue(s3.requests.some((r) => r.startsWith(`DELETE /${s3.bucket}/${last}?uploadId=`)))
        // What remains: committed objects only.
        const remaining = yield* keys("crash/")
        assert.include(remaining, last)
        assert.isTrue(remaining.every((k) => k.startsWith("crash/mlp/checkpoints/") && k.endsWith(".ckpt")), remaining.join(", "))

        const resumed = yield* mnist(cwd, [...base, "--ckpt-path", "last", "--max-epochs", "2"], env)
        assert.strictEqual(resumed.status, 0, resumed.stderr)
        assert.match(
          resumed.stdout + resumed.stderr,
          new RegExp(`resumed from ${root}/mlp/checkpoints/last\\.ckpt \\(epoch 1, step 125\\)`)
        )
        assert.notDeepEqual(yield* readLast, before)
        assert.deepStrictEqual(s3.pendingUploads(), [])
      }),
    600_000
  ) // three training processes: a hang watchdog, not a time limit
})
