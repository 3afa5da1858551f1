"""The worker running real jobs in real sandboxes: success and hand-off to egress, cancel, timeout,
worker death and retry, base-model integrity, staging (pseudonyms, no identifiers, always removed),
and the progress stream's schema gate.

Every sandbox case runs once per backend that is available here (docker needs the engine and the
image from scripts/build_sandbox_image.sh; bubblewrap needs bwrap). Jobs use the session's tiny
model from tests/flow.py and a cohort of a dozen synthetic patients, so each takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from django.db import connection

from egress import services as egress_services
from egress.models import Adapter
from governance.models import CohortRecord, DirectIdentifier, Patient, Record
from portal.celery import app as celery_app
from portal.models import AuditEvent
from tests import flow
from training import services
from training.models import TrainingJob
from training.runner import ProgressReader, execute_job
from training.sandbox import SandboxUnavailable, get_backend
from training.staging import stage_cohort

S = TrainingJob.Status
ADAPTER_FILE = "adapter_model.safetensors"
# Small and quick: sequences of 64 tokens; five epochs of batches of 4 at the policy's highest
# learning rate (about 40 steps, a second or two of the job) so that the held-out loss of the
# randomly initialised tiny model falls reliably, not by chance.
RECIPE = {**flow.TINY_RECIPE, "epochs": 5, "max_seq_length": 64, "batch_size": 4, "learning_rate": 1e-2}
BACKENDS = [
    pytest.param("bubblewrap", marks=pytest.mark.bubblewrap, id="bubblewrap"),
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
]


@pytest.fixture(autouse=True)
def worker_settings(settings, tmp_path):
    """A worker's settings for tests: one CPU, its own job logs, and a staging root that the
    sandbox's unprivileged uid can traverse (pytest's tmp_path sits below a 0700 folder)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SANDBOX_CPUS = 1
    settings.SANDBOX_MEMORY_MB = 3072
    settings.JOB_MAX_ATTEMPTS = 3
    settings.VAR_DIR = tmp_path / "var"
    staging = Path(tempfile.mkdtemp(prefix="rapha-staging-"))
    staging.chmod(0o755)
    settings.STAGING_ROOT = staging
    flow.tiny_model_folder().parent.chmod(0o755)  # the session's model cache, bound at /models
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


@pytest.fixture
def bubblewrap(settings):
    try:
        get_backend("bubblewrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap sandbox unavailable here: {exc}")
    settings.SANDBOX_BACKEND = "bubblewrap"
    return "bubblewrap"


def start_job(**request_kwargs) -> TrainingJob:
    request = flow.approved_request(recipe=RECIPE, **request_kwargs)
    return services.job_start(request=request, by=request.project.principal_investigator)


def verbs(job: TrainingJob) -> list[str]:
    return list(AuditEvent.objects.filter(target_id=str(job.pk)).order_by("seq").values_list("verb", flat=True))


def holdout_loss(model, tokenizer, texts: list[str], max_length: int) -> float:
    """Mean next-token NLL over every held-out token, encoded as the runtime encodes a record."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length - 1)["input_ids"] + [tokenizer.eos_token_id]
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            total += float(F.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
    return total / count


# A job that succeeds -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.django_db
def test_execute_job_succeeds_and_hands_only_the_adapter_to_egress(sandbox, settings, tmp_path):
    job = start_job()

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert (job.status, job.failure_reason, job.backend, job.attempts) == (S.SUCCEEDED, "", sandbox, 1)
    assert job.quantization == "none"
    assert job.step == job.total_steps > 0
    assert job.loss_curve[-1][0] == job.total_steps
    assert job.progress_lines_dropped == 0
    assert job.eval_loss_adapted < job.eval_loss_base - 0.01
    assert set(job.fixed_cost_seconds) == {"staging", "sandbox", "total"}
    assert verbs(job) == ["job.queued", "job.staging", "job.running", "job.succeeded"]
    assert not job.staging_dir.exists()
    quarantine = settings.QUARANTINE_ROOT / str(job.pk)
    assert sorted(os.listdir(quarantine)) == [ADAPTER_FILE, "progress.jsonl"]  # the sandbox's whole /out
    adapter = Adapter.objects.get(job=job)
    assert (adapter.status, adapter.quarantine_dir) == (Adapter.Status.QUARANTINED, str(quarantine))

    # Egress (its task is not eager in tests): validated, everything but the adapter deleted, audit queued.
    adapter = egress_services.adapter_validate(adapter=adapter)

    adapter.refresh_from_db()
    assert adapter.status == Adapter.Status.VALIDATED
    assert os.listdir(quarantine) == [ADAPTER_FILE]
    assert adapter.audit_job.kind == TrainingJob.Kind.AUDIT
    assert (adapter.audit_job.status, adapter.audit_job.input_path) == (S.QUEUED, adapter.rewritten_path)


@pytest.mark.slow
@pytest.mark.django_db
def test_execute_job_adapter_loads_with_stock_peft_and_lowers_holdout_loss(bubblewrap, settings, tmp_path):
    """The file that would be released, with the config the portal writes, loads with stock peft on
    the registered base model and reproduces the worker's held-out losses."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from egress.validation import build_adapter_config, expected_adapter

    job = start_job()
    execute_job(str(job.pk))
    job.refresh_from_db()
    adapter = egress_services.adapter_validate(adapter=Adapter.objects.get(job=job))
    release_dir = tmp_path / "release"
    release_dir.mkdir()
    shutil.copyfile(adapter.rewritten_path, release_dir / ADAPTER_FILE)
    recipe = {key: job.recipe[key] for key in ("target_modules", "rank", "alpha", "dropout")}
    config = build_adapter_config(recipe, base_model_name=job.base_model.public_name,
                                  expected=expected_adapter(job.base_model.local_path, recipe))
    (release_dir / "adapter_config.json").write_text(json.dumps(config))
    # The held-out records exactly as the sandbox saw them (staging is deterministic per job).
    stage_cohort(cohort=job.request.cohort, data_dir=tmp_path / "data", seed=job.pk.int % (2**32))
    texts = [json.loads(line)["text"] for line in (tmp_path / "data" / "holdout.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(job.base_model.local_path, local_files_only=True)

    base = AutoModelForCausalLM.from_pretrained(job.base_model.local_path, local_files_only=True).eval()
    base_loss = holdout_loss(base, tokenizer, texts, RECIPE["max_seq_length"])
    model = PeftModel.from_pretrained(base, str(release_dir)).eval()
    adapted_loss = holdout_loss(model, tokenizer, texts, RECIPE["max_seq_length"])

    assert adapted_loss < base_loss
    assert base_loss == pytest.approx(job.eval_loss_base, rel=1e-4)
    assert adapted_loss == pytest.approx(job.eval_loss_adapted, rel=1e-4)


# Jobs that end otherwise -------------------------------------------------------------------------

@pytest.fixture
def eager_celery():
    """Tasks run in the caller on commit, as in demo_walkthrough (and nothing reaches a broker)."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_execute_job_cancel_while_running_ends_cancelled_within_seconds(sandbox, eager_celery, settings):
    request = flow.approved_request(recipe=RECIPE)
    researcher = request.project.principal_investigator
    errors: list[BaseException] = []

    def worker():  # job_start commits; the eager task then runs the job in this thread
        try:
            services.job_start(request=request, by=researcher)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    # The sandbox's log appears once the job is running, just before the worker's first second
    # of waiting on it. Watching the file, not the database, keeps this thread off the rows the
    # worker writes (SQLite's in-memory test database locks whole tables between threads).
    logs = settings.VAR_DIR / "job-logs"
    deadline = time.monotonic() + 120
    while not (logs.is_dir() and any(logs.iterdir())):
        assert time.monotonic() < deadline and thread.is_alive(), "the job never started running"
        time.sleep(0.05)
    job = TrainingJob.objects.get(request=request)
    assert job.status == S.RUNNING

    services.job_cancel(job=job, by=researcher)
    asked = time.monotonic()
    thread.join(timeout=60)

    assert errors == []
    assert not thread.is_alive()
    assert time.monotonic() - asked < 15
    job.refresh_from_db()
    assert (job.status, job.failure_reason) == (S.CANCELLED, "cancelled; the sandbox was killed")
    assert job.cancel_requested_by == researcher
    assert verbs(job) == ["job.queued", "job.staging", "job.running", "job.cancel_requested", "job.cancelled"]
    assert not job.staging_dir.exists()
    assert not Adapter.objects.filter(job=job).exists()


@pytest.mark.django_db
def test_execute_job_cancel_requested_while_queued_never_starts(bubblewrap):
    job = start_job()
    TrainingJob.objects.filter(pk=job.pk).update(cancel_requested_at=job.created_at, cancel_requested_by=job.created_by)

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert (job.status, job.failure_reason, job.started_at) == (S.CANCELLED, "Cancelled before it started.", None)
    assert verbs(job) == ["job.queued", "job.cancelled"]


@pytest.mark.slow
@pytest.mark.django_db
def test_execute_job_past_the_wall_clock_limit_times_out(sandbox, settings):
    settings.JOB_MAX_SECONDS = 2  # the runtime alone takes longer than this to import torch
    job = start_job()

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert (job.status, job.failure_reason) == (S.TIMED_OUT, "wall-clock limit of 2 s exceeded; the sandbox was killed")
    assert verbs(job) == ["job.queued", "job.staging", "job.running", "job.timed_out"]
    assert not job.staging_dir.exists()
    assert not (settings.QUARANTINE_ROOT / str(job.pk)).exists()
    assert not Adapter.objects.filter(job=job).exists()


@pytest.mark.slow
@pytest.mark.django_db
def test_execute_job_runtime_failure_fails_and_removes_staging(bubblewrap, settings):
    # c_attn is GPT-2's; a Llama model has no such module, which the runtime finds after loading it.
    job = start_job()
    TrainingJob.objects.filter(pk=job.pk).update(recipe={**job.recipe, "target_modules": ["c_attn"]})

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert (job.status, job.failure_reason) == (S.FAILED, "exited with code 2")
    assert not job.staging_dir.exists()
    assert not (settings.QUARANTINE_ROOT / str(job.pk)).exists()
    assert not Adapter.objects.filter(job=job).exists()


# Worker death ----------------------------------------------------------------------------------

def _left_running_by_a_dead_worker(job: TrainingJob, attempts: int) -> TrainingJob:
    services.job_transition(job=job, to=S.STAGING)
    services.job_transition(job=job, to=S.RUNNING, backend="bubblewrap")
    TrainingJob.objects.filter(pk=job.pk).update(attempts=attempts, worker="dead-host:1")
    (job.staging_dir / "data").mkdir(parents=True)
    (job.staging_dir / "data" / "train.jsonl").write_text("{}\n")
    return job


@pytest.mark.django_db
def test_execute_job_worker_died_on_the_last_attempt_fails_with_the_reason(settings):
    job = _left_running_by_a_dead_worker(start_job(), attempts=3)

    execute_job(str(job.pk), worker="new-host:2")

    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker) == (S.FAILED, 4, "new-host:2")
    assert job.failure_reason == "Gave up after 3 attempts: the worker kept dying."
    assert verbs(job) == ["job.queued", "job.staging", "job.running", "job.queued", "job.failed"]
    retry = AuditEvent.objects.filter(target_id=str(job.pk), verb="job.queued").latest("seq")
    assert retry.payload == {"from": "running", "reason": "Worker lost on attempt 3; retrying."}
    assert not job.staging_dir.exists()


@pytest.mark.slow
@pytest.mark.django_db
def test_execute_job_worker_died_before_the_last_attempt_is_retried(bubblewrap, settings):
    job = _left_running_by_a_dead_worker(start_job(), attempts=1)

    execute_job(str(job.pk), worker="new-host:2")

    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker) == (S.SUCCEEDED, 2, "new-host:2")
    assert verbs(job) == ["job.queued", "job.staging", "job.running",
                          "job.queued", "job.staging", "job.running", "job.succeeded"]
    retry = AuditEvent.objects.filter(target_id=str(job.pk), verb="job.queued").latest("seq")
    assert retry.payload == {"from": "running", "reason": "Worker lost on attempt 1; retrying."}
    assert not job.staging_dir.exists()
    assert Adapter.objects.get(job=job).status == Adapter.Status.QUARANTINED


@pytest.mark.django_db
def test_execute_job_finished_job_is_left_alone(settings):
    job = start_job()
    services.job_transition(job=job, to=S.FAILED, reason="earlier")

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert (job.status, job.failure_reason, job.attempts) == (S.FAILED, "earlier", 0)


# Re-checks before running ------------------------------------------------------------------------

@pytest.mark.django_db
def test_execute_job_base_model_changed_since_registration_fails(settings, tmp_path):
    request = flow.approved_request(recipe=RECIPE)
    copy = tmp_path / "weights"
    shutil.copytree(flow.tiny_model_folder(), copy)
    # The hospital moved the weights before any job ran: the same name, pinned again at the new path.
    model = services.base_model_register(by=None, path=copy, name=flow.TINY_MODEL_NAME, family="llama",
                                         modality="text", licence="Apache-2.0")
    job = services.job_start(request=request, by=request.project.principal_investigator)
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x00\x80\x7f")

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert job.base_model == model
    assert (job.status, job.started_at) == (S.FAILED, None)
    assert job.failure_reason == f"Base model {flow.TINY_MODEL_NAME}: model.safetensors does not match its registered sha256."
    assert verbs(job) == ["job.queued", "job.failed"]
    assert not job.staging_dir.exists()


@pytest.mark.django_db
def test_execute_job_request_suspended_since_start_fails(settings):
    from governance import services as governance

    job = start_job()
    officer = job.request.decided_by
    governance.request_transition(request=job.request, to="suspended", by=officer, reason="Complaint under review.")

    execute_job(str(job.pk))

    job.refresh_from_db()
    assert (job.status, job.failure_reason) == (S.FAILED, "The request is suspended, not approved.")
    assert verbs(job) == ["job.queued", "job.failed"]


# Staging -----------------------------------------------------------------------------------------

def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _identifier_forms(kind: str, value: str) -> list[str]:
    """How a direct identifier is written in notes (independently of training/staging.py)."""
    if kind == DirectIdentifier.Kind.BIRTH_DATE:
        day = date.fromisoformat(value)
        return [value, day.strftime("%d/%m/%Y"), day.strftime("%d %B %Y"), day.strftime("%d %b %Y"),
                f"{day.day} {day.strftime('%B %Y')}", f"{day.day} {day.strftime('%b %Y')}"]
    if kind == DirectIdentifier.Kind.NAME:
        given, family = value.rsplit(" ", 1)
        return [value, f"{family}, {given}", f"{family.upper()}, {given}"]
    if kind in (DirectIdentifier.Kind.PHONE, DirectIdentifier.Kind.NATIONAL_ID):
        return [value, re.sub(r"\D", "", value)]
    return [value]


def _found(forms: list[str], text: str) -> list[str]:
    return [f for f in forms if re.search(r"(?<!\w)" + re.escape(f) + r"(?!\w)", text, re.IGNORECASE)]


@pytest.mark.django_db
def test_stage_cohort_writes_per_job_pseudonyms_and_no_direct_identifiers(tmp_path):
    request = flow.approved_request(n_patients=12)
    cohort = request.cohort
    members = CohortRecord.objects.filter(cohort=cohort)
    patient_ids = set(members.values_list("patient_id", flat=True))

    counts = stage_cohort(cohort=cohort, data_dir=tmp_path / "a", seed=1)
    stage_cohort(cohort=cohort, data_dir=tmp_path / "b", seed=2)

    assert counts == {"train": members.filter(split="train").count(), "holdout": members.filter(split="holdout").count(), "declined": 0}
    assert sorted(os.listdir(tmp_path / "a")) == ["holdout.jsonl", "train.jsonl"]
    rows = _rows(tmp_path / "a", "train") + _rows(tmp_path / "a", "holdout")
    assert all(set(row) == {"record", "patient", "text"} for row in rows)
    assert sorted(row["record"] for row in rows) == [f"r-{i:06d}" for i in range(1, cohort.record_count + 1)]
    assert sorted({row["patient"] for row in rows}) == [f"p-{i:06d}" for i in range(1, cohort.patient_count + 1)]
    train_patients = {row["patient"] for row in _rows(tmp_path / "a", "train")}
    assert train_patients.isdisjoint(row["patient"] for row in _rows(tmp_path / "a", "holdout"))
    # Per job: the same record gets other pseudonyms under another job's seed.
    other = {row["text"]: (row["record"], row["patient"]) for row in _rows(tmp_path / "b", "train") + _rows(tmp_path / "b", "holdout")}
    assert sum(other[row["text"]] != (row["record"], row["patient"]) for row in rows) > len(rows) // 2
    # No key of the hospital's index reaches the files.
    raw = (tmp_path / "a" / "train.jsonl").read_text() + (tmp_path / "a" / "holdout.jsonl").read_text()
    keys = [*Patient.objects.filter(pk__in=patient_ids).values_list("key", flat=True),
            *Record.objects.filter(pk__in=members.values("record_id")).values_list("source_id", flat=True),
            *DirectIdentifier.objects.filter(patient_id__in=patient_ids, kind="source_id").values_list("value", flat=True)]
    assert [key for key in keys if key in raw] == []
    # No direct identifier of a cohort patient is left in any text, though the notes carried them.
    identifiers = list(DirectIdentifier.objects.filter(patient_id__in=patient_ids).exclude(kind="source_id")
                       .values_list("kind", "value"))
    forms = [form for kind, value in identifiers for form in _identifier_forms(kind, value)]
    source = "\n".join((r.dataset.storage_dir / r.file_path).read_text() for r in
                       Record.objects.filter(pk__in=members.values("record_id")).select_related("dataset"))
    assert len(_found(forms, source)) > cohort.patient_count  # the test has something to find
    assert _found(forms, "\n".join(row["text"] for row in rows)) == []


# The progress stream -----------------------------------------------------------------------------

def test_progress_reader_keeps_schema_lines_and_counts_the_rest(tmp_path):
    path = tmp_path / "progress.jsonl"
    lines = [
        '{"step": 1, "total_steps": 4, "epoch": 0.25, "loss": 6.5, "tokens_per_second": 900.0, "eta_seconds": 3.0}',
        '{"step": 2, "total_steps": 4, "loss": 6.1, "note": "Jane Doe, MRN 1234567"}',  # unknown key
        '{"step": 2, "total_steps": 4, "loss": "6.0"}',  # a string
        '{"step": 2, "total_steps": 4, "loss": NaN}',  # not a finite number
        '{"step": 2.5, "total_steps": 4, "loss": 6.0}',  # a count that is not whole
        '{"step": 2, "total_steps": 4, "loss": -1.0}',  # below the field's bound
        '{"step": true, "total_steps": 4}',  # a boolean
        '["step", 2]',  # not an object
        "not json at all",
        '{"step": 2, "total_steps": 4, "loss": 5.9, "pad": ' + "1" * 5000 + "}",  # longer than a line may be
        '{"step": 3, "total_steps": 4, "loss": 5.5, "qlora": 0}',
    ]
    path.write_text("\n".join(lines) + '\n{"step": 4, "total_st')  # the last line is still being written
    reader = ProgressReader(path)

    assert reader.read() is True

    assert reader.dropped == 9
    assert reader.curve == [[1, 6.5], [3, 5.5]]
    fields = reader.fields()
    assert fields == {"loss_curve": [[1, 6.5], [3, 5.5]], "progress_lines_dropped": 9, "step": 3, "total_steps": 4,
                      "loss": 5.5, "tokens_per_second": 900.0, "eta_seconds": 3.0, "quantization": "none",
                      "final_metrics": {"qlora": 0}}

    with path.open("a") as handle:
        handle.write('eps": 4, "loss": 5.2, "eval_loss_base": 6.4, "eval_loss_adapted": 5.3}\n')
    assert reader.read() is True
    assert (reader.dropped, reader.curve[-1], reader.fields()["eval_loss_adapted"]) == (9, [4, 5.2], 5.3)
    assert reader.read() is False  # nothing new


def test_progress_reader_missing_file_reads_nothing(tmp_path):
    reader = ProgressReader(tmp_path / "progress.jsonl")

    assert reader.read() is False
    assert reader.fields() == {"loss_curve": [], "progress_lines_dropped": 0, "final_metrics": {}}
