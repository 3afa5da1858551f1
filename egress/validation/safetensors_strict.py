"""A strict safetensors header parser, run before any library reads the file.

Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 ``N``, ``N`` bytes of
UTF-8 JSON, then the byte buffer. The reference loader is lenient (free-text metadata, extra entry
fields, duplicate keys, escaped NUL in names, any dtype); this parser accepts a strict subset of what
it accepts:

* sizes: the file is at least 8 bytes and at most ``policy.max_file_bytes`` (checked by the caller
  with fstat, before reading); ``N`` is at most ``policy.max_header_bytes`` and ``8 + N`` lies within
  the file;
* header text: valid UTF-8, pure printable ASCII, starts with ``{``, compact JSON (no whitespace, no
  escape sequences), followed only by fewer than 8 spaces that pad ``8 + N`` to a multiple of 8;
  integers only (no floats, negatives, NaN); duplicate keys rejected at every level;
* ``__metadata__`` present and exactly ``{"format": "pt"}``;
* every other key a tensor name matching ``[A-Za-z0-9_.]+`` no longer than the cap, whose entry has
  exactly the fields ``dtype``, ``shape``, ``data_offsets``; dtype in the policy's allowed set;
  1 to ``max_ndim`` dimensions, each >= 1;
* layout: sorted by offset the entries start at 0, are contiguous (no gap, no overlap), each is
  aligned to its element size, its byte length equals ``prod(shape) * itemsize`` (computed with
  overflow caps), and the last one ends exactly at the end of the file.

Every failure raises :class:`FormatError` carrying the report rule, a reason code and a detail that
never quotes the file's bytes.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from .policy import ValidationPolicy
from .report import (
    RULE_DATA_LAYOUT,
    RULE_FILE_SIZE,
    RULE_HEADER_JSON,
    RULE_HEADER_LENGTH,
    RULE_HEADER_METADATA,
    RULE_TENSOR_ENTRIES,
)

DTYPE_SIZES = {"F32": 4, "BF16": 2, "F16": 2}
ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
EXPECTED_METADATA = {"format": "pt"}
NAME_RE = re.compile(r"[A-Za-z0-9_.]+")
# Bytes that may not appear anywhere in the JSON text of the header: whitespace, control characters,
# DEL, backslash (escape sequences) and everything outside ASCII.
_FORBIDDEN_HEADER_BYTES = re.compile(rb"[\x00-\x20\x5c\x7f-\xff]")
_U64 = struct.Struct("<Q")
_INT_MAX = 2**63 - 1


class FormatError(Exception):
    """The file is not a strict safetensors file. ``rule`` and ``code`` name the reason."""

    def __init__(self, rule: str, code: str, detail: str) -> None:
        super().__init__(f"{rule} [{code}]: {detail}")
        self.rule = rule
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the start of the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class ParsedHeader:
    header_length: int  # N
    file_size: int
    tensors: tuple[TensorEntry, ...]  # sorted by offset
    header_bytes: bytes  # the 8-byte prefix and the N header bytes, as read

    @property
    def data_start(self) -> int:
        return 8 + self.header_length

    @property
    def data_size(self) -> int:
        return self.file_size - 8 - self.header_length

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}


# --------------------------------------------------------------------------------------------
# entry points


def check_file_size(file_size: int, policy: ValidationPolicy) -> None:
    if file_size < 8:
        raise FormatError(RULE_FILE_SIZE, "too_small", f"file has {file_size} bytes, fewer than the 8-byte length prefix")
    if file_size > policy.max_file_bytes:
        raise FormatError(
            RULE_FILE_SIZE, "over_cap", f"file has {file_size} bytes, over the cap of {policy.max_file_bytes}"
        )


def check_header_length(prefix: bytes, file_size: int, policy: ValidationPolicy) -> int:
    if len(prefix) != 8:
        raise FormatError(RULE_HEADER_LENGTH, "past_end", "the 8-byte length prefix could not be read")
    (n,) = _U64.unpack(prefix)
    if n > policy.max_header_bytes:
        raise FormatError(
            RULE_HEADER_LENGTH, "over_cap", f"header length {n} is over the cap of {policy.max_header_bytes} bytes"
        )
    if 8 + n > file_size:
        raise FormatError(
            RULE_HEADER_LENGTH, "past_end", f"header length {n} runs past the end of the {file_size}-byte file"
        )
    if n < 2:
        raise FormatError(RULE_HEADER_LENGTH, "too_small", f"header length {n} cannot hold a JSON object")
    return n


def read_header_fd(fd: int, file_size: int, policy: ValidationPolicy) -> ParsedHeader:
    """Check sizes, then read and parse the header of the open file ``fd`` (positional reads)."""
    check_file_size(file_size, policy)
    prefix = os.pread(fd, 8, 0)
    n = check_header_length(prefix, file_size, policy)
    raw = _pread_exact(fd, n, 8)
    if len(raw) != n:
        raise FormatError(RULE_HEADER_LENGTH, "past_end", "the file ended inside the header")
    return parse_header_bytes(prefix + raw, file_size, policy)


def parse_bytes(data: bytes, policy: ValidationPolicy | None = None) -> ParsedHeader:
    """Parse a whole safetensors file held in memory (tests, fuzzing)."""
    policy = policy or ValidationPolicy()
    check_file_size(len(data), policy)
    n = check_header_length(data[:8], len(data), policy)
    return parse_header_bytes(data[: 8 + n], len(data), policy)


def parse_header_bytes(head: bytes, file_size: int, policy: ValidationPolicy) -> ParsedHeader:
    """``head`` is the 8-byte prefix followed by exactly N header bytes."""
    n = len(head) - 8
    raw = head[8:]
    obj = _parse_json(raw, file_size)
    tensors = _check_entries(obj, policy)
    ordered = _check_layout(tensors, file_size - 8 - n, policy.max_file_bytes)
    return ParsedHeader(header_length=n, file_size=file_size, tensors=ordered, header_bytes=bytes(head))


# --------------------------------------------------------------------------------------------
# JSON text


class _DuplicateKey(Exception):
    pass


class _BadNumber(Exception):
    pass


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey()
        out[key] = value
    return out


def _parse_int(text: str) -> int:
    if text.startswith("-") or len(text) > 20:
        raise _BadNumber()
    value = int(text)
    if value > _INT_MAX:
        raise _BadNumber()
    return value


def _reject_number(_text: str) -> None:
    raise _BadNumber()


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_hook, parse_int=_parse_int, parse_float=_reject_number, parse_constant=_reject_number
)


def _parse_json(raw: bytes, file_size: int) -> dict[str, Any]:
    n = len(raw)
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise FormatError(RULE_HEADER_JSON, "utf8", "header is not valid UTF-8") from None
    if not text.startswith("{"):
        raise FormatError(RULE_HEADER_JSON, "start", "header does not start with '{'")
    body = text.rstrip(" ")
    padding = n - len(raw.rstrip(b" "))
    if padding >= 8 or (padding and (8 + n) % 8):
        raise FormatError(
            RULE_HEADER_JSON, "padding", f"header ends with {padding} spaces; only padding to 8-byte alignment is allowed"
        )
    try:
        obj, end = _DECODER.raw_decode(body)
    except _DuplicateKey:
        raise FormatError(RULE_HEADER_JSON, "duplicate_key", "header JSON repeats a key") from None
    except _BadNumber:
        raise FormatError(
            RULE_HEADER_JSON, "number", "header JSON holds a number that is not a non-negative 64-bit integer"
        ) from None
    except (ValueError, RecursionError):
        raise FormatError(RULE_HEADER_JSON, "json", "header is not valid JSON") from None
    if end != len(body):
        if not body[end:].strip():
            raise FormatError(RULE_HEADER_JSON, "padding", "header padding after the JSON object must be spaces only")
        raise FormatError(RULE_HEADER_JSON, "trailing", "header holds data after the JSON object")
    if not isinstance(obj, dict):
        raise FormatError(RULE_HEADER_JSON, "json", "header is not a JSON object")
    # The character checks come after the semantic ones so that a bad name is reported as such;
    # _forbidden_bytes_check is still run on every accepted header (see _check_entries' caller).
    return _HeaderObject(obj, body.encode("utf-8"))


class _HeaderObject(dict):
    """The decoded header plus its raw JSON bytes (for the compactness check)."""

    def __init__(self, obj: dict[str, Any], raw_json: bytes) -> None:
        super().__init__(obj)
        self.raw_json = raw_json


# --------------------------------------------------------------------------------------------
# entries


def _check_entries(obj: _HeaderObject, policy: ValidationPolicy) -> list[TensorEntry]:
    if "__metadata__" not in obj:
        raise FormatError(RULE_HEADER_METADATA, "metadata", 'header has no __metadata__; exactly {"format": "pt"} is required')
    if obj["__metadata__"] != EXPECTED_METADATA or not all(isinstance(v, str) for v in obj["__metadata__"].values()):
        raise FormatError(RULE_HEADER_METADATA, "metadata", '__metadata__ must be exactly {"format": "pt"}')
    count = len(obj) - 1
    if count < 1:
        raise FormatError(RULE_TENSOR_ENTRIES, "no_tensors", "header declares no tensor")
    if count > policy.max_tensors:
        raise FormatError(RULE_TENSOR_ENTRIES, "too_many", f"header declares {count} tensors, over the cap of {policy.max_tensors}")
    entries: list[TensorEntry] = []
    for index, (name, info) in enumerate((k, v) for k, v in obj.items() if k != "__metadata__"):
        where = f"tensor #{index}"
        if len(name) > policy.max_name_length:
            raise FormatError(
                RULE_TENSOR_ENTRIES, "name_length", f"{where}: name longer than {policy.max_name_length} characters"
            )
        if not NAME_RE.fullmatch(name):
            raise FormatError(
                RULE_TENSOR_ENTRIES, "name_charset", f"{where}: name has characters outside [A-Za-z0-9_.] (control, NUL, space or other)"
            )
        if not isinstance(info, dict):
            raise FormatError(RULE_TENSOR_ENTRIES, "entry_type", f"{where}: entry is not a JSON object")
        if set(info) != ENTRY_FIELDS:
            extra = len(set(info) - ENTRY_FIELDS)
            missing = sorted(ENTRY_FIELDS - set(info))
            raise FormatError(
                RULE_TENSOR_ENTRIES,
                "entry_fields",
                f"{where}: entry must have exactly dtype, shape, data_offsets ({extra} extra field(s), missing {missing})",
            )
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in policy.allowed_dtypes:
            raise FormatError(
                RULE_TENSOR_ENTRIES, "dtype", f"{where}: dtype is not one of {', '.join(policy.allowed_dtypes)}"
            )
        shape = info["shape"]
        if not isinstance(shape, list) or not (1 <= len(shape) <= policy.max_ndim):
            raise FormatError(RULE_TENSOR_ENTRIES, "shape", f"{where}: shape must be a list of 1 to {policy.max_ndim} integers")
        if not all(type(d) is int and d >= 1 for d in shape):
            raise FormatError(RULE_TENSOR_ENTRIES, "shape", f"{where}: every dimension must be an integer >= 1")
        offsets = info["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise FormatError(RULE_TENSOR_ENTRIES, "offsets", f"{where}: data_offsets must be two integers")
        start, end = offsets
        if end < start:
            raise FormatError(RULE_DATA_LAYOUT, "offsets", f"{where}: data_offsets end before they start")
        entries.append(TensorEntry(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end))
    if _FORBIDDEN_HEADER_BYTES.search(obj.raw_json):
        raise FormatError(
            RULE_HEADER_JSON, "not_compact", "header JSON holds whitespace, control characters, escapes or non-ASCII bytes"
        )
    return entries


def _checked_nbytes(entry: TensorEntry, limit: int, where: str) -> int:
    """prod(shape) * itemsize, refusing any partial product over ``limit`` (overflow-safe)."""
    total = entry.itemsize
    for dim in entry.shape:
        total *= dim
        if total > limit:
            raise FormatError(RULE_DATA_LAYOUT, "size_overflow", f"{where}: shape implies more bytes than the file size cap")
    return total


def _check_layout(entries: list[TensorEntry], data_size: int, byte_cap: int) -> tuple[TensorEntry, ...]:
    # Details name tensors by their position in offset order: names come from the file and are
    # only quoted once the tensor-set rule has matched them against the expected names.
    if data_size < 0:  # cannot happen after check_header_length; kept for direct callers
        raise FormatError(RULE_HEADER_LENGTH, "past_end", "header runs past the end of the file")
    ordered = sorted(entries, key=lambda e: (e.start, e.end, e.name))
    position = 0
    for index, entry in enumerate(ordered):
        where = f"tensor #{index} (in offset order)"
        if entry.start < position:
            raise FormatError(RULE_DATA_LAYOUT, "overlap", f"{where} overlaps the tensor before it")
        if entry.start > position:
            raise FormatError(RULE_DATA_LAYOUT, "gap", f"{entry.start - position} unclaimed bytes before {where}")
        if entry.start % entry.itemsize:
            raise FormatError(RULE_DATA_LAYOUT, "misaligned", f"{where} does not start on a multiple of its element size")
        nbytes = _checked_nbytes(entry, byte_cap, where)
        if entry.end - entry.start != nbytes:
            raise FormatError(
                RULE_DATA_LAYOUT,
                "size_mismatch",
                f"{where}: offsets span {entry.end - entry.start} bytes, shape and dtype need {nbytes}",
            )
        if entry.end > data_size:
            raise FormatError(RULE_DATA_LAYOUT, "truncated", f"{where} ends {entry.end - data_size} bytes past the end of the file")
        position = entry.end
    if position < data_size:
        raise FormatError(
            RULE_DATA_LAYOUT, "trailing_bytes", f"{data_size - position} bytes after the last tensor (nothing may follow it)"
        )
    return tuple(ordered)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)
