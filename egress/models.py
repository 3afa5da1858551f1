"""Adapters on their way out: validation, privacy audit, sign-off, signed release, downloads."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.models import decision_pair
from training.models import TrainingJob


class AuditPolicy(models.Model):
    """The privacy-audit gates, versioned; each adapter records the version it was judged by."""

    version = models.PositiveIntegerField(unique=True)
    max_auc = models.FloatField(default=0.65)
    warn_auc = models.FloatField(default=0.60)
    significance = models.FloatField(default=0.05)
    max_tpr_at_1pct_fpr_lower = models.FloatField(default=0.05)
    warn_tpr_at_1pct_fpr_lower = models.FloatField(default=0.02)
    canary_margin_bits = models.FloatField(default=4.0, help_text="Fail when exposure ≥ log2|R| − this.")
    canary_warn_margin_bits = models.FloatField(default=8.0)
    extraction_warn_p = models.FloatField(default=0.2)
    max_memorisation_excess = models.FloatField(
        default=0.02, help_text="Fail when generated samples match training items this much more often than held-out ones.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-version"]
        verbose_name_plural = "audit policies"

    def __str__(self) -> str:
        return f"Audit policy v{self.version}"


class Adapter(models.Model):
    class Status(models.TextChoices):
        QUARANTINED = "quarantined", "Quarantined"
        VALIDATED = "validated", "Validated, audit pending"
        IN_REVIEW = "in_review", "Awaiting privacy review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        RELEASED = "released", "Released"
        REVOKED = "revoked", "Revoked"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.OneToOneField(TrainingJob, on_delete=models.PROTECT, related_name="adapter")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUARANTINED)
    quarantine_dir = models.CharField(max_length=500)
    rewritten_path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="Of the rewritten file that would be released.")
    size = models.PositiveBigIntegerField(default=0)
    validation_report = models.JSONField(default=dict, blank=True)
    rewrite = models.JSONField(default=dict, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    audit_job = models.ForeignKey(TrainingJob, null=True, blank=True, on_delete=models.PROTECT, related_name="audited_adapter")
    audit_report = models.JSONField(default=dict, blank=True, help_text="The audit's numbers and each gate's verdict.")
    audit_policy = models.ForeignKey(AuditPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    rejected_reason = models.TextField(blank=True)
    delete_after = models.DateTimeField(null=True, blank=True)
    files_deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Adapter {str(self.id)[:8]}"

    @property
    def request(self):
        return self.job.request


class SignOff(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve", "Approve"
        REJECT = "reject", "Reject"

    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="signoffs")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="signoffs")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["adapter", "reviewer"], name="one_signoff_per_reviewer")]


class Release(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="releases")
    organisation = models.ForeignKey("portal.Organisation", on_delete=models.PROTECT, related_name="releases")
    zip_path = models.CharField(max_length=500)
    zip_sha256 = models.CharField(max_length=64)
    manifest = models.JSONField()
    manifest_sha256 = models.CharField(max_length=64)
    signature = models.TextField()
    terms = models.TextField()
    terms_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    revoked_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            decision_pair("revoked", "release_revoked_pair"),
            models.UniqueConstraint(fields=["adapter", "organisation"], name="one_release_per_organisation"),
        ]

    def __str__(self) -> str:
        return f"Release {str(self.id)[:8]} to {self.organisation}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class TermsAcceptance(models.Model):
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="acceptances")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    terms_sha256 = models.CharField(max_length=64)
    accepted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["release", "user"], name="accept_once")]


class Download(models.Model):
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="downloads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    token = models.ForeignKey("portal.ApiToken", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    address = models.GenericIPAddressField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at"]
