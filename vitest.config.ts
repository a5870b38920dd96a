import { defineConfig } from "vitest/config"

// The repository runs its own TypeScript sources: `effect-trainer` resolves to src/
// through the package's "@effect-trainer/source" export condition (also set for
// every npm script, and so for child processes, by .npmrc's node-options).
const conditions = ["@effect-trainer/source"]

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: conditions } },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000
  }
})
