"""Running one job on a worker: re-check, stage, sandbox, read progress, hand off, clean up.

Called by the Celery task with a job id. Everything that changes a job's status goes through
`services.job_transition`; this module decides which move comes next and keeps the folders tidy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F

from training import hooks, services
from training.models import TrainingJob
from training.runtime.schema import parse_progress, validate_audit
from training.staging import remove_staging, stage_cohort

log = logging.getLogger(__name__)
S = TrainingJob.Status
LOSS_CURVE_POINTS = 400
MAX_PROGRESS_BYTES = 16 * 1024 * 1024
MAX_AUDIT_BYTES = 4 * 1024 * 1024


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ProgressReader:
    """Reads progress.jsonl as it grows; keeps only schema-valid numbers, counts the rest."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.buffer = b""
        self.latest: dict = {}
        self.curve: list[list[float]] = []
        self.dropped = 0

    def read(self) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size <= self.offset or self.offset >= MAX_PROGRESS_BYTES:
            return False
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(min(size, MAX_PROGRESS_BYTES) - self.offset)
        self.offset += len(chunk)
        data = self.buffer + chunk
        complete, _, self.buffer = data.rpartition(b"\n")
        lines, dropped = parse_progress(complete.decode("utf-8", "replace"))
        self.dropped += dropped
        for line in lines:
            self.latest.update(line)
            if "loss" in line and "step" in line:
                self.curve.append([line["step"], line["loss"]])
        if len(self.curve) > LOSS_CURVE_POINTS:  # keep the curve's shape, bound its size
            stride = len(self.curve) / LOSS_CURVE_POINTS
            self.curve = [self.curve[int(i * stride)] for i in range(LOSS_CURVE_POINTS - 1)] + [self.curve[-1]]
        return bool(lines or dropped)

    def fields(self) -> dict:
        latest = self.latest
        out = {"loss_curve": self.curve, "progress_lines_dropped": self.dropped}
        for name in ("step", "total_steps"):
            if name in latest:
                out[name] = int(latest[name])
        for name in ("loss", "tokens_per_second", "eta_seconds", "eval_loss_base", "eval_loss_adapted"):
            if name in latest:
                out[name] = float(latest[name])
        if "qlora" in latest:
            out["quantization"] = "nf4" if latest["qlora"] else "none"
        out["final_metrics"] = {k: v for k, v in latest.items() if k in
                                ("eval_loss_base", "eval_loss_adapted", "epsilon", "noise_multiplier",
                                 "sample_rate", "lora_moved", "qlora")}
        return out


def _claim(job_id: str, worker: str) -> TrainingJob | None:
    """Count this attempt; a job whose workers keep dying stops after JOB_MAX_ATTEMPTS."""
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        return None
    TrainingJob.objects.filter(pk=job.pk).update(attempts=F("attempts") + 1, worker=worker)
    job.refresh_from_db()
    if job.status in (S.STAGING, S.RUNNING):  # a previous worker died mid-job: start again
        remove_staging(job.staging_dir)
        job = services.job_transition(job=job, to=S.QUEUED, reason=f"Worker lost on attempt {job.attempts - 1}; retrying.")
    if job.attempts > settings.JOB_MAX_ATTEMPTS:
        services.job_transition(job=job, to=S.FAILED,
                                reason=f"Gave up after {settings.JOB_MAX_ATTEMPTS} attempts: the worker kept dying.")
        return None
    if job.cancel_requested_at:
        services.job_transition(job=job, to=S.CANCELLED, reason="Cancelled before it started.")
        return None
    return job


def _spec(job: TrainingJob, counts: dict) -> dict:
    recipe = dict(job.recipe)
    if recipe.pop("canaries", False):
        # An audit regenerates the canaries its training job planted: both derive them from the training job's id.
        planted_by = job.parent if job.kind == TrainingJob.Kind.AUDIT else job
        recipe["canaries"] = {"seed": int(planted_by.pk.int % (2**31)), "repeats": [1, 10], "per_repeat": 4}
    else:
        recipe["canaries"] = None
    spec = {
        "schema_version": 1,
        "task": job.kind,
        "job_id": str(job.pk),
        "modality": job.request.modality,
        "base_model": {"path": "/models", "family": job.base_model.family},
        "data_dir": "/data",
        "out_dir": "/out",
        "recipe": recipe,
        "threads": settings.SANDBOX_CPUS,
        "max_steps": None,
    }
    if job.kind == TrainingJob.Kind.AUDIT:
        spec["adapter_path"] = "/adapter/adapter_model.safetensors"
    return spec


def execute_job(job_id: str, *, worker: str | None = None) -> None:
    """Run one job to its end. However an audit job ends, egress is told (no adapter waits forever)."""
    try:
        _execute(job_id, worker=worker)
    finally:
        _announce_audit_end(job_id)


def _execute(job_id: str, *, worker: str | None) -> None:
    from training.sandbox import SandboxError, SandboxSpec, get_backend, grant_sandbox_access, stage_runtime_code

    worker = worker or worker_name()
    job = _claim(job_id, worker)
    if job is None:
        return
    timings: dict[str, float] = {}
    started = time.monotonic()
    job_dir = job.staging_dir
    try:
        problems = services.training_preconditions(job.request)
        if problems:
            services.job_transition(job=job, to=S.FAILED, reason=" ".join(problems))
            return
        try:
            services.base_model_verify(job.base_model)
        except services.BaseModelIntegrityError as exc:
            services.job_transition(job=job, to=S.FAILED, reason=exc.messages[0])
            return
        job = services.job_transition(job=job, to=S.STAGING)
        remove_staging(job_dir)
        data_dir, out_dir, spec_dir = job_dir / "data", job_dir / "out", job_dir / "job"
        for folder in (data_dir, out_dir, spec_dir):
            folder.mkdir(parents=True)
        counts = stage_cohort(cohort=job.request.cohort, data_dir=data_dir, seed=job.pk.int % (2**32))
        (spec_dir / "spec.json").write_text(json.dumps(_spec(job, counts), indent=1))
        code_dir = stage_runtime_code(job_dir)
        mounts = [(str(data_dir), "/data", True), (job.base_model.local_path, "/models", True),
                  (str(spec_dir), "/job", True), (code_dir, "/code", True)]
        if job.kind == TrainingJob.Kind.AUDIT:
            adapter_dir = job_dir / "adapter"
            adapter_dir.mkdir()
            shutil.copyfile(job.input_path, adapter_dir / "adapter_model.safetensors")
            mounts.append((str(adapter_dir), "/adapter", True))
        grant_sandbox_access(job_dir)
        timings["staging"] = round(time.monotonic() - started, 3)

        try:
            backend = get_backend(settings.SANDBOX_BACKEND, image=settings.SANDBOX_IMAGE)
        except SandboxError as exc:
            services.job_transition(job=job, to=S.FAILED, reason=str(exc))
            return
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec = SandboxSpec(
            job_id=str(job.pk),
            command=["python", "-m", "training.runtime", job.kind, "/job/spec.json"],
            out_dir=str(out_dir), mounts=mounts,
            wall_clock_seconds=settings.JOB_MAX_SECONDS,
            memory_bytes=settings.SANDBOX_MEMORY_MB * 1024 * 1024,
            pids_limit=settings.SANDBOX_PIDS, cpus=settings.SANDBOX_CPUS,
            gpus=settings.WORKER_GPUS or None, log_path=str(job.log_path),
        )
        job = services.job_transition(job=job, to=S.RUNNING, backend=backend.name,
                                      image_id=getattr(backend, "image_id", "") or "")
        reader = ProgressReader(out_dir / "progress.jsonl")

        def poll() -> bool:
            if reader.read() and job.kind == TrainingJob.Kind.TRAIN:
                TrainingJob.objects.filter(pk=job.pk).update(**reader.fields())
            return TrainingJob.objects.filter(pk=job.pk, cancel_requested_at__isnull=False).exists()

        sandbox_started = time.monotonic()
        result = backend.run(spec, poll=poll)
        poll()
        timings["sandbox"] = round(time.monotonic() - sandbox_started, 3)
        fields = reader.fields() if job.kind == TrainingJob.Kind.TRAIN else {}
        if result.image_id:
            fields["image_id"] = result.image_id
        _finish(job, result, out_dir, fields, timings, started)
    except Exception as exc:  # fail closed, with the reason for hospital staff
        log.exception("job %s failed", job_id)
        job.refresh_from_db()
        if not job.is_finished:
            services.job_transition(job=job, to=S.FAILED, reason=f"Worker error: {exc.__class__.__name__}: {exc}")
    finally:
        remove_staging(job_dir)


def _announce_audit_end(job_id: str) -> None:
    """However an audit job ended, egress hears of it: an unaudited adapter must not wait forever."""
    job = TrainingJob.objects.filter(pk=job_id, kind=TrainingJob.Kind.AUDIT).first()
    if job is not None and job.is_finished:
        for handler in hooks.audit_finished:
            handler(job=job)


def dp_guard_problem(fields: dict) -> str | None:
    """Why a DP-SGD run must not be trusted, or None.

    Opacus with some peft versions has silently corrupted LoRA updates (opacus issue 820): a DP
    job must show that its LoRA weights moved and that held-out loss improved on the base model.
    """
    metrics = fields.get("final_metrics", {})
    if metrics.get("lora_moved") != 1:
        return "DP-SGD check failed: the LoRA weights did not move from their initialisation."
    base, adapted = fields.get("eval_loss_base"), fields.get("eval_loss_adapted")
    if base is None or adapted is None or not adapted < base:
        return f"DP-SGD check failed: held-out loss did not improve on the base model ({base} → {adapted})."
    if metrics.get("epsilon") is None:
        return "DP-SGD check failed: the run reported no ε."
    return None


def _finish(job: TrainingJob, result, out_dir: Path, fields: dict, timings: dict, started: float) -> None:
    outcome = {"succeeded": S.SUCCEEDED, "timed_out": S.TIMED_OUT, "cancelled": S.CANCELLED}.get(result.status, S.FAILED)
    if outcome != S.SUCCEEDED:
        services.job_transition(job=job, to=outcome, reason=result.reason, **fields)
        return
    if job.kind == TrainingJob.Kind.AUDIT:
        audit_file = out_dir / "audit.json"
        try:
            if audit_file.stat().st_size > MAX_AUDIT_BYTES:
                raise ValueError("audit.json is larger than the schema allows")
            numbers = validate_audit(json.loads(audit_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            services.job_transition(job=job, to=S.FAILED, reason=f"The audit's output failed its schema: {exc}")
            return
        fields["result"] = numbers
    quarantine = settings.QUARANTINE_ROOT / str(job.pk)
    if job.kind == TrainingJob.Kind.TRAIN and job.recipe.get("dp"):
        problem = dp_guard_problem(fields)
        if problem:
            services.job_transition(job=job, to=S.FAILED, reason=problem, **fields)
            return
    if job.kind == TrainingJob.Kind.TRAIN:
        if not (out_dir / "adapter_model.safetensors").is_file():
            services.job_transition(job=job, to=S.FAILED, reason="The job wrote no adapter_model.safetensors.", **fields)
            return
        shutil.rmtree(quarantine, ignore_errors=True)
        quarantine.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out_dir), str(quarantine))  # the whole /out: egress names anything extra
    timings["total"] = round(time.monotonic() - started, 3)
    fields["fixed_cost_seconds"] = timings
    with transaction.atomic():
        job = services.job_transition(job=job, to=S.SUCCEEDED, **fields)
        if job.kind == TrainingJob.Kind.TRAIN:
            for handler in hooks.adapter_produced:
                handler(job=job, quarantine_dir=quarantine)
