"""Every training write: the base-model registry, starting and cancelling jobs, and the one
function that changes a job's status. Running a job (staging, sandbox, hand-off) is in runner.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from governance import hooks as governance_hooks
from governance.models import DataAccessRequest, EthicsApproval
from governance.services import required_patients, policy_current
from portal import permissions as p
from portal.audit import record_event
from portal.models import User
from training import recipes
from training.models import BaseModel, TrainingJob

S = TrainingJob.Status
R = DataAccessRequest.Status

JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.STAGING, S.CANCELLED, S.FAILED}),
    S.STAGING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMED_OUT: frozenset(),
}
# Who moves a job into each status: people only cancel; the worker (by=None) does the rest.
JOB_MOVE_PERMISSION: dict[str, str | None] = {
    S.QUEUED: None, S.STAGING: None, S.RUNNING: None, S.SUCCEEDED: None, S.FAILED: None,
    S.CANCELLED: p.JOB_CANCEL, S.TIMED_OUT: None,
}


class BaseModelIntegrityError(ValidationError):
    pass


# Base-model registry -------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".bin", ".tiktoken")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_model_folder(folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise ValidationError(f"{path.relative_to(folder)} is a symbolic link; copy the real file in.")
        if path.is_file() and not path.name.startswith("."):
            files[str(path.relative_to(folder))] = sha256_file(path)
    return files


def _manifest_hash(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def base_model_register(
    *, by: User | None, path: Path, name: str, family: str, modality: str, licence: str,
    public_name: str = "", approved: bool = True,
) -> BaseModel:
    """Register weights copied into the hospital, pinning every file by sha256."""
    if by is not None:
        p.check_permission(by, p.BASE_MODEL_MANAGE)
    path = Path(path).resolve()
    if not (path / "config.json").is_file():
        raise ValidationError(f"{path} has no config.json: point at a folder saved with save_pretrained.")
    if not any(path.glob("*.safetensors")):
        raise ValidationError(f"{path} has no .safetensors weights (pickled weights are not accepted).")
    files = hash_model_folder(path)
    with transaction.atomic():
        existing = BaseModel.objects.select_for_update().filter(name=name).first()
        fields = dict(public_name=public_name or name, family=family, modality=modality, local_path=str(path),
                      files=files, manifest_sha256=_manifest_hash(files), licence=licence, approved=approved,
                      registered_by=by, registered_at=timezone.now())
        if existing is not None and existing.manifest_sha256 == fields["manifest_sha256"] and existing.local_path == str(path):
            return existing
        if existing is not None:
            if existing.jobs.exists():
                raise ValidationError(f"{name} already has jobs; register new weights under a new name.")
            for key, value in fields.items():
                setattr(existing, key, value)
            existing.save()
            model = existing
        else:
            model = BaseModel.objects.create(name=name, **fields)
        record_event(actor=by, verb="base_model.registered", target=model,
                     payload={"name": name, "family": family, "manifest_sha256": model.manifest_sha256,
                              "files": len(files)})
    return model


def base_model_verify(model: BaseModel) -> None:
    """Refuse weights whose files changed since registration, naming the first that differs."""
    folder = Path(model.local_path)
    if not folder.is_dir():
        raise BaseModelIntegrityError(f"Base model {model.name}: its folder {folder} is missing.")
    try:
        current = hash_model_folder(folder)
    except ValidationError as exc:  # a symlink slipped in after registration
        raise BaseModelIntegrityError(f"Base model {model.name}: {exc.messages[0]}") from None
    for name, digest in sorted(model.files.items()):
        if name not in current:
            raise BaseModelIntegrityError(f"Base model {model.name}: {name} is missing.")
        if current[name] != digest:
            raise BaseModelIntegrityError(f"Base model {model.name}: {name} does not match its registered sha256.")
    extra = sorted(set(current) - set(model.files))
    if extra:
        raise BaseModelIntegrityError(f"Base model {model.name}: unregistered file {extra[0]} was added.")


def _request_validator(*, modality: str, base_model_name: str, recipe: dict, requested_epsilon=None) -> dict[str, str]:
    """Registered with governance: a request names an approved model of its modality and a recipe within policy."""
    errors: dict[str, str] = {}
    model = BaseModel.objects.filter(name=base_model_name).first()
    if model is None:
        known = ", ".join(BaseModel.objects.filter(approved=True).values_list("name", flat=True)) or "none yet"
        errors["base_model_name"] = f"No registered base model {base_model_name!r}; approved models: {known}."
    elif not model.approved:
        errors["base_model_name"] = f"Base model {base_model_name} is not approved for training."
    elif model.modality != modality:
        errors["base_model_name"] = f"Base model {base_model_name} is for {model.get_modality_display().lower()}, not this modality."
    if modality not in recipes.SUPPORTED_MODALITIES:
        errors["modality"] = f"Training for {modality} is not available yet on this portal."
    errors.update(recipes.recipe_errors(recipe or {}, family=model.family if model else None))
    return errors


governance_hooks.request_validators.append(_request_validator)


# Jobs ------------------------------------------------------------------------------------------

def training_preconditions(request: DataAccessRequest) -> list[str]:
    """Why a job may not start now (empty when it may): re-checked at start and before running."""
    problems = []
    if request.status != R.APPROVED:
        problems.append(f"The request is {request.get_status_display().lower()}, not approved.")
    approval: EthicsApproval | None = request.ethics_approval
    if approval is None or not approval.is_valid_on(timezone.localdate()):
        problems.append("The request's ethics approval is not valid today.")
    cohort = getattr(request, "cohort", None)
    if cohort is None:
        problems.append("The request has no frozen cohort.")
    else:
        needed = required_patients(request.datasets.all(), policy_current())
        if cohort.patient_count < needed:
            problems.append(f"The cohort has fewer distinct patients than the minimum of {needed}.")
    return problems


def job_start(*, request: DataAccessRequest, by: User) -> TrainingJob:
    """Create a training job for an approved request and queue it on the GPU queue after commit."""
    p.check_permission(by, p.JOB_START, request=request)
    with transaction.atomic():
        # of=("self",): PostgreSQL cannot lock the nullable side of the outer join to ethics_approval.
        request = (DataAccessRequest.objects.select_for_update(of=("self",))
                   .select_related("ethics_approval").get(pk=request.pk))
        problems = training_preconditions(request)
        if problems:
            raise ValidationError(problems)
        if TrainingJob.objects.filter(request=request, kind=TrainingJob.Kind.TRAIN).exclude(
            status__in=[S.FAILED, S.CANCELLED, S.TIMED_OUT]
        ).exists():
            raise ValidationError("This request already has a training job that is running or succeeded.")
        model = BaseModel.objects.get(name=request.base_model_name)
        job = TrainingJob.objects.create(
            request=request, base_model=model, created_by=by,
            recipe=recipes.resolve_recipe(request.recipe, family=model.family, modality=request.modality,
                                          patients=request.cohort.patient_count),
        )
        record_event(actor=by, verb="job.queued", target=job, payload={"request": request.pk, "recipe": job.recipe,
                                                                      "base_model": model.name})
        _queue(job)
    return job


def audit_start(*, parent: TrainingJob, adapter_path: Path, by: User | None = None) -> TrainingJob:
    """Queue the privacy audit of an adapter file (egress calls this after validation).

    The audit reads the rewritten adapter, the file that would be released, not the raw output.
    """
    with transaction.atomic():
        job = TrainingJob.objects.create(
            kind=TrainingJob.Kind.AUDIT, parent=parent, request=parent.request, base_model=parent.base_model,
            recipe=parent.recipe, created_by=by or parent.created_by, input_path=str(adapter_path),
        )
        record_event(actor=by, verb="job.queued", target=job, payload={"kind": "audit", "parent": str(parent.pk)})
        _queue(job)
    return job


def _queue(job: TrainingJob) -> None:
    from training.tasks import task_run_job

    job_id = str(job.pk)
    transaction.on_commit(lambda: task_run_job.apply_async(kwargs={"job_id": job_id}))


def job_transition(*, job: TrainingJob, to: str, by: User | None = None, reason: str = "", **fields) -> TrainingJob:
    """The one function that changes a job's status (row lock, table, audit event).

    Moving to the current status is a no-op. Side effects: started/finished times; a failure
    reason for hospital staff; the fields given (backend, image id, quantization…).
    """
    permission = JOB_MOVE_PERMISSION[to]
    if by is not None and permission is not None:
        p.check_permission(by, permission, request=job.request)
    elif by is not None:
        raise PermissionDenied("Only the worker moves a job to this status.")
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if job.status == to:
            return job
        if to not in JOB_TRANSITIONS[job.status]:
            raise ValidationError(f"A job that is {job.get_status_display().lower()} cannot become {S(to).label.lower()}.")
        previous = job.status
        job.status = to
        now = timezone.now()
        if to == S.RUNNING and job.started_at is None:
            job.started_at = now
        if job.is_finished:
            job.finished_at = now
        if reason:
            job.failure_reason = reason
        elif to == S.SUCCEEDED:
            job.failure_reason = ""  # a retried job that then succeeded has no failure to show
        for name, value in fields.items():
            setattr(job, name, value)
        job.save()
        record_event(actor=by, verb=f"job.{to}", target=job,
                     payload={"from": previous, "reason": reason, **{k: v for k, v in fields.items() if k in
                              ("backend", "image_id", "quantization", "attempts", "worker")}})
    return job


def job_cancel(*, job: TrainingJob, by: User) -> TrainingJob:
    """Ask for cancellation: a queued job ends now; a running one is killed by its worker within seconds."""
    p.check_permission(by, p.JOB_CANCEL, request=job.request)
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if job.is_finished or job.cancel_requested_at:
            return job
        job.cancel_requested_at, job.cancel_requested_by = timezone.now(), by
        job.save(update_fields=["cancel_requested_at", "cancel_requested_by"])
        record_event(actor=by, verb="job.cancel_requested", target=job)
        if job.status == S.QUEUED:
            job_transition(job=job, to=S.CANCELLED, reason="Cancelled before it started.")
    return job
