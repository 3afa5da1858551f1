"""DP-SGD in the runtime: honest accounting, less memorisation, and an adapter that passes the audit."""

from __future__ import annotations

import json

import pytest

from .conftest import ALL_LLAMA_LINEAR, CANARIES, train_and_audit

pytestmark = pytest.mark.slow
DP = {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 0.1}


@pytest.fixture(scope="module")
def dp_memorising_run(tmp_path_factory, base_model):
    """memorising_run's data, seed and recipe, with DP-SGD at ε = 8."""
    return train_and_audit(
        tmp_path_factory.mktemp("dp-memorising"), base_model, n_train=16, epochs=30, batch_size=4,
        rank=16, alpha=32, target_modules=ALL_LLAMA_LINEAR, canaries=CANARIES, dp=DP,
    )


@pytest.fixture(scope="module")
def dp_normal_run(tmp_path_factory, base_model):
    """normal_run's cohort (96 synthetic patients' notes) with DP-SGD at ε = 8."""
    return train_and_audit(
        tmp_path_factory.mktemp("dp-normal"), base_model, n_train=96, epochs=4, learning_rate=0.003, batch_size=64,
        canaries=CANARIES, dp=DP,
    )


def test_recorded_epsilon_is_what_the_accountant_gives_for_the_recorded_run(dp_normal_run):
    from opacus.accountants import PRVAccountant

    final = dp_normal_run.progress()[-1]
    accountant = PRVAccountant()
    accountant.history = [(final["noise_multiplier"], final["sample_rate"], final["total_steps"])]
    assert final["epsilon"] == pytest.approx(accountant.get_epsilon(delta=DP["delta"]), rel=1e-6)
    assert final["epsilon"] <= DP["target_epsilon"]
    assert final["sample_rate"] == pytest.approx(1 / 2)  # 96 patients in batches of 64: 2 batches, rate 1/2


def _exposure(run, repeats: int) -> float:
    groups = run.audit_report()["canaries"]["groups"]
    return next(g["exposure_extrapolated_mean"] for g in groups if g["repeats"] == repeats)


def test_dp_lowers_canary_exposure_on_the_same_data_and_seed(memorising_run, dp_memorising_run):
    assert json.loads(dp_memorising_run.spec.read_text())["recipe"]["seed"] == json.loads(
        memorising_run.spec.read_text())["recipe"]["seed"]
    with_dp, without = _exposure(dp_memorising_run, 10), _exposure(memorising_run, 10)
    assert with_dp < without, (with_dp, without)
    assert _exposure(dp_memorising_run, 1) <= _exposure(memorising_run, 1) + 1.0


@pytest.mark.django_db
def test_a_dp_adapter_at_epsilon_8_passes_the_audit(dp_normal_run):
    from egress.audit_gates import evaluate
    from egress.models import AuditPolicy
    from training.runtime.schema import validate_audit

    final = dp_normal_run.progress()[-1]
    assert final["epsilon"] <= 8.0 and final["lora_moved"] == 1
    assert final["eval_loss_adapted"] < final["eval_loss_base"]  # the portal's DP guard would pass it
    verdict = evaluate(validate_audit(dp_normal_run.audit_report()), AuditPolicy(version=1))
    assert verdict["passed"], verdict["gates"]


def test_empty_poisson_batches_take_a_noise_only_step(base_model, tmp_path):
    """4 patients sampled at rate 1/4: about a third of the 20 steps draw nobody, and the run goes on."""
    from .conftest import make_spec, run_runtime

    spec = make_spec(tmp_path, base_model, n_train=4, epochs=5, batch_size=1, dp={"target_epsilon": 8.0, "delta": 1e-5})
    result = run_runtime("train", spec)
    assert result.returncode == 0, result.stderr[-2000:]
    final = json.loads((tmp_path / "out" / "progress.jsonl").read_text().splitlines()[-1])
    assert (final["step"], final["sample_rate"]) == (20, 0.25) and 0 < final["epsilon"] <= 8.0
