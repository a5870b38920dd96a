/**
 * The library's version, written into every checkpoint (`CheckpointMeta.libraryVersion`).
 * A test keeps it equal to package.json's.
 *
 * @since 0.1.0
 */
export const libraryVersion = "0.1.0"
