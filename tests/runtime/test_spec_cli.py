"""The job spec and the CLI's handling of bad jobs (fails fast, exit 2, a message naming the cause)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.runtime.recipes import modalities, recipe_class
from training.runtime.spec import SpecError, parse_spec

from .conftest import run_runtime


def _spec(tmp_path: Path, **overrides) -> dict:
    spec = {
        "schema_version": 1, "task": "train", "job_id": "j1", "modality": "text",
        "base_model": {"path": str(tmp_path / "model"), "family": "llama"},
        "data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out"),
        "recipe": {
            "target_modules": ["q_proj", "v_proj"], "rank": 8, "alpha": 16, "dropout": 0.05,
            "learning_rate": 0.001, "epochs": 2, "batch_size": 8, "max_seq_length": 128, "seed": 1234,
            "quantization": "auto", "canaries": {"seed": 99, "repeats": [1, 10], "per_repeat": 4},
            "dp": {"target_epsilon": 8, "delta": 1e-5, "max_grad_norm": 1.0},
        },
        "threads": 2, "max_steps": None,
    }
    spec.update(overrides)
    return spec


def test_parse_spec_reads_the_documented_example(tmp_path):
    spec = parse_spec(_spec(tmp_path))
    assert spec.task == "train" and spec.modality == "text" and spec.family == "llama"
    assert spec.recipe.target_modules == ("q_proj", "v_proj")
    assert spec.recipe.canaries.repeats == (1, 10)
    assert spec.recipe.dp.target_epsilon == 8.0
    assert spec.max_steps is None and spec.threads == 2


def test_parse_spec_null_options_mean_defaults(tmp_path):
    raw = _spec(tmp_path)
    raw["recipe"].update(target_modules=None, canaries=None, dp=None)
    spec = parse_spec(raw)
    assert spec.recipe.target_modules is None and spec.recipe.canaries is None and spec.recipe.dp is None


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("recipe"), "missing required key(s): recipe"),
    (lambda s: s["recipe"].pop("rank"), "spec.recipe is missing required key(s): rank"),
    (lambda s: s.update(extra=1), "unknown key(s): 'extra'"),
    (lambda s: s["recipe"].update(learning_rate="fast"), "spec.recipe.learning_rate must be a finite number"),
    (lambda s: s["recipe"].update(rank=True), "spec.recipe.rank must be an integer"),
    (lambda s: s["recipe"].update(quantization="int8"), "spec.recipe.quantization must be one of"),
    (lambda s: s.update(data_dir="relative/data"), "spec.data_dir must be an absolute path"),
    (lambda s: s.update(task="audit"), "spec.adapter_path is required"),
    (lambda s: s.update(schema_version=2), "schema_version must be 1"),
    (lambda s: s["recipe"]["dp"].pop("delta"), "spec.recipe.dp is missing required key(s): delta"),
    (lambda s: s["recipe"]["canaries"].update(repeats=[1, 1]), "must not repeat"),
    (lambda s: s["recipe"].update(target_modules=["q_proj; rm -rf"]), "module names"),
])
def test_parse_spec_rejects_with_the_key_named(tmp_path, mutate, message):
    raw = _spec(tmp_path)
    mutate(raw)
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert message in str(info.value)


def test_recipe_registry_knows_text_and_refuses_others():
    assert "text" in modalities()
    assert recipe_class("text").modality == "text"
    with pytest.raises(SpecError, match="unknown modality 'smell'"):
        recipe_class("smell")


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_cli_missing_key_exits_2(tmp_path):
    raw = _spec(tmp_path)
    del raw["recipe"]["epochs"]
    result = run_runtime("train", _write(tmp_path, raw))
    assert result.returncode == 2
    assert "spec.recipe is missing required key(s): epochs" in result.stderr


def test_cli_unknown_modality_exits_2(tmp_path):
    result = run_runtime("train", _write(tmp_path, _spec(tmp_path, modality="smell")))
    assert result.returncode == 2
    assert "unknown modality 'smell'" in result.stderr


def test_cli_missing_data_file_exits_2(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"record": "r1", "patient": "p1", "text": "x"}\n')
    result = run_runtime("train", _write(tmp_path, _spec(tmp_path)))
    assert result.returncode == 2
    assert "data file not found" in result.stderr and "holdout.jsonl" in result.stderr


def test_cli_task_mismatch_exits_2(tmp_path):
    result = run_runtime("audit", _write(tmp_path, _spec(tmp_path)))
    assert result.returncode == 2
    assert "spec.task is 'train' but the command is 'audit'" in result.stderr


def test_cli_unreadable_spec_exits_2(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    result = run_runtime("train", path)
    assert result.returncode == 2
    assert "not readable JSON" in result.stderr


def test_cli_bad_data_line_names_line_not_content(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    secret = "Jane Doe was seen"
    (data / "train.jsonl").write_text(json.dumps({"record": "r1", "patient": "p1", "text": secret}) + "\n"
                                      + json.dumps({"record": "r2", "patient": "p1", "txt": secret}) + "\n")
    (data / "holdout.jsonl").write_text(json.dumps({"record": "r3", "patient": "p2", "text": secret}) + "\n")
    result = run_runtime("train", _write(tmp_path, _spec(tmp_path)))
    assert result.returncode == 2
    assert "train.jsonl line 2 is missing text" in result.stderr
    assert secret not in result.stderr
