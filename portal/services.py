"""Writes for people, roles, second factors and sponsor tokens. Each writes its audit event."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import pyotp
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portal import permissions
from portal.audit import record_event
from portal.models import ApiToken, Organisation, Role, RoleAssignment, User

TOKEN_PREFIX = "rpt_"
TOTP_ISSUER = "Rapha"


def organisation_create(*, name: str, kind: str, parent: Organisation | None = None, by: User | None = None) -> Organisation:
    if kind not in Organisation.Kind.values:
        raise ValidationError({"kind": f"Unknown organisation kind {kind!r}."})
    with transaction.atomic():
        organisation, created = Organisation.objects.get_or_create(name=name, defaults={"kind": kind, "parent": parent})
        if created:
            record_event(actor=by, verb="organisation.created", target=organisation, payload={"kind": kind})
    return organisation


def user_create(
    *,
    email: str,
    full_name: str,
    password: str | None,
    organisation: Organisation | None = None,
    roles: list[str] | tuple[str, ...] = (),
    by: User | None = None,
) -> User:
    unknown = [role for role in roles if role not in Role.values]
    if unknown:
        raise ValidationError({"roles": f"Unknown role(s): {', '.join(unknown)}."})
    email = email.strip().lower()
    with transaction.atomic():
        if User.objects.filter(email=email).exists():
            raise ValidationError({"email": "A user with this e-mail address already exists."})
        user = User.objects.create_user(email=email, password=password, full_name=full_name, organisation=organisation)
        record_event(actor=by, verb="user.created", target=user, payload={"email": email})
        for role in roles:
            role_grant(user=user, role=role, by=by)
    return user


def role_grant(*, user: User, role: str, by: User | None) -> RoleAssignment:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    with transaction.atomic():
        assignment, created = RoleAssignment.objects.get_or_create(user=user, role=role, defaults={"granted_by": by})
        if created:
            record_event(actor=by, verb="role.granted", target=user, payload={"role": role})
        user.__dict__.pop("_role_names", None)
    return assignment


def user_set_password(*, user: User, password: str, by: User | None) -> None:
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        record_event(actor=by, verb="user.password_set", target=user)


# Two-factor authentication (TOTP, RFC 6238).

def totp_begin_enrolment(*, user: User) -> str:
    """Give the user a fresh, unconfirmed secret; it protects nothing until confirmed."""
    if user.has_two_factor:
        raise ValidationError("Two-factor authentication is already set up for this account.")
    with transaction.atomic():
        user.totp_secret = pyotp.random_base32()
        user.save(update_fields=["totp_secret"])
        record_event(actor=user, verb="totp.enrolment_started", target=user)
    return user.totp_secret


def totp_provisioning_uri(user: User) -> str:
    return pyotp.TOTP(user.totp_secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)


def totp_verify(*, user: User, code: str) -> bool:
    """Check a code, allowing one step of clock drift and refusing a code already used."""
    code = (code or "").strip().replace(" ", "")
    if not user.totp_secret or not code.isdigit() or len(code) != 6:
        return False
    totp = pyotp.TOTP(user.totp_secret)
    now = timezone.now()
    counter = int(now.timestamp()) // totp.interval
    for candidate in (counter, counter - 1, counter + 1):
        if candidate > user.totp_last_counter and secrets.compare_digest(totp.generate_otp(candidate), code):
            with transaction.atomic():
                # Compare-and-set: two requests with the same code cannot both succeed.
                used = User.objects.filter(pk=user.pk, totp_last_counter__lt=candidate).update(
                    totp_last_counter=candidate
                )
                if not used:
                    return False
                user.totp_last_counter = candidate
                if user.totp_confirmed_at is None:
                    user.totp_confirmed_at = now
                    user.save(update_fields=["totp_confirmed_at"])
                    record_event(actor=user, verb="totp.enrolled", target=user)
            return True
    return False


def totp_set_secret(*, user: User, secret: str, by: User | None) -> None:
    """For seeding demo accounts: set and confirm a known secret (printed by the seed command)."""
    with transaction.atomic():
        user.totp_secret = secret
        user.totp_confirmed_at = timezone.now()
        user.save(update_fields=["totp_secret", "totp_confirmed_at"])
        record_event(actor=by, verb="totp.enrolled", target=user, payload={"seeded": True})


# Sponsor API tokens.

def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_issue(
    *,
    user: User,
    name: str,
    by: User,
    days_valid: int = 90,
    scopes: list[str] | None = None,
) -> tuple[ApiToken, str]:
    """Issue a token to a sponsor user; returns the row and the raw token, shown exactly once."""
    permissions.check_permission(by, permissions.TOKEN_ISSUE)
    if not user.has_role(Role.SPONSOR) or user.organisation is None:
        raise ValidationError("Tokens are issued to sponsor users who belong to an organisation.")
    if not 1 <= days_valid <= 365:
        raise ValidationError({"days_valid": "A token is valid for 1 to 365 days."})
    scopes = scopes or [ApiToken.Scope.RELEASES_READ, ApiToken.Scope.RELEASES_DOWNLOAD]
    if any(scope not in ApiToken.Scope.values for scope in scopes):
        raise ValidationError({"scopes": "Unknown scope."})
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            name=name,
            user=user,
            organisation=user.organisation,
            prefix=raw[: len(TOKEN_PREFIX) + 6],
            token_hash=hash_token(raw),
            scopes=list(scopes),
            created_by=by,
            expires_at=timezone.now() + timedelta(days=days_valid),
        )
        record_event(
            actor=by,
            verb="api_token.issued",
            target=token,
            payload={"user": user.email, "organisation": user.organisation.name, "scopes": scopes, "days": days_valid},
        )
    return token, raw


def api_token_revoke(*, token: ApiToken, by: User) -> ApiToken:
    permissions.check_permission(by, permissions.TOKEN_ISSUE)
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.revoked_by = by
        token.save(update_fields=["revoked_at", "revoked_by"])
        record_event(actor=by, verb="api_token.revoked", target=token)
    return token


def api_token_authenticate(raw: str) -> ApiToken | None:
    if not raw.startswith(TOKEN_PREFIX):
        return None
    token = ApiToken.objects.select_related("user", "organisation").filter(token_hash=hash_token(raw)).first()
    if token is None:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token

