"""End-to-end: ``python -m training.runtime train`` and ``audit`` on a tiny model, as the sandbox runs them."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from training.runtime.schema import PROGRESS_KEYS, validate_audit, validate_progress_line

from .conftest import ALL_LLAMA_LINEAR, make_spec, run_runtime

pytestmark = pytest.mark.slow


def test_train_writes_only_adapter_and_progress(normal_run):
    assert sorted(p.name for p in normal_run.out_dir.iterdir()) == ["adapter_model.safetensors", "progress.jsonl"]


def test_train_progress_lines_are_numbers_only(normal_run):
    lines = normal_run.progress()
    assert len(lines) >= 2
    for line in lines:
        assert validate_progress_line(line) == line
        assert set(line) <= PROGRESS_KEYS
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in line.values())
    steps = [line["step"] for line in lines[:-1]]
    assert steps == sorted(steps) and steps[-1] == lines[0]["total_steps"]
    assert {"step", "total_steps", "epoch", "loss", "tokens_per_second", "eta_seconds"} <= set(lines[0])


def test_train_adapter_improves_holdout_loss(normal_run):
    final = normal_run.progress()[-1]
    assert final["qlora"] == 0  # quantization "none"
    assert final["eval_loss_adapted"] < final["eval_loss_base"]


def test_train_stderr_carries_no_record_text(normal_run, memorising_run):
    for run in (normal_run, memorising_run):
        for stream in (run.train.stderr, run.audit.stderr):
            assert "Discharge summary" not in stream
            assert "Medical record number" not in stream


def test_adapter_loads_with_stock_peft(normal_run, base_model, tmp_path):
    """The bare safetensors plus a config the portal would write load with PeftModel.from_pretrained."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    shutil.copyfile(normal_run.out_dir / "adapter_model.safetensors", adapter_dir / "adapter_model.safetensors")
    LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM", base_model_name_or_path=str(base_model),
    ).save_pretrained(str(adapter_dir))

    base = AutoModelForCausalLM.from_pretrained(str(base_model), local_files_only=True)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 50, 60, 70]])).logits
    assert torch.isfinite(logits).all()


def test_audit_report_is_schema_valid(normal_run):
    report = normal_run.audit_report()
    assert validate_audit(report) == report
    assert set(report["membership"]) == {"loss", "reference", "zlib", "min_k"}
    loss = report["membership"]["loss"]
    assert loss["n_members"] == 96 and loss["n_nonmembers"] == 96
    assert loss["auc_ci_low"] <= loss["auc"] <= loss["auc_ci_high"]
    assert len(loss["roc"]) <= 50
    assert report["extraction"]["members"]["n"] == 64
    assert [g["repeats"] for g in report["canaries"]["groups"]] == [1, 10]
    assert report["canaries"]["n_candidates"] >= 2**14
    assert sorted((normal_run.spec.parent / "audit").iterdir()) == [normal_run.spec.parent / "audit" / "audit.json"]


def test_audit_memorising_run_leaks_more(normal_run, memorising_run):
    normal, memorising = normal_run.audit_report(), memorising_run.audit_report()
    for attack in ("loss", "reference"):
        assert memorising["membership"][attack]["auc"] > 0.8
        assert memorising["membership"][attack]["auc"] > normal["membership"][attack]["auc"] + 0.2
        assert memorising["membership"][attack]["p_value"] < 0.01
    assert normal["membership"]["loss"]["p_value"] > 0.01

    def exposure(report, repeats):
        return next(g for g in report["canaries"]["groups"] if g["repeats"] == repeats)["exposure_mean"]

    assert exposure(memorising, 10) > exposure(normal, 10) + 2
    assert exposure(memorising, 10) > exposure(memorising, 1) or exposure(memorising, 1) > 5


def test_train_is_deterministic_for_a_seed(normal_run, tmp_path):
    spec = json.loads(normal_run.spec.read_text())
    spec["out_dir"] = str(tmp_path / "again")
    again = tmp_path / "spec.json"
    again.write_text(json.dumps(spec))
    result = run_runtime("train", again)
    assert result.returncode == 0, result.stderr
    first = (normal_run.out_dir / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == first


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_train_nf4_uses_qlora_on_cpu(base_model, tmp_path):
    spec = make_spec(tmp_path, base_model, n_train=8, quantization="nf4")
    _set(spec, max_steps=2)
    result = run_runtime("train", spec)
    assert result.returncode == 0, result.stderr
    final = [json.loads(x) for x in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()][-1]
    assert final["qlora"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_model.safetensors", "progress.jsonl"]


def test_train_dp_reports_privacy_accounting(base_model, tmp_path):
    spec = make_spec(
        tmp_path, base_model, n_train=32, records_per_patient=2, epochs=2, learning_rate=0.02,
        target_modules=ALL_LLAMA_LINEAR, dp={"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0},
    )
    result = run_runtime("train", spec)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    final = lines[-1]
    assert all(validate_progress_line(line) == line for line in lines)
    assert 0 < final["epsilon"] <= 8.0 * 1.02
    assert final["noise_multiplier"] > 0
    assert final["sample_rate"] == pytest.approx(8 / 16)  # 16 patients, batches of 8: sampled per patient
    assert final["lora_moved"] == 1


def _set(spec_path: Path, **top_level: object) -> None:
    spec = json.loads(spec_path.read_text())
    spec.update(top_level)
    spec_path.write_text(json.dumps(spec))
