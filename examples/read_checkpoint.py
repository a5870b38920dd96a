#!/usr/bin/env python3
"""Read an effect-trainer checkpoint with NumPy alone, and verify its checksums.

A checkpoint is a safetensors file, so `safetensors.numpy.load_file(path)` or
`safetensors.torch.load_file(path)` read it too. This script shows the format
itself, with nothing but the standard library and NumPy:

    [ u64 little-endian: N ][ N bytes: JSON header, space-padded ][ tensor data ]

The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
(offsets into the data buffer) and holds "__metadata__", a map of strings. Ours
carries:
  effect_trainer.format        the format version ("1")
  effect_trainer.meta          the training state as JSON (epoch, globalStep, ...)
  effect_trainer.crc32         JSON: tensor name -> CRC-32 of its bytes, 8 hex digits
  effect_trainer.header_crc32  CRC-32 of the N header bytes, computed with these
                               8 hex digits themselves replaced by "00000000"

Usage:
    python3 examples/read_checkpoint.py runs/for-python.ckpt          # a summary
    python3 examples/read_checkpoint.py runs/for-python.ckpt --json   # machine-readable
Exits with 1 and a reason when the file is damaged.
"""
import json
import struct
import sys
import zlib

import numpy as np

# safetensors dtype -> NumPy dtype (little-endian). BF16 has no NumPy dtype: its
# 16-bit patterns are the top half of a float32, widened below.
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
    "BOOL": "?",
}
HEADER_CRC_KEY = "effect_trainer.header_crc32"
CRC_KEY = "effect_trainer.crc32"
META_KEY = "effect_trainer.meta"


class Corrupt(Exception):
    pass


def check_header_crc(header_bytes, stored):
    """The header's own CRC-32, with its 8 hex digits read as zeros."""
    marker = b'"' + HEADER_CRC_KEY.encode() + b'":"'
    at = header_bytes.rfind(marker)
    if at < 0:
        raise Corrupt("the header checksum is missing")
    at += len(marker)
    zeroed = header_bytes[:at] + b"00000000" + header_bytes[at + 8:]
    if header_bytes[at:at + 8].decode() != stored or zlib.crc32(zeroed) != int(stored, 16):
        raise Corrupt("the header fails its checksum")


def read_checkpoint(path):
    """Returns ({name: (stored dtype, numpy array)}, __metadata__, the training meta or None)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise Corrupt(f"{len(blob)} bytes, shorter than the header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise Corrupt(f"header length {n} runs past the end of the file")
    header_bytes = blob[8:8 + n]
    header = json.loads(header_bytes.decode("utf-8"))  # the padding is JSON whitespace
    metadata = header.pop("__metadata__", {})
    if HEADER_CRC_KEY in metadata:
        check_header_crc(header_bytes, metadata[HEADER_CRC_KEY])
    crcs = json.loads(metadata.get(CRC_KEY, "{}"))

    data = memoryview(blob)[8 + n:]
    tensors = {}
    end_of_data = 0
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        if begin != end_of_data or end < begin or end > len(data):
            raise Corrupt(f'tensor "{name}" has offsets [{begin}, {end}] out of place')
        end_of_data = end
        raw = data[begin:end]
        if name in crcs and zlib.crc32(raw) != int(crcs[name], 16):
            raise Corrupt(f'tensor "{name}" fails its checksum')
        array = np.frombuffer(raw, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = (entry["dtype"], array)
    if end_of_data != len(data):
        raise Corrupt("bytes after the last tensor")
    meta = json.loads(metadata[META_KEY]) if META_KEY in metadata else None
    return tensors, metadata, meta


def first_values(array, count=8):
    """The first values, as plain Python numbers (BOOL as 0 / 1)."""
    return [int(v) if isinstance(v, bool) else v for v in array.reshape(-1)[:count].tolist()]


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    path = argv[1]
    try:
        tensors, metadata, meta = read_checkpoint(path)
    except OSError as error:
        print(f"{path}: {error.strerror}", file=sys.stderr)
        return 1
    except (Corrupt, ValueError, KeyError) as error:
        print(f"{path}: corrupt: {error}", file=sys.stderr)
        return 1
    if "--json" in argv[2:]:
        summary = {
            name: {"dtype": dtype, "shape": list(array.shape), "values": first_values(array)}
            for name, (dtype, array) in tensors.items()
        }
        extra = {k: v for k, v in metadata.items() if not k.startswith("effect_trainer.")}
        print(json.dumps({"tensors": summary, "meta": meta, "extra": extra, "checksums": "ok"}))
        return 0
    print(f"{path}: {len(tensors)} tensors, every checksum ok")
    if meta is not None:
        optimizer = (meta.get("optimizer") or {}).get("className")
        print(f"epoch {meta['epoch']}, global step {meta['globalStep']}, optimizer {optimizer}, "
              f"written by effect-trainer {meta['libraryVersion']}")
    for name, (dtype, array) in tensors.items():
        print(f"  {name:34} {dtype:5} {str(list(array.shape)):10} {first_values(array, 4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
