/**
 * Byte-level helpers for building and editing checkpoint files in tests, written
 * independently of `src/SafeTensors.ts` (so that they can act as a second opinion):
 * split a file into header JSON and data, re-encode an edited header (padded, with a
 * correct `effect_trainer.header_crc32` when asked), and recompute tensor CRCs.
 */
import { crc32 } from "node:zlib"

export const headerCrcKey = "effect_trainer.header_crc32"
export const crcKey = "effect_trainer.crc32"

export interface Split {
  /** The declared header length (may be anything in a damaged file). */
  readonly headerLength: number
  readonly headerText: string
  readonly data: Uint8Array
}

/** Splits a well-formed file; undefined when the length prefix does not fit. */
export const split = (file: Uint8Array): Split | undefined => {
  if (file.byteLength < 8) return undefined
  const n = new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true)
  if (n > BigInt(file.byteLength - 8)) return undefined
  const headerLength = Number(n)
  return {
    headerLength,
    headerText: new TextDecoder().decode(file.subarray(8, 8 + headerLength)),
    data: file.subarray(8 + headerLength)
  }
}

const marker = new TextEncoder().encode(`"${headerCrcKey}":"`)

const findCrc = (header: Uint8Array): number => {
  outer: for (let i = header.length - marker.length - 8; i >= 0; i--) {
    for (let k = 0; k < marker.length; k++) if (header[i + k] !== marker[k]) continue outer
    return i + marker.length
  }
  return -1
}

/**
 * Encodes `headerText` (any text: it need not be JSON) and `data` as a file: length
 * prefix, the text padded with spaces to a multiple of 8, the data. With `fixCrc`, the
 * 8 hex digits after the last `"effect_trainer.header_crc32":"` are set to the CRC-32
 * the reader expects (computed with those digits read as zeros).
 */
export const encode = (headerText: string, data: Uint8Array, options?: { readonly fixCrc?: boolean; readonly pad?: boolean }) => {
  const text = new TextEncoder().encode(headerText)
  const padded = options?.pad === false ? text.length : Math.ceil(text.length / 8) * 8
  const out = new Uint8Array(8 + padded + data.byteLength)
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true)
  out.set(text, 8)
  out.fill(0x20, 8 + text.length, 8 + padded)
  out.set(data, 8 + padded)
  if (options?.fixCrc === true) {
    const header = out.subarray(8, 8 + padded)
    const at = findCrc(header)
    if (at >= 0) {
      const zeros = new TextEncoder().encode("00000000")
      const crc = crc32(header.subarray(at + 8), crc32(zeros, crc32(header.subarray(0, at))))
      header.set(new TextEncoder().encode((crc >>> 0).toString(16).padStart(8, "0")), at)
    }
  }
  return out
}

/**
 * Serialises a header object the way our writer lays it out: tensor entries, then
 * `__metadata__` with the header checksum last (as `"00000000"`, to be fixed by
 * `encode(..., { fixCrc: true })`).
 */
export const headerText = (header: Record<string, unknown>): string => {
  const metadata = header["__metadata__"]
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata) || !(headerCrcKey in metadata)) {
    return JSON.stringify(header)
  }
  const { [headerCrcKey]: _, ...rest } = metadata as Record<string, unknown>
  const out: Record<string, unknown> = Object.create(null)
  for (const [k, v] of Object.entries(header)) if (k !== "__metadata__") out[k] = v
  out["__metadata__"] = { ...rest, [headerCrcKey]: "00000000" }
  return JSON.stringify(out)
}

/** The CRC-32 of bytes as our writer stores it (8 lowercase hex digits). */
export const crcHex = (bytes: Uint8Array): string => (crc32(bytes) >>> 0).toString(16).padStart(8, "0")

/** A file written by another safetensors writer: no metadata of ours, no checksums. */
export const foreign = (header: Record<string, unknown>, data: Uint8Array, pad = true): Uint8Array =>
  encode(JSON.stringify(header), data, { pad })
