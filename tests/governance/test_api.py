"""The governance REST API: happy paths, 401/403/404/409, a permission matrix over every endpoint and
persona, constant query counts for lists, and cohort previews that never show an exact small count."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Callable

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from governance import services
from governance.models import Cohort, DataAccessRequest, DirectIdentifier, EthicsApproval, Patient, Project
from portal.middleware import SESSION_KEY
from portal.models import AuditEvent, Role
from tests import factories

R = DataAccessRequest.Status
E = EthicsApproval.Status
PERSONAS = ("officer", "officer_member", "researcher_member", "researcher_other", "steward", "reviewer", "sponsor")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def client_for(user=None) -> APIClient:
    """An API client signed in as `user` (second factor passed, as officers and reviewers need)."""
    api = APIClient()
    if user is not None:
        api.force_login(user)
        session = api.session
        session[SESSION_KEY] = True
        session.save()
    return api


class World(factories.GovernancePersonas):
    """Personas (each created on first use), a small policy, a dataset, one project with a verified
    and a submitted ethics approval, a draft request (created by `officer_member`, an officer who is
    also a researcher on the project) and a submitted one (by `researcher_member`, its PI)."""

    def everyone(self) -> None:
        for persona in PERSONAS:
            getattr(self, persona)


def make_world(*, patients: int = 5) -> World:
    world = World()
    factories.small_policy(by=world.officer)
    world.dataset = factories.dataset_with_patients(patients, by=world.steward)
    world.project = factories.project(pi=world.researcher_member, members=[world.officer_member])
    world.ethics = factories.verified_ethics(world.project, by=world.researcher_member, verifier=world.officer)
    world.pending_ethics = factories.submitted_ethics(world.project, by=world.researcher_member)
    world.draft = factories.request(project=world.project, by=world.officer_member, datasets=[world.dataset],
                                    ethics_approval=world.ethics)
    world.submitted = factories.request(project=world.project, by=world.researcher_member, datasets=[world.dataset],
                                        ethics_approval=world.ethics, submit=True)
    return world


@pytest.fixture
def world(db) -> World:
    return make_world()


def _letter(content: bytes = factories.PDF_LETTER) -> SimpleUploadedFile:
    return SimpleUploadedFile("letter.pdf", content, content_type="application/pdf")


def _ethics_form(project_id: int, letter: SimpleUploadedFile | None = None) -> dict:
    today = timezone.localdate()
    return {"project": project_id, "committee": "South REC", "reference": "23/SC/0001",
            "approved_on": (today - timedelta(days=10)).isoformat(),
            "expires_on": (today + timedelta(days=300)).isoformat(),
            "scope": "Discharge summaries.", "letter": letter or _letter()}


def _request_body(world: World, **changes) -> dict:
    return {"project": world.project.pk, "datasets": [world.dataset.name], "title": "Summaries",
            "purpose": "Fine-tune a discharge-summary model.", "modality": "text",
            "cohort_definition": {"age": {"min": 18}}, "base_model_name": "tiny-text",
            "ethics_approval": world.ethics.pk, **changes}


# Every endpoint x every persona ----------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    url: Callable[[World], str]
    body: Callable[[World], dict | None]
    expected: tuple[int, ...]  # in PERSONAS order
    multipart: bool = False


VIEW = (200, 200, 200, 200, 403, 200, 403)  # lists: everyone with the role, filtered to what they may see
VIEW_ONE = (200, 200, 200, 404, 403, 200, 403)  # one object of a project `researcher_other` is not on
MEMBER_EDITS = (403, 200, 200, 404, 403, 403, 403)
MEMBER_CREATES = (403, 201, 201, 400, 403, 403, 403)  # a project you cannot see is an invalid choice
OFFICER_OUTSIDE_DECIDES = (200, 403, 403, 403, 403, 403, 403)

ENDPOINTS = [
    Endpoint("projects-list", "get", lambda w: "/api/v1/projects", lambda w: None, VIEW),
    Endpoint("projects-create", "post", lambda w: "/api/v1/projects",
             lambda w: {"title": "New", "lay_summary": "Why."}, (403, 201, 201, 201, 403, 403, 403)),
    Endpoint("projects-retrieve", "get", lambda w: f"/api/v1/projects/{w.project.pk}", lambda w: None, VIEW_ONE),
    Endpoint("datasets-list", "get", lambda w: "/api/v1/datasets", lambda w: None, (200, 200, 200, 200, 200, 200, 403)),
    Endpoint("datasets-retrieve", "get", lambda w: f"/api/v1/datasets/{w.dataset.pk}", lambda w: None,
             (200, 200, 200, 200, 200, 200, 403)),
    Endpoint("ethics-list", "get", lambda w: "/api/v1/ethics-approvals", lambda w: None, VIEW),
    Endpoint("ethics-create", "post", lambda w: "/api/v1/ethics-approvals", lambda w: _ethics_form(w.project.pk),
             MEMBER_CREATES, multipart=True),
    Endpoint("ethics-retrieve", "get", lambda w: f"/api/v1/ethics-approvals/{w.ethics.pk}", lambda w: None, VIEW_ONE),
    Endpoint("ethics-verify", "post", lambda w: f"/api/v1/ethics-approvals/{w.pending_ethics.pk}/verify",
             lambda w: {}, OFFICER_OUTSIDE_DECIDES),
    Endpoint("ethics-reject", "post", lambda w: f"/api/v1/ethics-approvals/{w.pending_ethics.pk}/reject",
             lambda w: {"reason": "The letter is unsigned."}, OFFICER_OUTSIDE_DECIDES),
    Endpoint("ethics-revoke", "post", lambda w: f"/api/v1/ethics-approvals/{w.ethics.pk}/revoke",
             lambda w: {"reason": "Withdrawn by the committee."}, OFFICER_OUTSIDE_DECIDES),
    Endpoint("requests-list", "get", lambda w: "/api/v1/access-requests", lambda w: None, VIEW),
    Endpoint("requests-create", "post", lambda w: "/api/v1/access-requests", _request_body, MEMBER_CREATES),
    Endpoint("requests-retrieve", "get", lambda w: f"/api/v1/access-requests/{w.draft.pk}", lambda w: None, VIEW_ONE),
    Endpoint("requests-update", "patch", lambda w: f"/api/v1/access-requests/{w.draft.pk}",
             lambda w: {"title": "Renamed"}, MEMBER_EDITS),
    Endpoint("requests-submit", "post", lambda w: f"/api/v1/access-requests/{w.draft.pk}/submit", lambda w: {},
             MEMBER_EDITS),
    Endpoint("requests-approve", "post", lambda w: f"/api/v1/access-requests/{w.submitted.pk}/approve",
             lambda w: {"conditions": "No re-identification."}, OFFICER_OUTSIDE_DECIDES),
    Endpoint("requests-reject", "post", lambda w: f"/api/v1/access-requests/{w.submitted.pk}/reject",
             lambda w: {"reason": "Out of scope."}, OFFICER_OUTSIDE_DECIDES),
    Endpoint("requests-request-changes", "post",
             lambda w: f"/api/v1/access-requests/{w.submitted.pk}/request-changes",
             lambda w: {"reason": "Narrow the cohort."}, OFFICER_OUTSIDE_DECIDES),
    Endpoint("requests-withdraw", "post", lambda w: f"/api/v1/access-requests/{w.draft.pk}/withdraw", lambda w: {},
             MEMBER_EDITS),
    Endpoint("requests-cohort-preview", "post", lambda w: "/api/v1/access-requests/cohort-preview",
             lambda w: {"datasets": [w.dataset.pk], "definition": {"sex": ["female"]}}, VIEW),
]


_ANY = SimpleNamespace(pk=1)
PLACEHOLDERS = SimpleNamespace(dataset=_ANY, project=_ANY, ethics=_ANY, pending_ethics=_ANY, draft=_ANY, submitted=_ANY)


def _call(api: APIClient, endpoint: Endpoint, world: World):
    send = getattr(api, endpoint.method)
    body = endpoint.body(world)
    if body is None:
        return send(endpoint.url(world))
    return send(endpoint.url(world), body, format="multipart" if endpoint.multipart else "json")


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_api_permission_matrix_every_persona(world, subtests, endpoint):
    # Each persona's call runs in a savepoint that is rolled back, so every one meets the same world.
    world.everyone()
    for persona, expected in zip(PERSONAS, endpoint.expected):
        with subtests.test(persona=persona), transaction.atomic():
            response = _call(client_for(getattr(world, persona)), endpoint, world)
            assert response.status_code == expected, response.content
            transaction.set_rollback(True)


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_api_unauthenticated_401(endpoint):
    response = getattr(APIClient(), endpoint.method)(endpoint.url(PLACEHOLDERS))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_api_permission_matrix_covers_every_governance_route():
    from django.urls import resolve

    from governance.api_urls import urlpatterns

    routes = {(pattern.name, method.lower()) for pattern in urlpatterns
              for method in pattern.callback.view_class.required_permissions}
    covered = {(resolve(e.url(PLACEHOLDERS)).url_name, e.method) for e in ENDPOINTS}
    assert covered == routes
    assert len(ENDPOINTS) == len(routes) == 21


# Projects --------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_projects_create_returns_project(world):
    api = client_for(world.researcher_other)
    response = api.post("/api/v1/projects", {"title": " Sepsis notes ", "lay_summary": "Early warning.",
                                             "members": [world.researcher_member.email]}, format="json")
    assert response.status_code == 201
    project = Project.objects.get(pk=response.json()["id"])
    body = response.json()
    assert body["title"] == "Sepsis notes"
    assert body["principal_investigator"]["id"] == world.researcher_other.pk
    assert sorted(m["id"] for m in body["members"]) == sorted([world.researcher_other.pk, world.researcher_member.pk])
    assert (body["requests"], body["ethics_approvals"], body["sponsor"]) == ([], [], None)
    assert project.principal_investigator == world.researcher_other


@pytest.mark.django_db
def test_projects_create_unknown_field_400(world):
    response = client_for(world.researcher_other).post(
        "/api/v1/projects", {"title": "T", "lay_summary": "L", "budget": 3}, format="json")
    assert response.status_code == 400
    assert response.json() == {"budget": ["Unknown field."]}
    assert Project.objects.count() == 1


@pytest.mark.django_db
def test_projects_create_hospital_as_sponsor_400(world):
    hospital = factories.organisation()
    response = client_for(world.researcher_other).post(
        "/api/v1/projects", {"title": "T", "lay_summary": "L", "sponsor": hospital.pk}, format="json")
    assert response.status_code == 400
    assert response.json() == {"sponsor": ["The sponsor must be an external sponsor organisation."]}


@pytest.mark.django_db
def test_projects_list_researcher_sees_own_only(world):
    own = factories.project(pi=world.researcher_other)
    body = client_for(world.researcher_other).get("/api/v1/projects").json()
    assert body["count"] == 1
    assert [p["id"] for p in body["results"]] == [own.pk]


@pytest.mark.django_db
def test_project_detail_lists_requests_and_ethics(world):
    body = client_for(world.researcher_member).get(f"/api/v1/projects/{world.project.pk}").json()
    assert sorted(r["id"] for r in body["requests"]) == sorted([world.draft.pk, world.submitted.pk])
    assert sorted(e["id"] for e in body["ethics_approvals"]) == sorted([world.ethics.pk, world.pending_ethics.pk])


# Datasets: counts only --------------------------------------------------------------------------------

@pytest.mark.django_db
def test_datasets_list_counts_disclosed_never_identifiers(db):
    world = make_world(patients=13)
    response = client_for(world.researcher_other).get("/api/v1/datasets")
    assert response.status_code == 200
    (row,) = response.json()["results"]
    assert row == {
        "id": world.dataset.pk, "name": world.dataset.name, "title": world.dataset.title, "modality": "text",
        "description": "", "threshold": 3,
        "records": {"suppressed": False, "value": 15, "display": "about 15"},
        "patients": {"suppressed": False, "value": 15, "display": "about 15"},
    }
    secrets = list(Patient.objects.values_list("key", flat=True)) + list(
        DirectIdentifier.objects.values_list("value", flat=True))
    assert not any(secret in response.content.decode() for secret in secrets)


@pytest.mark.django_db
def test_dataset_detail_small_counts_suppressed(db):
    world = make_world(patients=2)
    body = client_for(world.researcher_member).get(f"/api/v1/datasets/{world.dataset.pk}").json()
    assert body["patients"] == {"suppressed": True, "value": None, "display": "fewer than 3"}
    assert body["document_types"] == ["discharge_summary"]
    assert body["attributes"] == ["age", "sex", "condition", "date", "document_type"]


@pytest.mark.django_db
def test_dataset_detail_unknown_404(world):
    assert client_for(world.researcher_member).get("/api/v1/datasets/999999").status_code == 404


# Ethics approvals --------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_ethics_create_multipart_then_verify(world):
    created = client_for(world.researcher_member).post(
        "/api/v1/ethics-approvals", _ethics_form(world.project.pk), format="multipart")
    assert created.status_code == 201
    body = created.json()
    assert (body["status"], body["reference"], body["project"]["id"]) == ("submitted", "23/SC/0001", world.project.pk)
    assert body["letter_sha256"] == EthicsApproval.objects.get(pk=body["id"]).letter_sha256
    verified = client_for(world.officer).post(f"/api/v1/ethics-approvals/{body['id']}/verify", {}, format="json")
    assert verified.status_code == 200
    assert (verified.json()["status"], verified.json()["decided_by"]["id"]) == ("verified", world.officer.pk)


@pytest.mark.django_db
def test_ethics_create_non_pdf_400_nothing_changed(world):
    before = AuditEvent.objects.count()
    response = client_for(world.researcher_member).post(
        "/api/v1/ethics-approvals", _ethics_form(world.project.pk, _letter(b"GIF89a not a pdf")), format="multipart")
    assert response.status_code == 400
    assert response.json() == {"letter": [
        "The letter is not a PDF file (its content does not start with %PDF- and end with %%EOF)."]}
    assert EthicsApproval.objects.count() == 2
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
def test_ethics_create_json_refused_415(world):
    body = {k: v for k, v in _ethics_form(world.project.pk).items() if k != "letter"}
    response = client_for(world.researcher_member).post("/api/v1/ethics-approvals", body, format="json")
    assert response.status_code == 415


@pytest.mark.django_db
def test_ethics_reject_needs_reason(world):
    api = client_for(world.officer)
    url = f"/api/v1/ethics-approvals/{world.pending_ethics.pk}/reject"
    assert api.post(url, {}, format="json").json() == {"reason": ["This field is required."]}
    assert api.post(url, {"reason": " "}, format="json").json() == {"reason": ["Give a reason."]}
    response = api.post(url, {"reason": "Unsigned letter."}, format="json")
    assert (response.status_code, response.json()["status"], response.json()["decision_reason"]) == (
        200, "rejected", "Unsigned letter.")


@pytest.mark.django_db
def test_ethics_verify_own_project_403_with_reason(world):
    response = client_for(world.officer_member).post(
        f"/api/v1/ethics-approvals/{world.pending_ethics.pk}/verify", {}, format="json")
    assert response.status_code == 403
    assert response.json() == {"detail": "Nobody verifies an ethics approval for a project they are a member of."}


@pytest.mark.django_db
def test_ethics_verify_rejected_409(world):
    services.ethics_reject(approval=world.pending_ethics, by=world.officer, reason="No.")
    response = client_for(world.officer).post(
        f"/api/v1/ethics-approvals/{world.pending_ethics.pk}/verify", {}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "An ethics approval that is rejected cannot become verified."}


@pytest.mark.django_db
def test_ethics_revoke_suspends_approved_request(world):
    services.request_approve(request=world.submitted, by=world.officer)
    response = client_for(world.officer).post(
        f"/api/v1/ethics-approvals/{world.ethics.pk}/revoke", {"reason": "Committee withdrew it."}, format="json")
    assert response.status_code == 200
    assert DataAccessRequest.objects.get(pk=world.submitted.pk).status == R.SUSPENDED


@pytest.mark.django_db
def test_ethics_list_status_filter(world):
    body = client_for(world.researcher_member).get("/api/v1/ethics-approvals?status=submitted").json()
    assert [e["id"] for e in body["results"]] == [world.pending_ethics.pk]


# Access requests -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_access_request_create_submit_approve_flow(world):
    researcher, officer = client_for(world.researcher_member), client_for(world.officer)
    created = researcher.post("/api/v1/access-requests", _request_body(world), format="json")
    assert created.status_code == 201
    pk = created.json()["id"]
    assert (created.json()["status"], created.json()["cohort"]) == ("draft", None)
    assert [d["name"] for d in created.json()["datasets"]] == [world.dataset.name]

    assert researcher.post(f"/api/v1/access-requests/{pk}/submit", {}, format="json").json()["status"] == "submitted"
    approved = officer.post(f"/api/v1/access-requests/{pk}/approve", {"conditions": "Report quarterly."},
                            format="json")

    assert approved.status_code == 200
    body = approved.json()
    assert (body["status"], body["decision_conditions"], body["decided_by"]["id"]) == (
        "approved", "Report quarterly.", world.officer.pk)
    assert body["cohort"]["patients"] == {"suppressed": False, "value": 5, "display": "about 5"}
    assert body["cohort"]["definition_hash"] == Cohort.objects.get(request_id=pk).definition_hash


@pytest.mark.django_db
def test_access_request_create_by_dataset_id_or_name(world):
    other = factories.dataset_with_patients(3, by=world.steward)
    response = client_for(world.researcher_member).post(
        "/api/v1/access-requests", _request_body(world, datasets=[world.dataset.pk, other.name]), format="json")
    assert response.status_code == 201
    assert [d["id"] for d in response.json()["datasets"]] == [world.dataset.pk, other.pk]


@pytest.mark.django_db
@pytest.mark.parametrize(("changes", "errors"), [
    pytest.param({"cohort_definition": {"weight": {"min": 1}}}, {"cohort_definition": [
        "$.weight: unknown attribute 'weight'; the dataset's attributes are age, sex, condition, date, "
        "document_type (combine them with all, any, not)"]}, id="unknown-attribute"),
    pytest.param({"cohort_definition": '{"age": '}, {"cohort_definition": [
        "$: not valid JSON (Expecting value at line 1 column 9)"]}, id="malformed-json"),
    pytest.param({"datasets": []}, {"datasets": ["Choose at least one dataset."]}, id="no-datasets"),
    pytest.param({"datasets": ["nope", 999999]}, {"datasets": ["Unknown dataset(s): nope, 999999."]},
                 id="unknown-dataset"),
    pytest.param({"colour": "red"}, {"colour": ["Unknown field."]}, id="unknown-field"),
    pytest.param({"base_model_name": "gpt-9"}, {"base_model_name": [
        "No registered base model 'gpt-9'; approved models: tiny-text."]}, id="unknown-base-model"),
])
def test_access_request_create_bad_input_400_nothing_changed(world, changes, errors):
    before = (DataAccessRequest.objects.count(), AuditEvent.objects.count())
    response = client_for(world.researcher_member).post(
        "/api/v1/access-requests", _request_body(world, **changes), format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert (DataAccessRequest.objects.count(), AuditEvent.objects.count()) == before


@pytest.mark.django_db
def test_access_request_patch_draft(world):
    response = client_for(world.researcher_member).patch(
        f"/api/v1/access-requests/{world.draft.pk}", {"title": "Renamed", "cohort_definition": {"sex": ["female"]}},
        format="json")
    assert response.status_code == 200
    assert (response.json()["title"], response.json()["cohort_definition"]) == ("Renamed", {"sex": ["female"]})


@pytest.mark.django_db
def test_access_request_patch_submitted_409(world):
    response = client_for(world.researcher_member).patch(
        f"/api/v1/access-requests/{world.submitted.pk}", {"title": "Renamed"}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "A request that is submitted cannot be edited."}
    assert DataAccessRequest.objects.get(pk=world.submitted.pk).title == world.submitted.title


@pytest.mark.django_db
def test_access_request_patch_nothing_400(world):
    response = client_for(world.researcher_member).patch(f"/api/v1/access-requests/{world.draft.pk}", {},
                                                         format="json")
    assert (response.status_code, response.json()) == (400, {"non_field_errors": ["Nothing to change."]})


@pytest.mark.django_db
def test_access_request_approve_draft_409(world):
    before = AuditEvent.objects.count()
    response = client_for(world.officer).post(f"/api/v1/access-requests/{world.draft.pk}/approve", {}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "A request that is draft cannot be moved to approved."}
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
def test_access_request_withdraw_approved_409(world):
    services.request_approve(request=world.submitted, by=world.officer)
    response = client_for(world.researcher_member).post(
        f"/api/v1/access-requests/{world.submitted.pk}/withdraw", {}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "A request that is approved cannot be moved to withdrawn."}


@pytest.mark.django_db
def test_access_request_approve_below_threshold_400(world):
    services.policy_update(by=world.officer, note="stricter", min_patients=6)
    response = client_for(world.officer).post(f"/api/v1/access-requests/{world.submitted.pk}/approve", {},
                                              format="json")
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["threshold: 5 distinct patients in 5 records; at least 6 are needed."]}
    assert DataAccessRequest.objects.get(pk=world.submitted.pk).status == R.SUBMITTED


@pytest.mark.django_db
def test_access_request_approve_own_project_403_with_reason(world):
    response = client_for(world.officer_member).post(
        f"/api/v1/access-requests/{world.submitted.pk}/approve", {}, format="json")
    assert response.status_code == 403
    assert response.json() == {"detail": "Nobody decides on a request from a project they are a member of."}


@pytest.mark.django_db
def test_access_request_reject_and_request_changes_need_reason(world):
    api = client_for(world.officer)
    for action in ("reject", "request-changes"):
        response = api.post(f"/api/v1/access-requests/{world.submitted.pk}/{action}", {"reason": ""}, format="json")
        assert (response.status_code, response.json()) == (
            400, {"reason": ["Give a reason; the researcher will see it."]})
    response = api.post(f"/api/v1/access-requests/{world.submitted.pk}/request-changes",
                        {"reason": "Narrow the age range."}, format="json")
    assert (response.json()["status"], response.json()["decision_reason"]) == (
        "changes_requested", "Narrow the age range.")


@pytest.mark.django_db
def test_access_request_reject_with_reason(world):
    response = client_for(world.officer).post(f"/api/v1/access-requests/{world.submitted.pk}/reject",
                                              {"reason": "Out of the approved scope."}, format="json")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["decision_reason"], response.json()["cohort"]) == (
        "rejected", "Out of the approved scope.", None)
    assert Cohort.objects.count() == 0


@pytest.mark.django_db
def test_access_request_withdraw_draft(world):
    response = client_for(world.researcher_member).post(f"/api/v1/access-requests/{world.draft.pk}/withdraw",
                                                        {"reason": "Superseded."}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "withdrawn"
    assert response.json()["closed_at"] is not None


@pytest.mark.django_db
def test_access_request_retrieve_detail(world):
    body = client_for(world.reviewer).get(f"/api/v1/access-requests/{world.submitted.pk}").json()
    assert {k: body[k] for k in ("id", "status", "purpose", "cohort_definition", "base_model_name", "recipe")} == {
        "id": world.submitted.pk, "status": "submitted", "purpose": "Fine-tune a summariser.",
        "cohort_definition": {}, "base_model_name": "tiny-text", "recipe": {}}
    assert body["submitted_by"]["id"] == world.researcher_member.pk
    assert body["ethics_approval"]["id"] == world.ethics.pk


@pytest.mark.django_db
def test_ethics_retrieve_detail(world):
    body = client_for(world.researcher_member).get(f"/api/v1/ethics-approvals/{world.ethics.pk}").json()
    assert (body["id"], body["status"], body["committee"], body["decided_by"]["id"]) == (
        world.ethics.pk, "verified", "North Research Ethics Committee", world.officer.pk)
    assert "letter_path" not in body


@pytest.mark.django_db
def test_api_options_not_allowed(world):
    assert client_for(world.researcher_member).options("/api/v1/access-requests").status_code == 405


@pytest.mark.django_db
def test_access_request_other_project_404(world):
    api = client_for(world.researcher_other)
    assert api.get(f"/api/v1/access-requests/{world.submitted.pk}").status_code == 404
    assert api.post(f"/api/v1/access-requests/{world.draft.pk}/withdraw", {}, format="json").status_code == 404
    assert api.get(f"/api/v1/ethics-approvals/{world.ethics.pk}").status_code == 404
    assert api.get(f"/api/v1/projects/{world.project.pk}").status_code == 404


@pytest.mark.django_db
def test_access_request_list_status_filter(world):
    api = client_for(world.researcher_member)
    body = api.get("/api/v1/access-requests?status=submitted").json()
    assert [r["id"] for r in body["results"]] == [world.submitted.pk]
    assert api.get("/api/v1/access-requests?status=draft").json()["count"] == 1
    bad = api.get("/api/v1/access-requests?status=pending")
    assert (bad.status_code, bad.json()) == (400, {"status": ['"pending" is not a valid choice.']})


@pytest.mark.django_db
def test_access_request_list_researcher_other_empty(world):
    body = client_for(world.researcher_other).get("/api/v1/access-requests").json()
    assert (body["count"], body["results"]) == (0, [])


# Cohort preview ------------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize(("patients", "shown"), [
    (2, {"suppressed": True, "value": None, "display": "fewer than 3"}),
    (3, {"suppressed": False, "value": 5, "display": "about 5"}),
    (7, {"suppressed": False, "value": 5, "display": "about 5"}),
    (8, {"suppressed": False, "value": 10, "display": "about 10"}),
])
def test_cohort_preview_never_exact_small_count(db, patients, shown):
    world = make_world(patients=patients)
    response = client_for(world.researcher_member).post(
        "/api/v1/access-requests/cohort-preview", {"datasets": [world.dataset.name], "definition": {}}, format="json")
    assert response.status_code == 200
    assert response.json() == {"patients": shown, "records": shown, "threshold": 3,
                               "meets_threshold": patients >= 3, "policy_version": 2}


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "errors"), [
    pytest.param({"datasets": [], "definition": {}}, {"datasets": ["Choose at least one dataset."]}, id="no-datasets"),
    pytest.param({"datasets": ["missing"]}, {"datasets": ["Unknown dataset(s): missing."]}, id="unknown-dataset"),
    pytest.param({"definition": {}}, {"datasets": ["This field is required."]}, id="datasets-missing"),
    pytest.param({"datasets": ["DS"], "definition": {"age": {"min": 90, "max": 10}}},
                 {"definition": ["$.age: reversed range: min 90 is above max 10"]}, id="reversed-ages"),
    pytest.param({"datasets": ["DS"], "definition": {"date": {"from": "2021-01-01", "to": "2020-01-01"}}},
                 {"definition": ["$.date: reversed date range: 2021-01-01 is after 2020-01-01"]}, id="reversed-dates"),
    pytest.param({"datasets": ["DS"], "definition": "{not json"},
                 {"definition": ["$: not valid JSON (Expecting property name enclosed in double quotes at line 1 "
                                 "column 2)"]}, id="malformed-json"),
])
def test_cohort_preview_bad_input_400(world, body, errors):
    body = {**body, "datasets": [world.dataset.name if d == "DS" else d for d in body.get("datasets", [])]} \
        if "datasets" in body else body
    response = client_for(world.researcher_member).post("/api/v1/access-requests/cohort-preview", body, format="json")
    assert (response.status_code, response.json()) == (400, errors)


# Lists are a constant number of queries ------------------------------------------------------------

def _more_rows(world: World, n: int) -> None:
    for _ in range(n):
        project = factories.project(pi=world.researcher_member, members=[world.officer_member])
        ethics = factories.verified_ethics(project, by=world.researcher_member, verifier=world.officer)
        factories.request(project=project, by=world.researcher_member, datasets=[world.dataset],
                          ethics_approval=ethics, submit=True)
        factories.dataset_with_patients(2, by=world.steward)


LISTS = ["/api/v1/projects", "/api/v1/datasets", "/api/v1/ethics-approvals", "/api/v1/access-requests"]


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["officer", "researcher_member"])
def test_api_list_query_count_constant(db, subtests, django_assert_num_queries, persona):
    world = make_world()
    api = client_for(getattr(world, persona))
    few = {}
    for url in LISTS:
        api.get(url)  # warm-up: the session and the current policy exist from here on
        with CaptureQueriesContext(connection) as queries:
            first = api.get(url)
        few[url] = (len(queries), first.json()["count"])
    _more_rows(world, 4)
    for url in LISTS:
        with subtests.test(url=url):
            with django_assert_num_queries(few[url][0]):
                many = api.get(url)
            assert many.json()["count"] >= few[url][1] + 4


# The API root and the schema ---------------------------------------------------------------------

@pytest.mark.django_db
def test_api_root_lists_governance_endpoints():
    body = APIClient().get("/api/v1/").json()
    for name in ("projects", "datasets", "ethics-approvals", "access-requests"):
        assert body[name] == f"http://testserver/api/v1/{name}"


@pytest.mark.django_db
def test_openapi_schema_valid_with_governance_paths():
    from openapi_spec_validator import validate

    schema = APIClient().get("/api/v1/schema/?format=json").json()
    validate(schema)
    assert {
        "/api/v1/projects", "/api/v1/projects/{id}", "/api/v1/datasets", "/api/v1/datasets/{id}",
        "/api/v1/ethics-approvals", "/api/v1/ethics-approvals/{id}", "/api/v1/ethics-approvals/{id}/verify",
        "/api/v1/ethics-approvals/{id}/reject", "/api/v1/ethics-approvals/{id}/revoke",
        "/api/v1/access-requests", "/api/v1/access-requests/{id}", "/api/v1/access-requests/{id}/submit",
        "/api/v1/access-requests/{id}/approve", "/api/v1/access-requests/{id}/reject",
        "/api/v1/access-requests/{id}/request-changes", "/api/v1/access-requests/{id}/withdraw",
        "/api/v1/access-requests/cohort-preview",
    } <= set(schema["paths"])
    assert set(schema["paths"]["/api/v1/ethics-approvals"]["post"]["requestBody"]["content"]) == {"multipart/form-data"}
