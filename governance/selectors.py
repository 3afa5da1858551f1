"""Reads shared by the pages and the API. Each list is a constant number of queries."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet

from governance.models import DataAccessRequest, Dataset, EthicsApproval, Project
from governance.workflow import REQUEST_OPEN_STATES
from portal.models import Role, User

R = DataAccessRequest.Status


def _sees_everything(user: User) -> bool:
    return bool(user.role_names - {Role.RESEARCHER, Role.SPONSOR})


def projects_for(user: User) -> QuerySet[Project]:
    queryset = Project.objects.select_related("principal_investigator", "sponsor").prefetch_related("members")
    if not _sees_everything(user):
        queryset = queryset.filter(Q(members=user) | Q(principal_investigator=user)).distinct()
    return queryset.order_by("-created_at")


def requests_for(user: User, *, status: str | None = None, project: Project | None = None) -> QuerySet[DataAccessRequest]:
    queryset = DataAccessRequest.objects.select_related(
        "project", "created_by", "ethics_approval", "decided_by"
    ).prefetch_related(Prefetch("datasets", queryset=Dataset.objects.only("id", "name", "title", "modality")))
    if not _sees_everything(user):
        queryset = queryset.filter(Q(project__members=user) | Q(project__principal_investigator=user)).distinct()
    if status:
        queryset = queryset.filter(status=status)
    if project is not None:
        queryset = queryset.filter(project=project)
    return queryset.order_by("-created_at")


def request_queue(user: User, *, status: str | None = None, modality: str | None = None) -> QuerySet[DataAccessRequest]:
    """What an officer may decide on: submitted or in review, excluding their own projects."""
    queryset = requests_for(user).filter(status__in=[R.SUBMITTED, R.IN_REVIEW])
    queryset = queryset.exclude(project__members=user).exclude(project__principal_investigator=user).exclude(created_by=user)
    if status:
        queryset = queryset.filter(status=status)
    if modality:
        queryset = queryset.filter(modality=modality)
    return queryset.order_by("submitted_at")


def ethics_for(user: User, *, status: str | None = None) -> QuerySet[EthicsApproval]:
    queryset = EthicsApproval.objects.select_related("project", "submitted_by", "decided_by")
    if not _sees_everything(user):
        queryset = queryset.filter(Q(project__members=user) | Q(project__principal_investigator=user)).distinct()
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by("-submitted_at")


def ethics_queue(user: User) -> QuerySet[EthicsApproval]:
    return ethics_for(user, status=EthicsApproval.Status.SUBMITTED).exclude(submitted_by=user).exclude(
        project__members=user
    )


def datasets_visible(user: User) -> QuerySet[Dataset]:
    return Dataset.objects.select_related("steward").annotate(record_total=Count("records", distinct=True)).order_by("name")


def open_requests_count(user: User) -> int:
    return requests_for(user).filter(status__in=REQUEST_OPEN_STATES).count()
