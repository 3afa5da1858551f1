"""One streaming pass over an adapter file: identifier scan, printable runs, finite/magnitude checks.

The file is read once, in ``policy.chunk_bytes`` pieces (the header bytes come from the strict
parser, which already read them). Memory stays a small multiple of the chunk size whatever the file
size: the chunk, one translated copy per byte-class test and one integer scratch array.

Value checks use the bit patterns: for IEEE floats ``|x| <= b`` is ``bits(x) & ~sign <= bits(b)``
and a value is NaN/Inf exactly when its exponent bits are all ones, so a single ``max`` of the
masked integers per piece decides both rules for F32, BF16 and F16 alike (numpy has no bfloat16).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .identifiers import IdentifierHit, IdentifierSet
from .policy import ValidationPolicy
from .safetensors_strict import ParsedHeader


@dataclass(frozen=True)
class _DtypeBits:
    uint: type
    abs_mask: int
    inf_bits: int


_BITS = {
    "F32": _DtypeBits(np.uint32, 0x7FFF_FFFF, 0x7F80_0000),
    "BF16": _DtypeBits(np.uint16, 0x7FFF, 0x7F80),
    "F16": _DtypeBits(np.uint16, 0x7FFF, 0x7C00),
}


def bound_bits(dtype: str, bound: float) -> int:
    """Bits of the largest finite value of ``dtype`` that is <= ``bound``."""
    if dtype == "F32":
        value = np.float32(bound)
        if float(value) > bound:
            value = np.nextafter(value, np.float32(0))
        return int(np.array(value, dtype=np.float32).view(np.uint32))
    if dtype == "BF16":
        return bound_bits("F32", bound) >> 16  # truncation rounds toward zero
    if dtype == "F16":
        if bound >= 65504.0:
            return 0x7BFF
        value = np.float16(bound)
        if float(value) > bound:
            value = np.nextafter(value, np.float16(0))
        return int(np.array(value, dtype=np.float16).view(np.uint16))
    raise ValueError(dtype)


def bits_to_float(dtype: str, bits: int) -> float:
    if dtype == "F32":
        return float(np.array(bits, dtype=np.uint32).view(np.float32))
    if dtype == "BF16":
        return float(np.array(bits << 16, dtype=np.uint32).view(np.float32))
    return float(np.array(bits, dtype=np.uint16).view(np.float16))


_PRINTABLE_TABLE = bytes(
    (ord("P") if (0x20 <= b < 0x7F or 0x09 <= b <= 0x0D) else ord("Z") if b == 0 else ord("."))
    for b in range(256)
)


class PrintableRunDetector:
    """Finds a run of more than ``limit`` printable ASCII bytes, or of more than ``limit`` printable
    characters in UTF-16 (printable byte, zero byte, alternating; either byte order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ascii = b"P" * (limit + 1)
        self._utf16 = b"PZ" * (limit + 1)
        self._keep = len(self._utf16)
        self._tail = b""
        self._tail_offset = 0
        self.ascii_run_at: int | None = None
        self.utf16_run_at: int | None = None

    @property
    def found(self) -> bool:
        return self.ascii_run_at is not None or self.utf16_run_at is not None

    def feed(self, data: bytes | bytearray, offset: int) -> None:
        classes = data.translate(_PRINTABLE_TABLE)
        contiguous = bool(self._tail) and self._tail_offset + len(self._tail) == offset
        if contiguous:  # runs that straddle the previous piece and this one
            self._search(self._tail + classes[: self._keep], self._tail_offset)
        self._search(classes, offset)
        if len(classes) >= self._keep:
            self._tail = bytes(classes[len(classes) - self._keep:])
            self._tail_offset = offset + len(classes) - self._keep
        else:
            joined = (self._tail if contiguous else b"") + bytes(classes)
            keep = min(self._keep, len(joined))
            self._tail = joined[len(joined) - keep:]
            self._tail_offset = offset + len(classes) - keep

    def _search(self, classes: bytes, base: int) -> None:
        if self.ascii_run_at is None:
            pos = classes.find(self._ascii)
            if pos != -1:
                self.ascii_run_at = base + pos
        if self.utf16_run_at is None:
            pos = classes.find(self._utf16)
            if pos != -1:
                self.utf16_run_at = base + pos


@dataclass
class TensorStats:
    dtype: str
    max_abs_bits: int = 0


@dataclass
class StreamResult:
    bytes_read: int = 0
    identifier_hits: list[IdentifierHit] = field(default_factory=list)
    identifier_windows: int = 0
    printable: PrintableRunDetector | None = None
    tensor_stats: dict[str, TensorStats] = field(default_factory=dict)
    data_scanned: bool = False

    def nonfinite(self) -> list[tuple[str, str]]:
        """(tensor name, "nan" | "inf") for every tensor holding a non-finite value."""
        out = []
        for name, st in self.tensor_stats.items():
            inf = _BITS[st.dtype].inf_bits
            if st.max_abs_bits > inf:
                out.append((name, "nan"))
            elif st.max_abs_bits == inf:
                out.append((name, "inf"))
        return out

    def over_bound(self, bound: float) -> list[str]:
        out = []
        for name, st in self.tensor_stats.items():
            bits = st.max_abs_bits
            if bits < _BITS[st.dtype].inf_bits and bits > bound_bits(st.dtype, bound):
                out.append(name)
        return out

    def max_abs(self) -> float | None:
        finite = [
            bits_to_float(st.dtype, st.max_abs_bits)
            for st in self.tensor_stats.values()
            if st.max_abs_bits < _BITS[st.dtype].inf_bits
        ]
        value = max(finite) if finite else None
        return value if value is None or math.isfinite(value) else None


class FileChangedError(RuntimeError):
    pass


def stream_pass(
    fd: int,
    file_size: int,
    header: ParsedHeader | None,
    needles: IdentifierSet | None,
    policy: ValidationPolicy,
) -> StreamResult:
    """Read the file once. With ``header`` None (the format was refused) only the identifier scan
    runs, over every byte; otherwise the header bytes are scanned for identifiers and the data
    region for identifiers, printable runs and values."""
    result = StreamResult()
    session = needles.session() if needles is not None and not needles.empty else None
    chunk = policy.chunk_bytes
    if header is not None:
        if session is not None:
            session.feed(header.header_bytes, 0)
        position = header.data_start
        detector = PrintableRunDetector(policy.max_printable_run)
        result.printable = detector
        tensors = header.tensors
        stats = {t.name: TensorStats(t.dtype) for t in tensors}
        result.tensor_stats = stats
        scratch32 = np.empty(chunk // 4, dtype=np.uint32)
        scratch16 = np.empty(chunk // 2, dtype=np.uint16)
    else:
        position = 0
        detector = None
        tensors = ()
    index = 0
    buffer = bytearray(chunk)  # reused: no fresh pages per chunk
    view = memoryview(buffer)
    data = buffer
    while position < file_size:
        want = min(chunk, file_size - position)
        if _readinto_exact(fd, view[:want], position) != want:
            raise FileChangedError("the file became shorter while it was read")
        data = buffer if want == chunk else buffer[:want]
        result.bytes_read += want
        if session is not None and not session.full:
            session.feed(data, position)
        if header is not None:
            detector.feed(data, position)
            # tensor values: data-relative [c0, c1)
            c0 = position - header.data_start
            c1 = c0 + want
            while index < len(tensors) and tensors[index].start < c1:
                t = tensors[index]
                lo, hi = max(t.start, c0), min(t.end, c1)
                if hi > lo:
                    bits = _BITS[t.dtype]
                    count = (hi - lo) // t.itemsize
                    values = np.frombuffer(data, dtype=bits.uint, count=count, offset=lo - c0)
                    scratch = (scratch32 if bits.uint is np.uint32 else scratch16)[:count]
                    np.bitwise_and(values, bits.abs_mask, out=scratch)
                    peak = int(scratch.max())
                    st = stats[t.name]
                    if peak > st.max_abs_bits:
                        st.max_abs_bits = peak
                if t.end <= c1:
                    index += 1
                else:
                    break
        position += want
    del data
    view.release()
    if os.pread(fd, 1, file_size):
        raise FileChangedError("the file grew while it was read")
    if session is not None:
        result.identifier_hits = list(session.hits)
        result.identifier_windows = session.windows
    result.data_scanned = header is not None
    return result


def _readinto_exact(fd: int, view: memoryview, offset: int) -> int:
    total = 0
    while total < len(view):
        n = os.preadv(fd, [view[total:]], offset + total)
        if not n:
            break
        total += n
    return total
