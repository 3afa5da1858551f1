"""The role dashboards: the one place that gathers every app's selectors (the portal's root)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count
from django.urls import reverse

from egress import selectors as egress_selectors
from governance import selectors as governance_selectors
from portal.models import Role, User

DASHBOARD_ROWS = 8


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
    projects = list(governance_selectors.projects_for(user)[:DASHBOARD_ROWS])
    requests = list(governance_selectors.requests_for(user)[:DASHBOARD_ROWS]) if projects else []
    items = [
        Item(pr.title, reverse("governance:project_detail", args=[pr.pk]), "",
             f"Project · {len(pr.members.all())} member{'s' if len(pr.members.all()) != 1 else ''}")
        for pr in projects
    ] + [
        Item(r.title, reverse("governance:request_detail", args=[r.pk]), r.status,
             f"Request · {r.project.title} · {r.get_modality_display()}")
        for r in requests
    ]
    return Section(
        Role.RESEARCHER,
        "Your projects and requests",
        "You have no projects yet. Start by creating a project, then ask for access to a dataset.",
        items=items,
        actions=[("New project", reverse("governance:project_create")), ("New request", reverse("governance:request_create"))],
    )


def _officer(user: User) -> Section:
    queue = governance_selectors.request_queue(user)
    approvals = governance_selectors.ethics_queue(user)
    request_count, approval_count = queue.count(), approvals.count()
    items = [
        Item(r.title, reverse("governance:request_detail", args=[r.pk]), r.status,
             f"Request · {r.project.title} · submitted {r.submitted_at.day} {r.submitted_at:%b %Y}")
        for r in queue[:DASHBOARD_ROWS]
    ] + [
        Item(f"{a.committee} {a.reference}", reverse("governance:ethics_detail", args=[a.pk]), a.status,
             f"Ethics approval · {a.project.title}")
        for a in approvals[:DASHBOARD_ROWS]
    ]
    return Section(
        Role.GOVERNANCE_OFFICER,
        "Waiting for a governance decision",
        "Nothing is waiting for you. Submitted requests and ethics approvals will appear here.",
        items=items,
        actions=[(f"Review queue: {request_count} request{'s' if request_count != 1 else ''}, "
                  f"{approval_count} ethics approval{'s' if approval_count != 1 else ''}",
                  reverse("governance:review_queue"))],
    )


def _steward(user: User) -> Section:
    datasets = governance_selectors.datasets_visible(user)[:DASHBOARD_ROWS * 2]
    return Section(
        Role.DATA_STEWARD,
        "Datasets and base models",
        "No datasets are registered. Import a FHIR export or generate the synthetic hospital.",
        items=[Item(d.title, reverse("governance:dataset_detail", args=[d.name]), "",
                    f"{d.get_modality_display()} · {d.record_total} records") for d in datasets],
        actions=[("All datasets", reverse("governance:dataset_list"))],
    )


def _reviewer(user: User) -> Section:
    queue = list(egress_selectors.review_queue(user).select_related("job__request")
                 .annotate(signoff_count=Count("signoffs"))[:DASHBOARD_ROWS])
    return Section(
        Role.PRIVACY_REVIEWER,
        "Adapters waiting for privacy sign-off",
        "No adapter is waiting for review. Validated and audited adapters will appear here.",
        items=[Item(a.job.request.title, reverse("egress:adapter_detail", args=[a.pk]), a.status,
                    f"{a.signoff_count} of 2 sign-offs · waiting since {a.created_at:%d %b %Y}") for a in queue],
        actions=[("All adapters", reverse("egress:adapter_list"))],
    )


def _sponsor(user: User) -> Section:
    releases = list(egress_selectors.releases_for(user)[:DASHBOARD_ROWS])
    return Section(
        Role.SPONSOR,
        "Adapters released to your organisation",
        "Nothing has been released to your organisation yet.",
        items=[Item(r.adapter.job.request.title, reverse("egress:release_detail", args=[r.pk]),
                    "revoked" if r.is_revoked else "released", f"Released {r.created_at:%d %b %Y}") for r in releases],
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
