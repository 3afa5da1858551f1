"""Context permission rules for adapters and releases."""

from __future__ import annotations

from portal import permissions as p
from portal.models import Role


@p.context_rule(p.ADAPTER_VIEW)
def adapter_visible(user, adapter=None, **_):
    if adapter is None or not user.role_names <= {Role.RESEARCHER, Role.SPONSOR}:
        return None
    return None if adapter.job.request.project.is_member(user) else "Only the project's members can see this adapter."


@p.context_rule(p.RELEASE_VIEW, p.RELEASE_DOWNLOAD)
def release_visible(user, release=None, **_):
    if release is None or not user.role_names <= {Role.SPONSOR}:
        return None
    return None if user.organisation_id == release.organisation_id else "This release is not for your organisation."
