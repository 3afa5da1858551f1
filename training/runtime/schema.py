"""Schemas for what comes out of a sandbox: progress lines and ``audit.json``.

Pure functions with the standard library only, so that the portal can reuse them on its side of
the boundary (where they are the gate) and the runtime can check what it writes (where they catch
our own mistakes early). Everything that passes is numbers in a fixed shape: no strings, no
booleans, no NaN or infinities, no keys outside the schema. That is what lets the portal show
these values to researchers without risking free text from inside the sandbox.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# --- progress.jsonl --------------------------------------------------------------------------

MAX_PROGRESS_LINE_BYTES = 4096
_BIG = 1e15  # no honest progress or audit number is this large


@dataclass(frozen=True)
class Num:
    """A number field: ``integer`` refuses floats; ``low``/``high`` are inclusive bounds."""

    low: float = 0.0
    high: float = _BIG
    integer: bool = False


FLAG = Num(0, 1, integer=True)
COUNT = Num(0, _BIG, integer=True)
NONNEG = Num(0, _BIG)
PROBABILITY = Num(0, 1)

PROGRESS_FIELDS: dict[str, Num] = {
    "step": COUNT,
    "total_steps": COUNT,
    "epoch": NONNEG,
    "loss": NONNEG,
    "tokens_per_second": NONNEG,
    "eta_seconds": NONNEG,
    "eval_loss_base": NONNEG,
    "eval_loss_adapted": NONNEG,
    "qlora": FLAG,
    "epsilon": NONNEG,
    "noise_multiplier": NONNEG,
    "sample_rate": PROBABILITY,
    "lora_moved": FLAG,
}
PROGRESS_KEYS = frozenset(PROGRESS_FIELDS)


def validate_progress_line(obj: Any) -> dict | None:
    """Return a clean copy of one decoded progress line, or None if anything is off.

    A line is all-or-nothing: one unknown key or one non-number drops the whole line (the portal
    counts dropped lines), so a partly odd line cannot smuggle its odd part through.
    """
    if not isinstance(obj, dict) or not obj:
        return None
    clean: dict[str, int | float] = {}
    for key, value in obj.items():
        field = PROGRESS_FIELDS.get(key) if isinstance(key, str) else None
        if field is None or not _number_ok(value, field):
            return None
        clean[key] = value
    return clean


def parse_progress(text: str, *, max_lines: int = 100_000) -> tuple[list[dict], int]:
    """Split a progress.jsonl text into valid lines and a count of dropped ones."""
    lines: list[dict] = []
    dropped = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if len(lines) >= max_lines or len(raw.encode("utf-8", "replace")) > MAX_PROGRESS_LINE_BYTES:
            dropped += 1
            continue
        try:
            obj = json.loads(raw, parse_constant=_refuse_constant)
        except ValueError:
            dropped += 1
            continue
        clean = validate_progress_line(obj)
        if clean is None:
            dropped += 1
        else:
            lines.append(clean)
    return lines, dropped


def _refuse_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity by default; they are not numbers we can show.
    raise ValueError(f"non-finite constant {name}")


def _number_ok(value: Any, field: Num) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; True is not a number here
        return False
    if field.integer:
        if not isinstance(value, int):
            return False
    elif not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return field.low <= value <= field.high


# --- audit.json ------------------------------------------------------------------------------

AUDIT_SCHEMA_VERSION = 1
MAX_ROC_POINTS = 50
MAX_CANARY_GROUPS = 16
MAX_CANARIES_PER_GROUP = 1000
MEMBERSHIP_ATTACKS = ("loss", "reference", "zlib", "min_k")


@dataclass(frozen=True)
class Obj:
    """An object with exactly these keys (``optional`` ones may be absent)."""

    fields: dict
    optional: frozenset = frozenset()


@dataclass(frozen=True)
class Seq:
    """A list of ``item`` with at most ``max_len`` entries (and at least ``min_len``)."""

    item: Any
    max_len: int
    min_len: int = 0


ROC_POINT = Seq(PROBABILITY, 2, 2)
ATTACK = Obj({
    "n_members": COUNT,
    "n_nonmembers": COUNT,
    "auc": PROBABILITY,
    "auc_ci_low": PROBABILITY,
    "auc_ci_high": PROBABILITY,
    "p_value": PROBABILITY,
    "tpr_at_1pct_fpr": PROBABILITY,
    "tpr_at_0_1pct_fpr": PROBABILITY,
    "tpr_at_1pct_fpr_lower": PROBABILITY,
    "roc": Seq(ROC_POINT, MAX_ROC_POINTS),
})
EXTRACTION_GROUP = Obj({"n": COUNT, "exact": COUNT, "near": COUNT, "exact_rate": PROBABILITY, "near_rate": PROBABILITY})
EXTRACTION = Obj({
    "prompt_fraction": PROBABILITY,
    "suffix_tokens": COUNT,
    "near_threshold": PROBABILITY,
    "members": EXTRACTION_GROUP,
    "nonmembers": EXTRACTION_GROUP,
    "exact_p_value": PROBABILITY,
    "near_p_value": PROBABILITY,
})
EXPOSURE = Num(0, 1e4)
CANARY_GROUP = Obj({
    "repeats": COUNT,
    "n_canaries": COUNT,
    "exposure": Seq(EXPOSURE, MAX_CANARIES_PER_GROUP),
    "exposure_mean": EXPOSURE,
    "exposure_max": EXPOSURE,
    "exposure_extrapolated": Seq(EXPOSURE, MAX_CANARIES_PER_GROUP),
    "exposure_extrapolated_mean": EXPOSURE,
})
CANARIES = Obj({
    "log2_space": EXPOSURE,
    "n_candidates": COUNT,
    "max_exposure": EXPOSURE,
    "groups": Seq(CANARY_GROUP, MAX_CANARY_GROUPS, 1),
})
MEMORISATION = Obj(
    {
        "n_samples": COUNT,  # samples generated inside the sandbox
        "n_members": COUNT,  # members the samples were compared with
        "n_nonmembers": COUNT,  # as many non-members
        "match_threshold": NONNEG,  # 0 = exact reproduction; else the distance under which a sample "matches"
        "member_match_rate": PROBABILITY,  # share of samples matching some member
        "nonmember_match_rate": PROBABILITY,  # share of samples matching some non-member
        "p_value": PROBABILITY,  # one-sided: member rate above non-member rate
        "member_distance_median": NONNEG,  # median over samples of the nearest member's distance
        "nonmember_distance_median": NONNEG,
    },
    optional=frozenset(("member_distance_median", "nonmember_distance_median")),
)
AUDIT = Obj(
    {
        "schema_version": Num(AUDIT_SCHEMA_VERSION, AUDIT_SCHEMA_VERSION, integer=True),
        "membership": Obj(
            {name: ATTACK for name in MEMBERSHIP_ATTACKS},
            # Every recipe has a per-record loss; the other attacks need text or a reference model.
            optional=frozenset(("reference", "zlib", "min_k")),
        ),
        "extraction": EXTRACTION,
        "canaries": CANARIES,
        "memorisation": MEMORISATION,
        "elapsed_seconds": NONNEG,
    },
    optional=frozenset(("extraction", "canaries", "memorisation")),
)


def validate_audit(obj: Any) -> dict:
    """Return a clean copy of a decoded audit.json, or raise ValueError naming the first problem."""
    return _validate(obj, AUDIT, "audit")


def _validate(value: Any, schema: Any, where: str) -> Any:
    if isinstance(schema, Num):
        if not _number_ok(value, schema):
            kind = "an integer" if schema.integer else "a finite number"
            raise ValueError(f"{where} must be {kind} in [{schema.low:g}, {schema.high:g}]")
        return value
    if isinstance(schema, Seq):
        if not isinstance(value, list) or not schema.min_len <= len(value) <= schema.max_len:
            raise ValueError(f"{where} must be a list of {schema.min_len} to {schema.max_len} entries")
        return [_validate(item, schema.item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object")
        unknown = [k for k in value if k not in schema.fields]
        if unknown:
            # The key itself came from the sandbox: say how many, never echo it.
            raise ValueError(f"{where} has {len(unknown)} unknown key(s)")
        missing = [k for k in schema.fields if k not in value and k not in schema.optional]
        if missing:
            raise ValueError(f"{where} is missing {', '.join(missing)}")
        return {k: _validate(value[k], schema.fields[k], f"{where}.{k}") for k in schema.fields if k in value}
    raise TypeError(f"unknown schema node at {where}")  # a bug in this module, not bad input
