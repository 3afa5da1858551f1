"""Context permission rules for jobs: researchers see and cancel only their projects' jobs."""

from __future__ import annotations

from portal import permissions as p
from portal.models import Role


@p.context_rule(p.JOB_VIEW, p.JOB_CANCEL)
def project_jobs_only(user, request=None, **_):
    if request is None or not user.role_names <= {Role.RESEARCHER, Role.SPONSOR}:
        return None
    return None if request.project.is_member(user) else "Only the project's members can see or cancel its jobs."
