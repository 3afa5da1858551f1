"""Egress services: the adapter state machine, validation of tampered adapters, the audit gates at
their boundaries and audit_receive, sign-off separation of duties, release preconditions, the signed
zip and its verification, sponsor visibility and downloads, and revocation."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from egress import audit_gates
from egress import services as egress
from egress.models import Adapter, AuditPolicy, Download, Release, SignOff, TermsAcceptance
from egress.signing import SignatureError
from egress.verify import VerificationError, verify_release
from governance import services as governance
from governance.models import CohortRecord, DataAccessRequest, DirectIdentifier, EthicsApproval
from portal import services as portal
from portal.models import ApiToken, AuditEvent, Organisation, Role
from tests import factories, flow
from training import services as training
from training.models import TrainingJob

A = Adapter.Status
S = TrainingJob.Status
ADAPTER_FILE = "adapter_model.safetensors"

# The design's adapter state machine, written out here independently of egress/services.py.
ADAPTER_MOVES = {
    (A.QUARANTINED, A.VALIDATED), (A.QUARANTINED, A.REJECTED),
    (A.VALIDATED, A.IN_REVIEW), (A.VALIDATED, A.REJECTED),
    (A.IN_REVIEW, A.APPROVED), (A.IN_REVIEW, A.REJECTED),
    (A.APPROVED, A.RELEASED), (A.APPROVED, A.REJECTED),
    (A.RELEASED, A.REVOKED),
}
# Who makes each move: the system (validator, audit) or a person with the right role.
MOVER = {A.QUARANTINED: None, A.VALIDATED: None, A.IN_REVIEW: None, A.APPROVED: "reviewer", A.REJECTED: "reviewer",
         A.RELEASED: "officer", A.REVOKED: "officer"}


@pytest.fixture(autouse=True)
def _egress_storage(request, settings, tmp_path):
    """tests/egress/conftest.py turns the root conftest's storage isolation off for Django-free tests."""
    flow.isolate_storage(settings, tmp_path)
    flow.fast_passwords(settings)


def events(verb: str, target=None) -> int:
    found = AuditEvent.objects.filter(verb=verb)
    if target is not None:
        found = found.filter(target_id=str(target.pk))
    return found.count()


def quarantined_adapter(*, extras: dict[str, bytes] | None = None, **request_kwargs) -> Adapter:
    """A succeeded job whose output (stock-peft weights, plus `extras`) egress received."""
    job = flow.succeeded_job(request=flow.approved_request(n_patients=5, **request_kwargs))
    quarantine = Path(settings.QUARANTINE_ROOT) / str(job.pk)
    quarantine.mkdir(parents=True)
    (quarantine / ADAPTER_FILE).write_bytes(flow.peft_adapter_bytes(job.recipe))
    for name, data in (extras or {}).items():
        (quarantine / name).parent.mkdir(parents=True, exist_ok=True)
        (quarantine / name).write_bytes(data)
    return egress.adapter_receive(job=job, quarantine_dir=quarantine)


# The adapter state machine ---------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("to", list(A))
@pytest.mark.parametrize("start", list(A))
def test_adapter_transition_table(start, to):
    adapter = quarantined_adapter()
    Adapter.objects.filter(pk=adapter.pk).update(status=start)
    mover = {None: None, "reviewer": factories.reviewer, "officer": factories.officer}[MOVER[to]]
    by = mover() if mover else None
    before = AuditEvent.objects.count()

    if start == to:
        moved = egress.adapter_transition(adapter=adapter, to=to, by=by, reason="why")
        assert moved.status == start
        assert AuditEvent.objects.count() == before
    elif (start, to) in ADAPTER_MOVES:
        egress.adapter_transition(adapter=adapter, to=to, by=by, reason="why")
        adapter.refresh_from_db()
        assert adapter.status == to
        event = AuditEvent.objects.filter(verb=f"adapter.{to}").latest("seq")
        assert (event.actor, event.payload) == (by, {"from": start.value, "reason": "why"})
        if to == A.REJECTED:
            assert adapter.rejected_reason == "why"
            assert timedelta(days=29) < adapter.delete_after - timezone.now() <= timedelta(days=30)
        else:
            assert adapter.delete_after is None
    else:
        with pytest.raises(egress.EgressError) as caught:
            egress.adapter_transition(adapter=adapter, to=to, by=by)
        assert caught.value.messages == [f"An adapter that is {start.label.lower()} cannot become {to.label.lower()}."]
        adapter.refresh_from_db()
        assert adapter.status == start
        assert AuditEvent.objects.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize("to", [A.QUARANTINED, A.VALIDATED, A.IN_REVIEW])
@pytest.mark.parametrize("persona", ["reviewer", "officer", "researcher"])
def test_adapter_transition_people_cannot_make_system_moves(persona, to):
    adapter = quarantined_adapter()
    start = {A.QUARANTINED: A.VALIDATED, A.VALIDATED: A.QUARANTINED, A.IN_REVIEW: A.VALIDATED}[to]
    Adapter.objects.filter(pk=adapter.pk).update(status=start)
    person = {"reviewer": factories.reviewer, "officer": factories.officer, "researcher": factories.researcher}[persona]()
    before = AuditEvent.objects.count()

    with pytest.raises(PermissionDenied) as caught:
        egress.adapter_transition(adapter=adapter, to=to, by=person)

    assert str(caught.value) == "Only the validator and the audit move an adapter to this status."
    adapter.refresh_from_db()
    assert adapter.status == start
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize("to", [A.APPROVED, A.REJECTED, A.RELEASED, A.REVOKED])
def test_adapter_transition_researcher_cannot_make_review_or_release_moves(to):
    adapter = quarantined_adapter()
    start = {A.APPROVED: A.IN_REVIEW, A.REJECTED: A.IN_REVIEW, A.RELEASED: A.APPROVED, A.REVOKED: A.RELEASED}[to]
    Adapter.objects.filter(pk=adapter.pk).update(status=start)
    member = adapter.job.request.project.principal_investigator

    with pytest.raises(PermissionDenied) as caught:
        egress.adapter_transition(adapter=adapter, to=to, by=member)

    assert str(caught.value) == "Your role does not allow this."
    adapter.refresh_from_db()
    assert adapter.status == start


# Validation --------------------------------------------------------------------------------------

def _tensors(adapter: Adapter) -> dict:
    """The tensors the worker wrote, to tamper with."""
    from safetensors.torch import load

    return load((Path(adapter.quarantine_dir) / ADAPTER_FILE).read_bytes())


def _replace_output(adapter: Adapter, tensors: dict) -> None:
    from safetensors.torch import save

    (Path(adapter.quarantine_dir) / ADAPTER_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))


def _cohort_mrn(adapter: Adapter) -> str:
    patients = CohortRecord.objects.filter(cohort=adapter.job.request.cohort).values("patient_id")
    return DirectIdentifier.objects.filter(patient_id__in=patients, kind=DirectIdentifier.Kind.MRN).order_by("pk")[0].value


EXTRAS = {"progress.jsonl": b'{"step": 1}\n', "notes.txt": b"Jane Doe was admitted", "logs/run.log": b"stderr"}


def _assert_rejected_by(adapter: Adapter, rule: str, code: str) -> None:
    adapter.refresh_from_db()
    assert adapter.status == A.REJECTED
    failed = [(v["rule"], v["code"]) for v in adapter.validation_report["verdicts"] if v["status"] == "failed"]
    assert failed == [(rule, code)]
    assert adapter.rejected_reason.startswith(f"Validation failed: {rule} [{code}]: ")
    assert adapter.audit_job is None
    assert TrainingJob.objects.filter(kind=TrainingJob.Kind.AUDIT).count() == 0
    assert sorted(p.name for p in Path(adapter.quarantine_dir).iterdir()) == [ADAPTER_FILE]
    assert not Path(adapter.quarantine_dir + "-release").exists()
    event = AuditEvent.objects.get(verb="adapter.rejected")
    assert event.payload["rules_failed"] == [adapter.rejected_reason.removeprefix("Validation failed: ")]


@pytest.mark.django_db
def test_adapter_validate_extra_tensor_rejected():
    import torch

    adapter = quarantined_adapter(extras=EXTRAS)
    tensors = _tensors(adapter)
    tensors["base_model.model.lm_head.weight"] = torch.zeros(8, 32)
    _replace_output(adapter, tensors)

    egress.adapter_validate(adapter=adapter)

    _assert_rejected_by(adapter, "tensor_set", "extra_tensor")


@pytest.mark.django_db
def test_adapter_validate_nan_rejected():
    adapter = quarantined_adapter(extras=EXTRAS)
    tensors = _tensors(adapter)
    tensors[sorted(n for n in tensors if "lora_B" in n)[0]][0, 0] = float("nan")
    _replace_output(adapter, tensors)

    egress.adapter_validate(adapter=adapter)

    _assert_rejected_by(adapter, "values_finite", "nan")


@pytest.mark.django_db
def test_adapter_validate_cohort_identifier_in_the_float_bytes_rejected_and_never_reported():
    import torch

    adapter = quarantined_adapter()
    mrn = _cohort_mrn(adapter)
    tensors = _tensors(adapter)
    name = sorted(n for n in tensors if "lora_A" in n)[0]
    raw = bytearray(tensors[name].numpy().tobytes())
    secret = mrn.encode() + b"\x00" * (-len(mrn) % 4)  # whole float32 words; tiny, finite values
    raw[16:16 + len(secret)] = secret
    tensors[name] = torch.frombuffer(raw, dtype=torch.float32).reshape(tensors[name].shape).clone()
    _replace_output(adapter, tensors)
    (Path(adapter.quarantine_dir) / f"{mrn}.txt").write_bytes(b"left behind")  # a file named after the patient, too

    egress.adapter_validate(adapter=adapter)

    _assert_rejected_by(adapter, "identifiers", "identifier_hit")
    written = [adapter.rejected_reason, json.dumps(adapter.validation_report),
               *(json.dumps(e.payload) for e in AuditEvent.objects.filter(target_id=str(adapter.pk)))]
    assert [text for text in written if mrn.lower() in text.lower()] == []
    left = adapter.validation_report["verdicts"][0]["figures"]["left_behind"]
    assert left == [{"name": "<entry 0: name withheld, it contains a patient identifier>", "kind": "file", "bytes": 11}]


@pytest.mark.django_db
def test_adapter_validate_accepted_keeps_only_the_adapter_and_queues_the_audit():
    adapter = quarantined_adapter(extras=EXTRAS)

    validated = egress.adapter_validate(adapter=adapter)

    adapter.refresh_from_db()
    assert adapter.status == A.VALIDATED
    assert sorted(p.name for p in Path(adapter.quarantine_dir).iterdir()) == [ADAPTER_FILE]
    left = {entry["name"]: entry["kind"] for entry in adapter.validation_report["verdicts"][0]["figures"]["left_behind"]}
    assert left == {"logs": "directory", "notes.txt": "file", "progress.jsonl": "file"}
    release_file = Path(adapter.rewritten_path)
    assert release_file == Path(adapter.quarantine_dir + "-release") / ADAPTER_FILE
    assert hashlib.sha256(release_file.read_bytes()).hexdigest() == adapter.sha256
    assert (adapter.audit_job.kind, adapter.audit_job.status, adapter.audit_job.parent) == (
        TrainingJob.Kind.AUDIT, S.QUEUED, adapter.job)
    assert validated.audit_job == adapter.audit_job


@pytest.mark.django_db
def test_adapter_validate_twice_is_a_no_op():
    adapter = egress.adapter_validate(adapter=quarantined_adapter())

    again = egress.adapter_validate(adapter=adapter)

    assert again.status == A.VALIDATED
    assert TrainingJob.objects.filter(kind=TrainingJob.Kind.AUDIT).count() == 1
    assert events("adapter.validated") == 1


# The audit gates ---------------------------------------------------------------------------------

LOG2_SPACE = round(math.log2(10**7), 4)


def _attack(auc: float = 0.5, p_value: float = 0.5, tpr_lower: float = 0.0) -> dict:
    return {"n_members": 200, "n_nonmembers": 200, "auc": auc, "auc_ci_low": max(0.0, auc - 0.05),
            "auc_ci_high": min(1.0, auc + 0.05), "p_value": p_value, "tpr_at_1pct_fpr": tpr_lower,
            "tpr_at_0_1pct_fpr": 0.0, "tpr_at_1pct_fpr_lower": tpr_lower, "roc": []}


def _canaries(once: float = 1.0, *, once_rank: float = 1.0, tenfold: float = 1.0) -> dict:
    group = lambda repeats, rank, extrapolated: {  # noqa: E731
        "repeats": repeats, "n_canaries": 2, "exposure": [rank, 0.5], "exposure_mean": (rank + 0.5) / 2,
        "exposure_max": rank, "exposure_extrapolated": [extrapolated, 0.5],
        "exposure_extrapolated_mean": (extrapolated + 0.5) / 2}
    return {"log2_space": LOG2_SPACE, "n_candidates": 16384, "max_exposure": 14.0001,
            "groups": [group(1, once_rank, once), group(10, tenfold, tenfold)]}


def _extraction(members_near: float = 0.0, holdout_near: float = 0.0, p_value: float = 1.0) -> dict:
    return {"prompt_fraction": 0.5, "suffix_tokens": 32, "near_threshold": 0.9,
            "members": {"n": 64, "exact": 0, "near": round(members_near * 64), "exact_rate": 0.0, "near_rate": members_near},
            "nonmembers": {"n": 64, "exact": 0, "near": round(holdout_near * 64), "exact_rate": 0.0, "near_rate": holdout_near},
            "exact_p_value": 1.0, "near_p_value": p_value}


def _result(**parts) -> dict:
    return {"schema_version": 1, "membership": {"loss": _attack(), "reference": _attack()}, "canaries": _canaries(),
            "extraction": _extraction(), "elapsed_seconds": 1.0, **parts}


def _gate(verdict: dict, name: str) -> dict:
    return next(g for g in verdict["gates"] if g["gate"] == name)


@pytest.mark.django_db
@pytest.mark.parametrize("auc, p_value, status", [
    (0.65, 0.001, "warn"),     # at the limit: not above it
    (0.651, 0.049, "fail"),    # above it, significant
    (0.651, 0.05, "warn"),     # above it, not significant at 0.05
    (0.99, 0.2, "warn"),
    (0.60, 0.001, "pass"),     # the warning level is exclusive too
    (0.601, 0.5, "warn"),
])
def test_audit_gates_membership_auc_boundary(auc, p_value, status):
    result = _result(membership={"loss": _attack(0.55, 0.3), "reference": _attack(auc, p_value)})

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    gate = _gate(verdict, "membership_auc")
    assert (gate["status"], gate["value"], gate["threshold"]) == (status, round(auc, 4), 0.65)
    assert gate["detail"].startswith(f"Best attack (reference): AUC {auc:.3f}")
    assert verdict["passed"] is (status != "fail")
    assert verdict["failed"] == (["membership_auc"] if status == "fail" else [])


@pytest.mark.django_db
@pytest.mark.parametrize("bound, status", [(0.05, "warn"), (0.0501, "fail"), (0.02, "pass"), (0.0201, "warn")])
def test_audit_gates_tpr_lower_bound_boundary(bound, status):
    result = _result(membership={"loss": _attack(tpr_lower=0.001), "min_k": _attack(tpr_lower=bound)})

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    gate = _gate(verdict, "tpr_at_1pct_fpr")
    assert (gate["status"], gate["value"], gate["threshold"]) == (status, bound, 0.05)
    assert "(min_k)" in gate["detail"]
    assert verdict["failed"] == (["tpr_at_1pct_fpr"] if status == "fail" else [])


@pytest.mark.django_db
@pytest.mark.parametrize("n_nonmembers, status", [(99, "warn"), (100, "fail")])
def test_audit_gates_tpr_needs_a_hundred_nonmembers_to_fail(n_nonmembers, status):
    attack = {**_attack(tpr_lower=0.2), "n_nonmembers": n_nonmembers}
    result = _result(membership={"loss": attack})

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    gate = _gate(verdict, "tpr_at_1pct_fpr")
    assert gate["status"] == status
    assert ("not enough to judge" in gate["detail"]) is (status == "warn")


@pytest.mark.django_db
@pytest.mark.parametrize("below_limit, status", [(0.0, "fail"), (0.001, "warn"), (4.0, "warn"), (4.001, "pass")])
def test_audit_gates_canary_exposure_boundary(below_limit, status):
    limit = LOG2_SPACE - 4.0  # log2|R| - the policy's margin
    result = _result(canaries=_canaries(limit - below_limit, once_rank=10.0))

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    gate = _gate(verdict, "canary_exposure")
    assert (gate["status"], gate["threshold"]) == (status, round(limit, 3))
    assert verdict["failed"] == (["canary_exposure"] if status == "fail" else [])


@pytest.mark.django_db
def test_audit_gates_canary_repeated_ten_times_is_not_gated():
    result = _result(canaries=_canaries(1.0, tenfold=LOG2_SPACE))

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    assert (_gate(verdict, "canary_exposure")["status"], verdict["passed"]) == ("pass", True)


@pytest.mark.django_db
def test_audit_gates_canary_ranked_first_among_all_candidates_fails():
    result = _result(canaries=_canaries(3.0, once_rank=14.0001))

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    assert _gate(verdict, "canary_exposure")["status"] == "fail"


@pytest.mark.django_db
@pytest.mark.parametrize("members_near, p_value, status", [
    (0.2, 0.049, "fail"),
    (0.2, 0.05, "warn"),
    (0.2, 0.199, "warn"),
    (0.2, 0.2, "pass"),
    (0.0, 0.001, "pass"),  # members not above the holdout: nothing extracted
])
def test_audit_gates_extraction_boundary(members_near, p_value, status):
    result = _result(extraction=_extraction(members_near, 0.0, p_value))

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    gate = _gate(verdict, "extraction")
    assert (gate["status"], gate["value"], gate["threshold"]) == (status, p_value, 0.05)
    assert verdict["failed"] == (["extraction"] if status == "fail" else [])


@pytest.mark.django_db
def test_audit_gates_no_membership_attack_fails():
    verdict = audit_gates.evaluate(_result(membership={}), egress.audit_policy_current())

    assert verdict["failed"] == ["membership"]


@pytest.mark.django_db
def test_audit_gates_use_the_newest_policy_version():
    egress.audit_policy_current()
    AuditPolicy.objects.create(version=2, max_auc=0.7)
    result = _result(membership={"loss": _attack(0.68, 0.001)})

    verdict = audit_gates.evaluate(result, egress.audit_policy_current())

    assert (verdict["policy_version"], _gate(verdict, "membership_auc")["status"]) == (2, "warn")


# audit_receive -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_audit_receive_passing_numbers_send_the_adapter_to_review():
    adapter = flow.adapter_in_review()

    assert adapter.status == A.IN_REVIEW
    assert adapter.audit_report["passed"] is True
    assert adapter.audit_report["metrics"] == flow.passing_audit_numbers()
    assert adapter.audit_policy.version == 1
    assert events("adapter.in_review", adapter) == 1


@pytest.mark.django_db
def test_audit_receive_failing_gate_rejects_naming_it():
    numbers = flow.passing_audit_numbers()
    numbers["membership"]["reference"].update(auc=0.71, p_value=0.001)

    adapter = flow.adapter_in_review(audit=numbers)

    assert adapter.status == A.REJECTED
    assert adapter.rejected_reason == "Privacy audit failed: membership_auc = 0.71 (limit 0.65)"
    assert adapter.audit_report["failed"] == ["membership_auc"]
    assert events("adapter.rejected", adapter) == 1


def _validated_adapter() -> Adapter:
    return egress.adapter_validate(adapter=quarantined_adapter())


@pytest.mark.django_db
@pytest.mark.parametrize("ended", [S.FAILED, S.CANCELLED, S.TIMED_OUT])
def test_audit_receive_audit_that_did_not_finish_rejects(ended):
    adapter = _validated_adapter()
    training.job_transition(job=adapter.audit_job, to=S.STAGING)
    training.job_transition(job=adapter.audit_job, to=S.RUNNING)
    audit = training.job_transition(job=adapter.audit_job, to=ended, reason="worker gone")

    egress.audit_receive(job=audit)

    adapter.refresh_from_db()
    assert adapter.status == A.REJECTED
    assert adapter.rejected_reason == (f"The privacy audit did not complete ({ended.label.lower()}); "
                                       "an unaudited adapter never leaves.")
    assert adapter.audit_report == {}


@pytest.mark.django_db
def test_audit_job_failing_in_the_worker_rejects_the_adapter():
    from training.runner import execute_job

    adapter = _validated_adapter()
    request = adapter.job.request
    governance.request_transition(request=request, to=DataAccessRequest.Status.SUSPENDED, by=request.decided_by,
                                  reason="Complaint under review.")

    execute_job(str(adapter.audit_job.pk))  # fails its preconditions before any sandbox

    adapter.refresh_from_db()
    assert adapter.audit_job.status == S.FAILED
    assert (adapter.status, adapter.rejected_reason) == (
        A.REJECTED, "The privacy audit did not complete (failed); an unaudited adapter never leaves.")


# Sign-off ----------------------------------------------------------------------------------------

def _refused(adapter: Adapter, by, exc_type, message: str, **kw) -> None:
    before = (SignOff.objects.count(), AuditEvent.objects.count())
    with pytest.raises(exc_type) as caught:
        egress.signoff_record(adapter=adapter, by=by, decision=kw.get("decision", "approve"), reason=kw.get("reason", "Read it."))
    text = caught.value.messages if isinstance(caught.value, ValidationError) else str(caught.value)
    assert text == message
    # Nothing changes; a refused person's attempt is itself audited (bad input is not).
    audited = 1 if exc_type is PermissionDenied and "role" not in message else 0
    assert (SignOff.objects.count(), AuditEvent.objects.count()) == (before[0], before[1] + audited)
    if audited:
        assert AuditEvent.objects.order_by("-seq").first().verb == "adapter.signoff_refused"
    adapter.refresh_from_db()
    assert adapter.status == A.IN_REVIEW


@pytest.mark.django_db
def test_signoff_reviewer_on_the_project_refused():
    adapter = flow.adapter_in_review()
    project = adapter.job.request.project
    reviewer = factories.reviewer()
    governance.project_add_member(project=project, user=reviewer, by=project.principal_investigator)

    _refused(adapter, reviewer, PermissionDenied, "Nobody signs off an adapter from their own project or request.")


@pytest.mark.django_db
def test_signoff_requester_who_is_also_a_reviewer_refused():
    requester = factories.user(Role.RESEARCHER, Role.PRIVACY_REVIEWER)
    adapter = flow.adapter_in_review(researcher=requester)

    _refused(adapter, requester, PermissionDenied, "Nobody signs off an adapter from their own project or request.")


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["officer", "researcher", "steward", "sponsor"])
def test_signoff_without_the_reviewer_role_refused(persona):
    adapter = flow.adapter_in_review()
    person = {"officer": factories.officer, "researcher": factories.researcher, "steward": factories.steward,
              "sponsor": factories.sponsor}[persona]()

    _refused(adapter, person, PermissionDenied, "Your role does not allow this.")


@pytest.mark.django_db
def test_signoff_same_reviewer_twice_refused():
    adapter = flow.adapter_in_review()
    reviewer = factories.reviewer()
    egress.signoff_record(adapter=adapter, by=reviewer, decision="approve", reason="Fine.")

    _refused(adapter, reviewer, PermissionDenied, "You have already signed this adapter off; a second reviewer must decide.")
    assert list(adapter.signoffs.values_list("reviewer", flat=True)) == [reviewer.pk]


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["", "   \n"])
def test_signoff_without_a_reason_refused(reason):
    adapter = flow.adapter_in_review()

    _refused(adapter, factories.reviewer(), ValidationError, ["Give a reason either way; it is part of the release record."],
             reason=reason)


@pytest.mark.django_db
def test_signoff_unknown_decision_refused():
    adapter = flow.adapter_in_review()

    _refused(adapter, factories.reviewer(), ValidationError, ["approve or reject."], decision="maybe")


@pytest.mark.django_db
def test_signoff_second_distinct_reviewer_approves():
    adapter = flow.adapter_in_review()
    first, second = factories.reviewer(), factories.reviewer()
    egress.signoff_record(adapter=adapter, by=first, decision="approve", reason="Audit read.")
    adapter.refresh_from_db()
    assert adapter.status == A.IN_REVIEW  # one approval is not enough

    egress.signoff_record(adapter=adapter, by=second, decision="approve", reason="  Validation read.  ")

    adapter.refresh_from_db()
    assert adapter.status == A.APPROVED
    assert list(adapter.signoffs.values_list("reviewer", "decision", "reason")) == [
        (first.pk, "approve", "Audit read."), (second.pk, "approve", "Validation read.")]
    assert events("adapter.signoff_approve", adapter) == 2
    assert AuditEvent.objects.get(verb="adapter.approved").actor == second


@pytest.mark.django_db
@pytest.mark.parametrize("first_decision", ["approve", "reject"])
def test_signoff_one_rejection_rejects(first_decision):
    adapter = flow.adapter_in_review()
    first, second = factories.reviewer(), factories.reviewer()
    if first_decision == "approve":
        egress.signoff_record(adapter=adapter, by=first, decision="approve", reason="Fine.")
        rejecter = second
    else:
        rejecter = first

    egress.signoff_record(adapter=adapter, by=rejecter, decision="reject", reason="Canary warning is too close.")

    adapter.refresh_from_db()
    assert (adapter.status, adapter.rejected_reason) == (A.REJECTED, "Rejected in review: Canary warning is too close.")
    with pytest.raises(egress.EgressError) as caught:
        egress.signoff_record(adapter=adapter, by=factories.reviewer(), decision="approve", reason="Late.")
    assert caught.value.messages == ["This adapter is rejected, not awaiting review."]


# Release -----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_release_create_of_an_adapter_not_approved_refused_and_audited():
    adapter = flow.adapter_in_review()
    egress.signing_key_create()
    officer = factories.officer()

    with pytest.raises(egress.EgressError) as caught:
        egress.release_create(adapter=adapter, organisation=factories.organisation(kind=Organisation.Kind.SPONSOR), by=officer)

    assert caught.value.messages == ["Only an approved adapter can be released; this one is awaiting privacy review."]
    assert Release.objects.count() == 0
    adapter.refresh_from_db()
    assert adapter.status == A.IN_REVIEW
    event = AuditEvent.objects.get(verb="release.refused")
    assert (event.actor, event.target_id, event.payload) == (officer, str(adapter.pk), {"reason": "adapter is in_review"})


@pytest.mark.django_db
def test_release_create_after_the_ethics_approval_expired_refused_and_audited():
    adapter = flow.approved_adapter()
    approval = adapter.job.request.ethics_approval
    EthicsApproval.objects.filter(pk=approval.pk).update(expires_on=timezone.localdate() - timedelta(days=1))
    governance.ethics_expire_due()  # the nightly task: expired, and the request suspended
    egress.signing_key_create()
    officer, sponsor_org = factories.officer(), factories.organisation(kind=Organisation.Kind.SPONSOR)
    before = AuditEvent.objects.count()

    with pytest.raises(egress.EgressError) as caught:
        egress.release_create(adapter=adapter, organisation=sponsor_org, by=officer)

    problems = ["The request is suspended, not approved.", "The request's ethics approval is not valid today."]
    assert caught.value.messages == problems
    assert (Release.objects.count(), list(Path(settings.RELEASES_ROOT).iterdir())) == (0, [])
    adapter.refresh_from_db()
    assert adapter.status == A.APPROVED
    assert AuditEvent.objects.count() == before + 1
    assert AuditEvent.objects.latest("seq").verb == "release.refused"
    assert AuditEvent.objects.latest("seq").payload == {"reason": problems}


@pytest.mark.django_db
def test_release_create_to_a_hospital_organisation_refused():
    adapter = flow.approved_adapter()
    egress.signing_key_create()

    with pytest.raises(ValidationError) as caught:
        egress.release_create(adapter=adapter, organisation=factories.organisation(), by=factories.officer())

    assert caught.value.message_dict == {"organisation": ["Releases go to external sponsor organisations."]}
    assert Release.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["reviewer", "researcher", "sponsor"])
def test_release_create_by_someone_not_an_officer_refused(persona):
    adapter = flow.approved_adapter()
    egress.signing_key_create()
    person = {"reviewer": factories.reviewer, "researcher": factories.researcher, "sponsor": factories.sponsor}[persona]()

    with pytest.raises(PermissionDenied):
        egress.release_create(adapter=adapter, organisation=factories.organisation(kind=Organisation.Kind.SPONSOR), by=person)

    assert Release.objects.count() == 0


@pytest.mark.django_db
def test_release_create_signs_a_zip_that_verifies():
    release = flow.release()

    verified = verify_release(release.zip_path, flow.public_key_path())

    assert sorted(verified.files) == ["README.md", "adapter_config.json", ADAPTER_FILE]
    assert verified.manifest_sha256 == release.manifest_sha256
    assert verified.manifest == release.manifest
    assert verified.manifest["release_id"] == str(release.pk)
    assert verified.files[ADAPTER_FILE]["sha256"] == release.adapter.sha256
    assert hashlib.sha256(Path(release.zip_path).read_bytes()).hexdigest() == release.zip_sha256
    assert release.adapter.status == A.RELEASED
    assert events("release.created", release) == 1


# The signed zip, tampered with (built once: verification needs no database) ---------------------

@pytest.fixture(scope="module")
def signed_release(django_db_setup, django_db_blocker, tmp_path_factory) -> dict:
    """A release zip and its public key, made through the services in a transaction rolled back
    at once; the files stay. Also the bytes the worker wrote into quarantine, and the recipe."""
    root = tmp_path_factory.mktemp("release")
    with django_db_blocker.unblock(), override_settings(
            DATA_ROOT=root / "data", QUARANTINE_ROOT=root / "quarantine", RELEASES_ROOT=root / "releases",
            UPLOADS_ROOT=root / "uploads", STAGING_ROOT=root / "staging", MODELS_ROOT=root / "models",
            SIGNING_KEY_PATH=root / "keys" / "signing.pem",
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        with transaction.atomic():
            release = flow.release()
            out = {"zip": Path(release.zip_path), "key": flow.public_key_path(), "recipe": release.adapter.job.recipe,
                   "worker_adapter": (Path(release.adapter.quarantine_dir) / ADAPTER_FILE).read_bytes(),
                   "base": Path(release.adapter.job.base_model.local_path)}
            transaction.set_rollback(True)
    return out


def _rewrite_member(source: Path, target: Path, member: str, position: int) -> None:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            data = bytearray(original.read(info))
            if info.filename == member:
                data[position] ^= 0x01
            copy.writestr(info, bytes(data))


MEMBERS = ["README.md", "adapter_config.json", ADAPTER_FILE, "manifest.json", "manifest.sig"]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("member", MEMBERS)
def test_verify_release_any_changed_byte_fails(signed_release, tmp_path, member, where):
    with zipfile.ZipFile(signed_release["zip"]) as archive:
        size = archive.getinfo(member).file_size
    position = {"first": 0, "middle": size // 2, "last": size - 1}[where]
    tampered = tmp_path / "release.zip"
    _rewrite_member(signed_release["zip"], tampered, member, position)

    with pytest.raises((VerificationError, SignatureError)):
        verify_release(tampered, signed_release["key"])


def test_verify_release_untampered_copy_verifies(signed_release, tmp_path):
    copy = tmp_path / "release.zip"
    _rewrite_member(signed_release["zip"], copy, "none", 0)

    verified = verify_release(copy, signed_release["key"])

    assert sorted(verified.files) == ["README.md", "adapter_config.json", ADAPTER_FILE]


@pytest.mark.parametrize("where", ["first", "middle"])
def test_verify_release_changed_byte_in_the_zip_file_fails(signed_release, tmp_path, where):
    # (Not the last bytes: they are the length of the zip's comment, which no reader trusts.)
    data = bytearray(signed_release["zip"].read_bytes())
    position = {"first": 0, "middle": len(data) // 2}[where]
    data[position] ^= 0x01
    tampered = tmp_path / "release.zip"
    tampered.write_bytes(bytes(data))

    with pytest.raises((VerificationError, SignatureError)):
        verify_release(tampered, signed_release["key"])


def test_verify_release_with_another_key_fails(signed_release, tmp_path):
    from egress.signing import generate_keypair

    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub.pem")

    with pytest.raises(SignatureError):
        verify_release(signed_release["zip"], tmp_path / "other.pub.pem")


def test_released_adapter_gives_the_worker_adapters_logits(signed_release, tmp_path):
    """Stock peft on the registered base model: the released folder (zip's config and weights) and
    the worker's own output (with the same config) give the same logits on a fixed input."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    released = tmp_path / "released"
    with zipfile.ZipFile(signed_release["zip"]) as archive:
        archive.extractall(released, members=[ADAPTER_FILE, "adapter_config.json"])
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / ADAPTER_FILE).write_bytes(signed_release["worker_adapter"])
    shutil.copyfile(released / "adapter_config.json", worker / "adapter_config.json")
    ids = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]])

    def logits(folder: Path):
        base = AutoModelForCausalLM.from_pretrained(signed_release["base"], local_files_only=True)
        model = PeftModel.from_pretrained(base, str(folder)).eval()
        with torch.no_grad():
            return model(input_ids=ids).logits, model

    released_logits, model = logits(released)
    worker_logits, _ = logits(worker)

    assert torch.allclose(released_logits, worker_logits, atol=1e-6)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(float(p.abs().max()) > 0 for p in lora_b)  # the adapter is not a no-op
    base = AutoModelForCausalLM.from_pretrained(signed_release["base"], local_files_only=True).eval()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, released_logits, atol=1e-6)


# Sponsors: terms, downloads, visibility ---------------------------------------------------------

SPONSOR_PERSONAS = ["own_sponsor", "other_sponsor", "officer", "member"]


@pytest.fixture
def released(db):
    release = flow.release()
    own = factories.sponsor(org=release.organisation)
    return release, {"own_sponsor": own, "other_sponsor": factories.sponsor(), "officer": factories.officer(),
                     "member": release.adapter.job.request.project.principal_investigator}


def _download_events(release: Release) -> list[tuple[str, dict]]:
    return list(AuditEvent.objects.filter(target_id=str(release.pk), verb__startswith="release.download")
                .order_by("seq").values_list("verb", "payload"))


@pytest.mark.django_db
@pytest.mark.parametrize("persona", SPONSOR_PERSONAS)
def test_terms_accept_visibility(released, persona):
    release, people = released

    if persona == "own_sponsor":
        acceptance = egress.terms_accept(release=release, by=people[persona])
        assert (acceptance.user, acceptance.terms_sha256) == (people[persona], release.terms_sha256)
        assert events("release.terms_accepted", release) == 1
    else:
        with pytest.raises(Release.DoesNotExist):
            egress.terms_accept(release=release, by=people[persona])
        assert TermsAcceptance.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("persona", SPONSOR_PERSONAS)
def test_release_download_visibility_after_terms(released, persona):
    release, people = released
    egress.terms_accept(release=release, by=people["own_sponsor"])
    person = people[persona]

    if persona == "own_sponsor":
        path = egress.release_download(release=release, by=person, token=None, address="192.0.2.7")
        assert path == Path(release.zip_path)
        assert list(Download.objects.values_list("user", "address")) == [(person.pk, "192.0.2.7")]
        assert _download_events(release) == [("release.downloaded", {"token": None, "address": "192.0.2.7",
                                                                      "zip_sha256": release.zip_sha256})]
    else:
        with pytest.raises(Release.DoesNotExist):
            egress.release_download(release=release, by=person, token=None, address="192.0.2.7")
        assert Download.objects.count() == 0
        assert _download_events(release) == [("release.download_refused", {"token": None, "address": "192.0.2.7",
                                                                            "reason": "not visible"})]


@pytest.mark.django_db
def test_release_download_before_terms_refused(released):
    release, people = released

    with pytest.raises(PermissionDenied) as caught:
        egress.release_download(release=release, by=people["own_sponsor"], token=None, address=None)

    reason = "Accept the data-use terms of this release before the first download."
    assert str(caught.value) == reason
    assert Download.objects.count() == 0
    assert _download_events(release) == [("release.download_refused", {"token": None, "address": None, "reason": reason})]


@pytest.mark.django_db
def test_release_download_terms_accepted_by_a_colleague_do_not_count(released):
    release, people = released
    egress.terms_accept(release=release, by=people["own_sponsor"])
    colleague = factories.sponsor(org=release.organisation)

    with pytest.raises(PermissionDenied):
        egress.release_download(release=release, by=colleague, token=None, address=None)

    assert Download.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("token_state, reason", [
    ("usable", None),
    ("expired", "This token has expired or been revoked."),
    ("revoked", "This token has expired or been revoked."),
    ("read_only", "This token lacks the releases:download scope."),
])
def test_release_download_with_a_token(released, token_state, reason):
    release, people = released
    sponsor, officer = people["own_sponsor"], people["officer"]
    scopes = [ApiToken.Scope.RELEASES_READ] if token_state == "read_only" else None
    token, _ = portal.api_token_issue(user=sponsor, name="ci", by=officer, days_valid=1, scopes=scopes)
    egress.terms_accept(release=release, by=sponsor)
    if token_state == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif token_state == "revoked":
        portal.api_token_revoke(token=token, by=officer)
    token.refresh_from_db()

    if reason is None:
        egress.release_download(release=release, by=sponsor, token=token, address="198.51.100.1")
        assert list(Download.objects.values_list("token", flat=True)) == [token.pk]
        assert _download_events(release)[0][1]["token"] == token.prefix
    else:
        with pytest.raises(PermissionDenied) as caught:
            egress.release_download(release=release, by=sponsor, token=token, address="198.51.100.1")
        assert str(caught.value) == reason
        assert Download.objects.count() == 0
        assert _download_events(release) == [("release.download_refused", {"token": token.prefix,
                                                                            "address": "198.51.100.1", "reason": reason})]


@pytest.mark.django_db
def test_release_download_every_attempt_is_audited(released):
    release, people = released
    sponsor = people["own_sponsor"]
    egress.terms_accept(release=release, by=sponsor)

    for _ in range(3):
        egress.release_download(release=release, by=sponsor, token=None, address=None)

    assert Download.objects.count() == 3
    assert [verb for verb, _ in _download_events(release)] == ["release.downloaded"] * 3


# Revocation --------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_release_revoke_stops_downloads_at_once_and_refunds_nothing(released):
    release, people = released
    sponsor, officer = people["own_sponsor"], people["officer"]
    egress.terms_accept(release=release, by=sponsor)
    egress.release_download(release=release, by=sponsor, token=None, address=None)
    request = release.adapter.job.request

    egress.release_revoke(release=release, by=officer, reason="Re-identification concern raised.")

    release.refresh_from_db()
    reason = f"This release was revoked on {release.revoked_at:%Y-%m-%d}: Re-identification concern raised."
    with pytest.raises(PermissionDenied) as caught:
        egress.release_download(release=release, by=sponsor, token=None, address=None)
    assert str(caught.value) == reason
    with pytest.raises(PermissionDenied):
        egress.terms_accept(release=release, by=sponsor)
    assert [verb for verb, _ in _download_events(release)] == ["release.downloaded", "release.download_refused"]
    adapter = Adapter.objects.get(pk=release.adapter_id)
    assert (adapter.status, adapter.rejected_reason) == (A.REVOKED, "")
    assert Download.objects.count() == 1  # the earlier download stays on record
    # Nothing is given back: the adapter cannot be released again, the request does not get a new
    # training run, and the request stays as it was.
    with pytest.raises(egress.EgressError) as caught:
        egress.release_create(adapter=adapter, organisation=factories.organisation(kind=Organisation.Kind.SPONSOR), by=officer)
    assert caught.value.messages == ["Only an approved adapter can be released; this one is revoked."]
    with pytest.raises(ValidationError) as caught:
        training.job_start(request=request, by=request.project.principal_investigator)
    assert caught.value.messages == ["This request already has a training job that is running or succeeded."]
    assert DataAccessRequest.objects.get(pk=request.pk).status == DataAccessRequest.Status.APPROVED


@pytest.mark.django_db
def test_release_revoke_needs_a_reason_and_an_officer(released):
    release, people = released

    with pytest.raises(ValidationError):
        egress.release_revoke(release=release, by=people["officer"], reason=" ")
    with pytest.raises(PermissionDenied):
        egress.release_revoke(release=release, by=people["own_sponsor"], reason="Mine.")

    release.refresh_from_db()
    assert release.revoked_at is None


@pytest.mark.django_db
def test_release_revoke_twice_is_a_no_op(released):
    release, people = released
    egress.release_revoke(release=release, by=people["officer"], reason="First.")

    egress.release_revoke(release=release, by=people["officer"], reason="Second.")

    release.refresh_from_db()
    assert release.revoked_reason == "First."
    assert events("release.revoked", release) == 1


@pytest.mark.django_db
def test_release_create_second_organisation_gets_its_own_signed_release():
    first = flow.release()
    second_org = factories.organisation(kind=Organisation.Kind.SPONSOR)

    second = egress.release_create(adapter=first.adapter, organisation=second_org, by=factories.officer())

    assert second.pk != first.pk and second.manifest["release_to"] == second_org.name
    assert Adapter.objects.get(pk=first.adapter.pk).status == Adapter.Status.RELEASED
    with pytest.raises(egress.EgressError, match="already been released"):
        egress.release_create(adapter=first.adapter, organisation=second_org, by=factories.officer())


# The privacy budget at release ---------------------------------------------------------------

@pytest.fixture
def cast(db):
    return flow.cast()


def _dp_adapter(cast, *, budget: float | None, epsilon: float = 7.6, dp: bool = True):
    from governance import privacy_budget

    recipe = {**flow.TINY_RECIPE, **({"dp": {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}} if dp else {})}
    request = flow.approved_request(cast=cast, recipe=recipe)
    dataset = request.datasets.get()
    if budget is not None:  # set after approval: the release itself must hold the line
        dataset = privacy_budget.dataset_set_budget(dataset=dataset, epsilon=budget, period_days=365, by=cast.officer)
    metrics = {"epsilon": epsilon, "noise_multiplier": 0.9, "sample_rate": 0.1} if dp else {}
    job = flow.succeeded_job(request=request, final_metrics=metrics)
    return flow.approved_adapter(adapter=flow.adapter_in_review(job=job)), dataset


def test_a_release_spends_the_reported_epsilon_once_and_revocation_refunds_nothing(cast):
    from governance import privacy_budget

    adapter, dataset = _dp_adapter(cast, budget=20.0)
    first = flow.release(adapter=adapter, officer=cast.officer)
    flow.release(adapter=adapter, officer=cast.officer)  # a second sponsor: post-processing, no new spend
    assert privacy_budget.budget_status(dataset).remaining == pytest.approx(12.4)
    [facts] = first.manifest["privacy_budget"]
    assert facts == {"dataset": dataset.name, "epsilon_spent": 7.6, "budget_epsilon": 20.0, "remaining_epsilon": 12.4,
                     "period_days": 365, "composition": "basic"}
    dp = first.manifest["differential_privacy"]
    assert (dp["epsilon"], dp["delta"], dp["noise_multiplier"], dp["max_grad_norm"], dp["sample_rate"], dp["steps"],
            dp["accountant"]) == (7.6, 1e-5, 0.9, 1.0, 0.1, 24, "prv")

    egress.release_revoke(release=first, by=cast.officer, reason="Sponsor breached the terms.")
    assert privacy_budget.budget_status(dataset).remaining == pytest.approx(12.4)


def test_a_release_past_the_budget_is_refused_audited_and_leaves_nothing(cast):
    adapter, dataset = _dp_adapter(cast, budget=5.0)
    with pytest.raises(egress.EgressError, match="would exceed the privacy budget"):
        flow.release(adapter=adapter, officer=cast.officer)
    adapter.refresh_from_db()
    assert adapter.status == Adapter.Status.APPROVED and not adapter.releases.exists()
    assert not dataset.privacy_ledger.filter(kind="spend").exists()
    assert AuditEvent.objects.filter(verb="release.refused", target_id=str(adapter.pk)).exists()


def test_a_non_dp_adapter_cannot_leave_a_budgeted_dataset(cast):
    adapter, _ = _dp_adapter(cast, budget=5.0, dp=False)
    with pytest.raises(egress.EgressError, match="reports no ε"):
        flow.release(adapter=adapter, officer=cast.officer)
