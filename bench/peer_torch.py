#!/usr/bin/env python3
"""PyTorch's side of bench/peers.ts: torch.save / torch.load of the same tensors.

Started once per checkpoint by bench/peers.ts, which drives it over stdin/stdout
with one JSON object per line, so that its timings interleave with ours in one run:

  first line out:  {"ready": true, "torch": "<version>"}
               or  {"skipped": "python3 has no torch module"}   (then it exits)
  {"op": "prepare", "source": "<our checkpoint file>"}
      reads the tensors from our (safetensors) file into a dict of torch tensors,
      each owning its memory, as a training script would hold them (untimed)
      -> {"tensors": <count>, "bytes": <tensor bytes>}
  {"op": "save", "path": "<file>"}
      torch.save(dict, file), flush and fsync, timed
      -> {"seconds": <float>, "size": <file bytes>}
  {"op": "load", "path": "<file>"}
      torch.load(file, map_location="cpu", weights_only=True), timed
      -> {"seconds": <float>, "tensors": <count>}
  {"op": "quit"}

Errors come back as {"error": "<message>"}. Needs only the standard library and
torch (no numpy, no safetensors package). Garbage is collected before each timing.
"""
import gc
import json
import os
import struct
import sys
import time


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


try:
    import torch
except ImportError:
    reply({"skipped": "python3 has no torch module"})
    sys.exit(0)

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """The tensors of a safetensors file, in file order, each in its own memory."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    start = 8 + n
    entries = sorted(
        ((name, e) for name, e in header.items() if name != "__metadata__"),
        key=lambda item: item[1]["data_offsets"][0],
    )
    tensors = {}
    for name, entry in entries:
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        if end == begin:
            t = torch.empty(entry["shape"], dtype=dtype)
        else:
            # A bytearray copy: the tensor owns writable memory (no warning, no aliasing).
            t = torch.frombuffer(bytearray(data[start + begin : start + end]), dtype=dtype).reshape(entry["shape"])
        tensors[name] = t
    return tensors


def main():
    reply({"ready": True, "torch": torch.__version__})
    tensors = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "quit":
                return
            if op == "prepare":
                tensors = read_safetensors(msg["source"])
                nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
                reply({"tensors": len(tensors), "bytes": nbytes})
            elif op == "save":
                gc.collect()
                t0 = time.perf_counter()
                with open(msg["path"], "wb") as f:
                    torch.save(tensors, f)
                    f.flush()
                    os.fsync(f.fileno())
                seconds = time.perf_counter() - t0
                reply({"seconds": seconds, "size": os.path.getsize(msg["path"])})
            elif op == "load":
                gc.collect()
                t0 = time.perf_counter()
                try:
                    loaded = torch.load(msg["path"], map_location="cpu", weights_only=True)
                except TypeError:  # torch < 1.13 has no weights_only
                    loaded = torch.load(msg["path"], map_location="cpu")
                seconds = time.perf_counter() - t0
                count = len(loaded)
                del loaded
                reply({"seconds": seconds, "tensors": count})
            else:
                reply({"error": "unknown op %r" % (op,)})
        except Exception as e:  # report, keep serving
            reply({"error": "%s: %s" % (type(e).__name__, e)})


if __name__ == "__main__":
    main()
