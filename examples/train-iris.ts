/**
 * Train a small classifier on the iris flowers with the Trainer, save a checkpoint,
 * and report the test accuracy. Ctrl-C stops it cleanly (exit code 130).
 *
 *   node examples/train-iris.ts [--max-epochs 40] [--root runs/iris] [--backend auto|wasm|cpu]
 */
import { NodeServices } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { Device, Strategy, Trainer } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import { parseArgs } from "node:util"
import { iris, irisData } from "./iris.ts"

const { values } = parseArgs({
  options: {
    "max-epochs": { type: "string", default: "40" },
    root: { type: "string", default: "runs/iris" },
    backend: { type: "string", default: "auto" }
  }
})

const data = irisData()

const program = Effect.gen(function*() {
  const trainer = yield* Trainer.Trainer
  yield* trainer.fit(iris, data)
  const checkpoint = `${values.root}/final.ckpt`
  yield* trainer.saveCheckpoint(checkpoint)
  const test = yield* trainer.test(iris, data)
  console.log(`checkpoint: ${checkpoint}`)
  console.log(`test accuracy: ${(test.get("test_acc")! * 100).toFixed(1)}%`)
})

const backend = Device.backendChoices.find((b) => b === values.backend) ?? "auto"
const layers = Trainer.layer({ maxEpochs: Number(values["max-epochs"]), defaultRootDir: values.root, seed: 1 }).pipe(
  Layer.provideMerge(Strategy.singleDevice()),
  Layer.provideMerge(Device.layer(backend)),
  Layer.provideMerge(NodeServices.layer)
)

runMain(program.pipe(Effect.provide(layers)))
