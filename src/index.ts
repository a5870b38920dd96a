/**
 * effect-trainer: Lightning-style training on Effect and TensorFlow.js, with
 * checkpoints you can trust. Each module is re-exported as a namespace.
 *
 * @since 0.1.0
 */
export * as AsyncCheckpointIO from "./AsyncCheckpointIO.ts"
export * as Callback from "./Callback.ts"
export * as Checkpoint from "./Checkpoint.ts"
export * as CheckpointConnector from "./CheckpointConnector.ts"
export * as CheckpointIO from "./CheckpointIO.ts"
export * as ChecksumWorker from "./ChecksumWorker.ts"
export * as CsvLogger from "./CsvLogger.ts"
export * as DataModule from "./DataModule.ts"
export * as Device from "./Device.ts"
export * as FaultyFileSystem from "./FaultyFileSystem.ts"
export * as FileCheckpointIO from "./FileCheckpointIO.ts"
export * as GradientCheck from "./GradientCheck.ts"
export * as MemoryCheckpointIO from "./MemoryCheckpointIO.ts"
export * as ModelCheckpoint from "./ModelCheckpoint.ts"
export * as Plot from "./Plot.ts"
export * as PowerCutFileSystem from "./PowerCutFileSystem.ts"
export * as ProgressBar from "./ProgressBar.ts"
export * as Random from "./Random.ts"
export * as SafeTensors from "./SafeTensors.ts"
export * as Strategy from "./Strategy.ts"
export * as Trainer from "./Trainer.ts"
export * as TrainingModule from "./TrainingModule.ts"
export * as WasmKernels from "./WasmKernels.ts"
export { libraryVersion } from "./version.ts"
