"""A byte-deterministic safetensors writer (numpy only).

The assembled world files are checked against recorded sha256 values, so their bytes must not
depend on the installed safetensors or torch version: this writes the format itself (8-byte
little-endian header length, a JSON header with sorted keys, space-padded to 8 bytes, then the
tensors' bytes in header order). Any safetensors reader loads the result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int64): "I64",
           np.dtype(np.int32): "I32"}


def write(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` (name -> C-contiguous little-endian array) to ``path``; returns the sha256
    of the file. Wider dtypes come first, so every tensor is aligned to its item size."""
    names = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for k in names:
        a = tensors[k]
        if a.dtype not in _DTYPES:
            raise TypeError(f"{k}: unsupported dtype {a.dtype}")
        header[k] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (len(head).to_bytes(8, "little"), head):
            f.write(chunk)
            digest.update(chunk)
        for k in names:
            data = np.ascontiguousarray(tensors[k]).astype(tensors[k].dtype.newbyteorder("<"), copy=False)
            buf = memoryview(data.reshape(-1)).cast("B")
            f.write(buf)
            digest.update(buf)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_NP = {v: k for k, v in _DTYPES.items()}


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, as numpy arrays (copies, so the file is closed)."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        dt = _NP[v["dtype"]].newbyteorder("<")
        out[k] = np.frombuffer(data, dtype=dt, count=(b - a) // dt.itemsize, offset=base + a).reshape(v["shape"]).copy()
    return out, meta
