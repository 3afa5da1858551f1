"""The imaging recipes (vision-language, diffusion) trained and audited in real sandboxes, as the
worker runs a job (``python -m training.runtime train|audit /job/spec.json`` with /data, /models,
/job, /code read-only and a writable /out), then egress's checks on what came out: the validator,
stock peft with the portal's adapter_config.json, the audit schema and gates.

Each case runs once per backend that is available here (docker needs the engine and the image of
scripts/build_sandbox_image.sh; bubblewrap needs bwrap). The cohort's DICOM files carry another
window than the images the base models were pre-trained on (another scanner protocol), which
gives each adapter something real to learn. Django-free apart from an unsaved AuditPolicy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runtime.imaging import job_spec, stage_cohort, write_spec
from training.sandbox import SandboxSpec, SandboxUnavailable, get_backend, stage_runtime_code

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
ADAPTER_FILE = "adapter_model.safetensors"
COHORT = {"n_train": 32, "n_holdout": 32, "studies_per_patient": 2, "window_width": 1400.0}
RECIPES = {"vision_language": {"epochs": 3, "learning_rate": 0.005}, "diffusion": {"epochs": 2, "learning_rate": 0.005}}
CASES = [
    pytest.param((backend, modality), marks=getattr(pytest.mark, backend), id=f"{backend}-{modality}")
    for backend in ("bubblewrap", "docker") for modality in RECIPES
]

_bases: dict[str, Path] = {}
_runs: dict[tuple[str, str], "Round"] = {}


@pytest.fixture(scope="module")
def workspace():
    """World-traversable (pytest's tmp_path sits below a 0700 folder the sandbox user cannot enter)."""
    root = Path(tempfile.mkdtemp(prefix="rapha-imaging-sandbox-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    _bases.clear()
    _runs.clear()


def base_model(workspace: Path, modality: str) -> Path:
    """The demo builders' models, pre-trained on phantoms of other patients (built once per module)."""
    if modality not in _bases:
        from training.runtime.build_imaging import build_demo_diffusion, build_demo_vlm, phantom_studies

        folder = workspace / "models" / modality
        if modality == "vision_language":
            studies = phantom_studies(200, seed=1001)
            build_demo_vlm(folder, [r for _, r in studies], [i for i, _ in studies], seed=0, pretrain_epochs=2)
        else:
            build_demo_diffusion(folder, seed=0, pretrain_steps=100)
        for path in [workspace / "models", folder]:
            path.chmod(0o755)
        _bases[modality] = folder
    return _bases[modality]


@dataclass
class Round:
    backend: str
    modality: str
    base: Path
    data: Path
    train_status: str
    train_log: str
    out: Path
    audit_status: str = ""
    audit_log: str = ""
    audit_out: Path | None = None

    def progress(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / "progress.jsonl").read_text().splitlines()]

    def audit_report(self) -> dict:
        return json.loads((self.audit_out / "audit.json").read_text())

    def lora_recipe(self) -> dict:
        """The LoRA part of the job's recipe, as egress reads it from the job (defaults resolved)."""
        from training.runtime.recipes import recipe_class
        from tests.runtime.imaging import FAMILIES

        targets = recipe_class(self.modality).default_target_modules[FAMILIES[self.modality]]
        return {"target_modules": list(targets), "rank": 8, "alpha": 16, "dropout": 0.0}


def _sandbox_job(backend, workspace: Path, round_: Round, task: str, mounts_extra: list, spec: dict) -> tuple[str, str, Path]:
    job = workspace / f"{task}-{uuid.uuid4().hex[:10]}"
    (job / "job").mkdir(parents=True)
    job.chmod(0o755)
    (job / "job").chmod(0o755)
    write_spec(job / "job" / "spec.json", spec)
    code = stage_runtime_code(job)
    out, log = job / "out", job / "job.log"
    result = backend.run(SandboxSpec(
        job_id=f"imaging-test-{uuid.uuid4().hex[:12]}",
        command=["python", "-m", "training.runtime", task, "/job/spec.json"],
        out_dir=out,
        mounts=[(str(round_.data), "/data", True), (str(round_.base), "/models", True), (str(job / "job"), "/job", True),
                (code, "/code", True), *mounts_extra],
        wall_clock_seconds=600, memory_bytes=3072 * MiB, pids_limit=256, cpus=1, log_path=log,
    ))
    return result.status, log.read_text(errors="replace") if log.exists() else "", out


@pytest.fixture(scope="module", params=CASES)
def round_(request, workspace) -> Round:
    backend_name, modality = request.param
    try:
        backend = get_backend(backend_name)
    except SandboxUnavailable as exc:
        pytest.skip(f"{backend_name} sandbox unavailable here: {exc}")
    key = (backend_name, modality)
    if key not in _runs:
        data = workspace / f"data-{modality}"
        if not data.exists():
            stage_cohort(data, modality, **COHORT)
        run = Round(backend=backend_name, modality=modality, base=base_model(workspace, modality), data=data,
                    train_status="", train_log="", out=workspace)
        common = dict(modality=modality, base_model="/models", data_dir="/data", out_dir="/out", **RECIPES[modality])
        run.train_status, run.train_log, run.out = _sandbox_job(
            backend, workspace, run, "train", [], job_spec(task="train", **common))
        if run.train_status == "succeeded":
            adapter_dir = workspace / f"adapter-{backend_name}-{modality}"
            adapter_dir.mkdir()
            adapter_dir.chmod(0o755)
            shutil.copyfile(run.out / ADAPTER_FILE, adapter_dir / ADAPTER_FILE)
            (adapter_dir / ADAPTER_FILE).chmod(0o644)
            run.audit_status, run.audit_log, run.audit_out = _sandbox_job(
                backend, workspace, run, "audit", [(str(adapter_dir), "/adapter", True)],
                job_spec(task="audit", adapter_path=f"/adapter/{ADAPTER_FILE}", **common))
        _runs[key] = run
    return _runs[key]


# --- training ------------------------------------------------------------------------------------

def test_imaging_train_in_sandbox_writes_only_adapter_and_progress(round_):
    assert round_.train_status == "succeeded", round_.train_log[-3000:]
    assert sorted(os.listdir(round_.out)) == [ADAPTER_FILE, "progress.jsonl"]


def test_imaging_train_in_sandbox_lowers_holdout_loss(round_):
    from training.runtime.schema import validate_progress_line

    lines = round_.progress()
    assert all(validate_progress_line(line) == line for line in lines)
    final = lines[-1]
    assert final["qlora"] == 0
    assert final["eval_loss_adapted"] < final["eval_loss_base"] * 0.99


def test_imaging_adapter_from_sandbox_accepted_by_validator(round_):
    from egress.validation import validate_adapter

    report = validate_adapter(round_.out, base_model_dir=round_.base, recipe=round_.lora_recipe(),
                              identifiers=[("mrn", "MRN0012345"), ("name", "Jane Doe")])
    assert report.accepted, report.reasons()
    assert report.verdict("allowlist").figures["taken"] == [ADAPTER_FILE]


def test_imaging_adapter_from_sandbox_loads_with_stock_peft(round_, tmp_path):
    """The file with the portal's adapter_config.json loads with PeftModel.from_pretrained on the
    base model and changes what the model computes."""
    import torch
    from peft import PeftModel

    from egress.validation import build_adapter_config, expected_adapter
    from training.runtime.recipes import recipe_class

    recipe = round_.lora_recipe()
    release = tmp_path / "release"
    release.mkdir()
    shutil.copyfile(round_.out / ADAPTER_FILE, release / ADAPTER_FILE)
    config = build_adapter_config(recipe, base_model_name="Demo imaging model",
                                  expected=expected_adapter(round_.base, recipe),
                                  task_type=recipe_class(round_.modality).peft_task_type)
    (release / "adapter_config.json").write_text(json.dumps(config))

    before = _outputs(round_.modality, _loaded(round_))
    model = PeftModel.from_pretrained(_loaded(round_), str(release)).eval()
    after = _outputs(round_.modality, model)

    matched = expected_adapter(round_.base, recipe).target_modules
    assert sum(1 for name, _ in model.named_parameters() if "lora_A" in name) == len(matched)
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-4


def _loaded(round_: Round):
    if round_.modality == "diffusion":
        from diffusers import UNet2DModel

        return UNet2DModel.from_pretrained(str(round_.base)).eval()
    from transformers import VisionEncoderDecoderModel

    return VisionEncoderDecoderModel.from_pretrained(str(round_.base)).eval()


def _outputs(modality: str, model):
    import torch

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((2, 1, 32, 32), generator=generator)
    with torch.no_grad():
        if modality == "diffusion":
            return model(pixels, torch.tensor([100, 600])).sample
        return model(pixel_values=pixels, decoder_input_ids=torch.tensor([[1, 40, 50, 60], [1, 70, 80, 90]])).logits


# --- audit ---------------------------------------------------------------------------------------

def test_imaging_audit_in_sandbox_is_schema_valid_and_per_patient(round_):
    from training.runtime.schema import validate_audit

    assert round_.audit_status == "succeeded", round_.audit_log[-3000:]
    assert sorted(os.listdir(round_.audit_out)) == ["audit.json"]
    report = round_.audit_report()
    assert validate_audit(report) == report
    expected_attacks = {"loss", "reference", "zlib", "min_k"} if round_.modality == "vision_language" else {"loss", "reference"}
    assert set(report["membership"]) == expected_attacks
    loss = report["membership"]["loss"]
    # Per patient: 32 training studies of 16 patients; 32 held-out studies of 32 patients.
    assert (loss["n_members"], loss["n_nonmembers"]) == (16, 32)
    assert "extraction" not in report and "canaries" not in report


def test_imaging_audit_memorisation_only_for_diffusion(round_):
    report = round_.audit_report()
    if round_.modality == "vision_language":
        assert "memorisation" not in report
        return
    memorisation = report["memorisation"]
    assert (memorisation["n_samples"], memorisation["n_members"], memorisation["n_nonmembers"]) == (64, 32, 32)
    assert memorisation["match_threshold"] > 0
    assert memorisation["member_distance_median"] > 0 and memorisation["nonmember_distance_median"] > 0


def test_imaging_audit_judged_by_the_gates(round_):
    """Judged on its own numbers. Whether it passes is the audit's finding, not this test's: on 16
    patients two epochs are enough for the diffusion reference attack to single out members (AUC
    about 0.72, p < 0.01), which the gate rightly fails; the walkthrough's 110-patient rounds pass."""
    from egress.audit_gates import evaluate
    from egress.models import AuditPolicy

    report = round_.audit_report()
    verdict = evaluate(report, AuditPolicy(version=1))

    gates = {g["gate"]: g for g in verdict["gates"]}
    expected = ["membership_auc", "tpr_at_1pct_fpr"] + (["memorisation"] if round_.modality == "diffusion" else [])
    assert list(gates) == expected
    assert gates["membership_auc"]["value"] == round(max(a["auc"] for a in report["membership"].values()), 4)
    assert gates["tpr_at_1pct_fpr"]["status"] == "warn"  # 32 non-members: too few to judge 1% FPR
    if round_.modality == "diffusion":
        memorisation = report["memorisation"]
        excess = memorisation["member_match_rate"] - memorisation["nonmember_match_rate"]
        assert gates["memorisation"]["value"] == round(excess, 4)
