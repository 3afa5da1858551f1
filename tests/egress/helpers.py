"""Builders for safetensors bytes (valid and crafted-bad) used by the egress tests."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I8": 1, "I32": 4}


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: list[int]
    data: bytes


@dataclass
class Layout:
    """A header object (ordered dict) and the data buffer, ready to assemble."""

    header: dict[str, Any]
    data: bytes
    order: list[str] = field(default_factory=list)


def layout(tensors: list[Tensor], metadata: dict[str, str] | None = None) -> Layout:
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    chunks = []
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.data)]}
        chunks.append(t.data)
        offset += len(t.data)
    return Layout(header=header, data=b"".join(chunks), order=[t.name for t in tensors])


def header_text(header: dict[str, Any]) -> str:
    return json.dumps(header, separators=(",", ":"))


def assemble(header: dict[str, Any] | str | bytes, data: bytes, *, pad: bool = True, n: int | None = None) -> bytes:
    if isinstance(header, dict):
        header = header_text(header)
    raw = header.encode("utf-8") if isinstance(header, str) else header
    if pad:
        raw += b" " * ((8 - len(raw) % 8) % 8)
    length = len(raw) if n is None else n
    return struct.pack("<Q", length) + raw + data


def build(tensors: list[Tensor], metadata: dict[str, str] | None = None) -> bytes:
    lay = layout(tensors, {"format": "pt"} if metadata is None else metadata)
    return assemble(lay.header, lay.data)


def f32(name: str, shape: list[int], values: np.ndarray | None = None, seed: int = 0) -> Tensor:
    if values is None:
        values = np.random.default_rng(seed).normal(0, 0.02, size=shape).astype(np.float32)
    return Tensor(name, "F32", list(shape), np.asarray(values, dtype=np.float32).tobytes())


def read_tensors(path: Path) -> list[Tensor]:
    """The tensors of a (valid) safetensors file, in offset order, as raw bytes."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return [
        Tensor(name, info["dtype"], list(info["shape"]), raw[base + info["data_offsets"][0] : base + info["data_offsets"][1]])
        for name, info in items
    ]


def write_adapter(out_dir: Path, content: bytes) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "adapter_model.safetensors"
    path.write_bytes(content)
    return path
