/**
 * S3CheckpointIO against a real S3-protocol server: s3rver on loopback (one per test
 * file), behind a fault-injecting proxy (see support/s3Server.ts).
 */
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3"
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Scope } from "effect"
import * as posix from "node:path/posix"
import * as AsyncCheckpointIO from "../src/AsyncCheckpointIO.ts"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointIO, type CheckpointIOShape } from "../src/CheckpointIO.ts"
import * as Device from "../src/Device.ts"
import * as FileCheckpointIO from "../src/FileCheckpointIO.ts"
import * as ModelCheckpoint from "../src/ModelCheckpoint.ts"
import * as S3CheckpointIO from "../src/S3CheckpointIO.ts"
import * as Strategy from "../src/Strategy.ts"
import { assertSameTensors, RawStore, run as runSuite, sample } from "../src/testing/CheckpointIOSuite.ts"
import * as Trainer from "../src/Trainer.ts"
import { irisClassifier, irisData } from "./support/iris.ts"
import { type FaultPolicy, type TestS3, testS3 } from "./support/s3Server.ts"

const scope = Effect.runSync(Scope.make())
let s3: TestS3
beforeAll(() => Effect.runPromise(Effect.provideService(testS3(), Scope.Scope, scope)).then((server) => void (s3 = server)))
afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

const options = (extra: S3CheckpointIO.Options = {}): S3CheckpointIO.Options => ({
  endpoint: s3.endpoint,
  region: "us-east-1",
  forcePathStyle: true,
  credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
  bucket: s3.bucket,
  maxAttempts: 3,
  retryBaseDelayMs: 0,
  ...extra
})

let roots = 0

/** Raw objects through the SDK, under a fresh prefix per test. */
const rawS3 = Layer.effect(
  RawStore,
  Effect.gen(function*() {
    const io = yield* CheckpointIO
    const root = `s3://${s3.bucket}/suite-${++roots}`
    const keyOf = (path: string) => path.slice(`s3://${s3.bucket}/`.length)
    return {
      root,
      read: (path: string) =>
        Effect.promise(() =>
          s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: keyOf(path) }))
            .then((r) => r.Body!.transformToByteArray())
            .catch(() => new Uint8Array(0))
        ),
      write: (path: string, bytes: Uint8Array) =>
        Effect.promise(() => s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: keyOf(path), Body: bytes })))
          .pipe(Effect.asVoid),
      settle: Effect.orDie(io.flush)
    }
  })
)

runSuite("S3CheckpointIO", () => rawS3.pipe(Layer.provideMerge(S3CheckpointIO.layer(options()))))

// Background saves to S3: the same suite through AsyncCheckpointIO over the S3 store.
runSuite("AsyncCheckpointIO over S3CheckpointIO", () =>
  rawS3.pipe(
    Layer.provideMerge(AsyncCheckpointIO.layer({ checksumWorker: false }).pipe(Layer.provide(S3CheckpointIO.layer(options())))),
    Layer.orDie
  ))

/** A checkpoint of about `floats * 4` bytes, filled from `seed`. */
const big = (floats: number, seed: number) =>
  Checkpoint.make({
    tensors: {
      "model/w": Checkpoint.tensor("F32", [floats], Float32Array.from({ length: floats }, (_, i) => (i * 7 + seed) % 1000)),
      "model/b": Checkpoint.tensor("I32", [3], Int32Array.of(seed, 2, 3))
    },
    meta: { epoch: seed, globalStep: seed * 10 }
  })

const withStore = <A, E>(
  extra: S3CheckpointIO.Options,
  body: (io: CheckpointIOShape) => Effect.Effect<A, E, Scope.Scope>
) =>
  Effect.gen(function*() {
    const io = yield* CheckpointIO
    return yield* body(io)
  }).pipe(Effect.provide(S3CheckpointIO.layer(options(extra))))

const faults = (policy: FaultPolicy | undefined) =>
  Effect.acquireRelease(Effect.sync(() => s3.setFaults(policy)), () => Effect.sync(() => s3.setFaults(undefined)))

const countRequests = (pattern: RegExp) => s3.requests.filter((r) => pattern.test(r)).length

const isPart = (n: number) => (r: { method: string; url: string }) => r.method === "PUT" && r.url.includes(`partNumber=${n}&`)

describe("S3CheckpointIO", () => {
  it.effect("issue 18: a checkpoint larger than the part size is a parallel multipart upload, loaded by ranged GETs", () =>
    withStore({ partSize: 32 * 1024, concurrency: 3 }, (io) =>
      Effect.gen(function*() {
        const path = `s3://${s3.bucket}/multipart/a.ckpt`
        const before = s3.requests.length
        yield* io.save(big(64 * 1024, 1), path) // 256 KiB: 9 parts
        const seen = s3.requests.slice(before)
        assert.strictEqual(seen.filter((r) => r.startsWith("POST") && r.includes("uploads")).length, 1)
        assert.strictEqual(seen.filter((r) => r.startsWith("PUT") && r.includes("partNumber=")).length, 9)
        assert.strictEqual(seen.filter((r) => r.startsWith("POST") && r.includes("uploadId=")).length, 1)
        assert.deepStrictEqual(s3.pendingUploads(), [])
        const gets = s3.requests.length
        const loaded = yield* io.load(path)
        assertSameTensors(loaded.tensors, big(64 * 1024, 1).tensors)
        assert.strictEqual(s3.requests.slice(gets).filter((r) => r.startsWith("GET")).length, 9, "one ranged GET per part")
        // A small one is a single PUT.
        const small = s3.requests.length
        yield* io.save(sample(1), `s3://${s3.bucket}/multipart/small.ckpt`)
        assert.deepStrictEqual(s3.requests.slice(small).map((r) => r.split(" ")[0]), ["PUT"])
      })))

  it.effect("issue 18: a failed part aborts the multipart upload and leaves the previous object", () =>
    withStore({ partSize: 32 * 1024, concurrency: 2 }, (io) =>
      Effect.gen(function*() {
        const path = `s3://${s3.bucket}/abort/a.ckpt`
        yield* io.save(big(64 * 1024, 1), path)
        yield* faults((r) => (isPart(3)(r) ? "reset" : undefined))
        const error = yield* Effect.flip(io.save(big(64 * 1024, 2), path))
        assert.strictEqual(error._tag, "CheckpointStorageError")
        assert.strictEqual(error._tag === "CheckpointStorageError" ? error.reason : undefined, "IO")
        assert.include(error.message, path)
        assert.isAtLeast(countRequests(/^DELETE .*uploadId=/), 1, "AbortMultipartUpload sent")
        assert.deepStrictEqual(s3.pendingUploads(), [], "no incomplete multipart upload remains")
        assertSameTensors((yield* io.load(path)).tensors, big(64 * 1024, 1).tensors)
      })))

  it.effect("issue 18: an interrupted save aborts its upload and leaves the previous object", () =>
    withStore({ partSize: 32 * 1024, concurrency: 2 }, (io) =>
      Effect.gen(function*() {
        const path = `s3://${s3.bucket}/interrupt/a.ckpt`
        yield* io.save(big(64 * 1024, 1), path)
        let reached: () => void = () => {}
        const inPart2 = new Promise<void>((resolve) => (reached = resolve))
        // Part 2's request never gets an answer: the save is stuck mid-upload.
        yield* faults((r) => {
          if (!isPart(2)(r)) return undefined
          reached()
          return "hang"
        })
        const saving = yield* Effect.forkChild(io.save(big(64 * 1024, 2), path))
        yield* Effect.promise(() => inPart2)
        assert.strictEqual(s3.pendingUploads().length, 1, "the upload is open")
        yield* Fiber.interrupt(saving)
        assert.deepStrictEqual(s3.pendingUploads(), [], "no incomplete multipart upload remains")
        assertSameTensors((yield* io.load(path)).tensors, big(64 * 1024, 1).tensors)
      })))

  it.effect("issue 18: throttling (503 SlowDown) is retried; past maxAttempts it is a typed IO error naming the object", () =>
    withStore({ maxAttempts: 3 }, (io) =>
      Effect.gen(function*() {
        const path = `s3://${s3.bucket}/slow/a.ckpt`
        let refused = 0
        yield* faults((r) => (r.method === "PUT" && refused++ < 2 ? "503" : undefined))
        yield* io.save(sample(4), path)
        assert.strictEqual(refused, 3, "two 503s, then the third attempt went through")
        assertSameTensors((yield* io.load(path)).tensors, sample(4).tensors)
        yield* faults(() => "503")
        const error = yield* Effect.flip(io.exists(path))
        assert.strictEqual(error._tag, "CheckpointStorageError")
        assert.strictEqual(error._tag === "CheckpointStorageError" ? error.reason : undefined, "IO")
        assert.include(error.message, path)
      })))

  it.effect("issue 18: a truncated GET is retried; one truncated every time is a typed error, never bad tensors", () =>
    withStore({ partSize: 32 * 1024, maxAttempts: 3 }, (io) =>
      Effect.gen(function*() {
        const path = `s3://${s3.bucket}/cut/a.ckpt`
        yield* io.save(big(64 * 1024, 5), path)
        const cut = new Set<string>()
        yield* faults((r) => {
          if (r.method !== "GET" || cut.has(r.url + r.method)) return undefined
          cut.add(r.url + r.method)
          return "truncate"
        })
        // Each range's first GET is cut in half; the retry reads it whole.
        assertSameTensors((yield* io.load(path)).tensors, big(64 * 1024, 5).tensors)
        yield* faults((r) => (r.method === "GET" ? "truncate" : undefined))
        const error = yield* Effect.flip(io.load(path))
        assert.include(["CheckpointStorageError", "CheckpointCorrupt"], error._tag)
        assert.include(error.message, path)
      })))

  it.effect("issue 18: AccessDenied is PermissionDenied; a missing object is CheckpointNotFound", () =>
    withStore({}, (io) =>
      Effect.gen(function*() {
        yield* faults(() => "403")
        const denied = yield* Effect.flip(io.save(sample(1), `s3://${s3.bucket}/denied/a.ckpt`))
        assert.strictEqual(denied._tag === "CheckpointStorageError" ? denied.reason : denied._tag, "PermissionDenied")
        yield* faults(undefined)
        const missing = yield* Effect.flip(io.load(`s3://${s3.bucket}/nothing/here.ckpt`))
        assert.strictEqual(missing._tag, "CheckpointNotFound")
      })))

  it.effect("issue 18: plain keys live under the bucket and prefix; list answers in the form it was asked", () =>
    withStore({ prefix: "team/runs" }, (io) =>
      Effect.gen(function*() {
        yield* io.save(sample(2), "exp/./a.ckpt")
        assert.isTrue(yield* io.exists(`s3://${s3.bucket}/team/runs/exp/a.ckpt`))
        assert.isTrue(yield* io.exists("/exp/a.ckpt"), "a leading / is the prefix's root")
        assert.isTrue(yield* io.exists(`s3:/${s3.bucket}/team/runs/exp/a.ckpt`), "s3:/ as path.normalize leaves it")
        assert.deepStrictEqual((yield* io.list("exp")).map((e) => e.path), ["exp/a.ckpt"])
        assert.deepStrictEqual((yield* io.list(`s3://${s3.bucket}/team/runs/exp/`)).map((e) => e.path), [
          `s3://${s3.bucket}/team/runs/exp/a.ckpt`
        ])
        for (const bad of ["../escape.ckpt", "gs://bucket/a.ckpt", `s3://${s3.bucket}`, "exp/"]) {
          const error = yield* Effect.flip(io.save(sample(1), bad))
          assert.strictEqual(error._tag, "CheckpointInvalidArgument", bad)
        }
      })))

  it.effect("issue 18: a checkpoint that cannot fit maxLoadBytes is refused after the HEAD, before any GET", () =>
    withStore({ maxLoadBytes: 1024 }, (io) =>
      Effect.gen(function*() {
        const path = `s3://${s3.bucket}/bound/a.ckpt`
        yield* io.save(big(32 * 1024, 1), path)
        const error = yield* Effect.flip(io.load(path))
        assert.strictEqual(error._tag, "CheckpointTooLarge")
      })))

  it.effect("issue 18: the file store refuses a URL instead of making a local directory named s3:", () =>
    Effect.gen(function*() {
      const io = yield* CheckpointIO
      for (const url of ["s3://bucket/runs/a.ckpt", "gs://b/x.ckpt"]) {
        const error = yield* Effect.flip(io.save(sample(1), url))
        assert.strictEqual(error._tag, "CheckpointInvalidArgument")
        assert.include(error.message, url)
      }
      assert.strictEqual((yield* Effect.flip(io.list("s3://bucket/runs")))._tag, "CheckpointInvalidArgument")
    }).pipe(Effect.provide(FileCheckpointIO.layerNode)))

  it.effect("issue 18: a Trainer saves with ModelCheckpoint to S3 and resumes from it with ckptPath \"last\"", () =>
    Effect.gen(function*() {
      const store = yield* Layer.build(S3CheckpointIO.layer(options()))
      const io = Layer.succeedContext(store)
      const root = `s3://${s3.bucket}/trainer`
      const quiet: Trainer.TrainerOptions = { enableProgressBar: false, logger: false }
      const fit = (maxEpochs: number, ckptPath?: string) =>
        Effect.gen(function*() {
          const checkpoint = yield* ModelCheckpoint.make({ saveLast: true })
          const trainer = yield* Trainer.make({
            ...quiet,
            maxEpochs,
            defaultRootDir: root,
            callbacks: [checkpoint],
            plugins: { checkpointIO: io }
          })
          yield* trainer.fit(irisClassifier(), irisData(), ckptPath === undefined ? undefined : { ckptPath })
          return trainer
        })
      const names = (trainer: Trainer.TrainerShape) =>
        Effect.map(trainer.checkpointIO.list(`${root}/checkpoints`), (entries) => entries.map((e) => posix.basename(e.path)))
      const first = yield* fit(1)
      assert.deepStrictEqual(yield* names(first), ["epoch=0-step=6.ckpt", "last.ckpt"])
      const second = yield* fit(2, "last")
      assert.match(second.state.resumedFrom ?? "", /trainer\/checkpoints\/last\.ckpt$/)
      assert.strictEqual(second.state.globalStep, 12, "the global step continues")
      assert.deepStrictEqual(yield* names(second), ["epoch=1-step=12.ckpt", "last.ckpt"])
      const last = yield* second.checkpointIO.load(`${root}/checkpoints/last.ckpt`)
      assert.strictEqual(Option.getOrThrow(last.meta).globalStep, 12)
    }).pipe(
      Effect.provide(
        Strategy.singleDevice().pipe(
          Layer.provideMerge(Device.layer("wasm")),
          Layer.provideMerge(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer))
        )
      )
    ))
})
