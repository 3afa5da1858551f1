"""Hypothesis fuzz of the strict header parser: it never crashes (only FormatError), and it never
accepts a file that the reference safetensors loader refuses (and agrees with it on what it reads)."""

from __future__ import annotations

import json
import struct

import numpy as np
import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.validation import FormatError, ValidationPolicy, parse_bytes

POLICY = ValidationPolicy(max_header_bytes=64 * 1024)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SIZES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I8": 1, "U8": 1, "BOOL": 1, "I64": 8}


def check(data: bytes) -> None:
    try:
        parsed = parse_bytes(data, POLICY)
    except FormatError:
        return
    # accepted by us => accepted by the reference loader, with the same tensors
    loaded = dict(safetensors.deserialize(data))
    assert set(loaded) == {t.name for t in parsed.tensors}
    for t in parsed.tensors:
        assert loaded[t.name]["dtype"] == t.dtype
        assert tuple(loaded[t.name]["shape"]) == t.shape
        assert bytes(loaded[t.name]["data"]) == data[parsed.data_start + t.start : parsed.data_start + t.end]


good_names = st.text(alphabet="abcXYZ019_.", min_size=1, max_size=12)
bad_names = st.sampled_from(["", "__metadata__", "a\u0000b", "a b", "\u00e9", "a\\b", "a" * 300, "x\n"])
PERTURBATIONS = [
    "name", "dtype", "shape_zero", "shape_negative", "shape_empty", "start", "end", "swap", "extra_field",
    "missing_field", "metadata", "no_metadata", "duplicate", "spaces", "padding", "newline", "n_plus",
    "n_minus", "n_huge", "trailing", "truncate", "float", "string_offset",
]


@st.composite
def structured_files(draw):
    """A valid file (half of the time) or one with one or two perturbations."""
    count = draw(st.integers(min_value=1, max_value=4))
    tensor_names = draw(st.lists(good_names, min_size=count, max_size=count, unique=True))
    perturb = draw(st.lists(st.sampled_from(PERTURBATIONS), max_size=2)) if draw(st.booleans()) else []
    entries = []
    offset = 0
    for name in tensor_names:
        dtype = draw(st.sampled_from(["F32", "BF16", "F16"]))
        shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        n = SIZES[dtype] * int(np.prod(shape))
        entries.append([name, {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}])
        offset += n
    data_size = offset
    target = draw(st.integers(0, count - 1))
    info = entries[target][1]
    if "name" in perturb:
        entries[target][0] = draw(bad_names)
    if "dtype" in perturb:
        info["dtype"] = draw(st.sampled_from(["F64", "I8", "U8", "BOOL", "I64", "f32", "X"]))
    if "shape_zero" in perturb:
        info["shape"] = info["shape"][:-1] + [0]
    if "shape_negative" in perturb:
        info["shape"] = [-1] + info["shape"][1:]
    if "shape_empty" in perturb:
        info["shape"] = []
    if "start" in perturb:
        info["data_offsets"][0] += draw(st.sampled_from([-4, -2, -1, 1, 2, 4]))
    if "end" in perturb:
        info["data_offsets"][1] += draw(st.sampled_from([-4, -2, -1, 1, 2, 4]))
    if "swap" in perturb and count > 1:
        entries[0][1]["data_offsets"], entries[1][1]["data_offsets"] = entries[1][1]["data_offsets"], entries[0][1]["data_offsets"]
    if "extra_field" in perturb:
        info["extra"] = "x"
    if "missing_field" in perturb:
        info.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])))
    if "float" in perturb and "data_offsets" in info:
        info["data_offsets"] = [float(v) for v in info["data_offsets"]]
    if "string_offset" in perturb and "data_offsets" in info:
        info["data_offsets"] = [str(v) for v in info["data_offsets"]]
    metadata = {"format": "pt"}
    if "metadata" in perturb:
        metadata = draw(st.sampled_from([{"format": "np"}, {"format": "pt", "x": "y"}, {}, {"format": 1}]))
    pairs = ([] if "no_metadata" in perturb else [("__metadata__", metadata)]) + [tuple(e) for e in entries]
    if "duplicate" in perturb:
        pairs.append(pairs[-1])
    pairs = draw(st.permutations(pairs))
    separators = (", ", ": ") if "spaces" in perturb else (",", ":")
    text = "{" + separators[0].join(json.dumps(k) + separators[1] + json.dumps(v, separators=separators) for k, v in pairs) + "}"
    raw = text.encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    if "padding" in perturb:
        raw += b" " * 8
    if "newline" in perturb:
        raw = raw.rstrip(b" ") + b"\n"
    data = draw(st.binary(min_size=data_size, max_size=data_size))
    if "trailing" in perturb:
        data += draw(st.sampled_from([b"\0", b"PK\x03\x04", b"\0" * 8]))
    if "truncate" in perturb and data:
        data = data[:-1]
    n = len(raw)
    if "n_plus" in perturb:
        n += draw(st.sampled_from([1, 2, 8]))
    if "n_minus" in perturb:
        n -= draw(st.sampled_from([1, 2, 8]))
    if "n_huge" in perturb:
        n = draw(st.sampled_from([10**6, 2**63, 2**64 - 1]))
    return struct.pack("<Q", max(n, 0)) + raw + data


def _valid_file() -> bytes:
    a = np.arange(6, dtype=np.float32).tobytes()
    b = np.arange(4, dtype=np.float16).tobytes()
    header = {"__metadata__": {"format": "pt"}, "w.a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "w.b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + a + b


VALID = _valid_file()


def test_fuzz_valid_seed_file_accepted():
    parsed = parse_bytes(VALID, POLICY)
    assert [t.name for t in parsed.tensors] == ["w.a", "w.b"]
    check(VALID)


@FUZZ
@given(structured_files())
def test_fuzz_structured_headers_never_crash_nor_overaccept(data):
    check(data)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, len(VALID) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_file_never_crash_nor_overaccept(edits):
    data = bytearray(VALID)
    for op, pos, value in edits:
        pos = min(pos, len(data) - 1) if data else 0
        if op == "set" and data:
            data[pos] = value
        elif op == "insert":
            data.insert(pos, value)
        elif op == "delete" and data:
            del data[pos]
    check(bytes(data))


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes_never_crash(data):
    check(data)
