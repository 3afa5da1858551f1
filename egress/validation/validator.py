"""validate_adapter: the egress firewall for a job's output directory. Fails closed."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .expected import ExpectedAdapter, RecipeError, expected_adapter
from .identifiers import IdentifierError, IdentifierSet, name_mentions_identifier
from .policy import ValidationPolicy
from .report import (
    FORMAT_RULES,
    RULE_ALLOWLIST,
    RULE_DATA_LAYOUT,
    RULE_FILE_SIZE,
    RULE_IDENTIFIERS,
    RULE_INTERNAL,
    RULE_PRINTABLE_RUNS,
    RULE_RECIPE,
    RULE_TENSOR_SET,
    RULE_TENSOR_SHAPES,
    RULE_VALUES_FINITE,
    RULE_VALUES_MAGNITUDE,
    ValidationReport,
)
from .safetensors_strict import FormatError, ParsedHeader, read_header_fd
from .scan import FileChangedError, StreamResult, stream_pass

ADAPTER_FILE = "adapter_model.safetensors"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NOT_EVALUATED = "not evaluated: an earlier rule failed"


# ---------------------------------------------------------------------------------------------
# public API


def validate_adapter(
    out_dir: Path | str,
    *,
    base_model_dir: Path | str,
    recipe: Mapping[str, Any],
    identifiers: Iterable[Any] | IdentifierSet | None,
    policy: ValidationPolicy | None = None,
) -> ValidationReport:
    """Validate ``out_dir/adapter_model.safetensors`` against the recipe and the base model.

    Only that one file is considered; everything else in ``out_dir`` is listed (by a safe rendering
    of its name) in the allowlist verdict and never read. Any exception becomes a failed verdict.
    """
    policy = policy or ValidationPolicy()
    report = ValidationReport(policy=policy.to_dict())
    started = time.monotonic()
    try:
        needles = _needles(identifiers, policy, report)
        fd = _open_from_dir(Path(out_dir), needles, report)
        try:
            expected = _expected(base_model_dir, recipe, report)
            if fd is None:
                _skip_file_rules(report, "not evaluated: no adapter file was taken")
            else:
                _validate_fd(fd, expected, needles, policy, report)
        finally:
            if fd is not None:
                os.close(fd)
    except Exception as exc:  # noqa: BLE001 - fail closed
        _internal(report, exc)
    report.figures["seconds"] = round(time.monotonic() - started, 3)
    return report


def validate_file(
    path: Path | str,
    *,
    expected: ExpectedAdapter | None,
    identifiers: Iterable[Any] | IdentifierSet | None,
    policy: ValidationPolicy | None = None,
) -> ValidationReport:
    """The file rules alone, on one safetensors file, against an already computed expected set
    (``expected=None`` skips the tensor-set and shape rules and fails the recipe rule)."""
    policy = policy or ValidationPolicy()
    report = ValidationReport(policy=policy.to_dict())
    started = time.monotonic()
    try:
        needles = _needles(identifiers, policy, report)
        if expected is None:
            report.failed(RULE_RECIPE, "no_expected", "no expected tensor set was supplied")
        else:
            report.passed(RULE_RECIPE, "expected tensor set supplied", figures=expected.summary())
        fd = open_regular_file(Path(path))
        try:
            _validate_fd(fd, expected, needles, policy, report)
        finally:
            os.close(fd)
    except Exception as exc:  # noqa: BLE001 - fail closed
        _internal(report, exc)
    report.figures["seconds"] = round(time.monotonic() - started, 3)
    return report


def open_regular_file(path: Path) -> int:
    """Open without following a final symlink and insist on a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------------------------
# pieces


def _needles(identifiers: Iterable[Any] | IdentifierSet | None, policy: ValidationPolicy, report: ValidationReport) -> IdentifierSet | None:
    if identifiers is None:
        return None
    if isinstance(identifiers, IdentifierSet):
        return identifiers
    try:
        return IdentifierSet.build(identifiers, min_length=policy.min_identifier_length)
    except IdentifierError as exc:
        raise _Refusal(RULE_IDENTIFIERS, "bad_identifier", str(exc)) from None


class _Refusal(Exception):
    def __init__(self, rule: str, code: str, detail: str) -> None:
        super().__init__(detail)
        self.rule, self.code, self.detail = rule, code, detail


def _describe(name: str, needles: IdentifierSet | None, index: int) -> str:
    if needles is not None and not needles.empty and name_mentions_identifier(name, needles):
        return f"<entry {index}: name withheld, it contains a patient identifier>"
    if _SAFE_NAME.fullmatch(name):
        return name
    return f"<entry {index}: name withheld, {len(name)} characters outside [A-Za-z0-9_.-] or too long>"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _open_from_dir(out_dir: Path, needles: IdentifierSet | None, report: ValidationReport) -> int | None:
    """The allowlist: take adapter_model.safetensors (a regular file, not a link), list the rest."""
    try:
        dir_mode = os.lstat(out_dir).st_mode
    except OSError:
        report.failed(RULE_ALLOWLIST, "no_output_dir", "the output directory does not exist")
        return None
    if not stat.S_ISDIR(dir_mode):
        report.failed(RULE_ALLOWLIST, "no_output_dir", "the output path is not a directory (or is a symlink)")
        return None
    left_behind: list[dict[str, Any]] = []
    adapter_mode = None
    with os.scandir(out_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for index, entry in enumerate(entries):
        st = entry.stat(follow_symlinks=False)
        if entry.name == ADAPTER_FILE:
            adapter_mode = st
            if stat.S_ISREG(st.st_mode):
                continue
        left_behind.append(
            {"name": _describe(entry.name, needles, index), "kind": _kind(st.st_mode), "bytes": st.st_size if stat.S_ISREG(st.st_mode) else None}
        )
    figures = {"taken": [], "left_behind": left_behind}
    if adapter_mode is None:
        report.failed(RULE_ALLOWLIST, "missing_adapter", f"{ADAPTER_FILE} is not in the output directory", figures=figures)
        return None
    if not stat.S_ISREG(adapter_mode.st_mode):
        report.failed(
            RULE_ALLOWLIST, "not_regular", f"{ADAPTER_FILE} is a {_kind(adapter_mode.st_mode)}, not a regular file", figures=figures
        )
        return None
    if adapter_mode.st_nlink != 1:
        report.failed(RULE_ALLOWLIST, "hard_link", f"{ADAPTER_FILE} has {adapter_mode.st_nlink} hard links", figures=figures)
        return None
    fd = open_regular_file(out_dir / ADAPTER_FILE)
    after = os.fstat(fd)
    if (after.st_ino, after.st_dev) != (adapter_mode.st_ino, adapter_mode.st_dev):
        os.close(fd)
        report.failed(RULE_ALLOWLIST, "replaced", f"{ADAPTER_FILE} was replaced while it was opened", figures=figures)
        return None
    figures["taken"] = [ADAPTER_FILE]
    detail = f"took {ADAPTER_FILE}; {len(left_behind)} other entr{'y' if len(left_behind) == 1 else 'ies'} left behind"
    report.passed(RULE_ALLOWLIST, detail, figures=figures)
    return fd


def _expected(base_model_dir: Path | str, recipe: Mapping[str, Any], report: ValidationReport) -> ExpectedAdapter | None:
    try:
        expected = expected_adapter(base_model_dir, recipe)
    except RecipeError as exc:
        report.failed(RULE_RECIPE, "recipe", str(exc))
        return None
    report.passed(RULE_RECIPE, "expected tensor set derived from the base model and the recipe", figures=expected.summary())
    return expected


def _skip_file_rules(report: ValidationReport, why: str) -> None:
    for rule in (*FORMAT_RULES, RULE_TENSOR_SET, RULE_TENSOR_SHAPES, RULE_VALUES_FINITE, RULE_VALUES_MAGNITUDE, RULE_IDENTIFIERS, RULE_PRINTABLE_RUNS):
        report.skipped(rule, why)


def _validate_fd(
    fd: int,
    expected: ExpectedAdapter | None,
    needles: IdentifierSet | None,
    policy: ValidationPolicy,
    report: ValidationReport,
) -> None:
    file_size = os.fstat(fd).st_size
    report.figures["file_bytes"] = file_size
    header: ParsedHeader | None = None
    try:
        header = read_header_fd(fd, file_size, policy)
    except FormatError as exc:
        failed_at = FORMAT_RULES.index(exc.rule)
        for rule in FORMAT_RULES[:failed_at]:
            report.passed(rule)
        report.failed(exc.rule, exc.code, exc.detail)
        for rule in FORMAT_RULES[failed_at + 1:]:
            report.skipped(rule, _NOT_EVALUATED)
    else:
        for rule in FORMAT_RULES:
            report.passed(rule)
        report.verdict(RULE_DATA_LAYOUT).figures.update({"tensors": len(header.tensors), "data_bytes": header.data_size})
        report.figures["header_bytes"] = header.header_length

    if header is not None and expected is not None:
        _check_tensor_set(header, expected, report)
    else:
        report.skipped(RULE_TENSOR_SET, _NOT_EVALUATED)
        report.skipped(RULE_TENSOR_SHAPES, _NOT_EVALUATED)

    size_ok = report.verdict(RULE_FILE_SIZE).passed
    if not size_ok:  # never read a file over the cap
        for rule in (RULE_VALUES_FINITE, RULE_VALUES_MAGNITUDE, RULE_IDENTIFIERS, RULE_PRINTABLE_RUNS):
            report.skipped(rule, "not evaluated: the file was not read")
        return
    try:
        result = stream_pass(fd, file_size, header, needles, policy)
    except FileChangedError as exc:
        raise _Refusal(RULE_INTERNAL, "file_changed", str(exc)) from None
    report.figures["bytes_read"] = result.bytes_read + (header.data_start if header is not None else 0)
    _value_verdicts(result, header, policy, report)
    _identifier_verdict(result, needles, header, policy, report)
    _printable_verdict(result, header, policy, report)


_FORBIDDEN_HINTS = (
    (".base_layer.", "base-layer weights"),
    ("modules_to_save", "a modules_to_save copy"),
    ("original_module", "a modules_to_save copy"),
    ("embed", "embedding weights"),
    ("wte", "embedding weights"),
    ("wpe", "embedding weights"),
    ("lm_head", "output-head weights"),
)


def _classify_extra(name: str) -> str:
    for needle, label in _FORBIDDEN_HINTS:
        if needle in name:
            return label
    return "an unexpected tensor"


def _check_tensor_set(header: ParsedHeader, expected: ExpectedAdapter, report: ValidationReport) -> None:
    found = header.by_name()
    want = expected.tensors
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    if missing or extra:
        kinds: dict[str, int] = {}
        for name in extra:
            label = _classify_extra(name)
            kinds[label] = kinds.get(label, 0) + 1
        parts = []
        if extra:
            # names of unexpected tensors come from the file: only their categories are reported
            parts.append(f"{len(extra)} unexpected tensor(s): " + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            parts.append(f"{len(missing)} expected tensor(s) missing: {shown}")
        code = "extra_tensor" if extra else "missing_tensor"
        report.failed(
            RULE_TENSOR_SET,
            code,
            "; ".join(parts),
            figures={"expected": len(want), "found": len(found), "extra": len(extra), "missing": len(missing), "extra_kinds": kinds},
        )
    else:
        report.passed(RULE_TENSOR_SET, f"exactly the {len(want)} expected tensors", figures={"expected": len(want)})
    wrong = [
        (name, want[name].shape, entry.shape)
        for name, entry in sorted(found.items())
        if name in want and entry.shape != want[name].shape
    ]
    if wrong:
        name, expected_shape, got = wrong[0]
        report.failed(
            RULE_TENSOR_SHAPES,
            "shape_mismatch",
            f"{len(wrong)} tensor(s) with the wrong shape, e.g. {name}: expected {list(expected_shape)}, found {list(got)}",
            figures={"wrong": len(wrong)},
        )
    else:
        report.passed(RULE_TENSOR_SHAPES, "every expected tensor has its expected shape")


def _name_for_report(name: str, header: ParsedHeader | None, report: ValidationReport) -> str:
    """A tensor name from the file is reported only when the tensor-set rule vouched for it."""
    verdict = report.verdict(RULE_TENSOR_SET)
    if verdict is not None and verdict.passed:
        return name
    if header is not None:
        for index, t in enumerate(header.tensors):
            if t.name == name:
                return f"tensor #{index}"
    return "a tensor"


def _value_verdicts(result: StreamResult, header: ParsedHeader | None, policy: ValidationPolicy, report: ValidationReport) -> None:
    if header is None:
        report.skipped(RULE_VALUES_FINITE, _NOT_EVALUATED)
        report.skipped(RULE_VALUES_MAGNITUDE, _NOT_EVALUATED)
        return
    bad = result.nonfinite()
    if bad:
        name, what = bad[0]
        code = "nan" if any(w == "nan" for _, w in bad) else "inf"
        report.failed(
            RULE_VALUES_FINITE,
            code,
            f"{len(bad)} tensor(s) hold NaN or infinite values, e.g. {_name_for_report(name, header, report)} ({what})",
            figures={"tensors": len(bad)},
        )
    else:
        report.passed(RULE_VALUES_FINITE, "every value is finite")
    over = result.over_bound(policy.magnitude_bound)
    max_abs = result.max_abs()
    if over:
        report.failed(
            RULE_VALUES_MAGNITUDE,
            "magnitude",
            f"{len(over)} tensor(s) hold values above |{policy.magnitude_bound:g}|, e.g. {_name_for_report(over[0], header, report)}",
            figures={"tensors": len(over), "bound": policy.magnitude_bound},
        )
    else:
        report.passed(
            RULE_VALUES_MAGNITUDE,
            f"every finite value is within |{policy.magnitude_bound:g}|",
            figures={"max_abs": max_abs, "bound": policy.magnitude_bound},
        )


def _numeric_coincidence(hit, header: ParsedHeader | None) -> bool:
    """A hit made only of digits inside a JSON integer of a header the strict parser accepted is
    a chance coincidence with a shape or an offset (every header number was checked)."""
    if header is None or hit.encoding != "utf-8" or hit.offset < 8 or hit.offset + hit.length > header.data_start:
        return False
    raw = header.header_bytes
    lo, hi = hit.offset, hit.offset + hit.length
    if not raw[lo:hi].isdigit():
        return False
    while lo > 8 and raw[lo - 1:lo].isdigit():
        lo -= 1
    while hi < len(raw) and raw[hi:hi + 1].isdigit():
        hi += 1
    return raw[lo - 1:lo] in (b"[", b",") and raw[hi:hi + 1] in (b"]", b",")


def _identifier_verdict(
    result: StreamResult, needles: IdentifierSet | None, header: ParsedHeader | None, policy: ValidationPolicy, report: ValidationReport
) -> None:
    if needles is None:
        if policy.require_identifiers:
            report.failed(RULE_IDENTIFIERS, "no_identifiers", "no identifier list was supplied and the policy requires one")
        else:
            report.skipped(RULE_IDENTIFIERS, "no identifier list was supplied")
        return
    figures = needles.figures()
    figures["bytes_scanned"] = report.figures.get("bytes_read", 0)
    figures["windows_checked"] = result.identifier_windows
    # the exemption holds only when every header number was checked against the expected shapes
    vouched = all(report.verdict(rule) is not None and report.verdict(rule).passed for rule in (RULE_TENSOR_SET, RULE_TENSOR_SHAPES))
    hits = [h for h in result.identifier_hits if not (vouched and _numeric_coincidence(h, header))]
    figures["numeric_header_coincidences"] = len(result.identifier_hits) - len(hits)
    if hits:
        kinds = sorted({h.kind for h in hits})
        encodings = sorted({h.encoding for h in hits})
        region = "header" if header is not None and hits[0].offset < header.data_start else "tensor data" if header is not None else "file"
        figures.update({"hits": len(hits), "first_offset": hits[0].offset})
        report.failed(
            RULE_IDENTIFIERS,
            "identifier_hit",
            f"{len(hits)} occurrence(s) of patient identifiers (kind: {', '.join(kinds)}; encoding: {', '.join(encodings)}); "
            f"first in the {region} at byte {hits[0].offset}",
            figures=figures,
        )
    else:
        report.passed(RULE_IDENTIFIERS, f"no identifier of {needles.identifiers} found in any encoding", figures=figures)


def _printable_verdict(result: StreamResult, header: ParsedHeader | None, policy: ValidationPolicy, report: ValidationReport) -> None:
    detector = result.printable
    if header is None or detector is None:
        report.skipped(RULE_PRINTABLE_RUNS, _NOT_EVALUATED)
        return
    limit = policy.max_printable_run
    if detector.found:
        parts = []
        if detector.ascii_run_at is not None:
            parts.append(f"a run of more than {limit} printable ASCII bytes at byte {detector.ascii_run_at}")
        if detector.utf16_run_at is not None:
            parts.append(f"a run of more than {limit} printable UTF-16 characters at byte {detector.utf16_run_at}")
        report.failed(RULE_PRINTABLE_RUNS, "printable_run", "tensor data holds " + " and ".join(parts), figures={"limit": limit})
    else:
        report.passed(RULE_PRINTABLE_RUNS, f"no printable run longer than {limit} in the tensor data", figures={"limit": limit})


def _internal(report: ValidationReport, exc: BaseException) -> None:
    if isinstance(exc, _Refusal):
        report.failed(exc.rule, exc.code, exc.detail)
        return
    # Library messages can quote file contents: only the exception type is reported.
    report.failed(RULE_INTERNAL, "exception", f"validation raised {type(exc).__name__}; the adapter is rejected")
