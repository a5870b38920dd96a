import { Effect, FileSystem } from "effect"

/**
 * A `FileSystem` over `fs` whose files opened under a path `select` accepts have
 * `write` / `writeAll` replaced by `wrap` (to count, pause or hang writes); every
 * other operation goes to the real file.
 */
export const interceptWrites = (
  fs: FileSystem.FileSystem,
  select: (path: string) => boolean,
  wrap: (file: FileSystem.File) => Partial<Pick<FileSystem.File, "write" | "writeAll">>
): FileSystem.FileSystem =>
  FileSystem.make({
    ...fs,
    open: (path, options) =>
      Effect.map(fs.open(path, options), (file): FileSystem.File =>
        select(path)
          ? {
            ...file,
            [FileSystem.FileTypeId]: FileSystem.FileTypeId,
            get stat() {
              return file.stat
            },
            sync: file.sync,
            seek: (o, f) => file.seek(o, f),
            read: (b, o) => file.read(b, o),
            readAlloc: (s, o) => file.readAlloc(s, o),
            truncate: (l) => file.truncate(l),
            write: (b) => file.write(b),
            writeAll: (b) => file.writeAll(b),
            ...wrap(file)
          }
          : file)
  })
