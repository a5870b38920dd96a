/**
 * A small seeded pseudo-random generator (mulberry32) whose whole state is one
 * 32-bit integer, so that it can be saved in a checkpoint and restored exactly.
 * Used for data shuffling and splits; never `Math.random`.
 *
 * @since 0.1.0
 */

/** Advances a mulberry32 state; returns the next state and a float in [0, 1). */
export const next = (state: number): readonly [number, number] => {
  const s = (state + 0x6d2b79f5) >>> 0
  let t = s
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return [s, ((t ^ (t >>> 14)) >>> 0) / 4294967296]
}

/** Mixes several integers into one seed (for per-epoch seeds derived from a base seed). */
export const mix = (...parts: ReadonlyArray<number>): number => {
  let h = 0x811c9dc5
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x01000193) >>> 0
    h = Math.imul(h ^ (h >>> 13), 0x5bd1e995) >>> 0
  }
  return h >>> 0
}

/** A permutation of 0..n-1 (Fisher-Yates) determined by `seed`. */
export const permutation = (n: number, seed: number): Int32Array => {
  const out = new Int32Array(n)
  for (let i = 0; i < n; i++) out[i] = i
  let state = seed >>> 0
  for (let i = n - 1; i > 0; i--) {
    const [s, r] = next(state)
    state = s
    const j = Math.floor(r * (i + 1))
    const tmp = out[i]!
    out[i] = out[j]!
    out[j] = tmp
  }
  return out
}

/** A generator's state, advanced in place. */
export interface State {
  value: number
}

/**
 * Runs synchronous `f` with `Math.random` drawing from `state`, then puts the real
 * `Math.random` back. TensorFlow.js seeds every unseeded random op (initializers,
 * dropout, shuffles) from `Math.random`, so this makes the user's step code
 * reproducible, and `state.value` is the whole random state to checkpoint. Only the
 * code inside `f` sees the seeded stream: spans, temporary file names and other
 * fibers keep the real one, so they cannot shift it.
 */
export const withSeeded = <A>(state: State, f: () => A): A => {
  const original = Math.random
  Math.random = () => {
    const [s, r] = next(state.value)
    state.value = s
    return r
  }
  try {
    return f()
  } finally {
    Math.random = original
  }
}
