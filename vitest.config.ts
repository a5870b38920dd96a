import { defineConfig } from "vitest/config"

// The repository runs its own TypeScript sources: `effect-trainer` resolves to src/
// through the package's "@effect-trainer/source" export condition (also set for
// every npm script, and so for child processes, by .npmrc's node-options).
const conditions = ["@effect-trainer/source"]

/**
 * The second tier: harnesses that spawn and kill processes or run benchmarks end to
 * end. `npm test` runs the quick tier ("quick"), `npm run test:slow` this one; CI
 * (.ci/run) runs both. Nothing here has a wall-clock limit but a hang watchdog.
 */
const slow = [
  "test/bench-suite.test.ts",
  "test/bench.test.ts",
  "test/DataParallel.test.ts",
  "test/S3CheckpointIO.test.ts",
  "test/cli.test.ts",
  "test/examples-sighup.test.ts",
  "test/examples-terminal.test.ts",
  "test/examples-s3.test.ts",
  "test/reliability/crash.test.ts",
  "test/reliability/interrupt.test.ts",
  "test/reliability/retention.test.ts"
]

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: conditions } },
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    projects: [
      { extends: true, test: { name: "quick", include: ["test/**/*.test.ts"], exclude: slow } },
      { extends: true, test: { name: "slow", include: slow } }
    ]
  }
})
