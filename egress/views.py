"""Egress pages: adapters (the review page with its validation, audit and charts; sign-off; release),
releases (terms, download, revocation). Every write is one service call; the page says why not."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from egress import selectors, services
from egress.charts import line_svg, roc_svg
from egress.forms import AdapterFilterForm, ReasonForm, ReleaseForm, SignOffForm
from egress.models import Adapter, Release, TermsAcceptance
from portal import permissions as p
from portal.models import Role, User
from training.views import query_without_page, recipe_rows

A = Adapter.Status
PAGE_SIZE = 50


def visible_adapter(user: User, pk) -> Adapter:
    """The adapter, or 404 for one the user may not see (as for one that does not exist)."""
    adapter = get_object_or_404(
        selectors.adapters_for(user).select_related("job__request__cohort", "job__created_by", "audit_policy"), pk=pk)
    if not p.has_permission(user, p.ADAPTER_VIEW, adapter=adapter):
        raise Http404("No such adapter.")
    return adapter


def visible_release(user: User, pk) -> Release:
    release = get_object_or_404(selectors.releases_for(user), pk=pk)
    if not p.has_permission(user, p.RELEASE_VIEW, release=release):
        raise Http404("No such release.")
    return release


# Adapters ----------------------------------------------------------------------------------------

@p.permission_required(p.ADAPTER_VIEW)
def adapter_list(request):
    user = request.user
    filters = AdapterFilterForm(request.GET or None)
    status = filters.cleaned_data["status"] if filters.is_valid() else None
    queue = list(selectors.review_queue(user)) if p.has_permission(user, p.ADAPTER_REVIEW) else None
    page = Paginator(selectors.adapters_for(user, status=status or None), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "egress/adapter_list.html", {
        "queue": queue, "page": page, "adapters": page.object_list, "filters": filters,
        "staff": selectors.is_hospital_staff(user),
        "query": query_without_page(request),
    })


def _adapter_page(request, adapter: Adapter, *, status: int = 200, errors=(), signoff_form=None, release_form=None):
    user = request.user
    job = adapter.job
    staff = selectors.is_hospital_staff(user)
    report = adapter.audit_report or {}
    attacks = selectors.attack_rows(report)
    refusal = services.signoff_refusal(adapter, user) if p.has_permission(user, p.ADAPTER_REVIEW) else None
    context = {
        "adapter": adapter,
        "job": job,
        "access_request": job.request,
        "staff": staff,
        "rejection": selectors.rejection_text(adapter, staff=staff),
        "validation_summary": selectors.validation_summary(adapter),
        "verdicts": [{**verdict, "label": verdict["rule"].replace("_", " ").capitalize().replace("json", "JSON")}
                     for verdict in adapter.validation_report.get("verdicts", [])] if staff else None,
        "gates": selectors.gate_rows(report),
        "policy_version": report.get("policy_version"),
        "attacks": attacks,
        "canaries": selectors.canary_rows(report),
        "extraction": (report.get("metrics") or {}).get("extraction"),
        "roc_chart": roc_svg({row["label"]: row["roc"] for row in attacks}) if attacks else None,
        "loss_chart": line_svg(job.loss_curve),
        "cohort": selectors.cohort_display(adapter),
        "recipe": recipe_rows({k: v for k, v in job.recipe.items() if k != "dp"}),
        "dp": selectors.dp_facts(adapter),
        "signoffs": list(adapter.signoffs.select_related("reviewer").order_by("created_at")),
        "required_approvals": services.REQUIRED_APPROVALS,
        "can_signoff": adapter.status == A.IN_REVIEW and p.has_permission(user, p.ADAPTER_REVIEW) and refusal is None,
        "signoff_refusal": refusal if adapter.status == A.IN_REVIEW else None,
        "signoff_form": signoff_form or SignOffForm(),
        "can_release": adapter.status == A.APPROVED and p.has_permission(user, p.RELEASE_CREATE),
        "release_form": release_form or ReleaseForm(),
        "releases": list(adapter.releases.select_related("organisation").order_by("created_at")) if staff else [],
        "errors": errors,
    }
    return render(request, "egress/adapter_detail.html", context, status=status)


@p.permission_required(p.ADAPTER_VIEW)
def adapter_detail(request, pk):
    return _adapter_page(request, visible_adapter(request.user, pk))


@require_POST
@p.permission_required(p.ADAPTER_REVIEW)
def adapter_signoff(request, pk):
    adapter = visible_adapter(request.user, pk)
    form = SignOffForm(request.POST)
    if form.is_valid():
        try:
            services.signoff_record(adapter=adapter, by=request.user, decision=form.cleaned_data["decision"],
                                    reason=form.cleaned_data["reason"])
        except ValidationError as exc:
            return _adapter_page(request, adapter, status=400, errors=exc.messages, signoff_form=form)
        adapter.refresh_from_db()
        if adapter.status == A.APPROVED:
            messages.success(request, "Signed off. With a second reviewer's approval the adapter is approved for release.")
        elif adapter.status == A.REJECTED:
            messages.success(request, "Rejected. The adapter will never be released; the researchers see your reason.")
        else:
            messages.success(request, "Signed off. A second privacy reviewer must also decide.")
        return redirect("egress:adapter_detail", pk=adapter.pk)
    return _adapter_page(request, adapter, status=400, signoff_form=form)


@require_POST
@p.permission_required(p.RELEASE_CREATE)
def adapter_release(request, pk):
    adapter = visible_adapter(request.user, pk)
    form = ReleaseForm(request.POST)
    if form.is_valid():
        try:
            release = services.release_create(adapter=adapter, organisation=form.cleaned_data["organisation"],
                                              by=request.user, terms=form.cleaned_data["terms"])
        except ValidationError as exc:
            return _adapter_page(request, adapter, status=400, errors=exc.messages, release_form=form)
        messages.success(request, f"Released to {release.organisation.name}, signed. The sponsor can now accept the terms and download it.")
        return redirect("egress:release_detail", pk=release.pk)
    return _adapter_page(request, adapter, status=400, release_form=form)


# Releases ----------------------------------------------------------------------------------------

@p.permission_required(p.RELEASE_VIEW)
def release_list(request):
    page = Paginator(selectors.releases_for(request.user), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "egress/release_list.html", {
        "page": page, "releases": page.object_list, "query": "",
        "sponsor": request.user.role_names <= {Role.SPONSOR},
    })


def _release_page(request, release: Release, *, status: int = 200, revoke_form=None):
    user = request.user
    staff = selectors.is_hospital_staff(user)
    acceptance = TermsAcceptance.objects.filter(release=release, user=user, terms_sha256=release.terms_sha256).first()
    may_download = p.has_permission(user, p.RELEASE_DOWNLOAD, release=release) and user.has_role(Role.SPONSOR)
    context = {
        "release": release,
        "manifest": release.manifest,
        "summary": selectors.manifest_summary(release.manifest),
        "files": sorted((release.manifest.get("files") or {}).items()),
        "staff": staff,
        "acceptance": acceptance,
        "can_accept": may_download and not release.is_revoked and acceptance is None,
        "can_download": may_download and not release.is_revoked and acceptance is not None,
        "can_revoke": not release.is_revoked and p.has_permission(user, p.RELEASE_REVOKE),
        "revoke_form": revoke_form or ReasonForm(),
        "downloads": list(release.downloads.select_related("user", "token").order_by("-at")[:50]) if staff else [],
        "acceptances": list(release.acceptances.select_related("user").order_by("accepted_at")) if staff else [],
        "key_fingerprint": selectors.public_key_fingerprint(),
    }
    return render(request, "egress/release_detail.html", context, status=status)


@p.permission_required(p.RELEASE_VIEW)
def release_detail(request, pk):
    return _release_page(request, visible_release(request.user, pk))


@require_POST
@p.permission_required(p.RELEASE_DOWNLOAD)
def release_accept_terms(request, pk):
    release = visible_release(request.user, pk)
    try:
        services.terms_accept(release=release, by=request.user)
    except Release.DoesNotExist:
        raise Http404("No such release.") from None
    messages.success(request, "Terms accepted. You can download the release.")
    return redirect("egress:release_detail", pk=release.pk)


@p.permission_required(p.RELEASE_DOWNLOAD)
def release_download(request, pk):
    """The signed zip as an attachment; the service checks terms and revocation and audits it."""
    # Not `visible_release`: the service decides, and records an attempt on another
    # organisation's release before answering 404 as for one that does not exist.
    release = get_object_or_404(Release, pk=pk)
    try:
        path = services.release_download(release=release, by=request.user, token=None,
                                         address=request.META.get("REMOTE_ADDR"))
    except Release.DoesNotExist:
        raise Http404("No such release.") from None
    return FileResponse(open(path, "rb"), as_attachment=True, filename=f"release-{release.pk}.zip",
                        content_type="application/zip")


@require_POST
@p.permission_required(p.RELEASE_REVOKE)
def release_revoke(request, pk):
    release = visible_release(request.user, pk)
    form = ReasonForm(request.POST)
    if form.is_valid():
        services.release_revoke(release=release, by=request.user, reason=form.cleaned_data["reason"])
        messages.success(request, "Release revoked. The sponsor can no longer download it and sees your reason.")
        return redirect("egress:release_detail", pk=release.pk)
    return _release_page(request, release, status=400, revoke_form=form)
