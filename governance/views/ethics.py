"""An ethics approval's page, its letter, and the officer's decisions on it."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_POST

from governance import services
from governance.forms import ReasonForm, add_service_errors
from governance.models import EthicsApproval
from governance.views._common import visible_approval
from governance.workflow import ETHICS_TRANSITIONS
from portal import permissions as p
from portal.audit import record_event_now

E = EthicsApproval.Status


def may_open_letter(user, approval: EthicsApproval) -> bool:
    return p.has_permission(user, p.ETHICS_DECIDE) or approval.project.is_member(user)


def _approval_page(request, approval, *, reject_form=None, revoke_form=None, errors=(), status=200):
    user = request.user
    decide_reason = p.denial_reason(user, p.ETHICS_DECIDE, approval=approval) if p.has_permission(user, p.ETHICS_DECIDE) else None
    can_decide = p.has_permission(user, p.ETHICS_DECIDE, approval=approval)
    allowed = ETHICS_TRANSITIONS[approval.status]
    context = {
        "approval": approval,
        "requests": approval.requests.select_related("project").order_by("-created_at"),
        "can_open_letter": may_open_letter(user, approval),
        "can_verify": can_decide and E.VERIFIED in allowed,
        "can_reject": can_decide and E.REJECTED in allowed,
        "can_revoke": can_decide and E.REVOKED in allowed,
        "decide_reason": decide_reason if allowed - {E.EXPIRED} else None,
        "reject_form": reject_form or ReasonForm(prefix="reject"),
        "revoke_form": revoke_form or ReasonForm(prefix="revoke"),
        "errors": errors,
    }
    return render(request, "governance/ethics_detail.html", context, status=status)


@p.permission_required(p.PROJECT_VIEW)
def ethics_detail(request, pk: int):
    return _approval_page(request, visible_approval(request.user, pk))


@p.permission_required(p.PROJECT_VIEW)
def ethics_letter(request, pk: int):
    """The letter, as an attachment, from outside any web root; every opening is audited."""
    approval = visible_approval(request.user, pk)
    if not may_open_letter(request.user, approval):
        raise PermissionDenied("Only governance officers and the project's members can open ethics letters.")
    root = settings.UPLOADS_ROOT.resolve()
    path = (root / approval.letter_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise Http404("The letter file is missing.")
    record_event_now(actor=request.user, verb="ethics.letter_opened", target=approval,
                     payload={"letter_sha256": approval.letter_sha256})
    filename = f"ethics-{slugify(approval.reference) or approval.pk}.pdf"
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename, content_type="application/pdf")


@require_POST
@p.permission_required(p.ETHICS_DECIDE)
def ethics_verify(request, pk: int):
    approval = visible_approval(request.user, pk)
    try:
        services.ethics_verify(approval=approval, by=request.user)
    except ValidationError as exc:
        return _approval_page(request, approval, errors=exc.messages, status=400)
    messages.success(request, f"Ethics approval {approval.reference} verified.")
    return redirect("governance:ethics_detail", pk=approval.pk)


def _decide_with_reason(request, pk: int, *, service, prefix: str, done: str):
    approval = visible_approval(request.user, pk)
    form = ReasonForm(request.POST, prefix=prefix)
    if form.is_valid():
        try:
            service(approval=approval, by=request.user, reason=form.cleaned_data["reason"])
        except ValidationError as exc:
            add_service_errors(exc, form)
        else:
            messages.success(request, f"Ethics approval {approval.reference} {done}.")
            return redirect("governance:ethics_detail", pk=approval.pk)
    return _approval_page(request, approval, status=400, **{f"{prefix}_form": form})


@require_POST
@p.permission_required(p.ETHICS_DECIDE)
def ethics_reject(request, pk: int):
    return _decide_with_reason(request, pk, service=services.ethics_reject, prefix="reject", done="rejected")


@require_POST
@p.permission_required(p.ETHICS_DECIDE)
def ethics_revoke(request, pk: int):
    return _decide_with_reason(
        request, pk, service=services.ethics_revoke, prefix="revoke",
        done="revoked; requests relying on it are suspended",
    )
