"""Projects, datasets and their record index, ethics approvals, requests, cohorts, policy."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from governance.records import CONDITION_SYSTEMS, DOCUMENT_TYPES


def decision_pair(prefix: str, name: str) -> models.CheckConstraint:
    """`<prefix>_at` and `<prefix>_by` are both set or both empty."""
    return models.CheckConstraint(
        condition=Q(**{f"{prefix}_at__isnull": True, f"{prefix}_by__isnull": True})
        | Q(**{f"{prefix}_at__isnull": False, f"{prefix}_by__isnull": False}),
        name=name,
    )


class Modality(models.TextChoices):
    TEXT = "text", "Clinical text"
    VISION_LANGUAGE = "vision_language", "Vision-language (DICOM + report)"
    DIFFUSION = "diffusion", "Image diffusion (DICOM)"
    SPEECH = "speech", "Clinical speech"
    MOLECULES = "molecules", "Molecules and proteins"


class DisclosurePolicy(models.Model):
    """One version of the disclosure rules. The newest version is in force; old ones are kept."""

    version = models.PositiveIntegerField(unique=True)
    min_patients = models.PositiveIntegerField(default=100)
    rounding_base = models.PositiveIntegerField(default=5)
    suppression_limit = models.PositiveIntegerField(default=10)
    differencing_minimum = models.PositiveIntegerField(default=10)
    holdout_fraction = models.FloatField(default=0.2)
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-version"]
        verbose_name_plural = "disclosure policies"
        constraints = [
            models.CheckConstraint(condition=Q(holdout_fraction__gt=0, holdout_fraction__lt=0.5), name="holdout_fraction_range"),
            models.CheckConstraint(condition=Q(rounding_base__gte=1), name="rounding_base_positive"),
        ]

    def __str__(self) -> str:
        return f"Disclosure policy v{self.version}"


class Project(models.Model):
    title = models.CharField(max_length=200)
    lay_summary = models.TextField()
    principal_investigator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="led_projects")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="projects", blank=True)
    sponsor = models.ForeignKey("portal.Organisation", null=True, blank=True, on_delete=models.PROTECT, related_name="sponsored_projects")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title

    def is_member(self, user) -> bool:
        return user.pk == self.principal_investigator_id or self.members.filter(pk=user.pk).exists()


class Dataset(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    title = models.CharField(max_length=200)
    modality = models.CharField(max_length=20, choices=Modality.choices)
    description = models.TextField(blank=True)
    steward = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="stewarded_datasets")
    location = models.CharField(max_length=300, help_text="Where the data lives inside the hospital.")
    min_patients = models.PositiveIntegerField(null=True, blank=True, help_text="Stricter than policy only.")
    privacy_budget_epsilon = models.FloatField(
        null=True, blank=True,
        help_text="Most total ε (per patient) of adapters released from this dataset within the period; "
                  "empty: no budget (and then no DP is required).")
    privacy_budget_period_days = models.PositiveIntegerField(default=365)
    pseudonym_salt = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.title

    @property
    def storage_dir(self):
        return settings.DATA_ROOT / "datasets" / self.name


class Patient(models.Model):
    """A pseudonymous patient of one dataset. Direct identifiers sit apart, for the egress scan."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="patients")
    key = models.CharField(max_length=32)
    sex = models.CharField(max_length=10)
    birth_year = models.PositiveSmallIntegerField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dataset", "key"], name="unique_patient_key")]

    def __str__(self) -> str:
        return self.key


class DirectIdentifier(models.Model):
    """Never shown, never exported: only read by the egress identifier scan."""

    class Kind(models.TextChoices):
        SOURCE_ID = "source_id", "Source patient id"
        MRN = "mrn", "Medical record number"
        NAME = "name", "Name"
        BIRTH_DATE = "birth_date", "Date of birth"
        PHONE = "phone", "Phone"
        NATIONAL_ID = "national_id", "National id"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="identifiers")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    value = models.CharField(max_length=200)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["patient", "kind", "value"], name="unique_identifier")]


class Record(models.Model):
    """One row of a dataset's record index; the file behind it stays in the hospital."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="records")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="records")
    source_id = models.CharField(max_length=100)
    record_date = models.DateField()
    age = models.PositiveSmallIntegerField()
    sex = models.CharField(max_length=10)
    document_type = models.CharField(max_length=40)
    file_path = models.CharField(max_length=300, help_text="Relative to the dataset's storage folder.")
    sha256 = models.CharField(max_length=64)
    attributes = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dataset", "source_id"], name="unique_record_source")]
        indexes = [
            # Covering (…, patient): counting distinct patients by age never reads the table.
            models.Index(fields=["dataset", "age", "patient"]),
            models.Index(fields=["dataset", "record_date"]),
            models.Index(fields=["dataset", "document_type"]),
            models.Index(fields=["dataset", "sex"]),
        ]

    def __str__(self) -> str:
        return self.source_id


class RecordCondition(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    record = models.ForeignKey(Record, on_delete=models.CASCADE, related_name="conditions")
    system = models.CharField(max_length=10, choices=[(s, s) for s in CONDITION_SYSTEMS])
    code = models.CharField(max_length=20)

    class Meta:
        indexes = [models.Index(fields=["dataset", "system", "code"])]
        constraints = [models.UniqueConstraint(fields=["record", "system", "code"], name="unique_record_condition")]


class EthicsApproval(models.Model):
    class Status(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        VERIFIED = "verified", "Verified"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="ethics_approvals")
    committee = models.CharField(max_length=200)
    reference = models.CharField(max_length=100)
    approved_on = models.DateField()
    expires_on = models.DateField()
    scope = models.TextField()
    letter_path = models.CharField(max_length=300)
    letter_sha256 = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.SUBMITTED)
    submitted_at = models.DateTimeField(default=timezone.now)
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decision_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-submitted_at"]
        constraints = [
            decision_pair("decided", "ethics_decided_pair"),
            models.CheckConstraint(condition=Q(expires_on__gt=models.F("approved_on")), name="ethics_dates_ordered"),
        ]

    def __str__(self) -> str:
        return f"{self.committee} {self.reference}"

    def is_valid_on(self, day) -> bool:
        return self.status == self.Status.VERIFIED and self.approved_on <= day <= self.expires_on


class DataAccessRequest(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SUBMITTED = "submitted", "Submitted"
        IN_REVIEW = "in_review", "In review"
        CHANGES_REQUESTED = "changes_requested", "Changes requested"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"
        WITHDRAWN = "withdrawn", "Withdrawn"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="requests")
    datasets = models.ManyToManyField(Dataset, related_name="requests")
    ethics_approval = models.ForeignKey(EthicsApproval, null=True, blank=True, on_delete=models.PROTECT, related_name="requests")
    title = models.CharField(max_length=200)
    purpose = models.TextField()
    modality = models.CharField(max_length=20, choices=Modality.choices, default=Modality.TEXT)
    cohort_definition = models.JSONField(default=dict)
    base_model_name = models.CharField(max_length=100)
    recipe = models.JSONField(default=dict)
    requested_epsilon = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)

    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="created_requests")
    submitted_at = models.DateTimeField(null=True, blank=True)
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decision_conditions = models.TextField(blank=True)
    decision_reason = models.TextField(blank=True)
    decision_policy = models.ForeignKey(DisclosurePolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    suspended_reason = models.TextField(blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            decision_pair("submitted", "request_submitted_pair"),
            decision_pair("reviewed", "request_reviewed_pair"),
            decision_pair("decided", "request_decided_pair"),
        ]

    def __str__(self) -> str:
        return self.title


class PrivacyBudgetEntry(models.Model):
    """One line of a dataset's privacy ledger (basic composition: ε adds up).

    A *reservation* is made when a DP request is approved (its requested ε) and stays until the
    request's first adapter is released (then it is settled by the *spend*) or the request is
    closed. A *spend* records the ε the accountant reported for a released adapter, once per
    adapter however many sponsors receive it (post-processing costs nothing). Entries are never
    deleted or refunded; revoking a release does not un-disclose what was downloaded.
    """

    class Kind(models.TextChoices):
        RESERVATION = "reservation", "Reservation (approved request)"
        SPEND = "spend", "Spend (released adapter)"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="privacy_ledger")
    request = models.ForeignKey(DataAccessRequest, on_delete=models.PROTECT, related_name="privacy_ledger")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    epsilon = models.FloatField()
    delta = models.FloatField(null=True, blank=True)
    reference = models.CharField(max_length=64, blank=True, help_text="Spends: the released adapter's id.")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    closed_at = models.DateTimeField(null=True, blank=True, help_text="Reservations: when settled by a spend or freed.")
    closed_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(epsilon__gt=0), name="ledger_epsilon_positive"),
            models.UniqueConstraint(fields=["dataset", "reference"], condition=Q(kind="spend"), name="ledger_one_spend_per_adapter"),
            models.UniqueConstraint(fields=["dataset", "request"], condition=Q(kind="reservation"),
                                    name="ledger_one_reservation_per_request"),
        ]
        indexes = [models.Index(fields=["dataset", "kind", "created_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ε={self.epsilon:g} on {self.dataset}"


class Cohort(models.Model):
    """The frozen cohort of an approved request: exactly which records, split by patient."""

    request = models.OneToOneField(DataAccessRequest, on_delete=models.PROTECT, related_name="cohort")
    definition = models.JSONField()
    definition_hash = models.CharField(max_length=64)
    record_count = models.PositiveIntegerField()
    patient_count = models.PositiveIntegerField()
    holdout_fraction = models.FloatField()
    split_seed = models.BigIntegerField()
    policy = models.ForeignKey(DisclosurePolicy, on_delete=models.PROTECT, related_name="+")
    frozen_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Cohort of {self.request}"


class CohortRecord(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        HOLDOUT = "holdout", "Holdout"

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="members")
    record = models.ForeignKey(Record, on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    split = models.CharField(max_length=10, choices=Split.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cohort", "record"], name="unique_cohort_record")]
        indexes = [models.Index(fields=["cohort", "split"])]


DOCUMENT_TYPE_CHOICES = [(t, t.replace("_", " ")) for t in DOCUMENT_TYPES]
