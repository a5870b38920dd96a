/**
 * `npm run test:reliability`: every reliability category with its full trial counts
 * (200 SIGKILLs, every power-cut point, 10,000 fuzzed files, storage faults at each
 * protocol step, 40 SIGINT/SIGTERM runs, hostile inputs), then a summary table.
 * Exits 1 when any trial failed; each failure names its seed.
 *
 *   npm run test:reliability -- [--quick] [--seed N] [--only crash,fuzz,…] [--verbose]
 */
import { parseArgs } from "node:util"
import { categories, type Category, full, quick, runAll, summary } from "../test/reliability/runner.ts"

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    seed: { type: "string", default: "1" },
    only: { type: "string" },
    verbose: { type: "boolean", default: false }
  }
})
const only = values.only?.split(",").map((s) => s.trim()) as Array<Category> | undefined
for (const c of only ?? []) {
  if (!categories.includes(c)) {
    console.error(`unknown category ${c}; one of ${categories.join(", ")}`)
    process.exit(2)
  }
}
const seed = Number(values.seed)
const counts = values.quick ? quick : full
console.log(`reliability: seed ${seed}, ${values.quick ? "quick" : "full"} counts ${JSON.stringify(counts)}`)
const results = await runAll({ counts, seed, only, log: (line) => console.log(line), verbose: values.verbose })
console.log("\n" + summary(results))
process.exit(results.some((r) => r.failures.length > 0) ? 1 : 0)
