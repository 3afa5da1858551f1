"""People, organisations, roles, sponsor API tokens and the hash-chained audit log."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Organisation(models.Model):
    class Kind(models.TextChoices):
        HOSPITAL = "hospital", "Hospital"
        DEPARTMENT = "department", "Hospital department"
        SPONSOR = "sponsor", "External sponsor"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    RESEARCHER = "researcher", "Researcher"
    GOVERNANCE_OFFICER = "governance_officer", "Governance officer"
    DATA_STEWARD = "data_steward", "Data steward"
    PRIVACY_REVIEWER = "privacy_reviewer", "Privacy reviewer"
    SPONSOR = "sponsor", "Sponsor"

    @classmethod
    def requiring_two_factor(cls) -> frozenset[str]:
        return frozenset({cls.GOVERNANCE_OFFICER, cls.PRIVACY_REVIEWER})


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields):
        if not email:
            raise ValueError("An e-mail address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields):
        fields.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200)
    organisation = models.ForeignKey(Organisation, null=True, blank=True, on_delete=models.PROTECT, related_name="users")
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    # TOTP second factor. The secret is set at enrolment and only counts once confirmed.
    totp_secret = models.CharField(max_length=64, blank=True)
    totp_confirmed_at = models.DateTimeField(null=True, blank=True)
    totp_last_counter = models.BigIntegerField(default=0)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["full_name"]

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.full_name or self.email

    @property
    def role_names(self) -> frozenset[str]:
        # Cached per instance: permission checks ask many times per request.
        if not hasattr(self, "_role_names"):
            self._role_names = frozenset(self.role_assignments.values_list("role", flat=True))
        return self._role_names

    def has_role(self, role: str) -> bool:
        return role in self.role_names

    @property
    def requires_two_factor(self) -> bool:
        return bool(self.role_names & Role.requiring_two_factor())

    @property
    def has_two_factor(self) -> bool:
        return self.totp_confirmed_at is not None


class RoleAssignment(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="role_assignments")
    role = models.CharField(max_length=32, choices=Role.choices)
    granted_at = models.DateTimeField(default=timezone.now)
    granted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "role"], name="unique_role_per_user")]

    def __str__(self) -> str:
        return f"{self.user} is {self.get_role_display()}"


class ApiToken(models.Model):
    """A sponsor's API token. Only its SHA-256 is stored; the token is shown once at issue."""

    class Scope(models.TextChoices):
        RELEASES_READ = "releases:read", "List and read releases"
        RELEASES_DOWNLOAD = "releases:download", "Accept terms and download releases"

    name = models.CharField(max_length=100)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="api_tokens")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="api_tokens")
    prefix = models.CharField(max_length=12, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(revoked_at__isnull=True, revoked_by__isnull=True)
                | Q(revoked_at__isnull=False, revoked_by__isnull=False),
                name="api_token_revoked_pair",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.expires_at > now


class AuditEvent(models.Model):
    """One link of the tamper-evident chain: `hash` covers `prev_hash` and the event's fields."""

    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    actor_label = models.CharField(max_length=254)
    verb = models.CharField(max_length=80, db_index=True)
    target_type = models.CharField(max_length=80, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["seq"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.verb} {self.target_type}:{self.target_id}"


class AuditChainHead(models.Model):
    """A single row holding the last sequence number and hash; appending locks it.

    Locking one row (rather than reading the table's maximum) serialises writers on PostgreSQL
    and SQLite alike, and lets the verifier notice a deleted tail.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"audit head #{self.seq}"
