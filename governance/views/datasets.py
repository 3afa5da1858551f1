"""Datasets: what is registered, and each one's size. Counts only, never a patient or a record."""

from __future__ import annotations

from django.db.models import Count, Max, Min
from django.shortcuts import get_object_or_404, render

from governance import selectors, services
from governance.models import Dataset, Record
from governance.views._common import sees_exact_counts, shown_count
from portal import permissions as p


@p.permission_required(p.DATASET_VIEW)
def dataset_list(request):
    user = request.user
    policy = services.policy_current()
    datasets = [(d, shown_count(user, d.record_total, policy)) for d in selectors.datasets_visible(user)]
    return render(request, "governance/dataset_list.html", {"datasets": datasets})


@p.permission_required(p.DATASET_VIEW)
def dataset_detail(request, name: str):
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
    }
    return render(request, "governance/dataset_detail.html", context)
