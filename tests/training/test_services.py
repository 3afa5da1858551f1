"""Training services: the base-model registry, recipe policy at its edges, the request validator
hook, the preconditions of job_start, and the job state machine (every from x to, who may move)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from governance import services as governance
from governance.models import DataAccessRequest, EthicsApproval
from portal.models import AuditEvent
from tests import factories, flow
from training import recipes, services
from training.models import BaseModel, TrainingJob

S = TrainingJob.Status
pytestmark = pytest.mark.django_db

# The design's job state machine, written out here independently of training/services.py.
JOB_MOVES = {
    (S.QUEUED, S.STAGING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.STAGING, S.RUNNING), (S.STAGING, S.FAILED), (S.STAGING, S.CANCELLED), (S.STAGING, S.QUEUED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED), (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.QUEUED),
}
FINISHED = {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Arrange creates many users; the production hasher costs ~0.5 s each on this machine."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def events(verb: str) -> int:
    return AuditEvent.objects.filter(verb=verb).count()


# Arrange helpers ---------------------------------------------------------------------------------

MODEL_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"weights",
    "tokenizer.json": b'{"version": "1.0"}',
    "extra/notes.txt": b"licence notes",
}


@pytest.fixture
def model_folder(settings):
    folder = settings.DATA_ROOT / "weights"
    for name, data in MODEL_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def register(folder, name="pinned", **kw):
    values = dict(by=None, path=folder, name=name, family="llama", modality="text", licence="Apache-2.0")
    values.update(kw)
    return services.base_model_register(**values)


def approved_request(n_patients: int = 4):
    """An approved request (cohort frozen) on the placeholder tiny-text model, with its actors."""
    officer = factories.officer()
    factories.small_policy(by=officer)
    project = factories.project()
    draft = factories.request(project=project, datasets=[factories.dataset_with_patients(n_patients)], submit=True)
    request = governance.request_approve(request=draft, by=officer)
    return request, project.principal_investigator, officer


def queued_job():
    request, researcher, officer = approved_request()
    return services.job_start(request=request, by=researcher), researcher, officer


# Base-model registry -----------------------------------------------------------------------------

def test_base_model_register_pins_every_file(model_folder):
    model = register(model_folder)

    expected = {name: sha256(data) for name, data in MODEL_FILES.items()}
    assert model.files == expected
    assert model.manifest_sha256 == sha256(json.dumps(expected, sort_keys=True).encode())
    assert model.local_path == str(model_folder.resolve())
    assert model.approved is True
    event = AuditEvent.objects.get(verb="base_model.registered")
    assert event.payload == {"name": "pinned", "family": "llama", "manifest_sha256": model.manifest_sha256, "files": 4}


def test_base_model_verify_unchanged_folder_passes(model_folder):
    model = register(model_folder)

    services.base_model_verify(model)  # raises on any difference


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_base_model_verify_changed_file_is_named(model_folder, name):
    model = register(model_folder)
    (model_folder / name).write_bytes(MODEL_FILES[name] + b" ")

    with pytest.raises(services.BaseModelIntegrityError) as caught:
        services.base_model_verify(model)

    assert caught.value.messages == [f"Base model pinned: {name} does not match its registered sha256."]


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_base_model_verify_missing_file_is_named(model_folder, name):
    model = register(model_folder)
    (model_folder / name).unlink()

    with pytest.raises(services.BaseModelIntegrityError) as caught:
        services.base_model_verify(model)

    assert caught.value.messages == [f"Base model pinned: {name} is missing."]


def test_base_model_verify_extra_file_is_named(model_folder):
    model = register(model_folder)
    (model_folder / "extra" / "added.bin").write_bytes(b"pickle")

    with pytest.raises(services.BaseModelIntegrityError) as caught:
        services.base_model_verify(model)

    assert caught.value.messages == ["Base model pinned: unregistered file extra/added.bin was added."]


def test_base_model_verify_missing_folder_is_named(model_folder):
    model = register(model_folder)
    model_folder.rename(model_folder.with_name("moved"))

    with pytest.raises(services.BaseModelIntegrityError) as caught:
        services.base_model_verify(model)

    assert caught.value.messages == [f"Base model pinned: its folder {model_folder.resolve()} is missing."]


def test_base_model_verify_symlink_added_later_is_an_integrity_error(model_folder, tmp_path):
    model = register(model_folder)
    (tmp_path / "outside.json").write_text("{}")
    (model_folder / "linked.json").symlink_to(tmp_path / "outside.json")

    with pytest.raises(services.BaseModelIntegrityError) as caught:
        services.base_model_verify(model)

    assert caught.value.messages == ["Base model pinned: linked.json is a symbolic link; copy the real file in."]


def test_base_model_register_symlink_refused(model_folder, tmp_path):
    (tmp_path / "real.safetensors").write_bytes(b"w")
    (model_folder / "shard.safetensors").symlink_to(tmp_path / "real.safetensors")

    with pytest.raises(ValidationError) as caught:
        register(model_folder)

    assert caught.value.messages == ["shard.safetensors is a symbolic link; copy the real file in."]
    assert BaseModel.objects.count() == 0
    assert events("base_model.registered") == 0


def test_base_model_register_without_config_refused(model_folder):
    (model_folder / "config.json").unlink()

    with pytest.raises(ValidationError) as caught:
        register(model_folder)

    assert caught.value.messages == [
        f"{model_folder.resolve()} has no config.json: point at a folder saved with save_pretrained."]
    assert BaseModel.objects.count() == 0


def test_base_model_register_without_safetensors_refused(model_folder):
    (model_folder / "model.safetensors").rename(model_folder / "pytorch_model.bin")

    with pytest.raises(ValidationError) as caught:
        register(model_folder)

    assert caught.value.messages == [
        f"{model_folder.resolve()} has no .safetensors weights (pickled weights are not accepted)."]
    assert BaseModel.objects.count() == 0


def test_base_model_register_same_files_again_is_a_no_op(model_folder):
    first = register(model_folder)

    second = register(model_folder)

    assert second.pk == first.pk
    assert BaseModel.objects.count() == 1
    assert events("base_model.registered") == 1


def test_base_model_register_new_weights_under_a_name_with_jobs_refused(model_folder):
    job, _, _ = queued_job()
    model = job.base_model
    (model_folder / "model.safetensors").write_bytes(b"other weights")
    before = model.manifest_sha256

    with pytest.raises(ValidationError) as caught:
        register(model_folder, name=model.name, family="gpt2")

    assert caught.value.messages == [f"{model.name} already has jobs; register new weights under a new name."]
    model.refresh_from_db()
    assert model.manifest_sha256 == before


def test_base_model_register_needs_the_manage_permission(model_folder):
    with pytest.raises(PermissionDenied):
        register(model_folder, by=factories.researcher())

    assert BaseModel.objects.count() == 0


# Recipe policy -----------------------------------------------------------------------------------

def _just_outside(key: str, low: float, high: float) -> tuple[float, float]:
    if key in recipes.INTEGER_PARAMETERS:
        return low - 1, high + 1
    if key == "learning_rate":
        return low * 0.99, high * 1.01
    return low - 0.01, high + 0.01


@pytest.mark.parametrize("key", sorted(recipes.RECIPE_BOUNDS))
def test_recipe_errors_bounds_inclusive(key):
    low, high = recipes.RECIPE_BOUNDS[key]
    if key in recipes.INTEGER_PARAMETERS:
        low, high = int(low), int(high)

    assert recipes.recipe_errors({key: low}, family="llama") == {}
    assert recipes.recipe_errors({key: high}, family="llama") == {}


@pytest.mark.parametrize("key", sorted(recipes.RECIPE_BOUNDS))
def test_recipe_errors_just_outside_bounds_refused(key):
    low, high = recipes.RECIPE_BOUNDS[key]
    below, above = _just_outside(key, low, high)
    message = f"Must be between {low:g} and {high:g} (hospital policy)."

    assert recipes.recipe_errors({key: below}, family="llama") == {f"recipe.{key}": message}
    assert recipes.recipe_errors({key: above}, family="llama") == {f"recipe.{key}": message}


def test_recipe_errors_policy_numbers_are_the_documented_ones():
    assert recipes.RECIPE_BOUNDS == {
        "rank": (1, 64), "alpha": (1, 256), "dropout": (0.0, 0.5), "learning_rate": (1e-6, 1e-2),
        "epochs": (1, 20), "batch_size": (1, 64), "max_seq_length": (16, 4096), "seed": (0, 2**31 - 1),
    }


@pytest.mark.parametrize("recipe, errors", [
    ({"rank": 8.5}, {"recipe.rank": "Must be a whole number."}),
    ({"rank": 8.0}, {}),
    ({"epochs": "2"}, {"recipe.epochs": "Must be a number."}),
    ({"dropout": True}, {"recipe.dropout": "Must be a number."}),
    ({"quantization": "int8"}, {"recipe.quantization": "One of auto, nf4, none."}),
    ({"quantization": "nf4"}, {}),
    ({"canaries": "yes"}, {"recipe.canaries": "true or false."}),
    ({"target_modules": []}, {"recipe.target_modules": "A non-empty list of module names such as q_proj."}),
    ({"target_modules": ["q_proj; rm"]}, {"recipe.target_modules": "A non-empty list of module names such as q_proj."}),
    ({"target_modules": ["q_proj", "lm_head"]},
     {"recipe.target_modules": "Embeddings and the output head are never trained or released."}),
    ({"target_modules": ["embed_tokens"]},
     {"recipe.target_modules": "Embeddings and the output head are never trained or released."}),
    ({"target_modules": ["q_proj", "v_proj"]}, {}),
    ({"dp": {"delta": 1e-5}}, {"recipe.dp": "target_epsilon is required."}),
    ({"dp": {"target_epsilon": 1, "noise": 2}}, {"recipe.dp": "An object with target_epsilon, delta, max_grad_norm."}),
    ({"dp": {"target_epsilon": 0.1, "delta": 1e-12, "max_grad_norm": 0.01}}, {}),
    ({"dp": {"target_epsilon": 50.0, "delta": 1e-3, "max_grad_norm": 100.0}}, {}),
    ({"dp": {"target_epsilon": 0.099}}, {"recipe.dp.target_epsilon": "Must be between 0.1 and 50."}),
    ({"dp": {"target_epsilon": 50.01}}, {"recipe.dp.target_epsilon": "Must be between 0.1 and 50."}),
    ({"dp": {"target_epsilon": 1, "delta": 1.1e-3}}, {"recipe.dp.delta": "Must be between 1e-12 and 0.001."}),
    ({"dp": {"target_epsilon": 1, "max_grad_norm": 0.009}}, {"recipe.dp.max_grad_norm": "Must be between 0.01 and 100."}),
    ({"learning_rat": 1e-3}, {"recipe.learning_rat": "Unknown recipe parameter; allowed: alpha, batch_size, canaries, "
                                                     "dp, dropout, epochs, learning_rate, max_seq_length, quantization, "
                                                     "rank, seed, target_modules."}),
])
def test_recipe_errors_names_each_problem(recipe, errors):
    assert recipes.recipe_errors(recipe, family="llama") == errors


def test_resolve_recipe_fills_defaults_and_family_targets():
    resolved = recipes.resolve_recipe({"epochs": 1}, family="gpt2")

    assert resolved == {**recipes.RECIPE_DEFAULTS, "epochs": 1, "target_modules": ["c_attn"]}


# The request validator hook (training registers it with governance) -----------------------------

def _create_request(base_model_name: str, recipe: dict | None = None):
    project = factories.project()
    return governance.request_create(
        by=project.principal_investigator, project=project, datasets=[factories.dataset_with_patients(3)],
        title="A request", purpose="Summaries.", modality="text", cohort_definition={},
        base_model_name=base_model_name, recipe=recipe or {},
    )


def test_request_create_unknown_base_model_refused(model_folder):
    register(model_folder, name="known")
    register(model_folder, name="hidden", approved=False)

    with pytest.raises(ValidationError) as caught:
        _create_request("nope")

    assert caught.value.message_dict == {"base_model_name": ["No registered base model 'nope'; approved models: known."]}
    assert DataAccessRequest.objects.count() == 0


def test_request_create_unapproved_base_model_refused(model_folder):
    register(model_folder, name="unvetted", approved=False)

    with pytest.raises(ValidationError) as caught:
        _create_request("unvetted")

    assert caught.value.message_dict == {"base_model_name": ["Base model unvetted is not approved for training."]}
    assert DataAccessRequest.objects.count() == 0


def test_request_create_base_model_of_another_modality_refused(model_folder):
    register(model_folder, name="speech-model", modality="speech")

    with pytest.raises(ValidationError) as caught:
        _create_request("speech-model")

    assert caught.value.message_dict == {"base_model_name": ["Base model speech-model is for clinical speech, not this modality."]}
    assert DataAccessRequest.objects.count() == 0


def test_request_create_recipe_out_of_policy_refused(model_folder):
    register(model_folder, name="known")

    with pytest.raises(ValidationError) as caught:
        _create_request("known", recipe={"epochs": 21, "rank": 0})

    assert caught.value.message_dict == {"recipe.epochs": ["Must be between 1 and 20 (hospital policy)."],
                                         "recipe.rank": ["Must be between 1 and 64 (hospital policy)."]}
    assert DataAccessRequest.objects.count() == 0


def test_request_create_approved_model_and_recipe_accepted(model_folder):
    register(model_folder, name="known")

    request = _create_request("known", recipe={"epochs": 1, "rank": 64})

    assert request.base_model_name == "known"
    assert request.recipe == {"epochs": 1, "rank": 64}


# job_start -------------------------------------------------------------------------------------

def test_job_start_approved_request_queues_a_job():
    request, researcher, _ = approved_request()

    job = services.job_start(request=request, by=researcher)

    assert job.status == S.QUEUED
    assert job.kind == TrainingJob.Kind.TRAIN
    assert job.base_model.name == "tiny-text"
    assert job.recipe == {**recipes.RECIPE_DEFAULTS, "target_modules": ["c_attn"]}
    event = AuditEvent.objects.get(verb="job.queued")
    assert event.target_id == str(job.pk)
    assert event.actor == researcher


def _assert_nothing_started():
    assert TrainingJob.objects.count() == 0
    assert events("job.queued") == 0


def test_job_start_unapproved_request_refused():
    request = factories.request(submit=True)

    with pytest.raises(ValidationError) as caught:
        services.job_start(request=request, by=request.created_by)

    assert caught.value.messages == ["The request is submitted, not approved.", "The request has no frozen cohort."]
    _assert_nothing_started()


def test_job_start_suspended_request_refused():
    request, researcher, officer = approved_request()
    governance.request_transition(request=request, to=DataAccessRequest.Status.SUSPENDED, by=officer, reason="Audit.")

    with pytest.raises(ValidationError) as caught:
        services.job_start(request=request, by=researcher)

    assert caught.value.messages == ["The request is suspended, not approved."]
    _assert_nothing_started()


def test_job_start_ethics_expired_since_approval_refused():
    request, researcher, _ = approved_request()
    # The expiry date has passed; the nightly expiry task has not run yet.
    EthicsApproval.objects.filter(pk=request.ethics_approval_id).update(expires_on=timezone.localdate() - timedelta(days=1))

    with pytest.raises(ValidationError) as caught:
        services.job_start(request=request, by=researcher)

    assert caught.value.messages == ["The request's ethics approval is not valid today."]
    _assert_nothing_started()


def test_job_start_ethics_revoked_refused():
    request, researcher, officer = approved_request()
    governance.ethics_revoke(approval=request.ethics_approval, by=officer, reason="Withdrawn by the committee.")

    with pytest.raises(ValidationError) as caught:
        services.job_start(request=request, by=researcher)

    assert caught.value.messages == ["The request is suspended, not approved.",
                                     "The request's ethics approval is not valid today."]
    _assert_nothing_started()


def test_job_start_cohort_below_a_raised_threshold_refused():
    request, researcher, officer = approved_request(n_patients=4)
    governance.policy_update(by=officer, note="stricter", min_patients=5)

    with pytest.raises(ValidationError) as caught:
        services.job_start(request=request, by=researcher)

    assert caught.value.messages == ["The cohort has fewer distinct patients than the minimum of 5."]
    _assert_nothing_started()


def test_job_start_cohort_at_the_threshold_accepted():
    request, researcher, officer = approved_request(n_patients=4)
    governance.policy_update(by=officer, note="stricter", min_patients=4)

    job = services.job_start(request=request, by=researcher)

    assert job.status == S.QUEUED


def test_job_start_second_job_while_one_is_queued_refused():
    request, researcher, _ = approved_request()
    first = services.job_start(request=request, by=researcher)

    with pytest.raises(ValidationError) as caught:
        services.job_start(request=request, by=researcher)

    assert caught.value.messages == ["This request already has a training job that is running or succeeded."]
    assert list(TrainingJob.objects.values_list("pk", flat=True)) == [first.pk]
    assert events("job.queued") == 1


@pytest.mark.parametrize("ended", [S.FAILED, S.CANCELLED, S.TIMED_OUT])
def test_job_start_after_a_job_that_ended_without_success_accepted(ended):
    request, researcher, _ = approved_request()
    first = services.job_start(request=request, by=researcher)
    TrainingJob.objects.filter(pk=first.pk).update(status=ended)

    second = services.job_start(request=request, by=researcher)

    assert second.pk != first.pk
    assert TrainingJob.objects.count() == 2


def test_job_start_by_a_researcher_outside_the_project_refused():
    request, _, _ = approved_request()

    with pytest.raises(PermissionDenied):
        services.job_start(request=request, by=factories.researcher())

    _assert_nothing_started()


# The job state machine -------------------------------------------------------------------------

@pytest.mark.parametrize("to", list(S))
@pytest.mark.parametrize("start", list(S))
def test_job_transition_table(start, to):
    job, _, _ = queued_job()
    TrainingJob.objects.filter(pk=job.pk).update(status=start)
    before = AuditEvent.objects.count()

    if start == to:
        moved = services.job_transition(job=job, to=to)
        assert moved.status == start
        assert AuditEvent.objects.count() == before
    elif (start, to) in JOB_MOVES:
        moved = services.job_transition(job=job, to=to, reason="because")
        job.refresh_from_db()
        assert job.status == to
        assert (job.finished_at is not None) == (to in FINISHED)
        assert (job.started_at is not None) == (to == S.RUNNING)
        event = AuditEvent.objects.filter(verb=f"job.{to}").latest("seq")
        assert event.payload == {"from": start.value, "reason": "because"}
    else:
        with pytest.raises(ValidationError) as caught:
            services.job_transition(job=job, to=to)
        assert caught.value.messages == [f"A job that is {start.label.lower()} cannot become {to.label.lower()}."]
        job.refresh_from_db()
        assert job.status == start
        assert job.finished_at is None
        assert AuditEvent.objects.count() == before


def test_job_transition_repeated_finish_is_a_no_op():
    job, _, _ = queued_job()
    services.job_transition(job=job, to=S.FAILED, reason="first")
    finished = TrainingJob.objects.get(pk=job.pk).finished_at

    again = services.job_transition(job=job, to=S.FAILED, reason="second")

    assert again.failure_reason == "first"
    assert again.finished_at == finished
    assert events("job.failed") == 1


def test_job_transition_records_worker_fields():
    job, _, _ = queued_job()
    services.job_transition(job=job, to=S.STAGING)

    services.job_transition(job=job, to=S.RUNNING, backend="bubblewrap", image_id="img")

    job.refresh_from_db()
    assert (job.backend, job.image_id) == ("bubblewrap", "img")
    assert AuditEvent.objects.get(verb="job.running").payload == {"from": "staging", "reason": "", "backend": "bubblewrap",
                                                                 "image_id": "img"}


@pytest.mark.parametrize("to", [s for s in S if s != S.CANCELLED])
@pytest.mark.parametrize("persona", ["researcher", "officer"])
def test_job_transition_people_cannot_make_worker_moves(persona, to):
    job, researcher, officer = queued_job()
    person = researcher if persona == "researcher" else officer
    services.job_transition(job=job, to=S.STAGING)
    before = AuditEvent.objects.count()

    with pytest.raises(PermissionDenied) as caught:
        services.job_transition(job=job, to=to, by=person)

    assert str(caught.value) == "Only the worker moves a job to this status."
    job.refresh_from_db()
    assert job.status == S.STAGING
    assert AuditEvent.objects.count() == before


def test_job_transition_cancel_by_a_researcher_outside_the_project_refused():
    job, _, _ = queued_job()

    with pytest.raises(PermissionDenied):
        services.job_transition(job=job, to=S.CANCELLED, by=factories.researcher())

    job.refresh_from_db()
    assert job.status == S.QUEUED


# job_cancel --------------------------------------------------------------------------------------

def test_job_cancel_queued_job_ends_cancelled():
    job, researcher, _ = queued_job()

    services.job_cancel(job=job, by=researcher)

    job.refresh_from_db()
    assert job.status == S.CANCELLED
    assert job.cancel_requested_by == researcher
    assert job.cancel_requested_at is not None
    assert job.finished_at is not None
    assert job.failure_reason == "Cancelled before it started."
    assert events("job.cancel_requested") == 1
    assert events("job.cancelled") == 1


def test_job_cancel_running_job_only_records_the_request():
    job, _, officer = queued_job()
    services.job_transition(job=job, to=S.STAGING)
    services.job_transition(job=job, to=S.RUNNING)

    services.job_cancel(job=job, by=officer)

    job.refresh_from_db()
    assert job.status == S.RUNNING  # the worker kills the sandbox and ends it
    assert job.cancel_requested_by == officer
    assert events("job.cancel_requested") == 1
    assert events("job.cancelled") == 0


def test_job_cancel_repeated_is_a_no_op():
    job, researcher, _ = queued_job()
    services.job_cancel(job=job, by=researcher)
    first = TrainingJob.objects.get(pk=job.pk).cancel_requested_at

    services.job_cancel(job=job, by=researcher)

    assert TrainingJob.objects.get(pk=job.pk).cancel_requested_at == first
    assert events("job.cancel_requested") == 1


def test_job_cancel_finished_job_changes_nothing():
    job, researcher, _ = queued_job()
    services.job_transition(job=job, to=S.FAILED, reason="broke")

    services.job_cancel(job=job, by=researcher)

    job.refresh_from_db()
    assert (job.status, job.cancel_requested_at, job.failure_reason) == (S.FAILED, None, "broke")
    assert events("job.cancel_requested") == 0


@pytest.mark.parametrize("persona", ["outside_researcher", "reviewer", "steward", "sponsor"])
def test_job_cancel_by_someone_without_the_right_refused(persona):
    job, _, _ = queued_job()
    person = {"outside_researcher": factories.researcher, "reviewer": factories.reviewer,
              "steward": factories.steward, "sponsor": factories.sponsor}[persona]()

    with pytest.raises(PermissionDenied):
        services.job_cancel(job=job, by=person)

    job.refresh_from_db()
    assert (job.status, job.cancel_requested_at) == (S.QUEUED, None)


@pytest.mark.parametrize(
    "fields,problem",
    [
        ({"final_metrics": {"lora_moved": 1, "epsilon": 7.9}, "eval_loss_base": 3.2, "eval_loss_adapted": 3.0}, None),
        ({"final_metrics": {"lora_moved": 0, "epsilon": 7.9}, "eval_loss_base": 3.2, "eval_loss_adapted": 3.0},
         "DP-SGD check failed: the LoRA weights did not move from their initialisation."),
        ({"final_metrics": {"lora_moved": 1, "epsilon": 7.9}, "eval_loss_base": 3.2, "eval_loss_adapted": 3.2},
         "DP-SGD check failed: held-out loss did not improve on the base model (3.2 → 3.2)."),
        ({"final_metrics": {"lora_moved": 1}, "eval_loss_base": 3.2, "eval_loss_adapted": 3.0},
         "DP-SGD check failed: the run reported no ε."),
    ],
)
def test_dp_guard_problem_names_what_failed(fields, problem):
    from training.runner import dp_guard_problem

    assert dp_guard_problem(fields) == problem


@pytest.mark.django_db
def test_dp_job_whose_lora_did_not_move_ends_failed_and_hands_nothing_off(tmp_path):
    from training.runner import _finish
    from training.sandbox import SandboxResult

    dp = {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}
    request = flow.approved_request(recipe={"epochs": 1, "dp": dp})
    job = services.job_start(request=request, by=request.project.principal_investigator)
    job = services.job_transition(job=job, to=TrainingJob.Status.STAGING)
    job = services.job_transition(job=job, to=TrainingJob.Status.RUNNING)
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    fields = {"final_metrics": {"lora_moved": 0, "epsilon": 7.5}, "eval_loss_base": 3.2, "eval_loss_adapted": 3.1}

    _finish(job, SandboxResult("succeeded", 0, "", 1.0), out, fields, {}, 0.0)

    job.refresh_from_db()
    assert (job.status, job.failure_reason) == (
        TrainingJob.Status.FAILED, "DP-SGD check failed: the LoRA weights did not move from their initialisation.")
    from django.conf import settings

    assert not (settings.QUARANTINE_ROOT / str(job.pk)).exists()


@pytest.mark.parametrize(("modality", "family", "quantization", "canaries"), [
    ("text", "llama", "auto", True),
    ("speech", "whisper", "auto", False),  # canaries are planted text
    ("molecules", "llama", "auto", False),
    ("diffusion", "unet2d", "none", False),  # the UNet trains full-precision LoRA even on a GPU worker
])
def test_resolve_recipe_follows_what_the_modalitys_recipe_can_do(modality, family, quantization, canaries):
    from training.runtime.recipes import recipe_class

    resolved = recipes.resolve_recipe({}, family=family, modality=modality)
    assert (resolved["quantization"], resolved["canaries"]) == (quantization, canaries)
    assert resolved["target_modules"] == list(recipes.DEFAULT_TARGET_MODULES.get(family) if modality == "text"
                                              else recipe_class(modality).default_target_modules[family])
