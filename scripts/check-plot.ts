/**
 * `npm run check:plot`: draws a metrics.csv (the given one, or a synthetic run of 3
 * epochs) with `Plot`, renders the SVG in headless Chromium (Debian's `chromium`
 * package) and checks that a non-blank PNG comes out. Prints the SVG and PNG paths
 * to look at; exits 1 when Chromium is missing or renders nothing.
 *
 *   npm run check:plot -- [runs/mlp/logs/version_0/metrics.csv]
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { inflateSync } from "node:zlib"
import * as Plot from "../src/Plot.ts"

const synthetic = (): string => {
  const rows = ["epoch,step,train_loss,val_acc,val_loss"]
  for (let step = 1; step <= 60; step++) {
    const epoch = Math.floor((step - 1) / 20)
    rows.push(`${epoch},${step},${(2.3 * Math.exp(-step / 15) + 0.2 + 0.05 * Math.sin(step)).toFixed(4)},,`)
    if (step % 20 === 0) rows.push(`${epoch},${step},,${(0.8 + 0.04 * (step / 20)).toFixed(4)},${(0.6 - 0.1 * (step / 20)).toFixed(4)}`)
  }
  return rows.join("\n") + "\n"
}

const source = process.argv[2]
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "check-plot-"))
const svg = path.join(dir, Plot.svgFileName)
fs.writeFileSync(
  svg,
  Plot.fromCsv(source === undefined ? synthetic() : fs.readFileSync(source, "utf8"), { title: source ?? "synthetic run" })
)
const png = path.join(dir, "metrics.png")
execFileSync("chromium", ["--headless", "--no-sandbox", "--disable-gpu", `--screenshot=${png}`, "--window-size=1000,700", svg], {
  stdio: "ignore",
  timeout: 120_000
})

/** The share of non-white pixels of an 8-bit RGB(A) PNG (no interlace), from its IDAT data. */
const inkShare = (file: string): number => {
  const bytes = fs.readFileSync(file)
  const width = bytes.readUInt32BE(16)
  const height = bytes.readUInt32BE(20)
  const channels = bytes[25] === 6 ? 4 : 3
  const chunks: Array<Buffer> = []
  for (let at = 8; at < bytes.length;) {
    const length = bytes.readUInt32BE(at)
    if (bytes.toString("ascii", at + 4, at + 8) === "IDAT") chunks.push(bytes.subarray(at + 8, at + 8 + length))
    at += 12 + length
  }
  const raw = inflateSync(Buffer.concat(chunks))
  const stride = width * channels
  const previous = new Uint8Array(stride)
  const line = new Uint8Array(stride)
  let ink = 0
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!
    for (let x = 0; x < stride; x++) {
      const value = raw[y * (stride + 1) + 1 + x]!
      const a = x >= channels ? line[x - channels]! : 0
      const b = previous[x]!
      const c = x >= channels ? previous[x - channels]! : 0
      const p = a + b - c
      const predictor = filter === 1
        ? a
        : filter === 2
        ? b
        : filter === 3
        ? (a + b) >> 1
        : filter === 4
        ? (Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c)
        : 0
      line[x] = (value + predictor) & 0xff
    }
    for (let x = 0; x < width; x++) if (line[x * channels]! < 200) ink++
    previous.set(line)
  }
  return ink / (width * height)
}

const share = inkShare(png)
console.log(`svg: ${svg}`)
console.log(`png: ${png} (${(share * 100).toFixed(1)}% of the pixels drawn)`)
if (!(share > 0.005)) {
  console.error("error: the rendered plot is blank")
  process.exit(1)
}
