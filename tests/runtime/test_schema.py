"""The progress-line and audit.json validators the portal reuses at the sandbox boundary."""

from __future__ import annotations

import copy
import json
import math

import pytest

from training.runtime.schema import parse_progress, validate_audit, validate_progress_line


def _attack(**overrides):
    attack = {
        "n_members": 10, "n_nonmembers": 12, "auc": 0.6, "auc_ci_low": 0.4, "auc_ci_high": 0.8,
        "p_value": 0.2, "tpr_at_1pct_fpr": 0.1, "tpr_at_0_1pct_fpr": 0.0, "tpr_at_1pct_fpr_lower": 0.005,
        "roc": [[0.0, 0.0], [0.5, 0.6], [1.0, 1.0]],
    }
    attack.update(overrides)
    return attack


def _audit():
    group = {"n": 5, "exact": 1, "near": 2, "exact_rate": 0.2, "near_rate": 0.4}
    return {
        "schema_version": 1,
        "membership": {"loss": _attack(), "reference": _attack(), "zlib": _attack(), "min_k": _attack()},
        "extraction": {
            "prompt_fraction": 0.5, "suffix_tokens": 32, "near_threshold": 0.9,
            "members": group, "nonmembers": dict(group), "exact_p_value": 0.5, "near_p_value": 0.5,
        },
        "canaries": {
            "log2_space": 23.25, "n_candidates": 16384, "max_exposure": 14.0,
            "groups": [{
                "repeats": 10, "n_canaries": 2, "exposure": [3.0, 14.0], "exposure_mean": 8.5, "exposure_max": 14.0,
                "exposure_extrapolated": [3.2, 20.0], "exposure_extrapolated_mean": 11.6,
            }],
        },
        "elapsed_seconds": 12.5,
    }


def test_validate_progress_line_accepts_numbers():
    line = {"step": 3, "total_steps": 10, "epoch": 0.3, "loss": 2.5, "tokens_per_second": 1000.0, "eta_seconds": 7}
    assert validate_progress_line(line) == line


def test_validate_progress_line_accepts_final_and_dp_keys():
    line = {"eval_loss_base": 3.3, "eval_loss_adapted": 3.1, "qlora": 1, "epsilon": 7.9,
            "noise_multiplier": 0.8, "sample_rate": 0.25, "lora_moved": 1}
    assert validate_progress_line(line) == line


@pytest.mark.parametrize("line", [
    {"step": 1, "note": 2},  # unknown key
    {"step": "1"},  # string
    {"loss": float("nan")},
    {"loss": math.inf},
    {"qlora": True},  # bool is not a number here
    {"qlora": 2},  # flag out of range
    {"step": 1.5},  # step must be an integer
    {"loss": -1.0},
    {"sample_rate": 1.5},
    {"loss": [1.0]},
    {},
    [1, 2],
    "step",
    None,
])
def test_validate_progress_line_rejects(line):
    assert validate_progress_line(line) is None


def test_parse_progress_counts_dropped_lines():
    text = "\n".join([
        json.dumps({"step": 1, "loss": 2.0}),
        "not json",
        json.dumps({"step": 2, "text": "Patient X"}),
        '{"loss": NaN}',
        "x" * 5000,
        "",
        json.dumps({"step": 3, "loss": 1.0}),
    ])
    lines, dropped = parse_progress(text)
    assert lines == [{"step": 1, "loss": 2.0}, {"step": 3, "loss": 1.0}]
    assert dropped == 4


def test_validate_audit_accepts_a_full_report():
    report = _audit()
    assert validate_audit(report) == report


def test_validate_audit_allows_missing_optional_sections():
    report = _audit()
    del report["extraction"], report["canaries"], report["membership"]["min_k"]
    assert validate_audit(report) == report


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(note="free text"), "unknown"),
    (lambda r: r["membership"]["loss"].update(auc="0.5"), "membership.loss.auc"),
    (lambda r: r["membership"]["loss"].update(auc=1.2), "membership.loss.auc"),
    (lambda r: r["membership"]["loss"].update(auc=float("nan")), "membership.loss.auc"),
    (lambda r: r["membership"]["loss"].update(n_members=True), "n_members"),
    (lambda r: r["membership"]["loss"].update(roc=[[0.0, 0.0]] * 51), "roc"),
    (lambda r: r["membership"]["loss"].update(roc=[[0.0, 0.0, 1.0]]), "roc[0]"),
    (lambda r: r["membership"].pop("loss"), "missing loss"),
    (lambda r: r["membership"].update(secret_attack=_attack()), "unknown"),
    (lambda r: r["canaries"].update(groups=[]), "groups"),
    (lambda r: r["canaries"]["groups"][0].update(exposure=["high"]), "exposure[0]"),
    (lambda r: r.update(schema_version=2), "schema_version"),
    (lambda r: r.pop("elapsed_seconds"), "missing elapsed_seconds"),
])
def test_validate_audit_rejects(mutate, message):
    report = copy.deepcopy(_audit())
    mutate(report)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_audit(report)


def test_validate_audit_error_never_echoes_unknown_keys():
    report = _audit()
    report["membership"]["loss"]["Jane Doe MRN 1234567"] = 1.0
    with pytest.raises(ValueError) as info:
        validate_audit(report)
    assert "Jane" not in str(info.value)


def test_validate_audit_rejects_non_object():
    with pytest.raises(ValueError):
        validate_audit([1, 2, 3])
