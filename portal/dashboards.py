"""The role dashboards: the one place that gathers every app's selectors (the portal's root)."""

from __future__ import annotations

from dataclasses import dataclass, field

from portal.models import Role, User


@dataclass
class Item:
    label: str
    url: str = ""
    status: str = ""
    detail: str = ""


@dataclass
class Section:
    role: str
    title: str
    empty: str
    items: list[Item] = field(default_factory=list)
    actions: list[tuple[str, str]] = field(default_factory=list)


def _researcher(user: User) -> Section:
    return Section(
        Role.RESEARCHER,
        "Your projects and requests",
        "You have no projects yet. Start by creating a project, then ask for access to a dataset.",
    )


def _officer(user: User) -> Section:
    return Section(
        Role.GOVERNANCE_OFFICER,
        "Waiting for a governance decision",
        "Nothing is waiting for you. Submitted requests and ethics approvals will appear here.",
    )


def _steward(user: User) -> Section:
    return Section(
        Role.DATA_STEWARD,
        "Datasets and base models",
        "No datasets are registered. Import a FHIR export or generate the synthetic hospital.",
    )


def _reviewer(user: User) -> Section:
    return Section(
        Role.PRIVACY_REVIEWER,
        "Adapters waiting for privacy sign-off",
        "No adapter is waiting for review. Validated and audited adapters will appear here.",
    )


def _sponsor(user: User) -> Section:
    return Section(
        Role.SPONSOR,
        "Adapters released to your organisation",
        "Nothing has been released to your organisation yet.",
    )


SECTION_BUILDERS = {
    Role.RESEARCHER: _researcher,
    Role.GOVERNANCE_OFFICER: _officer,
    Role.DATA_STEWARD: _steward,
    Role.PRIVACY_REVIEWER: _reviewer,
    Role.SPONSOR: _sponsor,
}


def dashboard_sections(user: User) -> list[Section]:
    return [SECTION_BUILDERS[role](user) for role in Role.values if user.has_role(role)]
