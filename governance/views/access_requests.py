"""Data-access requests: list, create and edit (with the live cohort preview), the request's page,
and every move of its state machine. Each move is one service call; the page shows why not."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from governance import privacy_budget, selectors, services
from governance.forms import (
    ApproveForm,
    CohortForm,
    QueueFilterForm,
    ReasonForm,
    RequestFilterForm,
    RequestForm,
    RECIPE_FIELDS,
    WithdrawForm,
    add_service_errors,
)
from governance.models import Cohort, DataAccessRequest, Dataset
from governance.views._common import cohort_criteria, recipe_rows, shown_count, visible_request
from governance.workflow import REQUEST_OPEN_STATES
from portal import permissions as p
from portal.models import AuditEvent

R = DataAccessRequest.Status
DECIDABLE = (R.SUBMITTED, R.IN_REVIEW)
HISTORY_LABELS = {
    "request.created": "Created as a draft", "request.updated": "Edited", "request.submitted": "Submitted",
    "request.in_review": "Taken into review", "request.approved": "Approved", "request.rejected": "Rejected",
    "request.changes_requested": "Changes requested", "request.withdrawn": "Withdrawn",
    "request.suspended": "Suspended", "request.closed": "Closed",
}


@p.permission_required(p.REQUEST_VIEW)
def request_list(request):
    filters = RequestFilterForm(request.GET or None)
    status = filters.cleaned_data["status"] if filters.is_valid() else None
    return render(request, "governance/request_list.html", {
        "requests": selectors.requests_for(request.user, status=status or None),
        "filters": filters,
        "can_create": p.has_permission(request.user, p.REQUEST_CREATE),
    })


def _error_routes(form: RequestForm, cohort_form: CohortForm) -> dict:
    """Where a service's field errors go: cohort errors to the cohort fields, recipe ones to theirs."""
    routes = {f"recipe.{name}": (form, name) for name in RECIPE_FIELDS}
    routes["cohort_definition"] = (cohort_form, "advanced_json" if cohort_form.uses_json else None)
    return routes


def _form_page(request, form, cohort_form, *, obj=None, status=200):
    return render(request, "governance/request_form.html", {
        "form": form, "cohort_form": cohort_form, "obj": obj,
        "has_projects": obj is not None or form.fields["project"].queryset.exists(),
    }, status=status)


@require_http_methods(["GET", "POST"])
@p.permission_required(p.REQUEST_CREATE)
def request_create(request):
    user = request.user
    if request.method == "GET":
        initial = {}
        if request.GET.get("project", "").isdigit():
            initial["project"] = int(request.GET["project"])
        return _form_page(request, RequestForm(user=user, initial=initial), CohortForm())
    form = RequestForm(request.POST, user=user)
    cohort_form = CohortForm(request.POST)
    if form.is_valid() and cohort_form.is_valid():
        data = form.cleaned_data
        try:
            obj = services.request_create(
                by=user, project=data["project"], datasets=data["datasets"], title=data["title"],
                purpose=data["purpose"], modality=data["modality"], cohort_definition=cohort_form.definition(),
                base_model_name=data["base_model_name"], recipe=form.recipe(),
                ethics_approval=data["ethics_approval"],
            )
        except ValidationError as exc:
            add_service_errors(exc, form, _error_routes(form, cohort_form))
        else:
            messages.success(request, "Request saved as a draft. Check it, then submit it for review.")
            return redirect("governance:request_detail", pk=obj.pk)
    return _form_page(request, form, cohort_form, status=400)


@require_http_methods(["GET", "POST"])
@p.permission_required(p.REQUEST_EDIT)
def request_edit(request, pk: int):
    user = request.user
    obj = visible_request(user, pk)
    p.check_permission(user, p.REQUEST_EDIT, request=obj)
    if obj.status not in services.REQUEST_EDITABLE:
        messages.error(request, f"A request that is {obj.get_status_display().lower()} cannot be edited.")
        return redirect("governance:request_detail", pk=obj.pk)
    if request.method == "GET":
        form = RequestForm(user=user, instance=obj)
        cohort_form = CohortForm(initial=CohortForm.initial_from(obj.cohort_definition))
        return _form_page(request, form, cohort_form, obj=obj)
    form = RequestForm(request.POST, user=user, instance=obj)
    cohort_form = CohortForm(request.POST)
    if form.is_valid() and cohort_form.is_valid():
        data = form.cleaned_data
        try:
            services.request_update(
                request=obj, by=user, title=data["title"], purpose=data["purpose"], datasets=data["datasets"],
                cohort_definition=cohort_form.definition(), base_model_name=data["base_model_name"],
                recipe=form.recipe(obj.recipe), ethics_approval=data["ethics_approval"],
            )
        except ValidationError as exc:
            add_service_errors(exc, form, _error_routes(form, cohort_form))
        else:
            messages.success(request, "Changes saved.")
            return redirect("governance:request_detail", pk=obj.pk)
    return _form_page(request, form, cohort_form, obj=obj, status=400)


@require_POST
@p.permission_required(p.REQUEST_VIEW)
def cohort_preview(request):
    """The live preview fragment: rounded counts for the cohort being edited, or what is wrong."""
    context: dict = {}
    ids = [int(value) for value in request.POST.getlist("datasets") if value.isdigit()]
    datasets = list(Dataset.objects.filter(pk__in=ids).order_by("name"))
    cohort_form = CohortForm(request.POST)
    if not datasets:
        context["hint"] = "Choose at least one dataset to see how many patients the cohort holds."
    elif not cohort_form.is_valid():
        context["form_errors"] = [
            f"{cohort_form.fields[name].label or name}: {message}" if name in cohort_form.fields else message
            for name, messages_ in cohort_form.errors.items() for message in messages_
        ]
    else:
        try:
            context["preview"] = services.cohort_preview(by=request.user, datasets=datasets, definition=cohort_form.definition())
        except ValidationError as exc:
            context["definition_errors"] = [_at_path(message) for message in exc.messages]
    return render(request, "governance/_cohort_preview.html", context)


def _at_path(message: str) -> tuple[str, str]:
    """Split "$.all[0].age: reversed range ..." into the path and the message."""
    path, sep, rest = message.partition(": ")
    return (path, rest) if sep and path.startswith("$") else ("", message)


def _estimate(request, obj: DataAccessRequest, datasets: list) -> dict | None:
    try:
        return services.cohort_preview(by=request.user, datasets=datasets, definition=obj.cohort_definition)
    except ValidationError as exc:
        return {"errors": [_at_path(message) for message in exc.messages]}


def _request_page(request, obj: DataAccessRequest, *, status: int = 200, errors=(), **forms):
    user = request.user
    datasets = list(obj.datasets.all())
    is_officer = p.has_permission(user, p.REQUEST_DECIDE)
    may_edit = p.has_permission(user, p.REQUEST_EDIT, request=obj)
    decidable = obj.status in DECIDABLE
    cohort = Cohort.objects.filter(request=obj).select_related("policy").first()
    context = {
        "obj": obj,
        "datasets": datasets,
        "criteria": cohort_criteria(obj.cohort_definition),
        "recipe": recipe_rows(obj.recipe),
        "can_edit": may_edit and obj.status in services.REQUEST_EDITABLE,
        "can_withdraw": may_edit and obj.status in REQUEST_OPEN_STATES,
        "can_decide": decidable and p.has_permission(user, p.REQUEST_DECIDE, request=obj),
        "can_start_review": obj.status == R.SUBMITTED and p.has_permission(user, p.REQUEST_DECIDE, request=obj),
        "decide_reason": p.denial_reason(user, p.REQUEST_DECIDE, request=obj) if is_officer and decidable else None,
        # Officers see the exact counts inside the checks; everyone else the rounded estimate.
        "checks": services.approval_checks(obj) if is_officer and decidable else None,
        "estimate": None if is_officer or not datasets or obj.status not in REQUEST_OPEN_STATES else _estimate(request, obj, datasets),
        "cohort": cohort,
        "budgets": [privacy_budget.budget_status(d) for d in datasets],
        "requested_dp": privacy_budget.requested_dp(obj),
        "cohort_patients": shown_count(user, cohort.patient_count, cohort.policy) if cohort else None,
        "cohort_records": shown_count(user, cohort.record_count, cohort.policy) if cohort else None,
        "history": [(event, HISTORY_LABELS.get(event.verb, event.verb)) for event in AuditEvent.objects.filter(
            target_type="governance.dataaccessrequest", target_id=str(obj.pk)).select_related("actor").order_by("seq")],
        "approve_form": forms.get("approve_form") or ApproveForm(prefix="approve"),
        "changes_form": forms.get("changes_form") or ReasonForm(prefix="changes"),
        "reject_form": forms.get("reject_form") or ReasonForm(prefix="reject"),
        "withdraw_form": forms.get("withdraw_form") or WithdrawForm(prefix="withdraw"),
        "errors": errors,
    }
    return render(request, "governance/request_detail.html", context, status=status)


@p.permission_required(p.REQUEST_VIEW)
def request_detail(request, pk: int):
    return _request_page(request, visible_request(request.user, pk))


def _move(request, pk: int, *, permission: str, act, done: str, form_class=None, prefix: str = "", field: str = ""):
    """One state-machine move from a button: the service decides; its refusal is shown on the page."""
    obj = visible_request(request.user, pk)
    p.check_permission(request.user, permission, request=obj)
    form = form_class(request.POST, prefix=prefix) if form_class else None
    if form is None or form.is_valid():
        value = {field: form.cleaned_data[field]} if form is not None else {}
        try:
            act(request=obj, by=request.user, **value)
        except ValidationError as exc:
            if form is None:
                return _request_page(request, obj, status=400, errors=exc.messages)
            add_service_errors(exc, form)
        else:
            messages.success(request, done)
            return redirect("governance:request_detail", pk=obj.pk)
    return _request_page(request, obj, status=400, **{f"{prefix}_form": form})


@require_POST
@p.permission_required(p.REQUEST_EDIT)
def request_submit(request, pk: int):
    return _move(request, pk, permission=p.REQUEST_EDIT, act=services.request_submit,
                 done="Request submitted. A governance officer will review it.")


@require_POST
@p.permission_required(p.REQUEST_EDIT)
def request_withdraw(request, pk: int):
    return _move(request, pk, permission=p.REQUEST_EDIT, act=services.request_withdraw, done="Request withdrawn.",
                 form_class=WithdrawForm, prefix="withdraw", field="reason")


def _start_review(*, request: DataAccessRequest, by) -> DataAccessRequest:
    return services.request_transition(request=request, to=R.IN_REVIEW, by=by)


@require_POST
@p.permission_required(p.REQUEST_DECIDE)
def request_start_review(request, pk: int):
    return _move(request, pk, permission=p.REQUEST_DECIDE, act=_start_review,
                 done="You have taken this request into review.")


@require_POST
@p.permission_required(p.REQUEST_DECIDE)
def request_approve(request, pk: int):
    return _move(request, pk, permission=p.REQUEST_DECIDE, act=services.request_approve,
                 done="Request approved; its cohort is frozen.", form_class=ApproveForm, prefix="approve", field="conditions")


@require_POST
@p.permission_required(p.REQUEST_DECIDE)
def request_reject(request, pk: int):
    return _move(request, pk, permission=p.REQUEST_DECIDE, act=services.request_reject, done="Request rejected.",
                 form_class=ReasonForm, prefix="reject", field="reason")


@require_POST
@p.permission_required(p.REQUEST_DECIDE)
def request_changes(request, pk: int):
    return _move(request, pk, permission=p.REQUEST_DECIDE, act=services.request_changes,
                 done="Changes requested; the researchers can edit and resubmit.",
                 form_class=ReasonForm, prefix="changes", field="reason")


@p.permission_required(p.REQUEST_DECIDE)
def review_queue(request):
    """The officer's queue: requests waiting for a decision, and ethics approvals to verify."""
    user = request.user
    filters = QueueFilterForm(request.GET or None)
    chosen = filters.cleaned_data if filters.is_valid() else {}
    return render(request, "governance/review_queue.html", {
        "filters": filters,
        "requests": selectors.request_queue(user, status=chosen.get("status") or None, modality=chosen.get("modality") or None),
        "approvals": selectors.ethics_queue(user) if p.has_permission(user, p.ETHICS_DECIDE) else [],
    })
