"""Governance services: both state machines for every persona, separation of duties, ethics expiry,
disclosure control at its boundaries (threshold, rounding, suppression, differencing), bad input."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from governance import services
from governance.models import Cohort, CohortRecord, DataAccessRequest, Dataset, EthicsApproval, Patient
from governance.services import TransitionError
from governance.workflow import (
    ETHICS_MOVE_PERMISSION,
    ETHICS_TRANSITIONS,
    REQUEST_MOVE_PERMISSION,
    REQUEST_TRANSITIONS,
)
from portal.models import AuditEvent, Role
from tests import factories
from tests.conftest import on_postgres

R = DataAccessRequest.Status
E = EthicsApproval.Status

PERSONAS = ("officer", "officer_member", "researcher_member", "researcher_other", "steward", "reviewer", "sponsor",
            "system")

# The design's state machines, written out here independently of governance/workflow.py.
REQUEST_MOVES = {
    (R.DRAFT, R.SUBMITTED), (R.DRAFT, R.WITHDRAWN),
    (R.SUBMITTED, R.IN_REVIEW), (R.SUBMITTED, R.WITHDRAWN),
    (R.IN_REVIEW, R.APPROVED), (R.IN_REVIEW, R.CHANGES_REQUESTED), (R.IN_REVIEW, R.REJECTED), (R.IN_REVIEW, R.WITHDRAWN),
    (R.CHANGES_REQUESTED, R.SUBMITTED), (R.CHANGES_REQUESTED, R.WITHDRAWN),
    (R.APPROVED, R.SUSPENDED), (R.APPROVED, R.CLOSED),
    (R.SUSPENDED, R.APPROVED), (R.SUSPENDED, R.CLOSED),
}
# Who may move a request INTO each status. The request is created by `officer_member` (an officer
# who is also a researcher on the project); `researcher_member` is the principal investigator.
MAY_MOVE_REQUEST_INTO = {
    R.SUBMITTED: {"officer_member", "researcher_member"},
    R.WITHDRAWN: {"officer_member", "researcher_member"},
    R.IN_REVIEW: {"officer"},
    R.APPROVED: {"officer"},
    R.CHANGES_REQUESTED: {"officer"},
    R.REJECTED: {"officer"},
    R.SUSPENDED: {"officer", "officer_member", "system"},
    R.CLOSED: {"officer", "officer_member"},
}
ETHICS_MOVES = {(E.SUBMITTED, E.VERIFIED), (E.SUBMITTED, E.REJECTED), (E.VERIFIED, E.EXPIRED), (E.VERIFIED, E.REVOKED)}
# The approval is submitted by `researcher_member`; `officer_member` is on the project.
MAY_MOVE_ETHICS_INTO = {
    E.VERIFIED: {"officer"},
    E.REJECTED: {"officer"},
    E.REVOKED: {"officer"},
    E.EXPIRED: {"system"},  # by date only, never by a person
}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Cast(factories.GovernancePersonas):
    """The personas, each created on first use (`everyone()` creates them all)."""

    def everyone(self) -> None:
        for persona in PERSONAS:
            self.by(persona)

    def by(self, persona: str):
        return None if persona == "system" else getattr(self, persona)


@pytest.fixture
def cast(db) -> Cast:
    return Cast()


def _last_seq() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def _verbs_since(seq: int) -> list[str]:
    return list(AuditEvent.objects.filter(seq__gt=seq).order_by("seq").values_list("verb", flat=True))


def _request_world(cast: Cast) -> DataAccessRequest:
    factories.small_policy(by=cast.officer)
    dataset = factories.dataset_with_patients(4, by=cast.steward)
    project = factories.project(pi=cast.researcher_member, members=[cast.officer_member])
    ethics = factories.verified_ethics(project, by=cast.researcher_member, verifier=cast.officer)
    return factories.request(project=project, by=cast.officer_member, datasets=[dataset], ethics_approval=ethics)


def _approvable(cast: Cast, *, patients: int = 5, **policy) -> DataAccessRequest:
    """A submitted request from `researcher_member`'s project, ready for `officer` to approve."""
    factories.small_policy(by=cast.officer, **policy)
    project = factories.project(pi=cast.researcher_member)
    ethics = factories.verified_ethics(project, verifier=cast.officer)
    return factories.request(project=project, datasets=[factories.dataset_with_patients(patients, by=cast.steward)],
                             ethics_approval=ethics, submit=True)


# The tables -------------------------------------------------------------------------------------

def test_request_transition_table_matches_design():
    table = {(source, target) for source, targets in REQUEST_TRANSITIONS.items() for target in targets}
    assert table == REQUEST_MOVES
    assert set(REQUEST_TRANSITIONS) == set(R.values)
    assert set(REQUEST_MOVE_PERMISSION) == set(R.values)


def test_ethics_transition_table_matches_design():
    table = {(source, target) for source, targets in ETHICS_TRANSITIONS.items() for target in targets}
    assert table == ETHICS_MOVES
    assert set(ETHICS_TRANSITIONS) == set(E.values)
    assert set(ETHICS_MOVE_PERMISSION) == set(E.values)


# Every request move x every persona ---------------------------------------------------------------

def _expected_request_outcome(source: str, target: str, persona: str):
    """'moved', 'no-op', or the exception class the service raises."""
    if persona == "system":
        permitted = target == R.SUSPENDED
    elif target == R.DRAFT:
        permitted = True  # nothing to permit: no status moves into draft
    else:
        permitted = persona in MAY_MOVE_REQUEST_INTO[target]
    if not permitted:
        return PermissionDenied
    if source == target:
        return "no-op"
    return "moved" if (source, target) in REQUEST_MOVES else TransitionError


@pytest.mark.django_db
@pytest.mark.parametrize("source", R.values)
def test_request_transition_every_move_every_persona(cast, subtests, source):
    # Arrange: a request of `researcher_member`'s project, put directly into the source status.
    # Each (target, persona) attempt runs in a savepoint that is rolled back, so every one starts
    # from this same state.
    cast.everyone()  # before the savepoints below, which would roll a lazily created persona back
    request = _request_world(cast)
    DataAccessRequest.objects.filter(pk=request.pk).update(status=source)
    request.refresh_from_db()
    for target in R.values:
        for persona in PERSONAS:
            with subtests.test(target=target, persona=persona), transaction.atomic():
                _attempt_request_move(cast, request, source, target, persona)
                transaction.set_rollback(True)


def _attempt_request_move(cast, request, source, target, persona):
    before = _last_seq()
    expected = _expected_request_outcome(source, target, persona)
    move = dict(request=request, to=target, by=cast.by(persona), reason="A reason the researcher will read.")
    if expected in ("moved", "no-op"):
        result = services.request_transition(**move)
        assert result.status == target
        assert DataAccessRequest.objects.get(pk=request.pk).status == target
        assert _verbs_since(before) == ([f"request.{target}"] if expected == "moved" else [])
        froze = expected == "moved" and (source, target) == (R.IN_REVIEW, R.APPROVED)
        assert Cohort.objects.filter(request=request).count() == (1 if froze else 0)
    else:
        with pytest.raises(expected):
            services.request_transition(**move)
        assert DataAccessRequest.objects.get(pk=request.pk).status == source
        assert _verbs_since(before) == []
        assert Cohort.objects.count() == 0


# Every ethics move x every persona ----------------------------------------------------------------

def _expected_ethics_outcome(source: str, target: str, persona: str):
    if persona == "system":
        permitted = target == E.EXPIRED
    elif target == E.SUBMITTED:
        permitted = True  # nothing to permit: no status moves into submitted
    else:
        permitted = persona in MAY_MOVE_ETHICS_INTO[target]
    if not permitted:
        return PermissionDenied
    if source == target:
        return "no-op"
    return "moved" if (source, target) in ETHICS_MOVES else TransitionError


@pytest.mark.django_db
@pytest.mark.parametrize("source", E.values)
def test_ethics_transition_every_move_every_persona(cast, subtests, source):
    cast.everyone()
    project = factories.project(pi=cast.researcher_member, members=[cast.officer_member])
    approval = factories.submitted_ethics(project, by=cast.researcher_member)
    EthicsApproval.objects.filter(pk=approval.pk).update(status=source)
    approval.refresh_from_db()
    for target in E.values:
        for persona in PERSONAS:
            with subtests.test(target=target, persona=persona), transaction.atomic():
                _attempt_ethics_move(cast, approval, source, target, persona)
                transaction.set_rollback(True)


def _attempt_ethics_move(cast, approval, source, target, persona):
    before = _last_seq()
    expected = _expected_ethics_outcome(source, target, persona)
    move = dict(approval=approval, to=target, by=cast.by(persona), reason="Committee letter withdrawn.")
    if expected in ("moved", "no-op"):
        result = services.ethics_transition(**move)
        assert result.status == target
        assert EthicsApproval.objects.get(pk=approval.pk).status == target
        assert _verbs_since(before) == ([f"ethics.{target}"] if expected == "moved" else [])
    else:
        with pytest.raises(expected):
            services.ethics_transition(**move)
        assert EthicsApproval.objects.get(pk=approval.pk).status == source
        assert _verbs_since(before) == []


# Repeats and races ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_request_approve_repeated_is_noop(cast):
    request = _approvable(cast)
    before = _last_seq()
    services.request_approve(request=request, by=cast.officer)
    services.request_approve(request=request, by=cast.officer)
    assert _verbs_since(before) == ["request.in_review", "request.approved"]
    assert Cohort.objects.filter(request=request).count() == 1


@pytest.mark.django_db
def test_request_approve_by_second_officer_after_first_is_noop(cast):
    request = _approvable(cast)
    stale = DataAccessRequest.objects.get(pk=request.pk)
    second = factories.officer()
    services.request_approve(request=request, by=cast.officer)
    before = _last_seq()
    result = services.request_approve(request=stale, by=second)
    assert result.status == R.APPROVED
    assert _verbs_since(before) == []
    assert result.decided_by == cast.officer


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_request_approve_concurrent_officers_one_approval(settings):
    if not on_postgres():
        pytest.skip("needs PostgreSQL (set DATABASE_URL) to race two officers on one request")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    first, second = factories.officer(), factories.officer()
    factories.small_policy(by=first)
    request = factories.request(datasets=[factories.dataset_with_patients(5)], submit=True)
    before = _last_seq()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def approve(officer):
        stale = DataAccessRequest.objects.get(pk=request.pk)
        try:
            barrier.wait(timeout=10)
            services.request_approve(request=stale, by=officer)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(officer,)) for officer in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert _verbs_since(before) == ["request.in_review", "request.approved"]
    assert Cohort.objects.filter(request_id=request.pk).count() == 1
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.APPROVED


# Separation of duties ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_request_approve_own_request_refused(cast):
    factories.small_policy(by=cast.officer)
    project = factories.project(pi=cast.officer_member)
    request = factories.request(project=project, by=cast.officer_member, submit=True)
    before = _last_seq()
    with pytest.raises(PermissionDenied) as refused:
        services.request_approve(request=request, by=cast.officer_member)
    assert str(refused.value) == "Nobody decides on a request they created or submitted."
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.SUBMITTED
    assert _verbs_since(before) == []


@pytest.mark.django_db
def test_request_approve_own_project_refused(cast):
    factories.small_policy(by=cast.officer)
    project = factories.project(pi=cast.researcher_member, members=[cast.officer_member])
    request = factories.request(project=project, by=cast.researcher_member, submit=True)
    before = _last_seq()
    with pytest.raises(PermissionDenied) as refused:
        services.request_approve(request=request, by=cast.officer_member)
    assert str(refused.value) == "Nobody decides on a request from a project they are a member of."
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.SUBMITTED
    assert _verbs_since(before) == []


@pytest.mark.django_db
def test_ethics_verify_own_submission_refused(cast):
    project = factories.project(pi=cast.officer_member)
    approval = factories.submitted_ethics(project, by=cast.officer_member)
    with pytest.raises(PermissionDenied) as refused:
        services.ethics_verify(approval=approval, by=cast.officer_member)
    assert str(refused.value) == "Nobody verifies an ethics approval they submitted."
    assert EthicsApproval.objects.get(pk=approval.pk).status == E.SUBMITTED


@pytest.mark.django_db
def test_ethics_verify_own_project_refused(cast):
    project = factories.project(pi=cast.researcher_member, members=[cast.officer_member])
    approval = factories.submitted_ethics(project, by=cast.researcher_member)
    with pytest.raises(PermissionDenied) as refused:
        services.ethics_verify(approval=approval, by=cast.officer_member)
    assert str(refused.value) == "Nobody verifies an ethics approval for a project they are a member of."


@pytest.mark.django_db
def test_ethics_expire_by_person_refused(cast):
    project = factories.project(pi=cast.researcher_member)
    approval = factories.verified_ethics(project, verifier=cast.officer)
    with pytest.raises(PermissionDenied) as refused:
        services.ethics_transition(approval=approval, to=E.EXPIRED, by=cast.officer)
    assert str(refused.value) == "An ethics approval expires by its date, not by a person."
    assert EthicsApproval.objects.get(pk=approval.pk).status == E.VERIFIED


# Ethics validity -----------------------------------------------------------------------------------

def _backdate(approval: EthicsApproval, *, expired_days_ago: int) -> None:
    today = timezone.localdate()
    EthicsApproval.objects.filter(pk=approval.pk).update(
        approved_on=today - timedelta(days=400), expires_on=today - timedelta(days=expired_days_ago)
    )


@pytest.mark.django_db
def test_request_approve_expired_ethics_refused(cast):
    request = _approvable(cast)
    _backdate(request.ethics_approval, expired_days_ago=1)
    approval = EthicsApproval.objects.get(pk=request.ethics_approval_id)
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.request_approve(request=request, by=cast.officer)
    assert refused.value.messages == [
        f"ethics: Ethics approval {approval.reference} is not valid today "
        f"(valid {approval.approved_on} to {approval.expires_on})."
    ]
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.SUBMITTED
    assert _verbs_since(before) == []
    assert Cohort.objects.count() == 0


@pytest.mark.django_db
def test_ethics_expire_due_suspends_approved_requests(cast):
    request = _approvable(cast)
    services.request_approve(request=request, by=cast.officer)
    _backdate(request.ethics_approval, expired_days_ago=1)
    before = _last_seq()

    expired = services.ethics_expire_due()

    approval = EthicsApproval.objects.get(pk=request.ethics_approval_id)
    request.refresh_from_db()
    assert expired == 1
    assert approval.status == E.EXPIRED
    assert request.status == R.SUSPENDED
    assert request.suspended_reason == f"Ethics approval {approval.reference} expired."
    assert _verbs_since(before) == ["ethics.expired", "request.suspended"]
    assert services.ethics_expire_due() == 0


@pytest.mark.django_db
def test_ethics_expire_due_leaves_approval_valid_today(cast):
    request = _approvable(cast)
    services.request_approve(request=request, by=cast.officer)
    _backdate(request.ethics_approval, expired_days_ago=0)  # expires today: still valid today
    assert services.ethics_expire_due() == 0
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.APPROVED


@pytest.mark.django_db
def test_ethics_revoke_suspends_approved_requests(cast):
    request = _approvable(cast)
    services.request_approve(request=request, by=cast.officer)
    before = _last_seq()
    services.ethics_revoke(approval=request.ethics_approval, by=cast.officer, reason="Consent model changed.")
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.SUSPENDED
    assert _verbs_since(before) == ["ethics.revoked", "request.suspended"]


# Threshold, rounding, suppression ------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize(("patients", "approved"), [(4, False), (5, True), (6, True)])
def test_request_approve_threshold_boundary(cast, patients, approved):
    request = _approvable(cast, patients=patients, min_patients=5)
    if approved:
        services.request_approve(request=request, by=cast.officer)
        cohort = Cohort.objects.get(request=request)
        assert (cohort.patient_count, cohort.record_count) == (patients, patients)
        assert CohortRecord.objects.filter(cohort=cohort).values("patient_id").distinct().count() == patients
    else:
        with pytest.raises(ValidationError) as refused:
            services.request_approve(request=request, by=cast.officer)
        assert refused.value.messages == ["threshold: 4 distinct patients in 4 records; at least 5 are needed."]
        assert DataAccessRequest.objects.get(pk=request.pk).status == R.SUBMITTED
        assert Cohort.objects.count() == 0


@pytest.mark.django_db
def test_request_approve_threshold_counts_patients_not_records(cast):
    factories.small_policy(by=cast.officer, min_patients=5)
    project = factories.project(pi=cast.researcher_member)
    dataset = factories.dataset_with_patients(4, by=cast.steward, records_per_patient=3)
    request = factories.request(project=project, datasets=[dataset], submit=True)
    with pytest.raises(ValidationError) as refused:
        services.request_approve(request=request, by=cast.officer)
    assert refused.value.messages == ["threshold: 4 distinct patients in 12 records; at least 5 are needed."]


@pytest.mark.django_db
@pytest.mark.parametrize(("patients", "approved"), [(7, False), (8, True)])
def test_request_approve_dataset_minimum_raises_threshold(cast, patients, approved):
    factories.small_policy(by=cast.officer, min_patients=5)
    project = factories.project(pi=cast.researcher_member)
    dataset = factories.dataset_with_patients(patients, by=cast.steward, min_patients=8)
    request = factories.request(project=project, datasets=[dataset], submit=True)
    if approved:
        assert services.request_approve(request=request, by=cast.officer).status == R.APPROVED
    else:
        with pytest.raises(ValidationError) as refused:
            services.request_approve(request=request, by=cast.officer)
        assert refused.value.messages == ["threshold: 7 distinct patients in 7 records; at least 8 are needed."]


@pytest.mark.django_db
def test_dataset_register_lower_minimum_than_policy_refused(cast):
    factories.small_policy(by=cast.officer, min_patients=5)
    steward = cast.steward
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.dataset_register(by=steward, name="lower", title="Lower", modality="text", location="x",
                                  min_patients=4)
    assert refused.value.message_dict == {"min_patients": ["A dataset may only raise the policy's minimum of 5."]}
    assert not Dataset.objects.filter(name="lower").exists()
    assert _verbs_since(before) == []


def _disclosed(value: int | None, limit: int) -> dict:
    if value is None:
        return {"suppressed": True, "value": None, "display": f"fewer than {limit}"}
    return {"suppressed": False, "value": value, "display": f"about {value}"}


@pytest.mark.django_db
@pytest.mark.parametrize(("exact", "shown"), [(12, 10), (13, 15), (102, 100)])
def test_cohort_preview_rounds_to_five(cast, exact, shown):
    factories.small_policy(by=cast.officer, min_patients=100, suppression_limit=10, rounding_base=5)
    dataset = factories.dataset_with_patients(exact, by=cast.steward)
    preview = services.cohort_preview(by=cast.researcher_member, datasets=[dataset], definition={})
    assert preview["patients"] == _disclosed(shown, 10)
    assert preview["records"] == _disclosed(shown, 10)
    assert preview["threshold"] == 100
    assert preview["meets_threshold"] is (exact >= 100)


@pytest.mark.django_db
@pytest.mark.parametrize(("exact", "shown"), [(9, None), (10, 10), (11, 10)])
def test_cohort_preview_suppression_boundary(cast, exact, shown):
    factories.small_policy(by=cast.officer, suppression_limit=10, rounding_base=5)
    dataset = factories.dataset_with_patients(exact, by=cast.steward)
    preview = services.cohort_preview(by=cast.researcher_member, datasets=[dataset], definition={})
    assert preview["patients"] == _disclosed(shown, 10)


@pytest.mark.django_db
def test_cohort_preview_sponsor_refused(cast):
    dataset = factories.dataset_with_patients(3, by=cast.steward)
    with pytest.raises(PermissionDenied):
        services.cohort_preview(by=cast.sponsor, datasets=[dataset], definition={})


# Differencing --------------------------------------------------------------------------------------

DIFFERENCING_MESSAGE = (
    "differencing: This cohort differs from an earlier cohort of the same project by fewer than 3 patients; "
    "together they could single someone out."
)


@pytest.mark.django_db
@pytest.mark.parametrize(("difference", "approved"), [(-1, False), (0, True), (1, False), (2, False), (3, True), (4, True)])
def test_request_approve_differencing_boundary(cast, difference, approved):
    # Twelve patients aged 30..41; the first cohort is the seven aged 30..36.
    factories.small_policy(by=cast.officer, min_patients=2, differencing_minimum=3)
    project = factories.project(pi=cast.researcher_member)
    ethics = factories.verified_ethics(project, verifier=cast.officer)
    dataset = factories.dataset_with_patients(12, by=cast.steward)
    first = factories.request(project=project, datasets=[dataset], ethics_approval=ethics,
                              cohort_definition={"age": {"max": 36}}, submit=True)
    services.request_approve(request=first, by=cast.officer)
    second = factories.request(project=project, datasets=[dataset], ethics_approval=ethics,
                               cohort_definition={"age": {"max": 36 + difference}}, submit=True)
    before = _last_seq()

    if approved:
        services.request_approve(request=second, by=cast.officer)
        assert Cohort.objects.get(request=second).patient_count == 7 + difference
    else:
        with pytest.raises(ValidationError) as refused:
            services.request_approve(request=second, by=cast.officer)
        assert refused.value.messages == [DIFFERENCING_MESSAGE]
        keys = list(Patient.objects.values_list("key", flat=True)) + [f"{dataset.name}-p{i}" for i in range(12)]
        assert not any(key in DIFFERENCING_MESSAGE for key in keys)
        assert DataAccessRequest.objects.get(pk=second.pk).status == R.SUBMITTED
        assert _verbs_since(before) == []
        assert Cohort.objects.count() == 1


@pytest.mark.django_db
def test_request_approve_differencing_other_project_allowed(cast):
    factories.small_policy(by=cast.officer, min_patients=2, differencing_minimum=3)
    dataset = factories.dataset_with_patients(8, by=cast.steward)
    first = factories.request(datasets=[dataset], cohort_definition={"age": {"max": 36}}, submit=True)
    services.request_approve(request=first, by=cast.officer)
    other = factories.request(datasets=[dataset], cohort_definition={"age": {"max": 37}}, submit=True)
    assert services.request_approve(request=other, by=cast.officer).status == R.APPROVED


# Bad input -----------------------------------------------------------------------------------------

BAD_DEFINITIONS = [
    pytest.param({"weight": {"min": 50}}, {"cohort_definition": [
        "$.weight: unknown attribute 'weight'; the dataset's attributes are age, sex, condition, date, "
        "document_type (combine them with all, any, not)"]}, id="unknown-attribute"),
    pytest.param('{"age": {"min": 18}', {"cohort_definition": [
        "$: not valid JSON (Expecting ',' delimiter at line 1 column 20)"]}, id="malformed-json"),
    pytest.param({"date": {"from": "2024-01-01", "to": "2020-01-01"}}, {"cohort_definition": [
        "$.date: reversed date range: 2024-01-01 is after 2020-01-01"]}, id="reversed-dates"),
    pytest.param({"all": [{"sex": ["female"]}, {"age": {"min": 80, "max": 18}}]}, {"cohort_definition": [
        "$.all[1].age: reversed range: min 80 is above max 18"]}, id="reversed-ages"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("definition", "errors"), BAD_DEFINITIONS)
def test_request_create_bad_definition_refused(cast, definition, errors):
    project = factories.project(pi=cast.researcher_member)
    dataset = factories.dataset_with_patients(3, by=cast.steward)
    model = factories.text_base_model()
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.request_create(by=cast.researcher_member, project=project, datasets=[dataset], title="T",
                                purpose="P", modality="text", cohort_definition=definition,
                                base_model_name=model.name)
    assert refused.value.message_dict == errors
    assert DataAccessRequest.objects.count() == 0
    assert _verbs_since(before) == []


@pytest.mark.django_db
def test_request_create_no_datasets_refused(cast):
    project = factories.project(pi=cast.researcher_member)
    model = factories.text_base_model()
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.request_create(by=cast.researcher_member, project=project, datasets=[], title="T", purpose="P",
                                modality="text", cohort_definition={},
                                base_model_name=model.name)
    assert refused.value.message_dict == {"datasets": ["Choose at least one dataset."]}
    assert DataAccessRequest.objects.count() == 0
    assert _verbs_since(before) == []


@pytest.mark.django_db
@pytest.mark.parametrize(("definition", "errors"), BAD_DEFINITIONS)
def test_request_update_bad_definition_changes_nothing(cast, definition, errors):
    request = factories.request(project=factories.project(pi=cast.researcher_member),
                                cohort_definition={"age": {"min": 18}})
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.request_update(request=request, by=cast.researcher_member, cohort_definition=definition)
    assert refused.value.message_dict == errors
    assert DataAccessRequest.objects.get(pk=request.pk).cohort_definition == {"age": {"min": 18}}
    assert _verbs_since(before) == []


@pytest.mark.django_db
def test_request_update_after_submit_is_transition_error(cast):
    request = factories.request(project=factories.project(pi=cast.researcher_member), submit=True)
    before = _last_seq()
    with pytest.raises(TransitionError) as refused:
        services.request_update(request=request, by=cast.researcher_member, title="New title")
    assert refused.value.messages == ["A request that is submitted cannot be edited."]
    assert DataAccessRequest.objects.get(pk=request.pk).title == request.title
    assert _verbs_since(before) == []


@pytest.mark.django_db
@pytest.mark.parametrize(("definition", "errors"), BAD_DEFINITIONS)
def test_cohort_preview_bad_definition_refused(cast, definition, errors):
    dataset = factories.dataset_with_patients(3, by=cast.steward)
    with pytest.raises(ValidationError) as refused:
        services.cohort_preview(by=cast.researcher_member, datasets=[dataset], definition=definition)
    assert refused.value.message_dict == {"definition": errors["cohort_definition"]}


@pytest.mark.django_db
def test_cohort_preview_no_datasets_refused(cast):
    with pytest.raises(ValidationError) as refused:
        services.cohort_preview(by=cast.researcher_member, datasets=[], definition={})
    assert refused.value.message_dict == {"datasets": ["Choose at least one dataset."]}


@pytest.mark.django_db
@pytest.mark.parametrize("letter", [b"hello, this is a letter", b"%PDF-1.4 truncated without an end marker"])
def test_ethics_submit_non_pdf_letter_refused(cast, settings, letter):
    project = factories.project(pi=cast.researcher_member)
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        factories.submitted_ethics(project, by=cast.researcher_member, letter=letter)
    assert refused.value.message_dict == {"letter": [
        "The letter is not a PDF file (its content does not start with %PDF- and end with %%EOF)."]}
    assert EthicsApproval.objects.count() == 0
    assert _verbs_since(before) == []
    assert not (settings.UPLOADS_ROOT / "ethics").exists()


@pytest.mark.django_db
def test_ethics_submit_reversed_dates_refused(cast):
    project = factories.project(pi=cast.researcher_member)
    today = timezone.localdate()
    with pytest.raises(ValidationError) as refused:
        factories.submitted_ethics(project, approved_on=today + timedelta(days=10), expires_on=today + timedelta(days=5))
    assert refused.value.message_dict == {"expires_on": ["The expiry date must be after the approval date."]}
    assert EthicsApproval.objects.count() == 0


@pytest.mark.django_db
def test_request_reject_without_reason_refused(cast):
    request = _approvable(cast)
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.request_reject(request=request, by=cast.officer, reason="  ")
    assert refused.value.message_dict == {"reason": ["Give a reason; the researcher will see it."]}
    assert DataAccessRequest.objects.get(pk=request.pk).status == R.SUBMITTED
    assert _verbs_since(before) == []


@pytest.mark.django_db
def test_policy_update_unknown_setting_refused(cast):
    officer = cast.officer
    before = _last_seq()
    with pytest.raises(ValidationError) as refused:
        services.policy_update(by=officer, note="x", min_patient=3)
    assert refused.value.message_dict == {"min_patient": ["Not a policy setting."]}
    assert _verbs_since(before) == []
