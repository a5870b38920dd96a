/**
 * `Plot`: a picture of training, as an SVG file a browser opens.
 *
 * `fromCsv` reads the `metrics.csv` of a `CsvLogger` (`epoch,step,<metrics…>`) and
 * draws one panel per kind of metric, against the global step: losses, accuracies,
 * then one panel for anything else. Per-step training metrics are thin lines;
 * epoch-level ones (validation, `*_epoch`, test) are lines with a dot per value.
 * Epoch boundaries are faint vertical lines. The Trainer's `loss` column is left out
 * when the module logs its own training loss (it is the same number).
 *
 * Pure: text in, text out; `CsvLogger` writes `metrics.svg` next to `metrics.csv`
 * at the end of fit, and `effect-trainer plot <metrics.csv>` does it on demand.
 *
 * @since 0.2.0
 */

/** One metric's points, in file order. */
export interface Series {
  readonly name: string
  readonly points: ReadonlyArray<{ readonly step: number; readonly value: number }>
  /** Logged once per epoch or evaluation (drawn with dots), rather than per step. */
  readonly sparse: boolean
}

/** What a metrics file holds, ready to draw. */
export interface Metrics {
  readonly series: ReadonlyArray<Series>
  /** The first step of each epoch after the first. */
  readonly epochStarts: ReadonlyArray<number>
}

/** Splits one CSV line (the logger quotes fields only when they need it). */
const splitCsvLine = (line: string): Array<string> => {
  const cells: Array<string> = []
  let cell = ""
  let quoted = false
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!
    if (quoted) {
      if (c === "\"" && line[i + 1] === "\"") {
        cell += "\""
        i++
      } else if (c === "\"") quoted = false
      else cell += c
    } else if (c === "\"") quoted = true
    else if (c === ",") {
      cells.push(cell)
      cell = ""
    } else cell += c
  }
  cells.push(cell)
  return cells
}

/**
 * Parses a `CsvLogger` metrics file. Rows whose step or value is not a number are
 * skipped (a partial last row after a crash).
 */
export const parseCsv = (text: string): Metrics => {
  const lines = text.split(/\r?\n/).filter((l) => l.length > 0)
  const header = lines.length > 0 ? splitCsvLine(lines[0]!) : []
  const stepAt = header.indexOf("step")
  const epochAt = header.indexOf("epoch")
  const names = header.filter((_, i) => i !== stepAt && i !== epochAt)
  const points = new Map<string, Array<{ step: number; value: number }>>(names.map((n) => [n, []]))
  const rowsOf = new Map<string, number>(names.map((n) => [n, 0]))
  const epochStarts: Array<number> = []
  let lastEpoch: number | undefined
  let rows = 0
  for (const line of lines.slice(1)) {
    const cells = splitCsvLine(line)
    const step = Number(cells[stepAt])
    if (cells[stepAt] === undefined || cells[stepAt] === "" || !Number.isFinite(step)) continue
    const epoch = Number(cells[epochAt])
    if (Number.isFinite(epoch) && lastEpoch !== undefined && epoch > lastEpoch) epochStarts.push(step)
    if (Number.isFinite(epoch)) lastEpoch = epoch
    rows++
    header.forEach((name, i) => {
      if (i === stepAt || i === epochAt) return
      const cell = cells[i]
      const value = Number(cell)
      if (cell === undefined || cell === "" || !Number.isFinite(value)) return
      points.get(name)!.push({ step, value })
      rowsOf.set(name, rowsOf.get(name)! + 1)
    })
  }
  const ownTrainingLoss = names.some((n) => n !== "loss" && /(^|_)loss(_step)?$/.test(n) && n.startsWith("train"))
  const series = names
    .filter((name) => points.get(name)!.length > 0 && !(name === "loss" && ownTrainingLoss))
    .map((name): Series => ({
      name,
      points: points.get(name)!,
      // A metric on fewer than a quarter of the rows is logged per epoch or evaluation.
      sparse: /^(val|test)_|_epoch$/.test(name) || rowsOf.get(name)! * 4 < rows
    }))
  return { series, epochStarts }
}

const palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]

const escapeXml = (text: string) => text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll("\"", "&quot;")

/** About five round tick values covering [min, max]. */
const ticks = (min: number, max: number): Array<number> => {
  if (!(max > min)) return [min]
  const raw = (max - min) / 5
  const power = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? raw
  const out: Array<number> = []
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)))
  return out
}

const tickText = (v: number) =>
  Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1) : String(Number(v.toPrecision(4)))

const panelKind = (name: string): string => /loss/.test(name) ? "loss" : /acc/.test(name) ? "accuracy" : "other"

/** Options of the drawing. */
export interface SvgOptions {
  /** The title on top (default "training metrics"). */
  readonly title?: string | undefined
  /** Width in pixels (default 960). */
  readonly width?: number | undefined
}

/** Draws the metrics as an SVG document (panels of 300 px, one per kind of metric). */
export const toSvg = (metrics: Metrics, options: SvgOptions = {}): string => {
  const width = options.width ?? 960
  const panelHeight = 300
  const top = 40
  const margin = { left: 70, right: 170, top: 30, bottom: 40 }
  const kinds = ["loss", "accuracy", "other"].filter((k) => metrics.series.some((s) => panelKind(s.name) === k))
  const height = top + Math.max(1, kinds.length) * panelHeight + 10
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="16">${escapeXml(options.title ?? "training metrics")}</text>`
  ]
  if (kinds.length === 0) {
    out.push(`<text x="${width / 2}" y="${top + 60}" text-anchor="middle" fill="#666">no metrics logged</text>`, "</svg>")
    return out.join("\n") + "\n"
  }
  const allSteps = metrics.series.flatMap((s) => s.points.map((p) => p.step))
  const minStep = Math.min(...allSteps)
  const maxStep = Math.max(...allSteps, minStep + 1)
  let colour = 0
  kinds.forEach((kind, k) => {
    const series = metrics.series.filter((s) => panelKind(s.name) === kind)
    const y0 = top + k * panelHeight
    const plot = { x: margin.left, y: y0 + margin.top, w: width - margin.left - margin.right, h: panelHeight - margin.top - margin.bottom }
    const values = series.flatMap((s) => s.points.map((p) => p.value))
    let lo = Math.min(...values)
    let hi = Math.max(...values)
    if (kind === "accuracy" && lo >= 0 && hi <= 1) hi = Math.min(1, hi + (hi - lo) * 0.05 || 0.05)
    if (hi === lo) {
      hi += Math.abs(hi) * 0.1 || 1
      lo -= Math.abs(lo) * 0.1 || 0
    }
    const sx = (step: number) => plot.x + ((step - minStep) / (maxStep - minStep)) * plot.w
    const sy = (value: number) => plot.y + plot.h - ((value - lo) / (hi - lo)) * plot.h
    out.push(`<g class="panel" data-kind="${kind}">`)
    out.push(`<text x="${plot.x}" y="${y0 + 20}" font-size="14" font-weight="bold">${kind}</text>`)
    out.push(`<rect x="${plot.x}" y="${plot.y}" width="${plot.w}" height="${plot.h}" fill="none" stroke="#999"/>`)
    for (const start of metrics.epochStarts) {
      const x = sx(start).toFixed(1)
      out.push(`<line x1="${x}" y1="${plot.y}" x2="${x}" y2="${plot.y + plot.h}" stroke="#ddd" stroke-dasharray="4 3"/>`)
    }
    for (const v of ticks(lo, hi)) {
      const y = sy(v).toFixed(1)
      out.push(`<line x1="${plot.x - 4}" y1="${y}" x2="${plot.x + plot.w}" y2="${y}" stroke="#eee"/>`)
      out.push(`<text x="${plot.x - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${tickText(v)}</text>`)
    }
    for (const v of ticks(minStep, maxStep)) {
      const x = sx(v).toFixed(1)
      out.push(`<line x1="${x}" y1="${plot.y + plot.h}" x2="${x}" y2="${plot.y + plot.h + 4}" stroke="#999"/>`)
      out.push(`<text x="${x}" y="${plot.y + plot.h + 16}" text-anchor="middle">${tickText(v)}</text>`)
    }
    out.push(`<text x="${plot.x + plot.w / 2}" y="${plot.y + plot.h + 32}" text-anchor="middle" fill="#444">step</text>`)
    series.forEach((s, i) => {
      const color = palette[colour++ % palette.length]!
      const d = s.points.map((p, j) => `${j === 0 ? "M" : "L"}${sx(p.step).toFixed(1)},${sy(p.value).toFixed(1)}`).join(" ")
      out.push(
        `<path d="${d}" fill="none" stroke="${color}" stroke-width="${s.sparse ? 2 : 1.2}"${
          s.sparse ? "" : " stroke-opacity=\"0.8\""
        }><title>${escapeXml(s.name)}</title></path>`
      )
      if (s.sparse) {
        for (const p of s.points) out.push(`<circle cx="${sx(p.step).toFixed(1)}" cy="${sy(p.value).toFixed(1)}" r="3" fill="${color}"/>`)
      }
      const ly = plot.y + 10 + i * 18
      out.push(`<line x1="${plot.x + plot.w + 12}" y1="${ly}" x2="${plot.x + plot.w + 32}" y2="${ly}" stroke="${color}" stroke-width="2"/>`)
      out.push(`<text x="${plot.x + plot.w + 38}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`)
    })
    out.push("</g>")
  })
  out.push("</svg>")
  return out.join("\n") + "\n"
}

/** `metrics.csv` text to an SVG document. */
export const fromCsv = (text: string, options: SvgOptions = {}): string => toSvg(parseCsv(text), options)

/** The name of the picture `CsvLogger` writes next to `metrics.csv`. */
export const svgFileName = "metrics.svg"
