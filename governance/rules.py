"""Context permission rules for governance objects: who may act on which object.

Registered into `portal.permissions` when the app loads, so views, the API and services all ask
one `has_permission(user, PERM, request=...)` and get the same answer.
"""

from __future__ import annotations

from portal import permissions as p
from portal.models import Role


def _is_member(user, project) -> bool:
    return project.is_member(user)


@p.context_rule(p.PROJECT_VIEW)
def project_visible(user, project=None, **_):
    if project is None or not user.role_names <= {Role.RESEARCHER, Role.SPONSOR}:
        return None
    return None if _is_member(user, project) else "Only the project's members can see it."


@p.context_rule(p.REQUEST_VIEW)
def request_visible(user, request=None, **_):
    if request is None or not user.role_names <= {Role.RESEARCHER, Role.SPONSOR}:
        return None
    return None if _is_member(user, request.project) else "Only the project's members can see this request."


@p.context_rule(p.REQUEST_EDIT, p.REQUEST_CREATE, p.ETHICS_SUBMIT, p.JOB_START)
def project_member_acts(user, project=None, request=None, **_):
    project = project or (request.project if request is not None else None)
    if project is None:
        return None
    return None if _is_member(user, project) else "Only the project's members can do this."


@p.context_rule(p.REQUEST_DECIDE)
def not_own_request(user, request=None, **_):
    if request is None:
        return None
    if user.pk in {request.created_by_id, request.submitted_by_id}:
        return "Nobody decides on a request they created or submitted."
    if _is_member(user, request.project):
        return "Nobody decides on a request from a project they are a member of."
    return None


@p.context_rule(p.ETHICS_DECIDE)
def not_own_ethics(user, approval=None, **_):
    if approval is None:
        return None
    if user.pk == approval.submitted_by_id:
        return "Nobody verifies an ethics approval they submitted."
    if _is_member(user, approval.project):
        return "Nobody verifies an ethics approval for a project they are a member of."
    return None
