import * as Random from "../../src/Random.ts"

/** A seeded generator over `src/Random.ts`, so that every "random" test is reproducible. */
export const seeded = (seed: number) => {
  const state: Random.State = { value: seed >>> 0 }
  const next = (): number => {
    const [s, r] = Random.next(state.value)
    state.value = s
    return r
  }
  const int = (maxExclusive: number): number => Math.floor(next() * maxExclusive)
  return {
    next,
    int,
    /** An integer in [lo, hi]. */
    range: (lo: number, hi: number): number => lo + int(hi - lo + 1),
    pick: <A>(items: ReadonlyArray<A>): A => items[int(items.length)]!,
    chance: (p: number): boolean => next() < p,
    bytes: (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256))
  }
}
