"""Named permissions mapped to roles, checked by one function for views and the API alike.

A permission may also carry a context rule (registered by the app that owns the object):
`has_permission(user, REQUEST_DECIDE, request=r)` asks both "is the user an officer?" and
"is this not their own request?". Context rules live with their apps so portal stays at the root.
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from portal.models import Role, User

# Portal
AUDIT_VIEW = "audit.view"
TOKEN_ISSUE = "tokens.issue"
# Governance
PROJECT_CREATE = "projects.create"
PROJECT_VIEW = "projects.view"
DATASET_MANAGE = "datasets.manage"
DATASET_VIEW = "datasets.view"
ETHICS_SUBMIT = "ethics.submit"
ETHICS_DECIDE = "ethics.decide"
REQUEST_CREATE = "requests.create"
REQUEST_VIEW = "requests.view"
REQUEST_EDIT = "requests.edit"
REQUEST_DECIDE = "requests.decide"
REQUEST_SUSPEND = "requests.suspend"
POLICY_EDIT = "policy.edit"
# Training
BASE_MODEL_MANAGE = "base_models.manage"
BASE_MODEL_VIEW = "base_models.view"
JOB_START = "jobs.start"
JOB_VIEW = "jobs.view"
JOB_CANCEL = "jobs.cancel"
JOB_VIEW_LOGS = "jobs.view_logs"
# Egress
ADAPTER_VIEW = "adapters.view"
ADAPTER_REVIEW = "adapters.review"
RELEASE_CREATE = "releases.create"
RELEASE_REVOKE = "releases.revoke"
RELEASE_VIEW = "releases.view"
RELEASE_DOWNLOAD = "releases.download"

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.RESEARCHER: frozenset(
        {PROJECT_CREATE, PROJECT_VIEW, DATASET_VIEW, BASE_MODEL_VIEW, ETHICS_SUBMIT, REQUEST_CREATE,
         REQUEST_VIEW, REQUEST_EDIT, JOB_START, JOB_VIEW, JOB_CANCEL, ADAPTER_VIEW}
    ),
    Role.GOVERNANCE_OFFICER: frozenset(
        {PROJECT_VIEW, DATASET_VIEW, BASE_MODEL_VIEW, ETHICS_DECIDE, REQUEST_VIEW, REQUEST_DECIDE,
         REQUEST_SUSPEND, POLICY_EDIT, JOB_VIEW, JOB_CANCEL, JOB_VIEW_LOGS, ADAPTER_VIEW, RELEASE_CREATE,
         RELEASE_REVOKE, RELEASE_VIEW, TOKEN_ISSUE, AUDIT_VIEW}
    ),
    Role.DATA_STEWARD: frozenset(
        {DATASET_MANAGE, DATASET_VIEW, BASE_MODEL_MANAGE, BASE_MODEL_VIEW, JOB_VIEW, JOB_VIEW_LOGS, AUDIT_VIEW}
    ),
    Role.PRIVACY_REVIEWER: frozenset(
        {PROJECT_VIEW, DATASET_VIEW, BASE_MODEL_VIEW, REQUEST_VIEW, JOB_VIEW, JOB_VIEW_LOGS, ADAPTER_VIEW,
         ADAPTER_REVIEW, RELEASE_VIEW, AUDIT_VIEW}
    ),
    Role.SPONSOR: frozenset({RELEASE_VIEW, RELEASE_DOWNLOAD}),
}

ALL_PERMISSIONS = frozenset().union(*ROLE_PERMISSIONS.values())

ContextRule = Callable[..., str | None]
_CONTEXT_RULES: dict[str, list[ContextRule]] = {}


def context_rule(*permissions: str) -> Callable[[ContextRule], ContextRule]:
    """Register a rule `(user, **context) -> reason or None` that must also pass for a permission."""

    def register(rule: ContextRule) -> ContextRule:
        for permission in permissions:
            if permission not in ALL_PERMISSIONS:
                raise ValueError(f"Unknown permission {permission!r}")
            _CONTEXT_RULES.setdefault(permission, []).append(rule)
        return rule

    return register


def denial_reason(user: User | None, permission: str, **context: Any) -> str | None:
    """Why `user` may not use `permission` here, or None when they may."""
    if permission not in ALL_PERMISSIONS:
        raise ValueError(f"Unknown permission {permission!r}")
    if user is None or not user.is_authenticated or not user.is_active:
        return "You need to sign in."
    if not any(permission in ROLE_PERMISSIONS[role] for role in user.role_names):
        return "Your role does not allow this."
    for rule in _CONTEXT_RULES.get(permission, []):
        reason = rule(user, **context)
        if reason:
            return reason
    return None


def has_permission(user: User | None, permission: str, **context: Any) -> bool:
    return denial_reason(user, permission, **context) is None


def check_permission(user: User | None, permission: str, **context: Any) -> None:
    reason = denial_reason(user, permission, **context)
    if reason:
        raise PermissionDenied(reason)


def permission_required(permission: str) -> Callable:
    """View decorator: role-level check (context checks happen in the view or service)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            check_permission(request.user, permission)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
