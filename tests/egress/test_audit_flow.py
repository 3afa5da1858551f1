"""The privacy audit, end to end through the real worker and sandbox: an adapter trained to memorise
a handful of records fails the gates; one trained normally on a larger cohort passes them.

Both are built here: train job (execute_job) -> adapter_validate -> audit job (execute_job, whose
end reaches egress through the hook) -> audit_receive judges the numbers against the gates. The base
model is the session's small pretrained one (tests/flow.py): on the randomly initialised tiny model
nothing can be memorised, so there would be no contrast to see.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from egress import audit_gates
from egress import services as egress_services
from egress.models import Adapter
from governance import services as governance
from tests import factories, flow
from training import services
from training.models import TrainingJob
from training.runner import execute_job
from training.sandbox import SandboxUnavailable, get_backend

pytestmark = [pytest.mark.slow, pytest.mark.bubblewrap, pytest.mark.django_db]

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Within the hospital's recipe policy, as hard as it allows: 20 passes, one record per step, every
# linear layer at rank 16, the highest learning rate; over the ~20 training records of 12 patients.
MEMORISING = {"rank": 16, "alpha": 32, "dropout": 0.0, "learning_rate": 1e-2, "epochs": 20, "batch_size": 1,
              "max_seq_length": 128, "target_modules": LLAMA_LINEAR, "canaries": True}
# An ordinary fine-tune: one pass at the default rate over ~150 training records of 80 patients.
NORMAL = {"rank": 4, "alpha": 8, "learning_rate": 2e-3, "epochs": 1, "batch_size": 8, "max_seq_length": 128,
          "target_modules": ["q_proj", "v_proj"], "canaries": True}


@pytest.fixture(autouse=True)
def worker(settings, tmp_path):
    flow.isolate_storage(settings, tmp_path)  # tests/egress/conftest.py turns the root conftest's off
    try:
        get_backend("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable here: {exc}")
    settings.SANDBOX_BACKEND = "bubblewrap"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SANDBOX_CPUS = 1
    settings.SANDBOX_MEMORY_MB = 3072
    settings.VAR_DIR = tmp_path / "var"
    staging = Path(tempfile.mkdtemp(prefix="rapha-staging-"))
    staging.chmod(0o755)  # the sandbox's unprivileged uid must traverse it
    settings.STAGING_ROOT = staging
    flow.tiny_model_folder().parent.chmod(0o755)
    yield
    shutil.rmtree(staging, ignore_errors=True)


def trained_and_audited(*, n_patients: int, recipe: dict) -> Adapter:
    officer = factories.officer()
    # Nearly as many held-out patients as members, so that membership inference has its contrast.
    governance.policy_update(by=officer, note="audit tests", holdout_fraction=0.45)
    request = flow.approved_request(n_patients=n_patients, officer=officer, recipe=recipe)
    # The hospital puts pretrained weights under the request's model name before any job ran.
    services.base_model_register(by=None, path=flow.pretrained_model_folder(), name=request.base_model_name,
                                 family="llama", modality="text", licence="Apache-2.0")
    job = services.job_start(request=request, by=request.project.principal_investigator)
    execute_job(str(job.pk))
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.SUCCEEDED, job.failure_reason
    adapter = egress_services.adapter_validate(adapter=Adapter.objects.get(job=job))
    assert adapter.status == Adapter.Status.VALIDATED, adapter.rejected_reason
    execute_job(str(adapter.audit_job.pk))
    adapter.refresh_from_db()
    assert adapter.audit_job.status == TrainingJob.Status.SUCCEEDED, adapter.audit_job.failure_reason
    return adapter


def test_audit_memorising_adapter_fails_the_gates():
    adapter = trained_and_audited(n_patients=12, recipe=MEMORISING)

    report = adapter.audit_report
    assert adapter.status == Adapter.Status.REJECTED
    assert report["passed"] is False
    assert "membership_auc" in report["failed"]
    failed = [g for g in report["gates"] if g["status"] == audit_gates.FAIL]
    assert [g["gate"] for g in failed] == report["failed"]
    assert adapter.rejected_reason == "Privacy audit failed: " + "; ".join(
        f"{g['gate']} = {g['value']} (limit {g['threshold']})" for g in failed)
    best = max(report["metrics"]["membership"].values(), key=lambda attack: attack["auc"])
    assert best["auc"] > 0.65 and best["p_value"] < 0.05
    # The audit measured the canaries training planted: the ten-times ones stand out.
    tenfold = next(g for g in report["metrics"]["canaries"]["groups"] if g["repeats"] == 10)
    assert tenfold["exposure_mean"] > 8


def test_audit_normal_adapter_passes_the_gates():
    adapter = trained_and_audited(n_patients=80, recipe=NORMAL)

    report = adapter.audit_report
    assert adapter.status == Adapter.Status.IN_REVIEW, adapter.rejected_reason
    assert (report["passed"], report["failed"]) == (True, [])
    assert [g["gate"] for g in report["gates"]] == ["membership_auc", "tpr_at_1pct_fpr", "canary_exposure", "extraction"]
    assert adapter.audit_policy.version == report["policy_version"]
    best = max(report["metrics"]["membership"].values(), key=lambda attack: attack["auc"])
    assert best["auc"] < 0.65
