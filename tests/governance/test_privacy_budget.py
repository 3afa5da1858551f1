"""The privacy-budget ledger: reservations at approval, spends at release, no refunds, all audited."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from governance import privacy_budget
from governance import services as governance_services
from governance.models import DataAccessRequest, PrivacyBudgetEntry
from portal.models import AuditEvent
from tests import factories

pytestmark = pytest.mark.django_db
L = PrivacyBudgetEntry.Kind
TINY = 1e-6


def dp(epsilon: float, **extra) -> dict:
    return {"dp": {"target_epsilon": epsilon, **extra}}


@pytest.fixture
def officer():
    officer = factories.officer()
    factories.small_policy(by=officer)
    return officer


@pytest.fixture
def dataset(officer):
    dataset = factories.dataset_with_patients(8)
    return privacy_budget.dataset_set_budget(dataset=dataset, epsilon=10.0, period_days=365, by=officer)


def submitted(dataset, epsilon: float | None, **extra) -> DataAccessRequest:
    recipe = dp(epsilon, **extra) if epsilon is not None else {}
    return factories.request(datasets=[dataset], recipe=recipe, submit=True)


def approve(request, officer) -> DataAccessRequest:
    return governance_services.request_approve(request=request, by=officer)


def remaining(dataset) -> float:
    return privacy_budget.budget_status(dataset).remaining


@pytest.mark.parametrize(("offset", "approved"), [(-TINY, True), (0.0, True), (TINY, False)])
def test_approval_refuses_at_the_boundary_of_what_remains(dataset, officer, offset, approved):
    approve(submitted(dataset, 4.0), officer)  # reserves 4 of 10
    first = DataAccessRequest.objects.get(status="approved")
    privacy_budget.budget_spend(request=first, epsilon=3.5, delta=1e-5, reference="adapter-1", by=officer)
    assert remaining(dataset) == pytest.approx(6.5)

    request = submitted(dataset, 6.5 + offset)
    if approved:
        approve(request, officer)
        assert remaining(dataset) == pytest.approx(-offset, abs=1e-9)
    else:
        with pytest.raises(ValidationError, match="exceeds what remains"):
            approve(request, officer)
        request.refresh_from_db()
        assert request.status == DataAccessRequest.Status.SUBMITTED  # nothing changed: no cohort, no reservation
        assert not PrivacyBudgetEntry.objects.filter(request=request).exists()
        assert remaining(dataset) == pytest.approx(6.5)


def test_reservations_keep_two_approvals_from_promising_the_same_budget(dataset, officer):
    approve(submitted(dataset, 7.0), officer)
    with pytest.raises(ValidationError, match="exceeds what remains"):
        approve(submitted(dataset, 7.0), officer)
    assert privacy_budget.budget_status(dataset).reserved == pytest.approx(7.0)


def test_a_budgeted_dataset_accepts_only_differentially_private_requests(dataset, officer):
    with pytest.raises(ValidationError, match="only differentially private training"):
        approve(submitted(dataset, None), officer)


def test_delta_must_stay_below_one_over_the_cohort(officer):
    # Requests may ask for δ up to 1e-3 (policy bound); a cohort above 1000 patients needs less.
    dataset = factories.dataset_with_patients(1001)
    with pytest.raises(ValidationError, match=r"δ = 0.001 per patient; it must be below 1/n = 0.000999 .* 1001 patients"):
        approve(submitted(dataset, 1.0, delta=1e-3), officer)
    approve(submitted(dataset, 1.0, delta=9e-4), officer)


def test_spend_settles_the_reservation_once_per_adapter_and_is_audited(dataset, officer):
    request = approve(submitted(dataset, 4.0), officer)
    reservation = PrivacyBudgetEntry.objects.get(request=request, kind=L.RESERVATION)
    assert reservation.closed_at is None and remaining(dataset) == pytest.approx(6.0)

    privacy_budget.budget_spend(request=request, epsilon=3.9, delta=1e-5, reference="adapter-a", by=officer)
    privacy_budget.budget_spend(request=request, epsilon=3.9, delta=1e-5, reference="adapter-a", by=officer)  # a second sponsor

    reservation.refresh_from_db()
    assert reservation.closed_at is not None and "adapter-a" in reservation.closed_reason
    assert PrivacyBudgetEntry.objects.filter(kind=L.SPEND).count() == 1
    assert remaining(dataset) == pytest.approx(6.1)
    verbs = list(AuditEvent.objects.filter(verb__startswith="privacy_budget.").values_list("verb", flat=True).order_by("seq"))
    assert verbs == ["privacy_budget.set", "privacy_budget.reserved", "privacy_budget.spent"]


def test_a_spend_beyond_the_budget_or_without_epsilon_is_refused(dataset, officer):
    request = approve(submitted(dataset, 4.0), officer)
    approve(submitted(dataset, 6.0), officer)  # the rest of the budget is reserved by another request
    with pytest.raises(ValidationError, match="would exceed the privacy budget"):
        privacy_budget.budget_spend(request=request, epsilon=4.0 + 1e-3, delta=1e-5, reference="adapter-b", by=officer)
    with pytest.raises(ValidationError, match="reports no ε"):
        privacy_budget.budget_spend(request=request, epsilon=None, delta=None, reference="adapter-b", by=officer)
    assert not PrivacyBudgetEntry.objects.filter(kind=L.SPEND).exists()


def test_closing_a_request_frees_its_reservation_but_never_a_spend(dataset, officer):
    spent = approve(submitted(dataset, 3.0), officer)
    privacy_budget.budget_spend(request=spent, epsilon=3.0, delta=1e-5, reference="adapter-c", by=officer)
    unspent = approve(submitted(dataset, 5.0), officer)
    assert remaining(dataset) == pytest.approx(2.0)
    for request in (spent, unspent):
        governance_services.request_transition(request=request, to=DataAccessRequest.Status.CLOSED, by=officer,
                                               reason="Project ended.")
    assert remaining(dataset) == pytest.approx(7.0)
    assert AuditEvent.objects.filter(verb="privacy_budget.freed").count() == 1


def test_spends_older_than_the_period_no_longer_count(dataset, officer):
    request = approve(submitted(dataset, 4.0), officer)
    [entry] = privacy_budget.budget_spend(request=request, epsilon=4.0, delta=1e-5, reference="adapter-d", by=officer)
    later = entry.created_at + privacy_budget.timedelta(days=366)
    assert privacy_budget.budget_status(dataset, at=later).spent == 0.0
    assert privacy_budget.budget_status(dataset, at=entry.created_at).spent == pytest.approx(4.0)


def test_requested_epsilon_follows_the_recipe_and_must_match_it(dataset):
    draft = factories.request(datasets=[dataset], recipe=dp(2.5))
    assert draft.requested_epsilon == 2.5
    with pytest.raises(ValidationError, match="set recipe.dp.target_epsilon"):
        governance_services.request_update(request=draft, by=draft.created_by, requested_epsilon=3.0)
    updated = governance_services.request_update(request=draft, by=draft.created_by, recipe=dp(1.5))
    assert updated.requested_epsilon == 1.5


@pytest.mark.parametrize(("epsilon", "days", "field"), [
    (0, 365, "privacy_budget_epsilon"), (-1, 365, "privacy_budget_epsilon"), (1001, 365, "privacy_budget_epsilon"),
    (5, 0, "privacy_budget_period_days"), (5, 1.5, "privacy_budget_period_days"),
])
def test_bad_budget_settings_are_refused_and_change_nothing(dataset, officer, epsilon, days, field):
    with pytest.raises(ValidationError) as caught:
        privacy_budget.dataset_set_budget(dataset=dataset, epsilon=epsilon, period_days=days, by=officer)
    assert field in caught.value.message_dict
    dataset.refresh_from_db()
    assert (dataset.privacy_budget_epsilon, dataset.privacy_budget_period_days) == (10.0, 365)


def test_only_governance_officers_set_budgets(dataset):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        privacy_budget.dataset_set_budget(dataset=dataset, epsilon=1.0, period_days=30, by=factories.steward())
