/**
 * Writes a checkpoint for examples/read_checkpoint.py: a tensor of each common dtype
 * with known values, training metadata and one entry of your own, through the default
 * file store (so the file is exactly what a training run writes).
 *
 *   node examples/write-for-python.ts [--out runs/for-python.ckpt]
 *   python3 examples/read_checkpoint.py runs/for-python.ckpt
 *
 * It prints the values it wrote (`expected: {json}`), the first 8 of each tensor, as
 * numbers, so that the reader's output can be checked against them.
 */
import { Effect } from "effect"
import { Checkpoint, CheckpointIO, FileCheckpointIO } from "effect-trainer"
import { runMain } from "effect-trainer/cli"
import * as path from "node:path"
import { parseArgs } from "node:util"

const { values } = parseArgs({ options: { out: { type: "string", default: "runs/for-python.ckpt" } } })
const out = path.resolve(values.out)

/** Each tensor, and its values as numbers (F16 and BF16 are stored as raw bit patterns). */
const contents: Record<string, { readonly tensor: Checkpoint.HostTensor; readonly values: ReadonlyArray<number> }> = {
  "model/dense/kernel": plain(Checkpoint.tensor("F32", [2, 3], Float32Array.of(0.5, -1.25, 3, 4.75, 0.1, 1e6))),
  "model/dense/bias": plain(Checkpoint.tensor("F32", [3], Float32Array.of(0, -0.5, 2))),
  "model/ids": plain(Checkpoint.tensor("I32", [4], Int32Array.of(-2, 0, 7, 2147483647))),
  "model/mask": plain(Checkpoint.tensor("BOOL", [2, 2], Uint8Array.of(1, 0, 0, 1))),
  "model/pi": plain(Checkpoint.tensor("F64", [], Float64Array.of(Math.PI))),
  "model/counts": plain(Checkpoint.tensor("I64", [3], BigInt64Array.of(-9007199254740991n, 0n, 42n))),
  "model/bytes": plain(Checkpoint.tensor("U8", [5], Uint8Array.of(0, 1, 127, 128, 255))),
  // IEEE half floats 1, -2, 0.5 and 65504 (the largest), as bits.
  "model/half": { tensor: Checkpoint.tensor("F16", [4], Uint16Array.of(0x3c00, 0xc000, 0x3800, 0x7bff)), values: [1, -2, 0.5, 65504] },
  // bfloat16 1, 3 and -5: the top 16 bits of the float32.
  "model/bhalf": { tensor: Checkpoint.tensor("BF16", [3], Uint16Array.of(0x3f80, 0x4040, 0xc0a0)), values: [1, 3, -5] },
  "model/empty": plain(Checkpoint.tensor("F32", [3, 0], new Float32Array(0))),
  "optimizer/0000/iter": plain(Checkpoint.tensor("I32", [], Int32Array.of(42)))
}

function plain(tensor: Checkpoint.HostTensor) {
  return { tensor, values: Array.from(tensor.data as ArrayLike<number | bigint>, Number) }
}

const checkpoint = Checkpoint.make({
  tensors: Object.fromEntries(Object.entries(contents).map(([name, c]) => [name, c.tensor])),
  meta: {
    epoch: 3,
    globalStep: 42,
    optimizer: { className: "Adam", config: { learningRate: 0.05 } },
    hyperParameters: { hidden: 16, lr: 0.05 }
  },
  // Your own string entries go into __metadata__ alongside ours.
  extraMetadata: { written_by: "examples/write-for-python.ts" }
})

const program = Effect.gen(function*() {
  const io = yield* CheckpointIO.CheckpointIO
  yield* io.save(checkpoint, out)
  console.log(`wrote ${out}`)
  const expected = Object.fromEntries(
    Object.entries(contents).map(([name, c]) => [name, { dtype: c.tensor.dtype, shape: c.tensor.shape, values: c.values.slice(0, 8) }])
  )
  console.log(`expected: ${JSON.stringify({ tensors: expected, epoch: 3, globalStep: 42 })}`)
})

runMain(program.pipe(Effect.provide(FileCheckpointIO.layerNode)))
