/**
 * `S3CheckpointIO`: a `CheckpointIO` on object storage over the S3 protocol (AWS S3,
 * MinIO, Ceph, R2, …), on the AWS SDK v3 (`@aws-sdk/client-s3`, an optional peer
 * dependency: this module is not re-exported by the package index; import it as
 * `effect-trainer/S3CheckpointIO`).
 *
 * One object per checkpoint, in the same safetensors layout as the file store. The
 * CheckpointIO contract, mapped onto S3:
 * - `save` is atomic: an object becomes visible only when complete (one `PutObject`
 *   for a checkpoint up to `partSize`, otherwise `CompleteMultipartUpload` of a
 *   parallel multipart upload). A failed or interrupted save aborts its multipart
 *   upload (no orphaned parts are left to bill) and leaves the previous object. A
 *   process killed mid-save cannot abort: its upload stays open until a bucket
 *   lifecycle rule (`AbortIncompleteMultipartUpload`) or `abortIncompleteUploads` /
 *   the `abortUploadsOlderThanMs` option removes it.
 *   Saves are durable once acknowledged, so `durable` and `flush` have nothing to do.
 * - `load` reads the size with `HeadObject`, refuses a checkpoint that cannot fit
 *   `maxLoadBytes`, then streams the object with parallel ranged `GetObject`s
 *   (`concurrency` parts of `partSize` in flight) into the codec, which validates the
 *   header before allocating one arena and checks every tensor's CRC-32. A short or
 *   broken response body is retried; the ranged reads are pinned to the ETag seen by
 *   `HeadObject` (`If-Match`), so that a concurrent replacement is an error, not a mix.
 * - `list(dir)` lists committed objects directly under `dir/` (`ListObjectsV2` with
 *   the delimiter `/`; in-progress uploads are never listed), sorted by path.
 * - `copy` is a server-side `CopyObject` (no bytes through this process; objects up to
 *   5 GB, the limit of a single copy; a larger source fails with a storage error).
 * - Retries: the SDK's retry strategy, with `maxAttempts` and exponential backoff with
 *   full jitter (`retryBaseDelayMs`, `retryMaxDelayMs`) for throttling (503 SlowDown)
 *   and transient errors; what still fails is a typed error naming the object:
 *   `NoSuchKey`/404 → `CheckpointNotFound`, `AccessDenied`/403 →
 *   `CheckpointStorageError` `PermissionDenied`, network and 5xx → `IO`, others `Other`.
 *
 * Paths: `s3://bucket/key`, or a plain key, read relative to the configured
 * `bucket` and `prefix` (`runs/a.ckpt` with `prefix: "team"` is `team/runs/a.ckpt`).
 * Keys are normalised as POSIX paths (`a/./b` and `a/b` are one checkpoint; a key may
 * not climb above its prefix with `..`), and `s3:/bucket/key` (what `path.normalize`
 * makes of a URL) is read as `s3://bucket/key`. `list` returns paths in the form its
 * directory was given in. Errors name the object as `s3://bucket/key`.
 *
 * What S3 cannot promise that a local disk can: no hard links (`copy` copies bytes on
 * the server), `list` may be eventually consistent on some S3-compatible servers, and
 * two writers of one key race (last complete write wins; no conditional writes are
 * used). What it gives that a disk does not: every node and later job reads the same
 * objects, and a save is durable once acknowledged.
 *
 * @since 0.3.0
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
  UploadPartCommand
} from "@aws-sdk/client-s3"
import { Clock, Config, Effect, Exit, Fiber, Layer, type Scope, Semaphore } from "effect"
import { randomInt } from "node:crypto"
import * as posix from "node:path/posix"
import {
  checkPath,
  type CheckpointEntry,
  CheckpointInvalidArgument,
  CheckpointIO,
  type CheckpointIOError,
  type CheckpointIOShape,
  CheckpointNotFound,
  CheckpointStorageError,
  CheckpointTooLarge,
  make as CheckpointIOMake,
  type Operation,
  type StorageReason
} from "./CheckpointIO.ts"
import { defaultNodeMaxLoadBytes } from "./FileCheckpointIO.ts"
import * as SafeTensors from "./SafeTensors.ts"

/** Options of the S3 store. Endpoint, region and credentials default to the SDK's standard sources. */
export interface Options {
  /** The bucket of plain keys (paths that are not `s3://` URLs). */
  readonly bucket?: string | undefined
  /** A key prefix for plain keys (`team/runs`): `a.ckpt` is stored as `team/runs/a.ckpt`. */
  readonly prefix?: string | undefined
  /**
   * Bytes per part of a multipart upload and per ranged GET (default 16 MiB). A
   * checkpoint up to this size is one `PutObject`. Real S3 wants parts of at least
   * 5 MiB; S3 allows 10,000 parts, so the part size grows for larger checkpoints.
   */
  readonly partSize?: number | undefined
  /** Parts uploaded, or ranges read, at once (default 8). Memory used: about `concurrency × partSize`. */
  readonly concurrency?: number | undefined
  /** The most bytes of tensor memory one `load` may allocate (default: half of the machine's memory). */
  readonly maxLoadBytes?: number | undefined
  /** The endpoint URL of an S3-compatible server (default: `AWS_ENDPOINT_URL(_S3)`, then AWS). */
  readonly endpoint?: string | undefined
  /** The region (default: `AWS_REGION` / the shared config file). */
  readonly region?: string | undefined
  /** Path-style URLs (`http://host/bucket/key`), which most S3-compatible servers want. */
  readonly forcePathStyle?: boolean | undefined
  /** Static credentials (default: the SDK's provider chain: environment, files, SSO, IMDS, …). */
  readonly credentials?: {
    readonly accessKeyId: string
    readonly secretAccessKey: string
    readonly sessionToken?: string | undefined
  } | undefined
  /** Attempts per request, the first included (default 5). */
  readonly maxAttempts?: number | undefined
  /** Base of the exponential backoff between attempts (default 100 ms; throttling waits 5× longer). */
  readonly retryBaseDelayMs?: number | undefined
  /** Longest wait between attempts (default 20 s). */
  readonly retryMaxDelayMs?: number | undefined
  /** Any other `S3Client` configuration, applied last. */
  readonly clientConfig?: S3ClientConfig | undefined
  /** A client to use instead of building one (the caller owns it: it is not destroyed with the layer). */
  readonly client?: S3Client | undefined
  /**
   * At layer start, abort the incomplete multipart uploads under `bucket`/`prefix`
   * initiated more than this many milliseconds ago (left by a writer that crashed
   * mid-save): see `abortIncompleteUploads`. Default: none are touched. Needs `bucket`;
   * a failure (a server without ListMultipartUploads) is logged as a warning, never fatal.
   */
  readonly abortUploadsOlderThanMs?: number | undefined
}

const defaultPartSize = 16 * 1024 * 1024
const maxParts = 10_000

/** An object: its bucket, its key, and the form its path was given in. */
interface Location {
  readonly bucket: string
  readonly key: string
  /** The canonical name, `s3://bucket/key`, used in errors. */
  readonly url: string
}

type RetryErrorType = "TRANSIENT" | "THROTTLING" | "SERVER_ERROR" | "CLIENT_ERROR"

/** A retry token as the SDK's retry middleware uses it. */
interface RetryToken {
  readonly getRetryCount: () => number
  readonly getRetryDelay: () => number
}

const retryToken = (count: number, delay: number): RetryToken => ({
  getRetryCount: () => count,
  getRetryDelay: () => delay
})

/**
 * The SDK retry strategy used by the store: up to `maxAttempts` attempts of a
 * throttled (503 SlowDown, 429) or transient (network error, 500/502/504) request,
 * with exponential backoff and full jitter; never a client error.
 */
export const retryStrategy = (options: {
  readonly maxAttempts: number
  readonly baseDelayMs: number
  readonly maxDelayMs: number
}): NonNullable<S3ClientConfig["retryStrategy"]> => {
  const backoff = (attempt: number, throttled: boolean): number => {
    const ceiling = Math.min(options.maxDelayMs, (throttled ? 5 : 1) * options.baseDelayMs * 2 ** attempt)
    return ceiling <= 0 ? 0 : randomInt(0, Math.floor(ceiling) + 1)
  }
  const strategy = {
    mode: "standard",
    acquireInitialRetryToken: () => Promise.resolve(retryToken(0, 0)),
    refreshRetryTokenForRetry: (token: RetryToken, info: { readonly errorType: RetryErrorType }) => {
      const next = token.getRetryCount() + 1
      if (next >= options.maxAttempts || (info.errorType !== "THROTTLING" && info.errorType !== "TRANSIENT")) {
        return Promise.reject(new Error("no retry token available"))
      }
      const delay = backoff(token.getRetryCount(), info.errorType === "THROTTLING")
      // The SDK waits `getRetryDelay()` before the next attempt.
      return Promise.resolve(retryToken(next, delay))
    },
    recordSuccess: () => {}
  }
  return strategy as unknown as NonNullable<S3ClientConfig["retryStrategy"]>
}

const errorName = (cause: unknown): string | undefined =>
  typeof cause === "object" && cause !== null && "name" in cause && typeof cause.name === "string" ? cause.name : undefined

const httpStatus = (cause: unknown): number | undefined => {
  if (typeof cause !== "object" || cause === null || !("$metadata" in cause)) return undefined
  const metadata = cause.$metadata
  return typeof metadata === "object" && metadata !== null && "httpStatusCode" in metadata &&
      typeof metadata.httpStatusCode === "number"
    ? metadata.httpStatusCode
    : undefined
}

/** Classifies an S3 failure by its error code and HTTP status. */
export const s3StorageReason = (cause: unknown): StorageReason => {
  const name = errorName(cause)
  const status = httpStatus(cause)
  switch (name) {
    case "AccessDenied":
    case "AllAccessDisabled":
    case "InvalidAccessKeyId":
    case "SignatureDoesNotMatch":
    case "ExpiredToken":
    case "InvalidToken":
    case "AccountProblem":
      return "PermissionDenied"
    case "QuotaExceeded":
    case "ServiceQuotaExceeded":
    case "XMinioStorageFull":
      return "NoSpace"
    case "SlowDown":
    case "ServiceUnavailable":
    case "InternalError":
    case "RequestTimeout":
    case "TimeoutError":
    case "ShortRead":
      return "IO"
  }
  if (status === 403 || status === 401) return "PermissionDenied"
  if (status !== undefined && status >= 500) return "IO"
  const code = typeof cause === "object" && cause !== null && "code" in cause ? cause.code : undefined
  if (typeof code === "string" && /^E[A-Z]+/.test(code)) return "IO" // ECONNRESET, ETIMEDOUT, …
  return "Other"
}

const isNotFound = (cause: unknown): boolean => {
  const name = errorName(cause)
  return name === "NoSuchKey" || name === "NotFound" || (httpStatus(cause) === 404 && name !== "NoSuchBucket")
}

/** Maps an S3 failure to the typed CheckpointIO error, naming the object. */
export const s3Error = (operation: Operation, path: string) => (cause: unknown): CheckpointIOError =>
  isNotFound(cause)
    ? new CheckpointNotFound({ operation, path })
    : new CheckpointStorageError({ operation, path, reason: s3StorageReason(cause), cause })

/** A body shorter than the range asked for (a connection cut mid-response). */
class ShortRead extends Error {
  override readonly name = "ShortRead"
}

const urlPattern = /^s3:\/\/?([^/]+)(?:\/(.*))?$/
const schemePattern = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//

/** Normalises a key as a POSIX path without leading or trailing `/`; `undefined` if it climbs out. */
const normalizeKey = (key: string): string | undefined => {
  const normal = posix.normalize(key.length === 0 ? "." : key).replace(/^\/+/, "")
  if (normal === ".." || normal.startsWith("../")) return undefined
  return normal === "." ? "" : normal.replace(/\/+$/, "")
}

/** The S3 key of `path` (`s3://bucket/key` or a plain key under `prefix`), validated. */
const parseLocation = (
  operation: Operation,
  path: string,
  bucket: string | undefined,
  prefix: string
): Effect.Effect<Location & { readonly isUrl: boolean }, CheckpointInvalidArgument> => {
  const invalid = (reason: string) => Effect.fail(new CheckpointInvalidArgument({ operation, path, reason }))
  const url = urlPattern.exec(path)
  if (url !== null) {
    const key = normalizeKey(url[2] ?? "")
    if (key === undefined) return invalid("a key may not climb above the bucket with \"..\"")
    return Effect.succeed({ bucket: url[1]!, key, url: `s3://${url[1]}/${key}`, isUrl: true })
  }
  if (schemePattern.test(path)) return invalid("only s3:// URLs are supported by S3CheckpointIO")
  if (bucket === undefined) return invalid("a plain key needs the bucket option (or give an s3://bucket/key URL)")
  const relative = normalizeKey(path)
  if (relative === undefined) return invalid("a key may not climb above the prefix with \"..\"")
  const key = prefix.length === 0 ? relative : relative.length === 0 ? prefix : `${prefix}/${relative}`
  return Effect.succeed({ bucket, key, url: `s3://${bucket}/${key}`, isUrl: false })
}

const copySource = (location: Location): string => `${location.bucket}/${encodeURIComponent(location.key).replace(/%2F/g, "/")}`

/**
 * Builds the service over `client` (owned by the caller) with `options`.
 */
export const makeWithClient = (client: S3Client, options: Options = {}): CheckpointIOShape => {
  const prefix = (options.prefix ?? "").replace(/^\/+|\/+$/g, "")
  const partSize = Math.max(1, Math.floor(options.partSize ?? defaultPartSize))
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 8))
  const maxLoadBytes = options.maxLoadBytes ?? defaultNodeMaxLoadBytes()
  const maxAttempts = Math.max(1, options.maxAttempts ?? 5)
  const baseDelayMs = options.retryBaseDelayMs ?? 100

  /** Sends a command; interruption aborts the request. */
  const send = <A>(operation: Operation, path: string, run: (signal: AbortSignal) => Promise<A>) =>
    Effect.tryPromise({ try: run, catch: s3Error(operation, path) })

  const locate = (operation: Operation, path: string) => parseLocation(operation, path, options.bucket, prefix)

  /** A checkpoint's object: a path that names a key (not empty, no trailing separator). */
  const object = (operation: Operation, path: string) =>
    Effect.gen(function*() {
      yield* checkPath(operation, path)
      const location = yield* locate(operation, path)
      if (location.key.length === 0) {
        return yield* new CheckpointInvalidArgument({ operation, path, reason: "a checkpoint path must name an object" })
      }
      return location
    })

  const head = (operation: Operation, location: Location) =>
    send(
      operation,
      location.url,
      (abortSignal) => client.send(new HeadObjectCommand({ Bucket: location.bucket, Key: location.key }), { abortSignal })
    )

  // -------------------------------------------------------------------------
  // save
  // -------------------------------------------------------------------------

  const putSmall = (location: Location, planned: SafeTensors.WritePlan) =>
    Effect.gen(function*() {
      const bytes = new Uint8Array(planned.size)
      let position = 0
      yield* SafeTensors.write(planned, {
        write: (chunk) =>
          Effect.sync(() => {
            bytes.set(chunk, position)
            position += chunk.byteLength
          }),
        writeAt: (at, chunk) => Effect.sync(() => bytes.set(chunk, at))
      })
      yield* send("save", location.url, (abortSignal) =>
        client.send(
          new PutObjectCommand({
            Bucket: location.bucket,
            Key: location.key,
            Body: bytes,
            ContentLength: bytes.byteLength,
            ContentType: "application/octet-stream"
          }),
          { abortSignal }
        ))
    })

  /**
   * A parallel multipart upload. Parts are uploaded as the codec fills them, at most
   * `concurrency` at once (the codec waits for a free slot, so memory stays bounded);
   * the parts that hold the header are kept until the codec writes the final header.
   */
  const putMultipart = (location: Location, planned: SafeTensors.WritePlan) =>
    Effect.gen(function*() {
      const size = planned.size
      const part = Math.max(partSize, Math.ceil(size / maxParts))
      const count = Math.ceil(size / part)
      const heldParts = Math.ceil(planned.placeholder.byteLength / part)
      const created = yield* send("save", location.url, (abortSignal) =>
        client.send(
          new CreateMultipartUploadCommand({
            Bucket: location.bucket,
            Key: location.key,
            ContentType: "application/octet-stream"
          }),
          { abortSignal }
        ))
      const uploadId = created.UploadId
      if (uploadId === undefined) {
        return yield* new CheckpointStorageError({
          operation: "save",
          path: location.url,
          reason: "Other",
          cause: new Error("CreateMultipartUpload returned no UploadId")
        })
      }
      const abort = Effect.tryPromise(() =>
        client.send(new AbortMultipartUploadCommand({ Bucket: location.bucket, Key: location.key, UploadId: uploadId }))
      ).pipe(
        Effect.catch((error) =>
          Effect.logWarning(
            `could not abort multipart upload ${uploadId} of ${location.url} (${String(error)}); ` +
              "a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes it later"
          )
        )
      )

      const upload = Effect.scoped(Effect.gen(function*() {
        const scope = yield* Effect.scope
        const slots = yield* Semaphore.make(concurrency)
        const etags = Array.from<string | undefined>({ length: count })
        const uploads: Array<Fiber.Fiber<void, CheckpointIOError>> = []
        let failure: CheckpointIOError | undefined

        const uploadPart = (index: number, bytes: Uint8Array) =>
          send("save", location.url, (abortSignal) =>
            client.send(
              new UploadPartCommand({
                Bucket: location.bucket,
                Key: location.key,
                UploadId: uploadId,
                PartNumber: index + 1,
                Body: bytes,
                ContentLength: bytes.byteLength
              }),
              { abortSignal }
            )).pipe(
              Effect.flatMap((result) =>
                result.ETag === undefined
                  ? Effect.fail(
                    new CheckpointStorageError({
                      operation: "save",
                      path: location.url,
                      reason: "Other",
                      cause: new Error(`UploadPart ${index + 1} returned no ETag`)
                    })
                  )
                  : Effect.sync(() => void (etags[index] = result.ETag))
              ),
              Effect.tapError((error) => Effect.sync(() => void (failure ??= error)))
            )

        const start = (index: number, bytes: Uint8Array) =>
          Effect.gen(function*() {
            yield* Semaphore.take(slots, 1)
            if (failure !== undefined) {
              yield* Semaphore.release(slots, 1)
              return yield* Effect.fail(failure)
            }
            const fiber = yield* Effect.forkIn(
              uploadPart(index, bytes).pipe(Effect.ensuring(Semaphore.release(slots, 1))),
              scope
            )
            uploads.push(fiber)
          })

        const held = new Map<number, Uint8Array>()
        let current: Uint8Array | undefined
        let index = 0
        let filled = 0
        const sink: SafeTensors.ByteSink<CheckpointIOError> = {
          write: (chunk) =>
            Effect.gen(function*() {
              let at = 0
              while (at < chunk.byteLength) {
                current ??= new Uint8Array(Math.min(part, size - index * part))
                const n = Math.min(current.byteLength - filled, chunk.byteLength - at)
                current.set(chunk.subarray(at, at + n), filled)
                filled += n
                at += n
                if (filled === current.byteLength) {
                  if (index < heldParts) held.set(index, current)
                  else yield* start(index, current)
                  current = undefined
                  filled = 0
                  index++
                }
              }
            }),
          writeAt: (position, chunk) =>
            Effect.sync(() => {
              for (let at = 0; at < chunk.byteLength;) {
                const i = Math.floor((position + at) / part)
                const target = held.get(i)
                if (target === undefined) throw new Error(`header patch at ${position + at} outside the held parts`)
                const offset = position + at - i * part
                const n = Math.min(target.byteLength - offset, chunk.byteLength - at)
                target.set(chunk.subarray(at, at + n), offset)
                at += n
              }
            })
        }
        yield* SafeTensors.write(planned, sink)
        for (const [i, bytes] of held) yield* start(i, bytes)
        held.clear()
        yield* Fiber.joinAll(uploads)
        if (failure !== undefined) return yield* Effect.fail(failure)
        return etags
      }))

      yield* upload.pipe(
        Effect.flatMap((etags) =>
          send("save", location.url, (abortSignal) =>
            client.send(
              new CompleteMultipartUploadCommand({
                Bucket: location.bucket,
                Key: location.key,
                UploadId: uploadId,
                MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag: ETag!, PartNumber: i + 1 })) }
              }),
              { abortSignal }
            ))
        ),
        // Whatever ends the save (a failed part, an interruption, a refused completion)
        // aborts the upload: its parts are never left behind.
        Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : abort)
      )
    })

  const save: CheckpointIOShape["save"] = Effect.fn("S3CheckpointIO.save")(function*(checkpoint, path) {
    const location = yield* object("save", path)
    yield* Effect.annotateCurrentSpan({ path: location.url })
    const planned = yield* SafeTensors.plan(checkpoint, location.url)
    if (planned.size <= partSize) yield* putSmall(location, planned)
    else yield* putMultipart(location, planned)
  })

  // -------------------------------------------------------------------------
  // load
  // -------------------------------------------------------------------------

  /** One range of the object, retried (with backoff) when its body comes back short or broken. */
  const getRange = (location: Location, etag: string | undefined, start: number, end: number) => {
    const attempt = send("load", location.url, (abortSignal) =>
      client.send(
        new GetObjectCommand({
          Bucket: location.bucket,
          Key: location.key,
          Range: `bytes=${start}-${end - 1}`,
          ...(etag === undefined ? {} : { IfMatch: etag })
        }),
        { abortSignal }
      ).then(async (response) => {
        const bytes = response.Body === undefined ? new Uint8Array(0) : await response.Body.transformToByteArray()
        if (bytes.byteLength !== end - start) {
          throw new ShortRead(`bytes ${start}-${end - 1}: got ${bytes.byteLength} of ${end - start} bytes`)
        }
        return bytes
      }))
    const retryable = (error: CheckpointIOError) => error._tag === "CheckpointStorageError" && error.reason === "IO"
    const loop = (n: number): Effect.Effect<Uint8Array, CheckpointIOError> =>
      Effect.catchIf(attempt, (error) => retryable(error) && n + 1 < maxAttempts, () => {
        const ceiling = Math.min(options.retryMaxDelayMs ?? 20_000, baseDelayMs * 2 ** n)
        const delay = ceiling <= 0 ? 0 : randomInt(0, Math.floor(ceiling) + 1)
        return Effect.andThen(delay === 0 ? Effect.void : Effect.sleep(delay), loop(n + 1))
      })
    return loop(0)
  }

  /**
   * The object as a `ByteSource` that reads ahead: a read starts the ranged GETs of
   * its part and the next `concurrency - 1`, and drops the parts before it.
   */
  const rangedSource = (
    location: Location,
    size: number,
    etag: string | undefined
  ): Effect.Effect<SafeTensors.ByteSource<CheckpointIOError>, never, Scope.Scope> =>
    Effect.map(Effect.scope, (scope) => {
      const count = Math.ceil(size / partSize)
      const parts = new Map<number, Fiber.Fiber<Uint8Array, CheckpointIOError>>()
      const ensure = (index: number) =>
        Effect.gen(function*() {
          for (const i of parts.keys()) if (i < index) parts.delete(i)
          for (let i = index; i < Math.min(count, index + concurrency); i++) {
            if (parts.has(i)) continue
            const fiber = yield* Effect.forkIn(getRange(location, etag, i * partSize, Math.min(size, (i + 1) * partSize)), scope)
            parts.set(i, fiber)
          }
          return parts.get(index)!
        })
      return {
        size,
        read: (into, position) =>
          Effect.gen(function*() {
            if (position >= size || into.byteLength === 0) return 0
            const index = Math.floor(position / partSize)
            const bytes = yield* Fiber.join(yield* ensure(index))
            const offset = position - index * partSize
            const n = Math.min(into.byteLength, bytes.byteLength - offset)
            into.set(bytes.subarray(offset, offset + n))
            return n
          })
      }
    })

  const load: CheckpointIOShape["load"] = Effect.fn("S3CheckpointIO.load")(function*(path, loadOptions) {
    const location = yield* object("load", path)
    yield* Effect.annotateCurrentSpan({ path: location.url })
    const info = yield* head("load", location)
    const size = info.ContentLength ?? 0
    // The tensors of a full load take at least the object's size less the largest header.
    const leastBytes = size - 8 - SafeTensors.maxHeaderBytes
    if (loadOptions?.weightsOnly !== true && leastBytes > maxLoadBytes) {
      return yield* new CheckpointTooLarge({
        operation: "load",
        path: location.url,
        bytes: leastBytes,
        limit: maxLoadBytes,
        reason: `its ${size} bytes need more memory than the ${maxLoadBytes}-byte bound of this store`
      })
    }
    return yield* Effect.scoped(Effect.gen(function*() {
      const source = yield* rangedSource(location, size, info.ETag)
      return yield* SafeTensors.read(source, location.url, loadOptions, { maxBytes: maxLoadBytes })
    }))
  })

  // -------------------------------------------------------------------------
  // exists, remove, copy, list
  // -------------------------------------------------------------------------

  const exists: CheckpointIOShape["exists"] = Effect.fn("S3CheckpointIO.exists")(function*(path) {
    const location = yield* object("exists", path)
    return yield* head("exists", location).pipe(
      Effect.as(true),
      Effect.catchTag("CheckpointNotFound", () => Effect.succeed(false))
    )
  })

  const remove: CheckpointIOShape["remove"] = Effect.fn("S3CheckpointIO.remove")(function*(path) {
    const location = yield* object("remove", path)
    yield* Effect.annotateCurrentSpan({ path: location.url })
    // Deleting a missing key succeeds on S3.
    yield* send(
      "remove",
      location.url,
      (abortSignal) => client.send(new DeleteObjectCommand({ Bucket: location.bucket, Key: location.key }), { abortSignal })
    ).pipe(
      Effect.catchTag("CheckpointNotFound", () => Effect.void)
    )
  })

  const copy: CheckpointIOShape["copy"] = Effect.fn("S3CheckpointIO.copy")(function*(source, target) {
    const from = yield* object("copy", source)
    const to = yield* object("copy", target)
    yield* Effect.annotateCurrentSpan({ source: from.url, target: to.url })
    if (from.url === to.url) {
      yield* head("copy", from)
      return
    }
    yield* send("copy", to.url, (abortSignal) =>
      client.send(
        new CopyObjectCommand({ Bucket: to.bucket, Key: to.key, CopySource: copySource(from) }),
        { abortSignal }
      )).pipe(
        Effect.mapError((error) =>
          error._tag === "CheckpointNotFound" ? new CheckpointNotFound({ operation: "copy", path: from.url }) : error
        )
      )
  })

  const list: CheckpointIOShape["list"] = Effect.fn("S3CheckpointIO.list")(function*(dir) {
    const location = yield* locate("list", dir)
    yield* Effect.annotateCurrentSpan({ path: location.url })
    const keyPrefix = location.key.length === 0 ? "" : `${location.key}/`
    // Paths come back in the form the directory was given in.
    const shown = location.isUrl
      ? (name: string) => `s3://${location.bucket}/${keyPrefix}${name}`
      : (() => {
        const base = posix.normalize(dir.length === 0 ? "." : dir).replace(/\/+$/, "")
        return (name: string) => (base === "." || base === "" ? name : `${base}/${name}`)
      })()
    const entries: Array<CheckpointEntry> = []
    let token: string | undefined
    do {
      const page = yield* send("list", location.url, (abortSignal) =>
        client.send(
          new ListObjectsV2Command({
            Bucket: location.bucket,
            Prefix: keyPrefix,
            Delimiter: "/",
            ...(token === undefined ? {} : { ContinuationToken: token })
          }),
          { abortSignal }
        ))
      for (const item of page.Contents ?? []) {
        const name = (item.Key ?? "").slice(keyPrefix.length)
        if (name.length === 0 || name.includes("/")) continue
        entries.push({ path: shown(name), modifiedAt: item.LastModified?.getTime() ?? 0, size: item.Size ?? 0 })
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined
    } while (token !== undefined)
    return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  })

  return CheckpointIOMake({ save, load, remove, exists, list, copy })
}

/** The `S3Client` configuration that `options` describe. */
export const clientConfig = (options: Options): S3ClientConfig => ({
  ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
  ...(options.region === undefined ? {} : { region: options.region }),
  ...(options.forcePathStyle === undefined ? {} : { forcePathStyle: options.forcePathStyle }),
  ...(options.credentials === undefined ? {} : {
    credentials: {
      accessKeyId: options.credentials.accessKeyId,
      secretAccessKey: options.credentials.secretAccessKey,
      ...(options.credentials.sessionToken === undefined ? {} : { sessionToken: options.credentials.sessionToken })
    }
  }),
  retryStrategy: retryStrategy({
    maxAttempts: Math.max(1, options.maxAttempts ?? 5),
    baseDelayMs: options.retryBaseDelayMs ?? 100,
    maxDelayMs: options.retryMaxDelayMs ?? 20_000
  }),
  ...options.clientConfig
})

/** `options.client`, or a new client from `options` destroyed when the scope closes. */
const acquireClient = (options: Options): Effect.Effect<S3Client, never, Scope.Scope> =>
  options.client !== undefined ? Effect.succeed(options.client) : Effect.acquireRelease(
    Effect.sync(() => new S3Client(clientConfig(options))),
    (client) => Effect.sync(() => client.destroy())
  )

/**
 * Aborts the incomplete multipart uploads under `dir` (`s3://bucket/prefix`, or a plain
 * key prefix under `options.bucket`/`prefix`) that were initiated more than `olderThanMs`
 * ago (by the server's clock; default 0: all of them), and answers the objects whose
 * uploads it aborted. An upload left by a writer killed mid-save (SIGKILL, a lost
 * node) is never completed: its parts stay, and are billed, until it is aborted. A
 * bucket lifecycle rule `AbortIncompleteMultipartUpload` does this on the server and is
 * the first choice; this is for servers and buckets without one. Choose `olderThanMs`
 * longer than any save takes: an upload in progress by another live writer under the
 * same prefix is aborted too (its save then fails with a storage error and leaves the
 * previous checkpoint). Needs ListMultipartUploads, which some S3-compatible servers
 * lack (s3rver among them).
 */
export const abortIncompleteUploads = Effect.fn("S3CheckpointIO.abortIncompleteUploads")(function*(
  dir: string,
  options: Options & { readonly olderThanMs?: number | undefined } = {}
) {
  const prefix = (options.prefix ?? "").replace(/^\/+|\/+$/g, "")
  const location = yield* parseLocation("list", dir, options.bucket, prefix)
  const keyPrefix = location.key.length === 0 ? "" : `${location.key}/`
  const client = yield* acquireClient(options)
  const cutoff = (yield* Clock.currentTimeMillis) - Math.max(0, options.olderThanMs ?? 0)
  const aborted: Array<string> = []
  let keyMarker: string | undefined
  let uploadIdMarker: string | undefined
  do {
    const page = yield* Effect.tryPromise({
      try: (abortSignal) =>
        client.send(
          new ListMultipartUploadsCommand({
            Bucket: location.bucket,
            Prefix: keyPrefix,
            ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
            ...(uploadIdMarker === undefined ? {} : { UploadIdMarker: uploadIdMarker })
          }),
          { abortSignal }
        ),
      catch: s3Error("list", location.url)
    })
    for (const upload of page.Uploads ?? []) {
      if (upload.Key === undefined || upload.UploadId === undefined) continue
      if ((upload.Initiated?.getTime() ?? 0) > cutoff) continue
      const url = `s3://${location.bucket}/${upload.Key}`
      yield* Effect.tryPromise({
        try: (abortSignal) =>
          client.send(
            new AbortMultipartUploadCommand({ Bucket: location.bucket, Key: upload.Key, UploadId: upload.UploadId }),
            { abortSignal }
          ),
        catch: s3Error("remove", url)
      })
      aborted.push(url)
    }
    const truncated = page.IsTruncated === true
    keyMarker = truncated ? page.NextKeyMarker : undefined
    uploadIdMarker = truncated ? page.NextUploadIdMarker : undefined
  } while (keyMarker !== undefined)
  return aborted
}, Effect.scoped)

/**
 * Builds the service: over `options.client`, or over a new `S3Client` (from
 * `clientConfig(options)`) destroyed when the scope closes. With
 * `abortUploadsOlderThanMs` and `bucket`, stale uploads under the prefix are aborted first.
 */
export const make = (options: Options = {}): Effect.Effect<CheckpointIOShape, never, Scope.Scope> =>
  Effect.gen(function*() {
    const client = yield* acquireClient(options)
    if (options.abortUploadsOlderThanMs !== undefined && options.bucket !== undefined) {
      const root = `s3://${options.bucket}/${(options.prefix ?? "").replace(/^\/+|\/+$/g, "")}`
      yield* abortIncompleteUploads(root, { ...options, client, olderThanMs: options.abortUploadsOlderThanMs }).pipe(
        Effect.tap((aborted) =>
          aborted.length === 0 ? Effect.void : Effect.logInfo(`aborted ${aborted.length} stale multipart upload(s): ${aborted.join(", ")}`)
        ),
        Effect.catch((error) => Effect.logWarning(`could not abort stale multipart uploads under ${root}: ${error.message}`))
      )
    }
    return makeWithClient(client, options)
  })

/** The S3 store with `options` (see `Options`). */
export const layer = (options: Options = {}): Layer.Layer<CheckpointIO> => Layer.effect(CheckpointIO, make(options))

/**
 * The options read from the environment (each optional):
 * `EFFECT_TRAINER_S3_BUCKET`, `EFFECT_TRAINER_S3_PREFIX`, `EFFECT_TRAINER_S3_PART_SIZE`,
 * `EFFECT_TRAINER_S3_CONCURRENCY`, `EFFECT_TRAINER_S3_FORCE_PATH_STYLE`. Endpoint,
 * region and credentials come from the SDK's own sources (`AWS_ENDPOINT_URL`,
 * `AWS_REGION`, `AWS_ACCESS_KEY_ID`, profiles, …).
 */
export const optionsConfig: Config.Config<Options> = Config.all({
  bucket: Config.option(Config.String("EFFECT_TRAINER_S3_BUCKET")),
  prefix: Config.option(Config.String("EFFECT_TRAINER_S3_PREFIX")),
  partSize: Config.option(Config.Int("EFFECT_TRAINER_S3_PART_SIZE")),
  concurrency: Config.option(Config.Int("EFFECT_TRAINER_S3_CONCURRENCY")),
  forcePathStyle: Config.option(Config.Boolean("EFFECT_TRAINER_S3_FORCE_PATH_STYLE"))
}).pipe(Config.map((read) => {
  const out: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(read)) if (value._tag === "Some") out[name] = value.value
  return out as Options
}))

/**
 * The S3 store configured from `config` (default `optionsConfig`, the environment),
 * with `overrides` applied on top.
 */
export const layerConfig = (
  config: Config.Config<Options> = optionsConfig,
  overrides: Options = {}
): Layer.Layer<CheckpointIO, Config.ConfigError> =>
  Layer.effect(CheckpointIO, Effect.flatMap(config, (options) => make({ ...options, ...overrides })))
