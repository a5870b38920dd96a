/**
 * `npm run check:gradients`: the cross-backend gradient check (`GradientCheck`) at
 * full size: every case on cpu, then on wasm and on `tensorflow` where tfjs-node is
 * installed; prints one line per layer and backend (its worst case), then every case.
 * Exits 1 when a case fails (cases tfjs cannot differentiate on any backend are `n/a`).
 *
 *   npm run check:gradients -- [--quick] [--seed N]
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect } from "effect"
import { parseArgs } from "node:util"
import * as Device from "../src/Device.ts"
import * as GradientCheck from "../src/GradientCheck.ts"

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    seed: { type: "string", default: "20" }
  }
})

const program = Effect.gen(function*() {
  const sizes = values.quick ? GradientCheck.quick : GradientCheck.full
  const cases = GradientCheck.cases(sizes)
  const seed = Number(values.seed)
  yield* Console.log(`gradient check: ${cases.length} cases, sizes ${JSON.stringify(sizes)}, seed ${seed}, against cpu`)
  const backends: Array<Device.BackendName> = []
  for (const backend of ["wasm", "tensorflow"] as const) {
    // Whether the backend comes up at all (tensorflow needs the optional tfjs-node).
    const available = yield* Effect.result(Effect.scoped(Device.make(backend)))
    if (available._tag === "Failure") yield* Console.log(`${backend}: not checked (${available.failure.reason})`)
    else backends.push(backend)
  }
  const rows = yield* GradientCheck.check({ cases, backends, seed })
  yield* Console.log("\n" + GradientCheck.table(rows, true) + "\n")
  yield* Console.log(GradientCheck.table(rows))
  const failed = rows.filter((row) => !row.pass && row.unsupported === undefined)
  yield* Console.log(`\n${rows.length - failed.length} of ${rows.length} rows pass or are n/a; ${failed.length} fail`)
  if (failed.length > 0) process.exitCode = 1
})

NodeRuntime.runMain(program)
