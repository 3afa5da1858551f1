"""The molecules recipe end to end: trained and audited in a real sandbox on synthetic patients' compounds
and variant proteins; the adapter passes the egress validator and loads with stock peft; the audit's
memorisation probe (sampling inside the sandbox) reports numbers the gate can fail on.

The base model is the demo molecule LM's builder on a corpus of another seed (tokenizer + ten epochs of
pre-training): on a barely pre-trained model a LoRA adapter cannot sharpen its logits enough to
reproduce whole structures when sampling, so there would be nothing for the probe to see.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from safetensors import safe_open

from egress import audit_gates
from egress import services as egress_services
from egress.models import Adapter, AuditPolicy
from egress.validation import expected_adapter
from governance.synthetic_molecules import synthetic_corpus
from tests import flow
from tests.training.test_staging_molecules import approved_molecule_request, molecule_dataset
from training import services
from training.models import TrainingJob
from training.runner import execute_job
from training.runtime.schema import validate_audit
from training.sandbox import SandboxUnavailable, get_backend

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

S = TrainingJob.Status
ADAPTER_FILE = "adapter_model.safetensors"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NORMAL = {"rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 2e-3, "epochs": 2, "batch_size": 8,
          "max_seq_length": 128}
# As hard as the hospital's recipe policy allows (20 passes, rank 16 on every linear layer) over the
# compounds and sequences of about seven patients.
MEMORISING = {"rank": 16, "alpha": 32, "dropout": 0.0, "learning_rate": 3e-3, "epochs": 20, "batch_size": 2,
              "max_seq_length": 128, "target_modules": ALL_LINEAR}
BACKENDS = [
    pytest.param("bubblewrap", marks=pytest.mark.bubblewrap, id="bubblewrap"),
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
]


@pytest.fixture(scope="session")
def molecule_model() -> Path:
    from training.runtime.build_molecules import build_demo_molecule_lm

    root = Path(tempfile.mkdtemp(prefix="rapha-molecule-lm-"))
    root.chmod(0o755)  # the sandbox's unprivileged uid reads it at /models
    yield build_demo_molecule_lm(root / "model", synthetic_corpus(400, seed=1001), seed=0)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def worker(settings):
    """One CPU per job, and a staging root the sandbox's unprivileged uid can traverse."""
    settings.SANDBOX_CPUS = 1
    settings.SANDBOX_MEMORY_MB = 3072
    staging = Path(tempfile.mkdtemp(prefix="rapha-staging-"))
    staging.chmod(0o755)
    settings.STAGING_ROOT = staging
    yield settings
    shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def sandbox(request, settings):
    try:
        get_backend(request.param, image=settings.SANDBOX_IMAGE)
    except SandboxUnavailable as exc:
        pytest.skip(f"{request.param} sandbox unavailable here: {exc}")
    settings.SANDBOX_BACKEND = request.param
    return request.param


def trained_and_audited(*, model: Path, n_patients: int, recipe: dict, holdout_fraction: float) -> Adapter:
    """Train job in the sandbox -> egress validation -> audit job in the sandbox -> gates (as in production)."""
    request = approved_molecule_request(dataset=molecule_dataset(n_patients=n_patients), model_folder=model,
                                        recipe=recipe, holdout_fraction=holdout_fraction)
    job = services.job_start(request=request, by=request.project.principal_investigator)
    execute_job(str(job.pk))
    job.refresh_from_db()
    assert job.status == S.SUCCEEDED, job.failure_reason
    adapter = egress_services.adapter_validate(adapter=Adapter.objects.get(job=job))
    assert adapter.status == Adapter.Status.VALIDATED, adapter.rejected_reason
    execute_job(str(adapter.audit_job.pk))
    adapter.refresh_from_db()
    assert adapter.audit_job.status == S.SUCCEEDED, adapter.audit_job.failure_reason
    return adapter


def test_molecule_recipe_trains_validates_and_is_audited_in_the_sandbox(sandbox, molecule_model):
    adapter = trained_and_audited(model=molecule_model, n_patients=40, recipe=NORMAL, holdout_fraction=0.3)
    job = adapter.job

    # Trained in the sandbox: held-out loss fell; canaries were off (they are text).
    assert (job.backend, job.recipe["canaries"]) == (sandbox, False)
    assert job.eval_loss_adapted < job.eval_loss_base
    # The validator's expected tensors come from the base model on the meta device: exactly the file's.
    quarantined = Path(adapter.quarantine_dir) / ADAPTER_FILE
    with safe_open(str(quarantined), "pt") as handle:
        written = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    expected = expected_adapter(job.base_model.local_path, job.recipe)
    assert written == {name: tensor.shape for name, tensor in expected.tensors.items()}
    assert len(written) == 2 * 4 * 2  # two layers x q, k, v, o x lora_A, lora_B
    # The audit: per-patient membership and the memorisation probe, aggregate numbers only.
    result = adapter.audit_job.result
    assert validate_audit(result) == result
    assert set(result) == {"schema_version", "membership", "extraction", "memorisation", "elapsed_seconds"}
    members = job.request.cohort.members.filter(split="train")
    loss = result["membership"]["loss"]
    assert loss["n_members"] == members.values("patient").distinct().count()  # one score per patient
    memorisation = result["memorisation"]
    holdout_records = job.request.cohort.members.filter(split="holdout").count()
    assert (memorisation["n_samples"], memorisation["match_threshold"]) == (128, 0)
    assert memorisation["n_members"] == memorisation["n_nonmembers"] == min(members.count(), holdout_records)
    gates = {g["gate"]: g for g in adapter.audit_report["gates"]}
    assert "canary_exposure" not in gates and gates["memorisation"]["status"] == audit_gates.PASS


@pytest.mark.bubblewrap
def test_molecule_adapter_loads_with_stock_peft(molecule_model, settings, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        get_backend("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable here: {exc}")
    settings.SANDBOX_BACKEND = "bubblewrap"
    request = approved_molecule_request(dataset=molecule_dataset(n_patients=12), model_folder=molecule_model,
                                        recipe={**NORMAL, "epochs": 1})
    job = services.job_start(request=request, by=request.project.principal_investigator)
    execute_job(str(job.pk))
    adapter = egress_services.adapter_validate(adapter=Adapter.objects.get(job__pk=job.pk))
    assert adapter.status == Adapter.Status.VALIDATED, adapter.rejected_reason
    folder = tmp_path / "adapter"
    folder.mkdir()
    shutil.copyfile(adapter.rewritten_path, folder / ADAPTER_FILE)
    LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=job.recipe["target_modules"],
               task_type="CAUSAL_LM").save_pretrained(str(folder))

    base = AutoModelForCausalLM.from_pretrained(str(molecule_model), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(molecule_model), local_files_only=True)
    ids = torch.tensor([tokenizer("CC(=O)Nc1ccc(O)cc1")["input_ids"]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(base, str(folder))
        after = model(input_ids=ids).logits
    assert torch.isfinite(after).all() and not torch.equal(before, after)


@pytest.mark.bubblewrap
def test_molecule_overfitted_adapter_reproduces_training_structures_and_fails_the_audit(molecule_model, settings):
    try:
        get_backend("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable here: {exc}")
    settings.SANDBOX_BACKEND = "bubblewrap"

    adapter = trained_and_audited(model=molecule_model, n_patients=12, recipe=MEMORISING, holdout_fraction=0.45)

    memorisation = adapter.audit_job.result["memorisation"]
    assert memorisation["member_match_rate"] > memorisation["nonmember_match_rate"] + 0.05
    assert memorisation["p_value"] < 0.01
    assert adapter.status == Adapter.Status.REJECTED
    assert "memorisation" in adapter.audit_report["failed"]


# The memorisation gate on its own -----------------------------------------------------------------------

def _with_memorisation(member_rate: float, nonmember_rate: float, p_value: float) -> dict:
    return {**flow.passing_audit_numbers(), "memorisation": {
        "n_samples": 128, "n_members": 60, "n_nonmembers": 60, "match_threshold": 0,
        "member_match_rate": member_rate, "nonmember_match_rate": nonmember_rate, "p_value": p_value}}


@pytest.mark.parametrize("rates, status", [
    ((0.25, 0.01, 1e-6), audit_gates.FAIL),  # reproduces training structures, significantly more
    ((0.02, 0.0, 0.04), audit_gates.WARN),  # significant, but within the allowed excess
    ((0.03, 0.02, 0.33), audit_gates.PASS),  # not significant: shared structures (common drugs)
    ((0.0, 0.0, 1.0), audit_gates.PASS),
])
def test_memorisation_gate_fails_only_a_significant_excess_over_the_allowance(rates, status):
    report = audit_gates.evaluate(validate_audit(_with_memorisation(*rates)), AuditPolicy(version=1))

    gate = next(g for g in report["gates"] if g["gate"] == "memorisation")
    assert gate["status"] == status
    assert report["passed"] is (status != audit_gates.FAIL)
    assert gate["value"] == round(rates[0] - rates[1], 4) and gate["threshold"] == 0.02


# The recipe's own pieces (no sandbox) -------------------------------------------------------------------

def test_molecule_recipe_groups_a_patients_structures_and_refuses_canaries(molecule_model, tmp_path):
    from training.runtime.canaries import make_canaries
    from training.runtime.recipes import Record, recipe_class
    from training.runtime.spec import CanarySpec, SpecError, load_spec

    (tmp_path / "data").mkdir()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({
        "schema_version": 1, "task": "train", "modality": "molecules",
        "base_model": {"path": str(molecule_model), "family": "llama"}, "data_dir": str(tmp_path / "data"),
        "out_dir": str(tmp_path / "out"), "recipe": {"rank": 4, "alpha": 8, "learning_rate": 1e-3, "epochs": 1,
                                                     "batch_size": 4, "max_seq_length": 64, "seed": 1},
    }))
    recipe = recipe_class("molecules")(load_spec(spec_path), device=None)
    recipe.load_processor()
    records = [Record("r-1", "p-1", {"text": "CCO"}), Record("r-2", "p-1", {"text": "MKTAYIAKQR"})]

    grouped = recipe.encode_group(records)["input_ids"]

    tokenizer = recipe.tokenizer
    assert grouped == recipe.encode(records[0])["input_ids"] + recipe.encode(records[1])["input_ids"]
    assert tokenizer.decode(grouped) == "<s>CCO</s><s>MKTAYIAKQR</s>"
    assert len(recipe.encode_group(records * 40)["input_ids"]) == recipe.max_length == 64
    with pytest.raises(SpecError, match="canaries are not supported for modality 'molecules'"):
        recipe.plant_canaries(records, make_canaries(CanarySpec(seed=1, repeats=(1,), per_repeat=1)))
