/**
 * `effect-trainer/testing`: what a user needs to test a program or a store built on
 * effect-trainer. The `CheckpointIO` conformance suite for `@effect/vitest`, stores
 * and file systems for tests (memory, recording, fault-injecting, power-cutting).
 *
 * @example
 * ```ts
 * import { CheckpointIOSuite, MemoryCheckpointIO, RecordingCheckpointIO } from "effect-trainer/testing"
 * ```
 *
 * @since 0.2.0
 */
export * as FaultyFileSystem from "../FaultyFileSystem.ts"
export * as MemoryCheckpointIO from "../MemoryCheckpointIO.ts"
export * as PowerCutFileSystem from "../PowerCutFileSystem.ts"
export * as CheckpointIOSuite from "./CheckpointIOSuite.ts"
export * as RecordingCheckpointIO from "./RecordingCheckpointIO.ts"
