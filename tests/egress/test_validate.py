"""validate_adapter: stock peft adapters are accepted; every crafted bad file is rejected for the
right reason; the report never carries an identifier or the file's text."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest

from egress.validation import (
    ValidationPolicy,
    expand_identifier,
    expected_from_shapes,
    validate_adapter,
    validate_file,
)

from . import helpers as h
from .conftest import GPT2_RECIPE, IDENTIFIERS, LLAMA_RECIPE

LLAMA_Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
LLAMA_V_B = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"


def _all_variants() -> list[str]:
    out = []
    for kind, value in IDENTIFIERS:
        out += [v.lower() for v in expand_identifier(kind, value) if len(v) >= 6]
    return out


def assert_report_clean(report) -> None:
    """No identifier variant and no crafted text in the serialised report."""
    text = report.to_json().lower()
    json.loads(text)
    for variant in _all_variants():
        assert variant not in text
    for marker in ("patient presented", "hello sponsor", "secret note"):
        assert marker not in text


# ---------------------------------------------------------------------------------------------
# accepted


def test_validate_llama_gqa_stock_peft_accepted(llama_adapter, llama_base, identifiers):
    out, _ = llama_adapter
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert report.accepted, report.reasons()
    assert report.verdict("tensor_set").figures["expected"] == 28
    figures = report.verdict("identifiers").figures
    assert figures["variants_skipped_short"] == 1  # "1234" (its alphanumeric form is the same string)
    assert_report_clean(report)


def test_validate_gpt2_stock_peft_accepted(gpt2_adapter, gpt2_base, identifiers):
    out, _ = gpt2_adapter
    report = validate_adapter(out, base_model_dir=gpt2_base.dir, recipe=GPT2_RECIPE, identifiers=identifiers)
    assert report.accepted, report.reasons()
    assert report.verdict("recipe").figures["fan_in_fan_out"] is True


def test_validate_report_json_serialisable(llama_adapter, llama_base, identifiers):
    out, _ = llama_adapter
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    data = json.loads(report.to_json())
    assert data["accepted"] is True
    rules = [v["rule"] for v in data["verdicts"]]
    assert rules[:2] == ["allowlist", "recipe"]
    assert {"values_finite", "values_magnitude", "identifiers", "printable_runs"} <= set(rules)
    assert all(set(v) == {"rule", "passed", "status", "code", "detail", "figures"} for v in data["verdicts"])


def test_validate_small_chunks_same_verdict(llama_adapter, llama_base, identifiers):
    out, _ = llama_adapter
    policy = ValidationPolicy(chunk_bytes=64 * 1024)
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers, policy=policy)
    assert report.accepted, report.reasons()


# ---------------------------------------------------------------------------------------------
# allowlist


def test_validate_allowlist_lists_everything_else(tmp_path, llama_adapter, llama_base, identifiers):
    src, _ = llama_adapter
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    for name, content in {
        "progress.jsonl": b'{"step": 1}\n',
        "notes.txt": b"secret note",
        "cohort.csv": b"a,b\n",
        "patient.fhir.json": b"{}",
        "model.pt": b"\x80\x04",
        "weights.bin": b"\0",
        "bundle.tar.gz": b"\x1f\x8b",
        ".hidden": b"x",
        "Jane_Doe_letter.txt": b"x",
    }.items():
        (out / name).write_bytes(content)
    (out / "sub").mkdir()
    (out / "sub" / "inner.txt").write_text("x")
    os.symlink("/etc/hostname", out / "link")
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert report.accepted, report.reasons()
    allow = report.verdict("allowlist")
    assert allow.figures["taken"] == ["adapter_model.safetensors"]
    left = {entry["name"]: entry["kind"] for entry in allow.figures["left_behind"]}
    assert left["progress.jsonl"] == "file" and left[".hidden"] == "file"
    assert left["sub"] == "directory" and left["link"] == "symlink"
    assert "inner.txt" not in left  # folders are named, not entered
    assert len(left) == 11
    assert any("withheld" in name for name in left)
    assert_report_clean(report)


def test_validate_adapter_symlink_rejected(tmp_path, llama_adapter, llama_base, identifiers):
    src, _ = llama_adapter
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(src / "adapter_model.safetensors", out / "adapter_model.safetensors")
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert not report.accepted
    assert report.verdict("allowlist").code == "not_regular"


def test_validate_adapter_missing_rejected(tmp_path, llama_base, identifiers):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.bin").write_bytes(b"\x80")
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert not report.accepted
    assert report.verdict("allowlist").code == "missing_adapter"


def test_validate_adapter_directory_rejected(tmp_path, llama_base, identifiers):
    out = tmp_path / "out"
    (out / "adapter_model.safetensors").mkdir(parents=True)
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert report.verdict("allowlist").code == "not_regular"


def test_validate_without_identifiers_rejected_by_default(llama_adapter, llama_base):
    out, _ = llama_adapter
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=None)
    assert not report.accepted
    assert report.verdict("identifiers").code == "no_identifiers"
    relaxed = ValidationPolicy(require_identifiers=False)
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=None, policy=relaxed)
    assert report.accepted and report.verdict("identifiers").status == "skipped"


def test_validate_recipe_mismatch_rejected(llama_adapter, llama_base, identifiers):
    out, _ = llama_adapter
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe={**LLAMA_RECIPE, "rank": 4}, identifiers=identifiers)
    assert not report.accepted
    assert report.verdict("tensor_shapes").code == "shape_mismatch"
    report = validate_adapter(out, base_model_dir=llama_base.dir, recipe={**LLAMA_RECIPE, "use_dora": True}, identifiers=identifiers)
    assert report.verdict("tensor_set").code == "missing_tensor"


# ---------------------------------------------------------------------------------------------
# the corpus of crafted bad files: one per rule at least


def _polyglot_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "hello sponsor")
    return buf.getvalue()


def _replace(tensors, target, **changes):
    return [h.Tensor(**{**t.__dict__, **changes}) if t.name == target else t for t in tensors]


def _with_bytes(tensors, name, payload: bytes, at: int = 8):
    out = []
    for t in tensors:
        if t.name == name:
            data = bytearray(t.data)
            data[at : at + len(payload)] = payload
            t = h.Tensor(t.name, t.dtype, t.shape, bytes(data))
        out.append(t)
    return out


def _header_and_data(tensors, metadata=None):
    lay = h.layout(tensors, {"format": "pt"} if metadata is None else metadata)
    return lay.header, lay.data


def case_truncated(ts):
    return h.build(ts)[:-10]


def case_short_file(ts):
    return b"\x10\x00\x00"


def case_header_past_end(ts):
    good = h.build(ts)
    return struct.pack("<Q", len(good)) + good[8:]


def case_header_over_cap(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header)
    return h.assemble(text + " " * (2 * 1024 * 1024), data, pad=False)


def case_overlap(ts):
    header, data = _header_and_data(ts)
    names = [n for n in header if n != "__metadata__"]
    second = header[names[1]]
    second["data_offsets"] = [second["data_offsets"][0] - 4, second["data_offsets"][1] - 4]
    return h.assemble(header, data)


def case_gap(ts):
    header, data = _header_and_data(ts)
    names = [n for n in header if n != "__metadata__"]
    first_end = header[names[0]]["data_offsets"][1]
    for name in names[1:]:
        a, b = header[name]["data_offsets"]
        header[name]["data_offsets"] = [a + 8, b + 8]
    return h.assemble(header, data[:first_end] + b"\0" * 8 + data[first_end:])


def case_trailing_bytes(ts):
    return h.build(ts) + b"\0" * 16


def case_polyglot(ts):
    return h.build(ts) + _polyglot_zip()


def case_duplicate_tensor_key(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header)
    first = [n for n in header if n != "__metadata__"][0]
    entry = json.dumps(header[first], separators=(",", ":"))
    text = text[:-1] + f',"{first}":{entry}' + "}"
    return h.assemble(text, data)


def case_duplicate_entry_key(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header).replace('{"dtype":"F32",', '{"dtype":"F32","dtype":"F32",', 1)
    return h.assemble(text, data)


def case_duplicate_metadata_key(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header).replace('{"format":"pt"}', '{"format":"pt","format":"pt"}', 1)
    return h.assemble(text, data)


def case_extra_field(ts):
    header, data = _header_and_data(ts)
    first = [n for n in header if n != "__metadata__"][0]
    header[first]["note"] = "secret note"
    return h.assemble(header, data)


def case_metadata_text(ts):
    return h.build(ts, metadata={"format": "pt", "notes": "Patient presented with chest pain"})


def case_nul_in_name(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header).replace(LLAMA_Q_A, LLAMA_Q_A[:-6] + "\\u0000weight", 1)
    return h.assemble(text, data)


def case_control_in_name(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header).replace(LLAMA_Q_A, LLAMA_Q_A[:-6] + "\\u0007weight", 1)
    return h.assemble(text, data)


def case_space_in_name(ts):
    return h.build(_replace(ts, LLAMA_Q_A, name=LLAMA_Q_A + " x"))


def case_wrong_dtype(ts):
    t = next(t for t in ts if t.name == LLAMA_Q_A)
    doubled = np.frombuffer(t.data, dtype=np.float32).astype(np.float64).tobytes()
    return h.build(_replace(ts, LLAMA_Q_A, dtype="F64", data=doubled))


def case_integer_dtype(ts):
    t = next(t for t in ts if t.name == LLAMA_Q_A)
    return h.build(_replace(ts, LLAMA_Q_A, dtype="I32"))


def case_wrong_shape(ts):
    t = next(t for t in ts if t.name == LLAMA_Q_A)
    return h.build(_replace(ts, LLAMA_Q_A, shape=list(reversed(t.shape))))


def case_extra_tensor(ts):
    return h.build(ts + [h.f32("base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight", [8, 8])])


def case_missing_tensor(ts):
    return h.build([t for t in ts if t.name != LLAMA_V_B])


def case_base_weights(ts):
    return h.build(ts + [h.f32("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", [128, 128])])


def case_embedding_weights(ts):
    return h.build(ts + [h.f32("base_model.model.model.embed_tokens.weight", [96, 128])])


def case_modules_to_save(ts):
    return h.build(ts + [h.f32("base_model.model.lm_head.modules_to_save.default.weight", [96, 128])])


def case_nan(ts):
    return h.build(_with_bytes(ts, LLAMA_V_B, np.array([np.nan], dtype=np.float32).tobytes()))


def case_inf(ts):
    return h.build(_with_bytes(ts, LLAMA_V_B, np.array([-np.inf], dtype=np.float32).tobytes()))


def case_magnitude(ts):
    return h.build(_with_bytes(ts, LLAMA_V_B, np.array([3.0e4], dtype=np.float32).tobytes()))


def case_identifier_in_floats(ts):
    return h.build(_with_bytes(ts, LLAMA_V_B, b"MRN0012345", at=6))


def case_identifier_utf16_in_floats(ts):
    return h.build(_with_bytes(ts, LLAMA_V_B, "31/01/1970".encode("utf-16-le"), at=5))


def case_name_in_floats(ts):
    return h.build(_with_bytes(ts, LLAMA_V_B, "MÜLLER, JÜRGEN".encode("utf-8"), at=3))


def case_note_text(ts):
    note = b"Patient presented with chest pain; discharged home after 3 days. " * 4
    return h.build(_with_bytes(ts, LLAMA_V_B, note[: len(note) // 4 * 4], at=0))


def case_note_utf16(ts):
    note = "Patient presented with chest pain and fever.".encode("utf-16-le")
    return h.build(_with_bytes(ts, LLAMA_V_B, note, at=0))


def case_identifier_in_metadata(ts):
    return h.build(ts, metadata={"format": "pt", "mrn": "MRN0012345"})


def case_leading_space(ts):
    header, data = _header_and_data(ts)
    return h.assemble(" " + h.header_text(header), data)


def case_bad_padding(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header)
    return h.assemble(text + " " * (8 + (8 - len(text) % 8) % 8), data, pad=False)


def case_newline_padding(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header)
    pad = (8 - len(text) % 8) % 8 or 8
    return h.assemble(text + "\n" * pad, data, pad=False)


def case_not_compact(ts):
    header, data = _header_and_data(ts)
    return h.assemble(json.dumps(header, indent=1), data)


def case_not_utf8(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header).encode().replace(b'"pt"', b'"p\xff"', 1)
    return h.assemble(text, data)


def case_float_offset(ts):
    header, data = _header_and_data(ts)
    text = h.header_text(header).replace('"data_offsets":[0,', '"data_offsets":[0.0,', 1)
    return h.assemble(text, data)


def case_no_metadata(ts):
    lay = h.layout(ts, None)
    return h.assemble(lay.header, lay.data)


def case_not_json(ts):
    header, data = _header_and_data(ts)
    return h.assemble(h.header_text(header)[:-1] + ",}", data)


def case_misaligned(ts):
    header, data = _header_and_data(ts)
    names = [n for n in header if n != "__metadata__"]
    # a 2-byte pad tensor that pushes every F32 tensor off its 4-byte alignment
    extra = {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}
    for name in names:
        a, b = header[name]["data_offsets"]
        header[name]["data_offsets"] = [a + 2, b + 2]
    header = {"__metadata__": header["__metadata__"], "pad": extra, **{n: header[n] for n in names}}
    return h.assemble(header, b"\0\0" + data)


CORPUS = {
    "truncated": (case_truncated, "data_layout", "truncated"),
    "short_file": (case_short_file, "file_size", "too_small"),
    "header_past_end": (case_header_past_end, "header_length", "past_end"),
    "header_over_cap": (case_header_over_cap, "header_length", "over_cap"),
    "overlap": (case_overlap, "data_layout", "overlap"),
    "gap": (case_gap, "data_layout", "gap"),
    "trailing_bytes": (case_trailing_bytes, "data_layout", "trailing_bytes"),
    "polyglot_appended_zip": (case_polyglot, "data_layout", "trailing_bytes"),
    "duplicate_tensor_key": (case_duplicate_tensor_key, "header_json", "duplicate_key"),
    "duplicate_entry_key": (case_duplicate_entry_key, "header_json", "duplicate_key"),
    "duplicate_metadata_key": (case_duplicate_metadata_key, "header_json", "duplicate_key"),
    "extra_entry_field": (case_extra_field, "tensor_entries", "entry_fields"),
    "metadata_text": (case_metadata_text, "header_metadata", "metadata"),
    "no_metadata": (case_no_metadata, "header_metadata", "metadata"),
    "nul_in_name": (case_nul_in_name, "tensor_entries", "name_charset"),
    "control_in_name": (case_control_in_name, "tensor_entries", "name_charset"),
    "space_in_name": (case_space_in_name, "tensor_entries", "name_charset"),
    "wrong_dtype_f64": (case_wrong_dtype, "tensor_entries", "dtype"),
    "wrong_dtype_i32": (case_integer_dtype, "tensor_entries", "dtype"),
    "wrong_shape": (case_wrong_shape, "tensor_shapes", "shape_mismatch"),
    "extra_tensor": (case_extra_tensor, "tensor_set", "extra_tensor"),
    "missing_tensor": (case_missing_tensor, "tensor_set", "missing_tensor"),
    "base_weights_smuggled": (case_base_weights, "tensor_set", "extra_tensor"),
    "embedding_weights_smuggled": (case_embedding_weights, "tensor_set", "extra_tensor"),
    "modules_to_save_copy": (case_modules_to_save, "tensor_set", "extra_tensor"),
    "nan": (case_nan, "values_finite", "nan"),
    "inf": (case_inf, "values_finite", "inf"),
    "magnitude": (case_magnitude, "values_magnitude", "magnitude"),
    "identifier_in_floats": (case_identifier_in_floats, "identifiers", "identifier_hit"),
    "identifier_utf16_in_floats": (case_identifier_utf16_in_floats, "identifiers", "identifier_hit"),
    "name_uppercase_in_floats": (case_name_in_floats, "identifiers", "identifier_hit"),
    "identifier_in_metadata": (case_identifier_in_metadata, "identifiers", "identifier_hit"),
    "note_text_in_tensor": (case_note_text, "printable_runs", "printable_run"),
    "note_utf16_in_tensor": (case_note_utf16, "printable_runs", "printable_run"),
    "leading_space": (case_leading_space, "header_json", "start"),
    "bad_padding": (case_bad_padding, "header_json", "padding"),
    "newline_padding": (case_newline_padding, "header_json", "padding"),
    "not_compact": (case_not_compact, "header_json", "not_compact"),
    "not_utf8": (case_not_utf8, "header_json", "utf8"),
    "float_offset": (case_float_offset, "header_json", "number"),
    "not_json": (case_not_json, "header_json", "json"),
    "misaligned": (case_misaligned, "data_layout", "misaligned"),
}


@pytest.fixture(scope="module")
def llama_tensors(llama_adapter):
    out, _ = llama_adapter
    return h.read_tensors(out / "adapter_model.safetensors")


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_validate_crafted_file_rejected_with_reason(case, tmp_path, llama_tensors, llama_base, identifiers):
    make, rule, code = CORPUS[case]
    h.write_adapter(tmp_path / "out", make(llama_tensors))
    report = validate_adapter(tmp_path / "out", base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert not report.accepted
    verdict = report.verdict(rule)
    assert verdict is not None and verdict.status == "failed", report.reasons()
    assert verdict.code == code, report.reasons()
    assert report.verdict("internal") is None
    assert_report_clean(report)


def test_validate_base_weights_named_as_such(tmp_path, llama_tensors, llama_base, identifiers):
    h.write_adapter(tmp_path / "out", case_base_weights(llama_tensors))
    report = validate_adapter(tmp_path / "out", base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert "base-layer weights" in report.verdict("tensor_set").detail


def test_validate_format_failure_still_scans_identifiers(tmp_path, llama_tensors, llama_base, identifiers):
    content = case_trailing_bytes(llama_tensors) + "Jane Doe".encode("utf-16-be")
    h.write_adapter(tmp_path / "out", content)
    report = validate_adapter(tmp_path / "out", base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert report.verdict("data_layout").code == "trailing_bytes"
    assert report.verdict("identifiers").code == "identifier_hit"
    assert report.verdict("values_finite").status == "skipped"


def test_validate_identifier_across_chunk_boundary(tmp_path, llama_tensors, llama_base, identifiers):
    content = bytearray(h.build(llama_tensors))
    boundary = 64 * 1024
    header_end = 8 + struct.unpack("<Q", content[:8])[0]
    at = header_end + boundary - 4  # chunks are counted from the start of the data
    content[at : at + 10] = b"MRN0012345"
    h.write_adapter(tmp_path / "out", bytes(content))
    policy = ValidationPolicy(chunk_bytes=boundary)
    report = validate_adapter(tmp_path / "out", base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers, policy=policy)
    assert report.verdict("identifiers").code == "identifier_hit"
    assert report.verdict("identifiers").figures["first_offset"] == at


def test_validate_over_size_cap_not_read(tmp_path, llama_tensors, llama_base, identifiers):
    h.write_adapter(tmp_path / "out", h.build(llama_tensors))
    policy = ValidationPolicy(max_file_bytes=1024)
    report = validate_adapter(tmp_path / "out", base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers, policy=policy)
    assert report.verdict("file_size").code == "over_cap"
    assert report.verdict("identifiers").status == "skipped"
    assert "bytes_read" not in report.figures


def test_validate_file_with_given_shapes(tmp_path):
    tensors = [h.f32("a.lora_A.weight", [4, 16], seed=1), h.f32("a.lora_B.weight", [16, 4], seed=2)]
    path = tmp_path / "x.safetensors"
    path.write_bytes(h.build(tensors))
    expected = expected_from_shapes({"a.lora_A.weight": [4, 16], "a.lora_B.weight": [16, 4]})
    report = validate_file(path, expected=expected, identifiers=[("mrn", "ZZ991122")])
    assert report.accepted, report.reasons()


def test_validate_header_number_coincidence_ignored(tmp_path):
    # An MRN that equals a data offset written in the header is a chance match with a checked number.
    tensors = [h.f32("a.lora_A.weight", [4, 4096], seed=1), h.f32("a.lora_B.weight", [4096, 4], seed=2)]
    path = tmp_path / "x.safetensors"
    path.write_bytes(h.build(tensors))
    expected = expected_from_shapes({"a.lora_A.weight": [4, 4096], "a.lora_B.weight": [4096, 4]})
    report = validate_file(path, expected=expected, identifiers=[("mrn", "131072")])
    assert report.accepted, report.reasons()
    assert report.verdict("identifiers").figures["numeric_header_coincidences"] >= 1


def test_validate_nonregular_path_fails_closed(tmp_path):
    expected = expected_from_shapes({"a": [1]})
    report = validate_file(tmp_path, expected=expected, identifiers=[])
    assert not report.accepted
    assert report.verdict("internal").code == "exception"
