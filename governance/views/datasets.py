"""Datasets: what is registered, and each one's size. Counts only, never a patient or a record."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Max, Min
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from governance import privacy_budget, selectors, services
from governance.forms import add_service_errors
from governance.models import Dataset, PrivacyBudgetEntry, Record
from governance.views._common import sees_exact_counts, shown_count
from portal import permissions as p


@p.permission_required(p.DATASET_VIEW)
def dataset_list(request):
    user = request.user
    policy = services.policy_current()
    datasets = [(d, shown_count(user, d.record_total, policy)) for d in selectors.datasets_visible(user)]
    return render(request, "governance/dataset_list.html", {"datasets": datasets})


class BudgetForm(forms.Form):
    privacy_budget_epsilon = forms.FloatField(
        required=False, label="Budget (total ε per patient)", widget=forms.NumberInput(attrs={"step": "any"}),
        help_text="The most ε that released adapters may spend on this dataset within the period. Empty: no budget.")
    privacy_budget_period_days = forms.IntegerField(label="Period (days)", min_value=1)


@p.permission_required(p.DATASET_VIEW)
def dataset_detail(request, name: str, *, budget_form: BudgetForm | None = None, status: int = 200):
    user = request.user
    dataset = get_object_or_404(Dataset.objects.select_related("steward"), name=name)
    policy = services.policy_current()
    records = Record.objects.filter(dataset=dataset)
    span = records.aggregate(first=Min("record_date"), last=Max("record_date"))
    by_type = records.values_list("document_type").annotate(n=Count("id")).order_by("document_type")
    by_sex = dataset.patients.values_list("sex").annotate(n=Count("id")).order_by("sex")
    context = {
        "dataset": dataset,
        "exact": sees_exact_counts(user),
        "patients": shown_count(user, dataset.patients.count(), policy),
        "records": shown_count(user, records.count(), policy),
        "first_year": span["first"].year if span["first"] else None,
        "last_year": span["last"].year if span["last"] else None,
        "by_type": [(kind.replace("_", " "), shown_count(user, n, policy)) for kind, n in by_type],
        "by_sex": [(sex, shown_count(user, n, policy)) for sex, n in by_sex],
        "threshold": services.required_patients([dataset], policy),
        "policy": policy,
        "budget": privacy_budget.budget_status(dataset),
        "ledger": PrivacyBudgetEntry.objects.filter(dataset=dataset).select_related("request")[:50],
        "can_manage": p.has_permission(user, p.POLICY_EDIT),
        "budget_form": budget_form or BudgetForm(initial={
            "privacy_budget_epsilon": dataset.privacy_budget_epsilon,
            "privacy_budget_period_days": dataset.privacy_budget_period_days}),
    }
    return render(request, "governance/dataset_detail.html", context, status=status)


@require_POST
@p.permission_required(p.POLICY_EDIT)
def dataset_budget(request, name: str):
    dataset = get_object_or_404(Dataset, name=name)
    form = BudgetForm(request.POST)
    if form.is_valid():
        try:
            privacy_budget.dataset_set_budget(
                dataset=dataset, epsilon=form.cleaned_data["privacy_budget_epsilon"],
                period_days=form.cleaned_data["privacy_budget_period_days"], by=request.user)
        except ValidationError as exc:
            add_service_errors(exc, form)
        else:
            messages.success(request, "Privacy budget saved.")
            return redirect("governance:dataset_detail", name=dataset.name)
    return dataset_detail(request, name, budget_form=form, status=400)
