/**
 * `CheckpointFilename`: checkpoint file names from templates, pure (Lightning's
 * `ModelCheckpoint._format_checkpoint_name`).
 *
 * A template is literal text, `{{` / `}}` for braces, and fields `{name}` or
 * `{name:spec}` with a Python format spec (`{val_loss:.2f}`, `{epoch:03d}`): fill,
 * align, sign, `z`, `#`, `0`, width, grouping, precision and the types
 * `b d e E f F g G n o x X %`, formatted as Python formats them. `renderTemplate`
 * fills the fields from metrics (a missing metric renders as 0, Lightning's rule;
 * `epoch` and `step` are integers) and `sanitizeFileName` makes the result one file
 * name: no template or metric (`{val/loss}`, `../x`) can name a path outside the
 * checkpoint directory. Nothing here does I/O.
 *
 * @since 0.3.0
 */
/**
 * A parsed Python format spec (the subset that makes sense for numbers).
 *
 * @since 0.3.0
 */
export interface FormatSpec {
  readonly fill: string
  readonly align: "<" | ">" | "=" | "^" | undefined
  readonly sign: "+" | "-" | " " | undefined
  readonly zeroNegative: boolean
  readonly alternate: boolean
  readonly zero: boolean
  readonly width: number
  readonly grouping: "," | "_" | undefined
  readonly precision: number | undefined
  readonly type: string | undefined
}

/**
 * A piece of a parsed file name template.
 *
 * @since 0.3.0
 */
export type Segment =
  | { readonly _tag: "Literal"; readonly text: string }
  | { readonly _tag: "Field"; readonly name: string; readonly spec: FormatSpec }

const specPattern = /^(?:([\s\S])?([<>=^]))?([-+ ])?(z)?(#)?(0)?(\d+)?([,_])?(?:\.(\d+))?([bdeEfFgGnoxX%])?$/

const parseSpec = (text: string): FormatSpec | undefined => {
  const m = specPattern.exec(text)
  if (m === null) return undefined
  return {
    fill: m[1] ?? " ",
    align: m[2] as FormatSpec["align"],
    sign: m[3] as FormatSpec["sign"],
    zeroNegative: m[4] !== undefined,
    alternate: m[5] !== undefined,
    zero: m[6] !== undefined,
    width: m[7] === undefined ? 0 : Number(m[7]),
    grouping: m[8] as FormatSpec["grouping"],
    precision: m[9] === undefined ? undefined : Number(m[9]),
    type: m[10]
  }
}

/**
 * Parses a file name template: literal text, `{{` / `}}` for braces, and fields
 * `{name}` or `{name:spec}`. Fails with the reason on malformed input.
 */
export const parseTemplate = (template: string): Array<Segment> | string => {
  const segments: Array<Segment> = []
  let literal = ""
  let i = 0
  while (i < template.length) {
    const ch = template[i]!
    if (ch === "{" && template[i + 1] === "{") {
      literal += "{"
      i += 2
    } else if (ch === "}" && template[i + 1] === "}") {
      literal += "}"
      i += 2
    } else if (ch === "}") {
      return `a single "}" at position ${i} (write "}}" for a brace)`
    } else if (ch === "{") {
      const end = template.indexOf("}", i + 1)
      if (end === -1) return `the field at position ${i} has no closing "}"`
      const body = template.slice(i + 1, end)
      if (body.includes("{")) return `nested braces in the field "{${body}}"`
      const colon = body.indexOf(":")
      const name = colon === -1 ? body : body.slice(0, colon)
      if (name.length === 0) return `an empty field name at position ${i}`
      const spec = parseSpec(colon === -1 ? "" : body.slice(colon + 1))
      if (spec === undefined) return `unsupported format spec in "{${body}}"`
      if (literal.length > 0) segments.push({ _tag: "Literal", text: literal })
      literal = ""
      segments.push({ _tag: "Field", name, spec })
      i = end + 1
    } else {
      literal += ch
      i += 1
    }
  }
  if (literal.length > 0) segments.push({ _tag: "Literal", text: literal })
  return segments
}

const twoDigitExponent = (exponent: number) => `${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`

/** `abs` in Python's exponent notation with `digits` after the point: `1.50e-07`. */
const exponential = (abs: number, digits: number | undefined): string => {
  const text = digits === undefined ? abs.toExponential() : abs.toExponential(digits)
  const [mantissa, exponent] = text.split("e") as [string, string]
  return `${mantissa}e${twoDigitExponent(Number(exponent))}`
}

/** Python's `repr` of a finite non-negative float: shortest digits, `1.0`, `1e-05`, `1e+16`. */
const floatRepr = (abs: number): string => {
  if (abs === 0) return "0.0"
  const [mantissa, exponentText] = abs.toExponential().split("e") as [string, string]
  const exponent = Number(exponentText)
  if (exponent < -4 || exponent >= 16) return `${mantissa}e${twoDigitExponent(exponent)}`
  const digits = mantissa.replace(".", "")
  if (exponent >= 0) {
    const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0")
    return `${whole}.${digits.slice(exponent + 1) || "0"}`
  }
  return `0.${"0".repeat(-exponent - 1)}${digits}`
}

const stripZeros = (text: string): string => {
  const [mantissa, exponent] = text.split("e") as [string, string | undefined]
  const stripped = mantissa.includes(".") ? mantissa.replace(/0+$/, "").replace(/\.$/, "") : mantissa
  return exponent === undefined ? stripped : `${stripped}e${exponent}`
}

/** Python's `g` format of a finite non-negative float. */
const general = (abs: number, precision: number, alternate: boolean): { text: string; fixed: boolean } => {
  const p = precision === 0 ? 1 : precision
  const exponent = abs === 0 ? 0 : Number(abs.toExponential(p - 1).split("e")[1])
  const fixed = exponent >= -4 && exponent < p
  const text = fixed ? abs.toFixed(p - 1 - exponent) : exponential(abs, p - 1)
  return { text: alternate ? text : stripZeros(text), fixed }
}

const group = (digits: string, separator: string): string => {
  const dot = digits.search(/[.e%]/)
  const whole = dot === -1 ? digits : digits.slice(0, dot)
  if (!/^\d+$/.test(whole)) return digits
  return whole.replace(/\B(?=(\d{3})+(?!\d))/g, separator) + (dot === -1 ? "" : digits.slice(dot))
}

/**
 * Formats `value` with a Python format spec; `integer` says whether it is an int (epoch, step).
 *
 * @since 0.3.0
 */
export const formatValue = (value: number, integer: boolean, spec: FormatSpec): string => {
  const type = spec.type
  const upper = type === "E" || type === "F" || type === "G" || type === "X"
  let negative = value < 0 || Object.is(value, -0)
  const abs = Math.abs(value)
  let body: string
  if (Number.isNaN(value)) {
    body = "nan"
    negative = false
  } else if (!Number.isFinite(value)) {
    body = "inf"
  } else {
    switch (type) {
      case "d":
        body = String(Math.trunc(abs))
        break
      case "b":
        body = Math.trunc(abs).toString(2)
        break
      case "o":
        body = Math.trunc(abs).toString(8)
        break
      case "x":
      case "X":
        body = Math.trunc(abs).toString(16)
        break
      case "f":
      case "F":
        body = abs.toFixed(spec.precision ?? 6)
        break
      case "e":
      case "E":
        body = exponential(abs, spec.precision ?? 6)
        break
      case "%":
        body = `${(abs * 100).toFixed(spec.precision ?? 6)}%`
        break
      case "g":
      case "G":
        body = general(abs, spec.precision ?? 6, spec.alternate).text
        break
      case "n":
        body = integer ? String(abs) : general(abs, spec.precision ?? 6, spec.alternate).text
        break
      default: {
        if (spec.precision !== undefined) {
          const g = general(abs, spec.precision, spec.alternate)
          body = g.fixed && !g.text.includes(".") && !integer ? `${g.text}.0` : g.text
        } else {
          body = integer && Number.isInteger(abs) ? String(abs) : floatRepr(abs)
        }
      }
    }
  }
  if (upper) body = body.toUpperCase()
  if (spec.grouping !== undefined) body = group(body, spec.grouping)
  if (negative && spec.zeroNegative && /^[0.]+(e[+-]\d+)?%?$/i.test(body.replace(/[,_]/g, ""))) negative = false
  const sign = negative ? "-" : spec.sign === "+" ? "+" : spec.sign === " " ? " " : ""
  const align = spec.align ?? (spec.zero ? "=" : ">")
  const fill = spec.align === undefined && spec.zero ? "0" : spec.fill
  const pad = Math.max(0, spec.width - sign.length - body.length)
  switch (align) {
    case "<":
      return sign + body + fill.repeat(pad)
    case "^":
      return fill.repeat(Math.floor(pad / 2)) + sign + body + fill.repeat(pad - Math.floor(pad / 2))
    case "=":
      return sign + fill.repeat(pad) + body
    default:
      return fill.repeat(pad) + sign + body
  }
}

/**
 * Makes a rendered name a single, visible file name: path separators and control
 * characters become `_`, and so do leading dots. Whatever a template or a metric name
 * holds (`val/loss`, `..`, `/abs`), the result names a file directly inside `dirpath`.
 */
export const sanitizeFileName = (name: string): string => {
  const flat = name.replace(/[/\\\u0000-\u001f\u007f]/g, "_").replace(/^\.+/, (dots) => "_".repeat(dots.length))
  return flat.length === 0 ? "_" : flat
}

/** Metrics that format as integers. */
const integerFields = new Set(["epoch", "step"])

/**
 * Renders a template with metric values, like Lightning's `_format_checkpoint_name`
 * (a missing metric renders as 0), then sanitises it (`sanitizeFileName`). No
 * extension, no directory.
 */
export const renderTemplate = (
  segments: ReadonlyArray<Segment>,
  metrics: ReadonlyMap<string, number>,
  autoInsertMetricName: boolean,
  equalsChar: string = "="
): string => {
  let out = ""
  for (const segment of segments) {
    if (segment._tag === "Literal") {
      out += segment.text
      continue
    }
    const value = metrics.get(segment.name)
    const integer = value === undefined || integerFields.has(segment.name)
    out += (autoInsertMetricName ? `${segment.name}${equalsChar}` : "") + formatValue(value ?? 0, integer, segment.spec)
  }
  return sanitizeFileName(out)
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/**
 * A pattern for the file names a template renders (its fields: anything), with any
 * version suffix (`<joinChar>v<N>`, captured) and the extension: how a fresh
 * `ModelCheckpoint` finds the last checkpoints of an earlier run.
 *
 * @since 0.3.0
 */
export const lastNamePattern = (segments: ReadonlyArray<Segment>, joinChar: string, extension: string): RegExp =>
  new RegExp(
    `^${segments.map((s) => (s._tag === "Literal" ? escapeRegExp(sanitizeFileName(s.text)) : ".+?")).join("")}` +
      `(?:${escapeRegExp(joinChar)}v(\\d+))?${escapeRegExp(extension)}$`
  )
