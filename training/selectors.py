"""Reads shared by the job pages and the API."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from portal import permissions as p
from portal.models import Role, User
from training.models import BaseModel, TrainingJob

# Researchers never see why a job failed: the reason can quote the container's own output.
GENERIC_FAILURE = ("The job did not complete. Hospital staff can see the technical reason; "
                   "contact the data team if you need help.")


def jobs_for(user: User, *, status: str | None = None, kind: str | None = None) -> QuerySet[TrainingJob]:
    queryset = TrainingJob.objects.select_related("request__project", "base_model", "created_by")
    if not (user.role_names - {Role.RESEARCHER, Role.SPONSOR}):
        queryset = queryset.filter(
            Q(request__project__members=user) | Q(request__project__principal_investigator=user)
        ).distinct()
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset.order_by("-created_at")


def base_models() -> QuerySet[BaseModel]:
    return BaseModel.objects.order_by("name")


def failure_text(user: User, job: TrainingJob) -> str:
    """What this user may read about why a job ended badly ("" when it did not)."""
    if job.status not in (TrainingJob.Status.FAILED, TrainingJob.Status.TIMED_OUT):
        return ""
    if p.has_permission(user, p.JOB_VIEW_LOGS):
        return job.failure_reason or "No reason was recorded."
    return GENERIC_FAILURE
