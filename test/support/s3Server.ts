/**
 * A real S3-protocol server for tests: s3rver on loopback in a temporary directory,
 * behind a small HTTP proxy that injects faults (503 SlowDown, connection resets,
 * truncated bodies) and fills in what s3rver lacks: AbortMultipartUpload (s3rver
 * answers 405) removes the upload's parts as S3 does, ListMultipartUploads (s3rver
 * lists objects instead) is answered from s3rver's upload folder, and `pendingUploads`
 * lists the multipart uploads still open.
 */
import { S3Client } from "@aws-sdk/client-s3"
import { Effect } from "effect"
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as path from "node:path"
import S3rver from "s3rver"
import FilesystemStore from "s3rver/lib/stores/filesystem.js"

// s3rver 3.7.1 acknowledges a PUT when its checksum stream ends, before the object's
// file holds all the bytes (`putObject` resolves on the transform's "finish", not the
// file stream's): a HEAD or GET right after it sometimes saw 0 bytes under load. Real
// S3 has read-after-write consistency, so the test server waits for the file.
const putObject = FilesystemStore.prototype.putObject
FilesystemStore.prototype.putObject = async function(this: FilesystemStore, object: { bucket: string; key: string }) {
  const result = await putObject.call(this, object)
  const file = this.getResourcePath(object.bucket, object.key, "object")
  while (statSync(file).size !== result.size) await new Promise<void>((resolve) => setImmediate(resolve))
  return result
}

/** What the proxy does with one request: pass it, or a fault. */
export type Fault = "503" | "403" | "reset" | "truncate" | "hang" | undefined

/**
 * Decides the fault of a request (method, URL with query); called once per request
 * (a test may also use it as a hook: "the child is now uploading part 2").
 */
export type FaultPolicy = (request: { readonly method: string; readonly url: string }) => Fault

export interface TestS3 {
  /** The proxy (faults, abort). */
  readonly endpoint: string
  /** s3rver itself, without the proxy (faster where no fault is wanted). */
  readonly directEndpoint: string
  readonly bucket: string
  /** Ids of multipart uploads neither completed nor aborted. */
  readonly pendingUploads: () => ReadonlyArray<string>
  /** Sets the fault policy (none by default). */
  readonly setFaults: (policy: FaultPolicy | undefined) => void
  /** Every request seen by the proxy, as `METHOD url`. */
  readonly requests: Array<string>
  /** A client on the proxy (path style, any credentials), destroyed with the scope. */
  readonly client: S3Client
}

const slowDown = `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`

const noSuchUpload = `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchUpload</Code><Message>The specified multipart upload does not exist.</Message></Error>`
const accessDenied = `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`

/** Starts s3rver and the proxy in a scope; both are closed (and the directory removed) with it. */
export const testS3 = (bucket = "ckpt-test"): Effect.Effect<TestS3, never, import("effect").Scope.Scope> =>
  Effect.gen(function*() {
    const directory = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(path.join(tmpdir(), "s3rver-"))),
      (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
    )
    const server = new S3rver({ port: 0, address: "127.0.0.1", silent: true, directory, configureBuckets: [{ name: bucket }] })
    const upstream = yield* Effect.acquireRelease(
      Effect.promise(() => server.run()),
      () => Effect.promise(() => server.close())
    )
    const uploadsDir = path.join(directory, bucket, "._S3rver_uploads")
    let policy: FaultPolicy | undefined
    /** Ids of aborted multipart uploads: gone, whatever a late part left on disk. */
    const aborted = new Set<string>()
    const requests: Array<string> = []
    /** Ids of the multipart uploads neither completed nor aborted. */
    const openUploads = (): Array<string> => {
      try {
        return readdirSync(uploadsDir).filter((id) => !aborted.has(id))
      } catch {
        return []
      }
    }

    const proxy = http.createServer((req, res) => {
      const method = req.method ?? "GET"
      const url = req.url ?? "/"
      requests.push(`${method} ${url}`)
      const fault = policy?.({ method, url })
      if (fault === "reset") {
        req.socket.destroy()
        return
      }
      if (fault === "hang") {
        req.resume() // read the request, never answer
        return
      }
      if (fault === "503" || fault === "403") {
        req.resume()
        res.writeHead(Number(fault), { "content-type": "application/xml" })
        res.end(fault === "503" ? slowDown : accessDenied)
        return
      }
      const query = new URL(url, "http://x").searchParams
      const uploadId = query.get("uploadId")
      if (method === "GET" && query.has("uploads")) {
        // ListMultipartUploads (one page), from s3rver's upload folder: key and start time.
        req.resume()
        const prefix = query.get("prefix") ?? ""
        const escape = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
        const uploads = openUploads().flatMap((id) => {
          try {
            const key = readFileSync(path.join(uploadsDir, id, "key"), "utf8")
            const initiated = statSync(path.join(uploadsDir, id)).birthtime.toISOString()
            return key.startsWith(prefix) ? [{ id, key, initiated }] : []
          } catch {
            return [] // completed or aborted meanwhile
          }
        })
        res.writeHead(200, { "content-type": "application/xml" })
        res.end(
          `<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult><Bucket>${bucket}</Bucket>` +
            `<Prefix>${escape(prefix)}</Prefix><IsTruncated>false</IsTruncated>` +
            uploads.map((u) =>
              `<Upload><Key>${escape(u.key)}</Key><UploadId>${u.id}</UploadId><Initiated>${u.initiated}</Initiated></Upload>`
            ).join("") +
            `</ListMultipartUploadsResult>`
        )
        return
      }
      if (method === "DELETE" && uploadId !== null) {
        // AbortMultipartUpload, as S3 does it: the upload and its parts are gone.
        req.resume()
        aborted.add(path.basename(uploadId))
        rmSync(path.join(uploadsDir, path.basename(uploadId)), { recursive: true, force: true })
        res.writeHead(204)
        res.end()
        return
      }
      if (uploadId !== null && aborted.has(path.basename(uploadId))) {
        // A part sent after the abort: S3 answers NoSuchUpload.
        req.resume()
        res.writeHead(404, { "content-type": "application/xml" })
        res.end(noSuchUpload)
        return
      }
      const forward = http.request(
        { host: upstream.address, port: upstream.port, method, path: url, headers: req.headers },
        (answer) => {
          // A part that was in flight when its upload was aborted lands in s3rver's
          // upload folder after the abort: remove it again, as S3 frees an aborted
          // upload's storage.
          if (uploadId !== null) {
            answer.on("end", () => {
              if (aborted.has(path.basename(uploadId))) {
                rmSync(path.join(uploadsDir, path.basename(uploadId)), { recursive: true, force: true })
              }
            })
          }
          if (fault !== "truncate") {
            res.writeHead(answer.statusCode ?? 500, answer.headers)
            answer.pipe(res)
            return
          }
          const chunks: Array<Buffer> = []
          answer.on("data", (c: Buffer) => chunks.push(c))
          answer.on("end", () => {
            const body = Buffer.concat(chunks)
            res.writeHead(answer.statusCode ?? 500, answer.headers)
            // Half the body, then the connection drops.
            res.write(body.subarray(0, Math.floor(body.byteLength / 2)), () => res.socket?.destroy())
          })
        }
      )
      forward.on("error", () => res.socket?.destroy())
      req.pipe(forward)
    })
    const address = yield* Effect.acquireRelease(
      Effect.callback<AddressInfo>((resume) => {
        proxy.listen(0, "127.0.0.1", () => resume(Effect.succeed(proxy.address() as AddressInfo)))
      }),
      () =>
        Effect.callback<void>((resume) => {
          proxy.closeAllConnections()
          proxy.close(() => resume(Effect.void))
        })
    )
    const endpoint = `http://127.0.0.1:${address.port}`
    const client = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new S3Client({
          endpoint,
          region: "us-east-1",
          forcePathStyle: true,
          credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
          maxAttempts: 1
        })
      ),
      (c) => Effect.sync(() => c.destroy())
    )
    return {
      endpoint,
      directEndpoint: `http://${upstream.address}:${upstream.port}`,
      bucket,
      client,
      requests,
      setFaults: (p) => void (policy = p),
      pendingUploads: openUploads
    }
  })
