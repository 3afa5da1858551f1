"""The whole round, as `manage.py demo_walkthrough` drives it, in a real sandbox."""

import shutil
import subprocess
import sys

import pytest
from django.core.management import call_command

from egress.models import Adapter, Download, Release
from portal.audit import verify_chain


@pytest.mark.slow
@pytest.mark.bubblewrap
@pytest.mark.django_db(transaction=True)
def test_demo_walkthrough_completes_and_release_verifies(settings, tmp_path, capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    settings.SANDBOX_BACKEND = "bubblewrap"
    out = tmp_path / "out"

    call_command("demo_walkthrough", out=str(out), patients=120)

    printed = capsys.readouterr().out
    assert "Round complete." in printed
    assert Release.objects.count() == 1 and Download.objects.count() == 1
    assert Adapter.objects.get().status == Adapter.Status.RELEASED
    assert verify_chain()[1] is None
    verified = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(out / "release.zip"), "--public-key", str(out / "signing-key.pem")],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tampered = out / "tampered.zip"
    data = bytearray((out / "release.zip").read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    refused = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(tampered), "--public-key", str(out / "signing-key.pem")],
        capture_output=True, text=True,
    )
    assert refused.returncode == 1


@pytest.mark.slow
@pytest.mark.bubblewrap
@pytest.mark.django_db(transaction=True)
def test_demo_walkthrough_speech_completes(settings, tmp_path, capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    settings.SANDBOX_BACKEND = "bubblewrap"
    out = tmp_path / "out"

    call_command("demo_walkthrough", out=str(out), modality="speech", patients=200, epochs=2)

    printed = capsys.readouterr().out
    assert "Round complete." in printed
    adapter = Adapter.objects.get()
    assert adapter.status == Adapter.Status.RELEASED
    assert adapter.job.request.modality == "speech" and adapter.job.base_model.name == "demo-speech"
    assert adapter.job.eval_loss_adapted < adapter.job.eval_loss_base
    assert verify_chain()[1] is None
    verified = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(out / "release.zip"), "--public-key", str(out / "signing-key.pem")],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
@pytest.mark.bubblewrap
@pytest.mark.django_db(transaction=True)
def test_demo_walkthrough_with_dp_spends_the_privacy_budget(settings, capsys):
    from governance.models import Dataset, PrivacyBudgetEntry

    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    settings.SANDBOX_BACKEND = "bubblewrap"

    call_command("demo_walkthrough", patients=120, dp_epsilon=8.0)

    printed = capsys.readouterr().out
    assert "Round complete." in printed and "Approval reserved ε 8" in printed
    release = Release.objects.get()
    dp = release.manifest["differential_privacy"]
    assert 0 < dp["epsilon"] <= 8.0 and dp["accountant"] == "prv" and dp["unit"] == "patient"
    [spend] = PrivacyBudgetEntry.objects.filter(kind="spend")
    assert spend.epsilon == dp["epsilon"] and spend.reference == str(release.adapter_id)
    dataset = Dataset.objects.get(name="synthetic-notes-dp")
    assert release.manifest["privacy_budget"] == [{
        "dataset": dataset.name, "epsilon_spent": dp["epsilon"], "budget_epsilon": 24.0,
        "remaining_epsilon": round(24.0 - dp["epsilon"], 6), "period_days": 365, "composition": "basic"}]
    assert not PrivacyBudgetEntry.objects.filter(kind="reservation", closed_at__isnull=True).exists()
    assert verify_chain()[1] is None


@pytest.mark.slow
@pytest.mark.bubblewrap
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("modality,recipe_modality,model", [
    ("vision-language", "vision_language", "demo-vlm"),
    ("diffusion", "diffusion", "demo-diffusion"),
])
def test_demo_walkthrough_imaging_completes(settings, tmp_path, capsys, modality, recipe_modality, model):
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    settings.SANDBOX_BACKEND = "bubblewrap"
    out = tmp_path / "out"

    call_command("demo_walkthrough", out=str(out), modality=modality, patients=110, epochs=2)

    printed = capsys.readouterr().out
    assert "Round complete." in printed
    adapter = Adapter.objects.get()
    assert adapter.status == Adapter.Status.RELEASED
    assert adapter.job.request.modality == recipe_modality and adapter.job.base_model.name == model
    assert adapter.job.eval_loss_adapted < adapter.job.eval_loss_base
    gates = [g["gate"] for g in adapter.audit_report["gates"]]
    assert ("memorisation" in gates) == (recipe_modality == "diffusion")
    assert verify_chain()[1] is None
    verified = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(out / "release.zip"), "--public-key", str(out / "signing-key.pem")],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
@pytest.mark.bubblewrap
@pytest.mark.django_db(transaction=True)
def test_demo_walkthrough_molecules_completes(settings, capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    settings.SANDBOX_BACKEND = "bubblewrap"

    # 200 patients: the default policy's minimum cohort is 100, and the audit's per-patient membership
    # numbers need more than a few dozen held-out patients to be more than noise.
    call_command("demo_walkthrough", modality="molecules", patients=200, epochs=1)

    printed = capsys.readouterr().out
    assert "Round complete." in printed
    adapter = Adapter.objects.get()
    assert adapter.status == Adapter.Status.RELEASED
    assert adapter.job.request.modality == "molecules" and adapter.job.base_model.name == "demo-molecule-lm"
    assert adapter.job.eval_loss_adapted < adapter.job.eval_loss_base
    gates = {g["gate"]: g["status"] for g in adapter.audit_report["gates"]}
    assert "memorisation" in gates and "canary_exposure" not in gates
    assert verify_chain()[1] is None
