import * as Checkpoint from "../../src/Checkpoint.ts"
import type { HostTensor } from "../../src/Checkpoint.ts"

export { everyDType, sample } from "../../src/testing/CheckpointIOSuite.ts"

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
