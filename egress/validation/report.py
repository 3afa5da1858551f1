"""The validation report: one verdict per rule, JSON-serialisable.

A verdict's ``detail`` and ``figures`` are written by the validator itself: they name rules,
generated tensor names, counts, offsets and sizes, never an identifier nor bytes of the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"

# Rule names, in the order they are evaluated.
RULE_ALLOWLIST = "allowlist"
RULE_RECIPE = "recipe"
RULE_FILE_SIZE = "file_size"
RULE_HEADER_LENGTH = "header_length"
RULE_HEADER_JSON = "header_json"
RULE_HEADER_METADATA = "header_metadata"
RULE_TENSOR_ENTRIES = "tensor_entries"
RULE_DATA_LAYOUT = "data_layout"
RULE_TENSOR_SET = "tensor_set"
RULE_TENSOR_SHAPES = "tensor_shapes"
RULE_VALUES_FINITE = "values_finite"
RULE_VALUES_MAGNITUDE = "values_magnitude"
RULE_IDENTIFIERS = "identifiers"
RULE_PRINTABLE_RUNS = "printable_runs"
RULE_INTERNAL = "internal"

FORMAT_RULES = (
    RULE_FILE_SIZE,
    RULE_HEADER_LENGTH,
    RULE_HEADER_JSON,
    RULE_HEADER_METADATA,
    RULE_TENSOR_ENTRIES,
    RULE_DATA_LAYOUT,
)
ALL_RULES = (
    RULE_ALLOWLIST,
    RULE_RECIPE,
    *FORMAT_RULES,
    RULE_TENSOR_SET,
    RULE_TENSOR_SHAPES,
    RULE_VALUES_FINITE,
    RULE_VALUES_MAGNITUDE,
    RULE_IDENTIFIERS,
    RULE_PRINTABLE_RUNS,
)


@dataclass
class RuleVerdict:
    rule: str
    status: str  # passed | failed | skipped
    detail: str = ""
    code: str = ""  # machine-readable reason of a failure, e.g. "overlap", "nan", "extra_tensor"
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "passed": self.passed,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            "figures": self.figures,
        }


@dataclass
class ValidationReport:
    """accepted is True only when no verdict failed (a skipped identifier scan is allowed only when
    the policy does not require identifiers)."""

    verdicts: list[RuleVerdict] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return bool(self.verdicts) and not any(v.status == FAILED for v in self.verdicts)

    def add(self, rule: str, status: str, detail: str = "", *, code: str = "", figures: dict | None = None) -> RuleVerdict:
        verdict = RuleVerdict(rule=rule, status=status, detail=detail, code=code, figures=dict(figures or {}))
        self.verdicts.append(verdict)
        return verdict

    def passed(self, rule: str, detail: str = "", *, figures: dict | None = None) -> RuleVerdict:
        return self.add(rule, PASSED, detail, figures=figures)

    def failed(self, rule: str, code: str, detail: str, *, figures: dict | None = None) -> RuleVerdict:
        return self.add(rule, FAILED, detail, code=code, figures=figures)

    def skipped(self, rule: str, detail: str, *, figures: dict | None = None) -> RuleVerdict:
        return self.add(rule, SKIPPED, detail, figures=figures)

    def verdict(self, rule: str) -> RuleVerdict | None:
        for v in self.verdicts:
            if v.rule == rule:
                return v
        return None

    @property
    def failures(self) -> list[RuleVerdict]:
        return [v for v in self.verdicts if v.status == FAILED]

    def reasons(self) -> list[str]:
        """One line per failed rule: ``rule [code]: detail``."""
        return [f"{v.rule} [{v.code}]: {v.detail}" for v in self.failures]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "figures": self.figures,
            "policy": self.policy,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False, **kwargs)
