"""Factories and named personas: an officer, a researcher, a steward, two reviewers, a sponsor, an outsider."""

from __future__ import annotations

import itertools

import pyotp

from portal import services
from portal.models import Organisation, Role, User

PASSWORD = "correct-horse-battery-staple"
_counter = itertools.count(1)


def organisation(name: str | None = None, kind: str = Organisation.Kind.HOSPITAL) -> Organisation:
    return services.organisation_create(name=name or f"Org {next(_counter)}", kind=kind)


def user(*roles: str, email: str | None = None, org: Organisation | None = None, totp: bool | None = None) -> User:
    n = next(_counter)
    created = services.user_create(
        email=email or f"person{n}@example.org",
        full_name=f"Person {n}",
        password=PASSWORD,
        organisation=org,
        roles=list(roles),
    )
    if totp if totp is not None else created.requires_two_factor:
        services.totp_set_secret(user=created, secret=pyotp.random_base32(), by=None)
    return created


def totp_code(user: User) -> str:
    return pyotp.TOTP(user.totp_secret).now()


def researcher(**kw) -> User:
    return user(Role.RESEARCHER, **kw)


def officer(**kw) -> User:
    return user(Role.GOVERNANCE_OFFICER, **kw)


def steward(**kw) -> User:
    return user(Role.DATA_STEWARD, **kw)


def reviewer(**kw) -> User:
    return user(Role.PRIVACY_REVIEWER, **kw)


def sponsor(org: Organisation | None = None, **kw) -> User:
    return user(Role.SPONSOR, org=org or organisation(kind=Organisation.Kind.SPONSOR), **kw)


def outsider(**kw) -> User:
    return user(**kw)
