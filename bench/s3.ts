/**
 * bench:s3: S3CheckpointIO save and load of a 256 MB float32 checkpoint (checksums on)
 * against a raw single PUT / GET of the same bytes to the same S3-protocol server
 * (s3rver on loopback, in its own process, as a real server would be), and a raw
 * parallel multipart upload of the same bytes against the single PUT; interleaved
 * repeats (the order alternates), medians and spreads.
 *
 *   npm run bench:s3 [-- --mb 256 --tensors 16 --repeats 5 --part-mb 16 --concurrency 8 --json <file>]
 *
 * Ratios are throughput ratios (their time ÷ our time): `--json` writes
 * `save_vs_put` (raw single PUT ÷ save), `load_vs_get` (raw GET ÷ load),
 * `multipart_vs_put` (raw single PUT ÷ raw parallel multipart of the same bytes) and
 * `bytes`. The save uses the store's own choice (multipart above `--part-mb`).
 * The raw GET reads the whole object into one buffer, as a load must.
 *
 * `--serve` is the server process: s3rver (with the test suite's read-after-write fix,
 * test/support/s3Server.ts) in a temporary directory; it prints its endpoint and runs
 * until its stdin closes.
 */
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand
} from "@aws-sdk/client-s3"
import { Effect, Exit, Scope } from "effect"
import { spawn } from "node:child_process"
import * as fsp from "node:fs/promises"
import { createInterface } from "node:readline"
import { parseArgs } from "node:util"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as S3CheckpointIO from "../src/S3CheckpointIO.ts"
import { makeCheckpoint, median, time } from "./io.ts"

const bucket = "bench"
const credentials = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" }

/** The server process: s3rver on loopback until stdin closes. */
const serve = async () => {
  const { testS3 } = await import("../test/support/s3Server.ts")
  const scope = Effect.runSync(Scope.make())
  const s3 = await Effect.runPromise(Effect.provideService(testS3(bucket), Scope.Scope, scope))
  console.log(JSON.stringify({ endpoint: s3.directEndpoint }))
  process.stdin.resume()
  process.stdin.on("end", () => void Effect.runPromise(Scope.close(scope, Exit.void)).then(() => process.exit(0)))
}

/** Starts the server process; answers its endpoint and a stop function. */
const startServer = async () => {
  const child = spawn(process.execPath, [...process.execArgv, import.meta.filename, "--serve"], {
    stdio: ["pipe", "pipe", "inherit"]
  })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", resolve)
    child.once("exit", (code) => reject(new Error(`the s3rver process exited with ${code}`)))
  })
  const { endpoint } = JSON.parse(line) as { endpoint: string }
  const stop = () =>
    new Promise<void>((resolve) => {
      child.once("exit", () => resolve())
      child.stdin!.end()
    })
  return { endpoint, stop }
}

/** A raw parallel multipart upload of `bytes` (`partSize` parts, `concurrency` at once). */
const rawMultipart = async (client: S3Client, key: string, bytes: Uint8Array, partSize: number, concurrency: number) => {
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }))
  const count = Math.ceil(bytes.byteLength / partSize)
  const etags = new Array<string>(count)
  let next = 0
  const worker = async () => {
    while (next < count) {
      const i = next++
      const body = bytes.subarray(i * partSize, Math.min(bytes.byteLength, (i + 1) * partSize))
      const answer = await client.send(
        new UploadPartCommand({ Bucket: bucket, Key: key, UploadId, PartNumber: i + 1, Body: body, ContentLength: body.byteLength })
      )
      etags[i] = answer.ETag!
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  await client.send(
    new CompleteMultipartUploadCommand({
      Bucket: bucket,
      Key: key,
      UploadId,
      MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) }
    })
  )
}

/** A raw GET of the whole object into one buffer of its size. */
const rawGet = async (client: S3Client, key: string): Promise<Uint8Array> => {
  const answer = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))
  const out = new Uint8Array(Number(answer.ContentLength))
  let at = 0
  for await (const chunk of answer.Body as AsyncIterable<Uint8Array>) {
    out.set(chunk, at)
    at += chunk.byteLength
  }
  if (at !== out.byteLength) throw new Error(`GET ${key}: ${at} of ${out.byteLength} bytes`)
  return out
}

/** Raw timings in seconds per repeat. */
export interface S3Samples {
  readonly bytes: number
  readonly put: Array<number>
  readonly multipart: Array<number>
  readonly save: Array<number>
  readonly get: Array<number>
  readonly load: Array<number>
}

/** Measures save/load against raw PUT/GET and raw multipart, interleaved, against `endpoint`. */
export const measureS3 = async (options: {
  readonly endpoint: string
  readonly totalBytes: number
  readonly tensorCount: number
  readonly repeats: number
  readonly partSize: number
  readonly concurrency: number
}): Promise<S3Samples> => {
  const { concurrency, endpoint, partSize, repeats } = options
  const client = new S3Client({ endpoint, region: "us-east-1", forcePathStyle: true, credentials })
  const scope = Effect.runSync(Scope.make())
  const io = await Effect.runPromise(
    Effect.provideService(
      S3CheckpointIO.make({ endpoint, region: "us-east-1", forcePathStyle: true, credentials, bucket, partSize, concurrency }),
      Scope.Scope,
      scope
    )
  )
  try {
    const ckpt = makeCheckpoint(options.totalBytes, options.tensorCount)
    const run = <A>(effect: Effect.Effect<A, unknown>) => Effect.runPromise(effect)
    // The same bytes as the checkpoint's object, for the raw side; also the warm-up.
    await run(io.save(ckpt, "bench.ckpt"))
    const bytes = await rawGet(client, "bench.ckpt")
    if (bytes.byteLength < Checkpoint.byteSize(ckpt)) throw new Error(`an object of ${bytes.byteLength} bytes`)
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: "raw.bin", Body: bytes, ContentLength: bytes.byteLength }))
    await rawMultipart(client, "multipart.bin", bytes, partSize, concurrency)
    await run(io.load("bench.ckpt"))

    const samples: S3Samples = { bytes: bytes.byteLength, put: [], multipart: [], save: [], get: [], load: [] }
    const steps = [
      () =>
        time(() => client.send(new PutObjectCommand({ Bucket: bucket, Key: "raw.bin", Body: bytes, ContentLength: bytes.byteLength })))
          .then((s) => void samples.put.push(s)),
      () => time(() => run(io.save(ckpt, "bench.ckpt"))).then((s) => void samples.save.push(s)),
      () => time(() => rawMultipart(client, "multipart.bin", bytes, partSize, concurrency)).then((s) => void samples.multipart.push(s)),
      () => time(() => rawGet(client, "raw.bin")).then((s) => void samples.get.push(s)),
      () => time(() => run(io.load("bench.ckpt"))).then((s) => void samples.load.push(s))
    ]
    for (let r = 0; r < repeats; r++) {
      // Alternate the order so that drift in the machine's load hits both sides.
      for (const step of r % 2 === 0 ? steps : [...steps].reverse()) await step()
    }
    return samples
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    client.destroy()
  }
}

const main = async () => {
  const { values } = parseArgs({
    options: {
      serve: { type: "boolean", default: false },
      mb: { type: "string", default: "256" },
      tensors: { type: "string", default: "16" },
      repeats: { type: "string", default: "5" },
      "part-mb": { type: "string", default: "16" },
      concurrency: { type: "string", default: "8" },
      json: { type: "string" }
    }
  })
  if (values.serve) return serve()
  const server = await startServer()
  const partSize = Math.round(Number(values["part-mb"]) * 1024 * 1024)
  const concurrency = Number(values.concurrency)
  const repeats = Number(values.repeats)
  const samples = await measureS3({
    endpoint: server.endpoint,
    totalBytes: Math.round(Number(values.mb) * 1024 * 1024),
    tensorCount: Number(values.tensors),
    repeats,
    partSize,
    concurrency
  }).finally(server.stop)
  const m = {
    put: median(samples.put),
    multipart: median(samples.multipart),
    save: median(samples.save),
    get: median(samples.get),
    load: median(samples.load)
  }
  const result = {
    save_vs_put: m.put / m.save,
    load_vs_get: m.get / m.load,
    multipart_vs_put: m.put / m.multipart,
    bytes: samples.bytes
  }
  const mbps = (s: number) => `${(samples.bytes / s / 1e6).toFixed(0)} MB/s`
  const spread = (xs: ReadonlyArray<number>) => xs.map((x) => x.toFixed(3)).join(" ")
  console.log(
    `checkpoint: ${(samples.bytes / 1048576).toFixed(1)} MiB, s3rver on loopback, parts of ${values["part-mb"]} MiB, ` +
      `concurrency ${concurrency}, ${repeats} repeats, medians`
  )
  console.log(`raw single PUT      ${m.put.toFixed(3)} s  ${mbps(m.put)}`)
  console.log(
    `raw multipart       ${m.multipart.toFixed(3)} s  ${mbps(m.multipart)}   multipart_vs_put = ${result.multipart_vs_put.toFixed(3)}`
  )
  console.log(
    `save (crc)          ${m.save.toFixed(3)} s  ${mbps(m.save)}   save_vs_put = ${result.save_vs_put.toFixed(3)} (target >= 0.85)`
  )
  console.log(`raw GET             ${m.get.toFixed(3)} s  ${mbps(m.get)}`)
  console.log(
    `load (crc)          ${m.load.toFixed(3)} s  ${mbps(m.load)}   load_vs_get = ${result.load_vs_get.toFixed(3)} (target >= 0.85)`
  )
  console.log(`spread: save ${spread(samples.save)} | PUT ${spread(samples.put)} | multipart ${spread(samples.multipart)}`)
  console.log(`spread: load ${spread(samples.load)} | GET ${spread(samples.get)}`)
  if (values.json !== undefined) await fsp.writeFile(values.json, JSON.stringify(result, null, 2) + "\n")
}

if (import.meta.main) await main()
