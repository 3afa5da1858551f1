"""Reads shared by the job pages and the API."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from portal.models import Role, User
from training.models import BaseModel, TrainingJob


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
