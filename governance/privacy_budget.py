"""The privacy budget of a dataset: a ledger of ε, composed by simple addition.

Basic composition: the ε of adapters released from one dataset within the budget's period add
up, and their total may not pass the budget. It is the loosest sound bound (advanced or
Rényi composition would admit more), stated as such wherever the figures are shown.

- Approving a DP request *reserves* its requested ε on each budgeted dataset; approval is refused
  when the request's ε exceeds what remains. Reservations count until settled or freed, so two
  approvals cannot both promise the last of a budget.
- Releasing an adapter *spends* the ε the accountant reported for it (at most what was
  requested), once per adapter, and settles the request's reservation. A release that would take
  the ledger past the budget is refused (fail closed).
- Closing an approved request frees its unsettled reservation. Nothing is ever refunded: a revoked
  release stays spent, since what was downloaded cannot be un-disclosed.

A dataset with a budget accepts only DP requests. Every entry is written with an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from governance.models import DataAccessRequest, Dataset, PrivacyBudgetEntry
from portal import permissions as p
from portal.audit import record_event
from portal.models import User

L = PrivacyBudgetEntry.Kind
COMPOSITION = "basic"  # ε of released adapters add up
# Float sums of a few ε values carry rounding of order 1e-15; a request for exactly what remains
# must pass, one for anything perceptibly more must not.
TOLERANCE = 1e-9
DELTA_DEFAULT = 1e-5
DELTA_FRACTION = 0.1  # default δ is at most this over the cohort's patient count


@dataclass(frozen=True)
class BudgetStatus:
    dataset: Dataset
    budget: float | None
    period_days: int
    spent: float  # spends within the period
    reserved: float  # open reservations
    since: datetime

    @property
    def remaining(self) -> float | None:
        if self.budget is None:
            return None
        return max(self.budget - self.spent - self.reserved, 0.0)

    @property
    def limited(self) -> bool:
        return self.budget is not None

    def describe(self) -> str:
        if self.budget is None:
            return "No privacy budget: adapters are released under the disclosure policy and audit alone."
        return (f"ε {self.remaining:.4g} of {self.budget:g} remains (spent {self.spent:.4g} in the last "
                f"{self.period_days} days, reserved {self.reserved:.4g} by approved requests; basic composition).")


def budget_status(dataset: Dataset, *, at: datetime | None = None, excluding_request: DataAccessRequest | None = None) -> BudgetStatus:
    """Where a dataset's budget stands; ``excluding_request`` leaves that request's reservation out."""
    at = at or timezone.now()
    since = at - timedelta(days=dataset.privacy_budget_period_days)
    entries = PrivacyBudgetEntry.objects.filter(dataset=dataset)
    spent = entries.filter(kind=L.SPEND, created_at__gt=since, created_at__lte=at).aggregate(t=Sum("epsilon"))["t"] or 0.0
    open_reservations = entries.filter(kind=L.RESERVATION, closed_at__isnull=True)
    if excluding_request is not None:
        open_reservations = open_reservations.exclude(request=excluding_request)
    reserved = open_reservations.aggregate(t=Sum("epsilon"))["t"] or 0.0
    return BudgetStatus(dataset=dataset, budget=dataset.privacy_budget_epsilon,
                        period_days=dataset.privacy_budget_period_days, spent=spent, reserved=reserved, since=since)


def requested_dp(request: DataAccessRequest) -> dict | None:
    dp = (request.recipe or {}).get("dp")
    return dp if isinstance(dp, dict) else None


def dp_target(recipe: Any) -> float | None:
    """The ε a recipe's DP block targets (a request's ε when it names none); None without DP."""
    dp = recipe.get("dp") if isinstance(recipe, dict) else None
    target = dp.get("target_epsilon") if isinstance(dp, dict) else None
    return target if isinstance(target, (int, float)) and not isinstance(target, bool) else None


def default_delta(patients: int) -> float:
    """δ well below 1/n: the chance of a total privacy failure must be small against one patient in n."""
    return min(DELTA_DEFAULT, DELTA_FRACTION / max(patients, 1))


def budget_checks(request: DataAccessRequest, datasets: list[Dataset], *, patients: int | None) -> list[tuple[str, bool, str]]:
    """Approval checks: ε within each budget, DP where a budget exists, δ below 1/n."""
    checks: list[tuple[str, bool, str]] = []
    dp = requested_dp(request)
    epsilon = dp_target(request.recipe)
    for dataset in datasets:
        status = budget_status(dataset, excluding_request=request)
        if not status.limited:
            continue
        if epsilon is None:
            checks.append(("privacy_budget", False,
                           f"{dataset.title} has a privacy budget of ε {status.budget:g}: only differentially private "
                           "training (a recipe with dp) can be approved on it."))
        elif epsilon > status.remaining + TOLERANCE:
            checks.append(("privacy_budget", False,
                           f"Requested ε {epsilon:g} exceeds what remains on {dataset.title}: {status.describe()}"))
        else:
            checks.append(("privacy_budget", True, f"Requested ε {epsilon:g} on {dataset.title}: {status.describe()}"))
    if dp is not None and patients:
        delta = dp.get("delta", default_delta(patients))
        limit = 1 / patients
        checks.append(("dp_delta", delta < limit,
                       f"δ = {delta:.3g} per patient; it must be below 1/n = {limit:.3g} for this cohort of {patients} patients."))
    return checks


def budget_reserve(*, request: DataAccessRequest, by: User | None) -> list[PrivacyBudgetEntry]:
    """Reserve the request's ε on each budgeted dataset (inside the approval's transaction)."""
    dp = requested_dp(request)
    if dp is None:
        return []
    entries = []
    for dataset in Dataset.objects.select_for_update().filter(pk__in=request.datasets.values("pk")).order_by("pk"):
        if dataset.privacy_budget_epsilon is None:
            continue
        entry, created = PrivacyBudgetEntry.objects.get_or_create(
            dataset=dataset, request=request, kind=L.RESERVATION,
            defaults={"epsilon": dp["target_epsilon"], "delta": dp.get("delta"), "created_by": by},
        )
        if created:
            status = budget_status(dataset)
            record_event(actor=by, verb="privacy_budget.reserved", target=dataset,
                         payload={"request": request.pk, "epsilon": entry.epsilon, "remaining": status.remaining,
                                  "budget": status.budget, "composition": COMPOSITION})
        entries.append(entry)
    return entries


def budget_spend(*, request: DataAccessRequest, epsilon: float | None, delta: float | None, reference: str,
                 by: User | None) -> list[PrivacyBudgetEntry]:
    """Record the ε a released adapter spent on each budgeted dataset of its request.

    Call inside the release's transaction: a refusal (ValidationError) then releases nothing.
    Idempotent per adapter: a second release of the same adapter spends nothing more.
    """
    entries = []
    now = timezone.now()
    for dataset in Dataset.objects.select_for_update().filter(pk__in=request.datasets.values("pk")).order_by("pk"):
        if dataset.privacy_budget_epsilon is None:
            continue
        if epsilon is None:
            raise ValidationError(f"{dataset.title} has a privacy budget; this adapter reports no ε (it was not trained "
                                  "with differential privacy), so it cannot be released.")
        existing = PrivacyBudgetEntry.objects.filter(dataset=dataset, kind=L.SPEND, reference=reference).first()
        if existing is not None:
            entries.append(existing)
            continue
        status = budget_status(dataset, excluding_request=request)
        if epsilon > status.remaining + TOLERANCE:
            raise ValidationError(f"Releasing this adapter (ε {epsilon:.4g}) would exceed the privacy budget of "
                                  f"{dataset.title}: {status.describe()}")
        entry = PrivacyBudgetEntry.objects.create(dataset=dataset, request=request, kind=L.SPEND, epsilon=epsilon,
                                                  delta=delta, reference=reference, created_by=by, created_at=now)
        PrivacyBudgetEntry.objects.filter(dataset=dataset, request=request, kind=L.RESERVATION, closed_at__isnull=True).update(
            closed_at=now, closed_reason=f"Settled by the release of adapter {reference}.")
        after = budget_status(dataset)
        record_event(actor=by, verb="privacy_budget.spent", target=dataset,
                     payload={"request": request.pk, "adapter": reference, "epsilon": epsilon, "delta": delta,
                              "remaining": after.remaining, "budget": after.budget, "composition": COMPOSITION})
        entries.append(entry)
    return entries


def budget_free(*, request: DataAccessRequest, by: User | None, reason: str) -> int:
    """Free a closed request's unsettled reservations (spends stay)."""
    now = timezone.now()
    freed = 0
    for entry in PrivacyBudgetEntry.objects.select_for_update().filter(request=request, kind=L.RESERVATION, closed_at__isnull=True):
        entry.closed_at, entry.closed_reason = now, reason[:200]
        entry.save(update_fields=["closed_at", "closed_reason"])
        record_event(actor=by, verb="privacy_budget.freed", target=entry.dataset,
                     payload={"request": request.pk, "epsilon": entry.epsilon, "reason": reason[:200]})
        freed += 1
    return freed


def dataset_set_budget(*, dataset: Dataset, epsilon: float | None, period_days: int, by: User) -> Dataset:
    """Set (or remove) a dataset's budget (disclosure policy: governance officers).

    Lowering it below what is already spent is allowed: nothing more is then approved or released.
    """
    p.check_permission(by, p.POLICY_EDIT)
    errors = {}
    if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon <= 1000):
        errors["privacy_budget_epsilon"] = "ε must be above 0 and at most 1000, or empty for no budget."
    if isinstance(period_days, bool) or not isinstance(period_days, int) or not 1 <= period_days <= 36500:
        errors["privacy_budget_period_days"] = "The period is a whole number of days between 1 and 36500."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
        before = {"epsilon": dataset.privacy_budget_epsilon, "period_days": dataset.privacy_budget_period_days}
        dataset.privacy_budget_epsilon = None if epsilon is None else float(epsilon)
        dataset.privacy_budget_period_days = period_days
        dataset.save(update_fields=["privacy_budget_epsilon", "privacy_budget_period_days"])
        record_event(actor=by, verb="privacy_budget.set", target=dataset,
                     payload={"before": before, "after": {"epsilon": dataset.privacy_budget_epsilon, "period_days": period_days},
                              "composition": COMPOSITION})
    return dataset
