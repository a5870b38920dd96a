// s3rver ships no types; the part of its API the tests use.
declare module "s3rver" {
  import type { AddressInfo } from "node:net"
  interface S3rverOptions {
    readonly port?: number
    readonly address?: string
    readonly silent?: boolean
    readonly directory: string
    readonly configureBuckets?: ReadonlyArray<{ readonly name: string }>
  }
  export default class S3rver {
    constructor(options: S3rverOptions)
    run(): Promise<AddressInfo>
    close(): Promise<void>
  }
}

declare module "s3rver/lib/stores/filesystem.js" {
  export default class FilesystemStore {
    getResourcePath(bucket: string, key?: string, resource?: string): string
    putObject(object: { bucket: string; key: string }): Promise<{ size: number; md5: string }>
  }
}
