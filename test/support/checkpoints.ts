import * as Checkpoint from "../../src/Checkpoint.ts"
import type { HostTensor } from "../../src/Checkpoint.ts"
import { seeded } from "./random.ts"

/** A tensor of every dtype, including an empty one and a scalar, filled from a seed. */
export const everyDType = (seed: number): Record<string, HostTensor> => {
  const rng = seeded(seed)
  const out: Record<string, HostTensor> = {}
  for (const dtype of Checkpoint.DTypes) {
    const shape = [2, 3]
    const C = Checkpoint.arrayConstructor[dtype]
    const data = new C(6)
    const bytes = new Uint8Array(data.buffer)
    bytes.set(rng.bytes(bytes.length))
    if (dtype === "BOOL") (data as Uint8Array).forEach((v, i, a) => (a[i] = v & 1))
    out[`model/${dtype.toLowerCase()}`] = { dtype, shape, data } as HostTensor
  }
  out["model/scalar"] = Checkpoint.tensor("F32", [], Float32Array.of(3.5))
  out["model/empty"] = Checkpoint.tensor("F32", [3, 0], new Float32Array(0))
  out["optimizer/iter"] = Checkpoint.tensor("I32", [], Int32Array.of(7))
  out["optimizer/model/f32/m"] = Checkpoint.tensor("F32", [2, 3], Float32Array.from([1, 2, 3, 4, 5, 6]))
  return out
}

/** A small but complete checkpoint: every dtype, meta and extra metadata. */
export const sample = (seed = 1) =>
  Checkpoint.make({
    tensors: everyDType(seed),
    meta: {
      epoch: 2,
      globalStep: 40,
      loops: { fit: { batchesSeen: 40, position: { epoch: 2, batch: 0 } } },
      callbacks: { "ModelCheckpoint{monitor=val_loss}": { bestModelScore: 0.25 } },
      optimizer: { className: "Adam", config: { learningRate: 0.001, beta1: 0.9 } },
      hyperParameters: { hidden: 128, lr: 0.001 },
      user: { note: "hello" }
    },
    extraMetadata: { source: "test" }
  })

/** A float32 checkpoint of about `bytes` bytes, in `count` tensors. */
export const floats = (bytes: number, count = 1) => {
  const tensors: Record<string, HostTensor> = {}
  const per = Math.max(1, Math.floor(bytes / 4 / count))
  for (let i = 0; i < count; i++) {
    const data = new Float32Array(per)
    for (let k = 0; k < per; k += 97) data[k] = i + k
    tensors[`model/layer${i}/kernel`] = Checkpoint.tensor("F32", [per], data)
  }
  return Checkpoint.make({ tensors, meta: { epoch: 0, globalStep: 0 } })
}
