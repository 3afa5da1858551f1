"""The base-model registry and training jobs (train and audit runs in a sandbox)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from governance.models import DataAccessRequest, Modality, decision_pair


class BaseModel(models.Model):
    """Weights the hospital copied in, pinned by the sha256 of every file."""

    name = models.SlugField(max_length=100, unique=True)
    public_name = models.CharField(max_length=200, help_text="The name written into released model cards.")
    family = models.CharField(max_length=40, help_text="Architecture family, e.g. llama or gpt2.")
    modality = models.CharField(max_length=20, choices=Modality.choices)
    local_path = models.CharField(max_length=500)
    files = models.JSONField(help_text="Relative path → sha256 of every weight, config and tokenizer file.")
    manifest_sha256 = models.CharField(max_length=64, help_text="sha256 over the sorted file list and hashes.")
    licence = models.CharField(max_length=100)
    approved = models.BooleanField(default=False)
    registered_at = models.DateTimeField(default=timezone.now)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TrainingJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        STAGING = "staging", "Staging"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        TIMED_OUT = "timed_out", "Timed out"

    class Kind(models.TextChoices):
        TRAIN = "train", "Training"
        AUDIT = "audit", "Privacy audit"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TRAIN)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="audits")
    request = models.ForeignKey(DataAccessRequest, on_delete=models.PROTECT, related_name="jobs")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="jobs")
    recipe = models.JSONField(help_text="The approved recipe, resolved with defaults, as the sandbox received it.")
    input_path = models.CharField(max_length=500, blank=True, help_text="Audit jobs: the adapter file to audit.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    quantization = models.CharField(max_length=10, blank=True, help_text="nf4 (QLoRA) or none (LoRA), as used.")
    backend = models.CharField(max_length=20, blank=True)
    image_id = models.CharField(max_length=100, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    failure_reason = models.TextField(blank=True)

    # Progress: numbers parsed from the sandbox's progress stream against a schema.
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    eval_loss_base = models.FloatField(null=True, blank=True)
    eval_loss_adapted = models.FloatField(null=True, blank=True)
    loss_curve = models.JSONField(default=list, blank=True)
    final_metrics = models.JSONField(default=dict, blank=True)
    progress_lines_dropped = models.PositiveIntegerField(default=0)
    result = models.JSONField(default=dict, blank=True, help_text="Audit jobs: the schema-checked aggregate numbers.")
    fixed_cost_seconds = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            decision_pair("cancel_requested", "job_cancel_pair"),
            models.CheckConstraint(condition=Q(kind="train", parent__isnull=True) | Q(kind="audit", parent__isnull=False),
                                   name="audit_jobs_have_parent"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} job {str(self.id)[:8]}"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED, self.Status.TIMED_OUT}

    @property
    def percent(self) -> int:
        if self.status == self.Status.SUCCEEDED:
            return 100
        return int(100 * self.step / self.total_steps) if self.total_steps else 0

    @property
    def staging_dir(self):
        return settings.STAGING_ROOT / str(self.id)

    @property
    def log_path(self):
        return settings.VAR_DIR / "job-logs" / f"{self.id}.log"
