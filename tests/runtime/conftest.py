"""Fixtures for the sandbox runtime tests: a tiny base model, staged data, job specs, and runs.

The runtime is exercised the way the sandbox runs it: ``python -m training.runtime`` in a
subprocess, so that its global torch settings (threads, determinism) never leak into the test
process. Jobs use one thread: on a busy two-core machine a second OpenMP thread mostly spins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runtime.corpus import notes, write_split

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_runtime(task: str, spec_path: Path, *, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "training.runtime", task, str(spec_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def make_spec(
    root: Path,
    model_dir: Path,
    *,
    n_train: int,
    n_holdout: int | None = None,
    records_per_patient: int = 1,
    task: str = "train",
    **recipe: object,
) -> Path:
    """Stage data under ``root/data`` and write ``root/spec.json`` for a text job."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_split(data / "train.jsonl", notes(n_train, seed=2), records_per_patient=records_per_patient)
    write_split(data / "holdout.jsonl", notes(n_holdout or n_train, seed=3), first_patient=100_000)
    spec = {
        "schema_version": 1,
        "task": task,
        "job_id": root.name,
        "modality": "text",
        "base_model": {"path": str(model_dir), "family": "llama"},
        "data_dir": str(data),
        "out_dir": str(root / "out"),
        "recipe": {
            "target_modules": None, "rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 0.01,
            "epochs": 1, "batch_size": 8, "max_seq_length": 128, "seed": 1234, "quantization": "none",
            "canaries": None, "dp": None, **recipe,
        },
        "threads": 1,
        "max_steps": None,
    }
    path = root / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def audit_spec(train_spec: Path) -> Path:
    """The audit job for a finished training job: same recipe, the adapter it produced."""
    spec = json.loads(train_spec.read_text(encoding="utf-8"))
    spec["task"] = "audit"
    spec["adapter_path"] = str(Path(spec["out_dir"]) / "adapter_model.safetensors")
    spec["out_dir"] = str(train_spec.parent / "audit")
    path = train_spec.parent / "audit-spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


@dataclass
class Run:
    spec: Path
    out_dir: Path
    train: subprocess.CompletedProcess
    audit: subprocess.CompletedProcess | None = None

    def progress(self) -> list[dict]:
        lines = (self.out_dir / "progress.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def audit_report(self) -> dict:
        return json.loads((self.spec.parent / "audit" / "audit.json").read_text(encoding="utf-8"))


def train_and_audit(root: Path, model_dir: Path, *, audit: bool = True, **spec_args: object) -> Run:
    spec = make_spec(root, model_dir, **spec_args)
    run = Run(spec=spec, out_dir=root / "out", train=run_runtime("train", spec))
    assert run.train.returncode == 0, run.train.stderr
    if audit:
        run.audit = run_runtime("audit", audit_spec(spec))
        assert run.audit.returncode == 0, run.audit.stderr
    return run


CANARIES = {"seed": 99, "repeats": [1, 10], "per_repeat": 2}


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-style base model whose tokenizer and weights saw a generic clinical corpus."""
    from training.runtime.build import build_text_lm

    return build_text_lm(
        tmp_path_factory.mktemp("base") / "model", notes(300, seed=1),
        vocab_size=1000, hidden_size=64, layers=2, heads=4, kv_heads=2, max_positions=256, pretrain_epochs=1,
    )


@pytest.fixture(scope="session")
def normal_run(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Run:
    """An ordinary fine-tune: many records, two epochs, canaries planted."""
    return train_and_audit(
        tmp_path_factory.mktemp("normal"), base_model, n_train=96, epochs=2, canaries=CANARIES,
    )


@pytest.fixture(scope="session")
def memorising_run(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Run:
    """A run built to memorise: few records, many epochs, every linear layer, canaries planted."""
    return train_and_audit(
        tmp_path_factory.mktemp("memorising"), base_model, n_train=16, epochs=30, batch_size=4,
        rank=16, alpha=32, target_modules=ALL_LLAMA_LINEAR, canaries=CANARIES,
    )
