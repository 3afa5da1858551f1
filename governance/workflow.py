"""The state machines of governance, as data: allowed moves and who may make them."""

from __future__ import annotations

from portal import permissions as p

from governance.models import DataAccessRequest, EthicsApproval

R = DataAccessRequest.Status
E = EthicsApproval.Status

REQUEST_OPEN_STATES = frozenset({R.DRAFT, R.SUBMITTED, R.IN_REVIEW, R.CHANGES_REQUESTED})
REQUEST_TERMINAL_STATES = frozenset({R.REJECTED, R.CLOSED, R.WITHDRAWN})

REQUEST_TRANSITIONS: dict[str, frozenset[str]] = {
    R.DRAFT: frozenset({R.SUBMITTED, R.WITHDRAWN}),
    R.SUBMITTED: frozenset({R.IN_REVIEW, R.WITHDRAWN}),
    R.IN_REVIEW: frozenset({R.APPROVED, R.CHANGES_REQUESTED, R.REJECTED, R.WITHDRAWN}),
    R.CHANGES_REQUESTED: frozenset({R.SUBMITTED, R.WITHDRAWN}),
    R.APPROVED: frozenset({R.SUSPENDED, R.CLOSED}),
    R.SUSPENDED: frozenset({R.APPROVED, R.CLOSED}),
    R.REJECTED: frozenset(),
    R.CLOSED: frozenset(),
    R.WITHDRAWN: frozenset(),
}

# The permission needed to move a request INTO each status (context rules add separation of duties).
REQUEST_MOVE_PERMISSION: dict[str, str | None] = {
    R.DRAFT: None,  # created, never moved into
    R.SUBMITTED: p.REQUEST_EDIT,
    R.IN_REVIEW: p.REQUEST_DECIDE,
    R.APPROVED: p.REQUEST_DECIDE,
    R.CHANGES_REQUESTED: p.REQUEST_DECIDE,
    R.REJECTED: p.REQUEST_DECIDE,
    R.WITHDRAWN: p.REQUEST_EDIT,
    R.SUSPENDED: p.REQUEST_SUSPEND,
    R.CLOSED: p.REQUEST_SUSPEND,
}

ETHICS_TRANSITIONS: dict[str, frozenset[str]] = {
    E.SUBMITTED: frozenset({E.VERIFIED, E.REJECTED}),
    E.VERIFIED: frozenset({E.EXPIRED, E.REVOKED}),
    E.REJECTED: frozenset(),
    E.EXPIRED: frozenset(),
    E.REVOKED: frozenset(),
}

ETHICS_MOVE_PERMISSION: dict[str, str | None] = {
    E.SUBMITTED: None,
    E.VERIFIED: p.ETHICS_DECIDE,
    E.REJECTED: p.ETHICS_DECIDE,
    E.EXPIRED: None,  # the system, by date
    E.REVOKED: p.ETHICS_DECIDE,
}
