"""The governance pages: who may see and do what, one request's round through the views, bad input
refused with its message, and list pages whose query count does not grow with their rows."""

from __future__ import annotations

from functools import cached_property
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from governance import services
from governance.models import Cohort, DataAccessRequest, Dataset, EthicsApproval, Project
from portal.middleware import SESSION_KEY
from portal.models import AuditEvent
from tests import factories

R = DataAccessRequest.Status
E = EthicsApproval.Status
PERSONAS = ("anonymous", "sponsor", "steward", "reviewer", "non_member", "member", "officer")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class World:
    """Six patients aged 30 to 35 under a small policy (minimum 3 patients, counts rounded to 5), a
    project with a verified and a waiting ethics approval, a draft and a submitted request.

    Each part is made on first use, so a test pays only for what it touches.
    """

    def person(self, persona: str):
        return None if persona == "anonymous" else getattr(self, persona)

    @cached_property
    def officer(self):
        return factories.officer()

    @cached_property
    def member(self):
        return factories.researcher()

    @cached_property
    def non_member(self):
        return factories.researcher()

    @cached_property
    def steward(self):
        return factories.steward()

    @cached_property
    def reviewer(self):
        return factories.reviewer()

    @cached_property
    def sponsor(self):
        return factories.sponsor()

    @cached_property
    def dataset(self) -> Dataset:
        factories.small_policy()
        return factories.dataset_with_patients(6, by=self.steward, name="ward-notes")

    @cached_property
    def base_model(self):
        return factories.text_base_model()  # named "tiny-text"

    @cached_property
    def project(self) -> Project:
        return factories.project(pi=self.member, title="Discharge summaries")

    @cached_property
    def approval(self) -> EthicsApproval:
        return factories.verified_ethics(self.project)

    @cached_property
    def pending_approval(self) -> EthicsApproval:
        return factories.submitted_ethics(self.project)

    @cached_property
    def draft(self) -> DataAccessRequest:
        return factories.request(project=self.project, datasets=[self.dataset], ethics_approval=self.approval,
                                 title="Draft request")

    @cached_property
    def submitted(self) -> DataAccessRequest:
        return factories.request(project=self.project, datasets=[self.dataset], ethics_approval=self.approval,
                                 title="Waiting request", submit=True)


@pytest.fixture
def world(db) -> World:
    return World()


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
        session = client.session
        session[SESSION_KEY] = True  # officers and reviewers have passed their second factor
        session.save()
    return client


def letter(content: bytes = factories.PDF_LETTER, name: str = "letter.pdf") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/pdf")


def ethics_post(**overrides) -> dict:
    today = timezone.localdate()
    data = {"committee": "North Research Ethics Committee", "reference": "24/NO/0042",
            "approved_on": (today - timedelta(days=10)).isoformat(),
            "expires_on": (today + timedelta(days=300)).isoformat(), "scope": "Secondary use of notes.",
            "letter": letter()}
    data.update(overrides)
    return data


def request_post(w: World, **overrides) -> dict:
    w.base_model  # noqa: B018
    data = {"project": w.project.pk, "title": "Summarise discharge notes", "purpose": "Fine-tune a summariser.",
            "modality": "text", "datasets": [w.dataset.pk], "base_model_name": "tiny-text",
            "ethics_approval": w.approval.pk, "age_min": "30", "age_max": "33", "rank": "8", "epochs": "2"}
    data.update(overrides)
    return data


# name: (method, url, data, {persona: expected}); expected is a status code, "login" or "redirect".
OK, LOGIN, DONE = 200, "login", "redirect"
SEE_ALL = {"anonymous": LOGIN, "sponsor": 403, "steward": 403, "reviewer": OK, "non_member": OK, "member": OK, "officer": OK}
MEMBERS_AND_STAFF = {**SEE_ALL, "non_member": 404}
RESEARCHERS_ONLY = {**SEE_ALL, "reviewer": 403, "officer": 403}
MEMBER_ACTS = {"anonymous": LOGIN, "sponsor": 403, "steward": 403, "reviewer": 403, "non_member": 404, "member": DONE, "officer": 403}
OFFICER_ACTS = {"anonymous": LOGIN, "sponsor": 403, "steward": 403, "reviewer": 403, "non_member": 403, "member": 403, "officer": DONE}
DATASETS = {**SEE_ALL, "steward": OK}

ENDPOINTS = {
    "project_list": ("get", lambda w: reverse("governance:project_list"), None, SEE_ALL),
    "project_create_form": ("get", lambda w: reverse("governance:project_create"), None, RESEARCHERS_ONLY),
    "project_create": ("post", lambda w: reverse("governance:project_create"),
                       lambda w: {"title": "A new project", "lay_summary": "Why it helps.", "members": ""},
                       {**RESEARCHERS_ONLY, "member": DONE, "non_member": DONE}),
    "project_detail": ("get", lambda w: reverse("governance:project_detail", args=[w.project.pk]), None, MEMBERS_AND_STAFF),
    "ethics_submit": ("post", lambda w: reverse("governance:ethics_submit", args=[w.project.pk]),
                      lambda w: ethics_post(), MEMBER_ACTS),
    "ethics_detail": ("get", lambda w: reverse("governance:ethics_detail", args=[w.approval.pk]), None, MEMBERS_AND_STAFF),
    "ethics_letter": ("get", lambda w: reverse("governance:ethics_letter", args=[w.approval.pk]), None,
                      {**MEMBERS_AND_STAFF, "reviewer": 403}),
    "ethics_verify": ("post", lambda w: reverse("governance:ethics_verify", args=[w.pending_approval.pk]), None, OFFICER_ACTS),
    "ethics_reject": ("post", lambda w: reverse("governance:ethics_reject", args=[w.pending_approval.pk]),
                      lambda w: {"reject-reason": "The letter does not name this project."}, OFFICER_ACTS),
    "ethics_revoke": ("post", lambda w: reverse("governance:ethics_revoke", args=[w.approval.pk]),
                      lambda w: {"revoke-reason": "The committee withdrew it."}, OFFICER_ACTS),
    "request_list": ("get", lambda w: reverse("governance:request_list"), None, SEE_ALL),
    "request_create_form": ("get", lambda w: reverse("governance:request_create"), None, RESEARCHERS_ONLY),
    "request_create": ("post", lambda w: reverse("governance:request_create"), request_post,
                       # a non-member cannot choose the project: the form refuses it (400), nothing is made
                       {**RESEARCHERS_ONLY, "member": DONE, "non_member": 400}),
    "cohort_preview": ("post", lambda w: reverse("governance:cohort_preview"),
                       lambda w: {"datasets": [w.dataset.pk], "age_min": "30"}, SEE_ALL),
    "request_detail": ("get", lambda w: reverse("governance:request_detail", args=[w.draft.pk]), None, MEMBERS_AND_STAFF),
    "request_edit_form": ("get", lambda w: reverse("governance:request_edit", args=[w.draft.pk]), None,
                          {**MEMBER_ACTS, "member": OK}),
    "request_edit": ("post", lambda w: reverse("governance:request_edit", args=[w.draft.pk]),
                     lambda w: request_post(w, title="Renamed"), MEMBER_ACTS),
    "request_submit": ("post", lambda w: reverse("governance:request_submit", args=[w.draft.pk]), None, MEMBER_ACTS),
    "request_withdraw": ("post", lambda w: reverse("governance:request_withdraw", args=[w.draft.pk]), None, MEMBER_ACTS),
    "request_start_review": ("post", lambda w: reverse("governance:request_start_review", args=[w.submitted.pk]), None,
                             OFFICER_ACTS),
    "request_approve": ("post", lambda w: reverse("governance:request_approve", args=[w.submitted.pk]),
                        lambda w: {"approve-conditions": ""}, OFFICER_ACTS),
    "request_reject": ("post", lambda w: reverse("governance:request_reject", args=[w.submitted.pk]),
                       lambda w: {"reject-reason": "Out of scope."}, OFFICER_ACTS),
    "request_changes": ("post", lambda w: reverse("governance:request_changes", args=[w.submitted.pk]),
                        lambda w: {"changes-reason": "Narrow the cohort."}, OFFICER_ACTS),
    "review_queue": ("get", lambda w: reverse("governance:review_queue"), None,
                     {**OFFICER_ACTS, "officer": OK}),
    "dataset_list": ("get", lambda w: reverse("governance:dataset_list"), None, DATASETS),
    "dataset_detail": ("get", lambda w: reverse("governance:dataset_detail", args=[w.dataset.name]), None, DATASETS),
    "dataset_budget": ("post", lambda w: reverse("governance:dataset_budget", args=[w.dataset.name]),
                       lambda w: {"privacy_budget_epsilon": "10", "privacy_budget_period_days": "365"}, OFFICER_ACTS),
}


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_permission_matrix(world, endpoint, persona):
    method, url_for, data_for, expected = ENDPOINTS[endpoint]
    client = client_for(world.person(persona))
    url = url_for(world)
    data = data_for(world) if data_for else {}
    response = client.post(url, data) if method == "post" else client.get(url)
    want = expected[persona]
    if want == LOGIN:
        assert (response.status_code, response.url.split("?")[0]) == (302, reverse("login"))
    elif want == DONE:
        assert response.status_code == 302 and not response.url.startswith(reverse("login"))
    else:
        assert response.status_code == want


def test_permission_matrix_covers_every_governance_url():
    from governance.urls import urlpatterns

    names = {pattern.name for pattern in urlpatterns}
    covered = {name.removesuffix("_form") for name in ENDPOINTS}
    assert names == covered


# The whole round ------------------------------------------------------------------------------

def test_request_create_submit_approve_through_the_views(world):
    member, officer = world.member, world.officer
    researcher_client, officer_client = client_for(member), client_for(officer)

    created = researcher_client.post(reverse("governance:request_create"), request_post(world))
    new = DataAccessRequest.objects.get(title="Summarise discharge notes")
    assert created.url == reverse("governance:request_detail", args=[new.pk])
    assert (new.status, new.cohort_definition, new.recipe) == (R.DRAFT, {"all": [{"age": {"min": 30, "max": 33}}]},
                                                               {"rank": 8, "epochs": 2})

    page = researcher_client.get(created.url).content.decode()
    assert "Age 30 to 33 at the time of the record" in page
    assert "about 5" in page and "4 distinct patients" not in page  # rounded for the researcher

    submitted = researcher_client.post(reverse("governance:request_submit", args=[new.pk]))
    assert submitted.status_code == 302
    new.refresh_from_db()
    assert new.status == R.SUBMITTED

    queue = officer_client.get(reverse("governance:review_queue")).content.decode()
    assert "Summarise discharge notes" in queue
    officer_page = officer_client.get(reverse("governance:request_detail", args=[new.pk])).content.decode()
    assert "4 distinct patients in 4 records" in officer_page  # exact for the officer, inside the checks

    approved = officer_client.post(reverse("governance:request_approve", args=[new.pk]),
                                   {"approve-conditions": "No free-text outputs."})
    assert approved.url == reverse("governance:request_detail", args=[new.pk])
    new.refresh_from_db()
    assert (new.status, new.decided_by, new.decision_conditions) == (R.APPROVED, officer, "No free-text outputs.")
    assert Cohort.objects.get(request=new).patient_count == 4
    assert list(AuditEvent.objects.filter(target_id=str(new.pk), target_type="governance.dataaccessrequest")
                .values_list("verb", flat=True)) == ["request.created", "request.submitted", "request.in_review",
                                                     "request.approved"]


def test_request_edit_keeps_the_cohort_fields_and_saves_changes(world):
    client = client_for(world.member)
    form = client.get(reverse("governance:request_edit", args=[world.draft.pk])).content.decode()
    assert 'name="project"' in form and "disabled" in form
    response = client.post(reverse("governance:request_edit", args=[world.draft.pk]),
                           request_post(world, title="Renamed", age_min="31", age_max="", sex=["female"]))
    assert response.status_code == 302
    world.draft.refresh_from_db()
    assert (world.draft.title, world.draft.cohort_definition) == (
        "Renamed", {"all": [{"age": {"min": 31}}, {"sex": ["female"]}]})


def test_request_withdraw_from_the_request_page(world):
    client = client_for(world.member)
    response = client.post(reverse("governance:request_withdraw", args=[world.draft.pk]), {"withdraw-reason": "Not needed."})
    assert response.status_code == 302
    world.draft.refresh_from_db()
    assert world.draft.status == R.WITHDRAWN


# Bad input is refused with its message and changes nothing --------------------------------------

def test_request_create_bad_cohort_filter_shows_its_error_and_creates_nothing(world):
    before = DataAccessRequest.objects.count()
    response = client_for(world.member).post(
        reverse("governance:request_create"),
        request_post(world, advanced_json='{"all": [{"height": {"min": 150}}]}'),
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "$.all[0].height: unknown attribute &#x27;height&#x27;" in page
    assert DataAccessRequest.objects.count() == before


def test_request_create_reversed_age_range_named_by_path(world):
    before = DataAccessRequest.objects.count()
    response = client_for(world.member).post(reverse("governance:request_create"),
                                                       request_post(world, age_min="60", age_max="40"))
    assert response.status_code == 400
    assert "$.all[0].age: reversed range: min 60 is above max 40" in response.content.decode()
    assert DataAccessRequest.objects.count() == before


def test_request_create_unknown_base_model_shown_on_its_field(world):
    response = client_for(world.member).post(reverse("governance:request_create"),
                                                       request_post(world, base_model_name="gpt-5"))
    assert response.status_code == 400
    assert response.context["form"].errors["base_model_name"] == [
        "No registered base model 'gpt-5'; approved models: tiny-text."]


def test_ethics_submit_non_pdf_letter_refused(world):
    before = EthicsApproval.objects.count()
    response = client_for(world.member).post(
        reverse("governance:ethics_submit", args=[world.project.pk]),
        ethics_post(letter=letter(b"GIF89a\x01\x00\x01\x00 not a letter", name="letter.pdf")),
    )
    assert response.status_code == 400
    assert response.context["ethics_form"].errors["letter"] == [
        "The letter is not a PDF file (its content does not start with %PDF- and end with %%EOF)."]
    assert EthicsApproval.objects.count() == before


def test_request_reject_without_reason_refused(world):
    client = client_for(world.officer)
    response = client.post(reverse("governance:request_reject", args=[world.submitted.pk]), {"reject-reason": " "})
    assert response.status_code == 400
    assert response.context["reject_form"].errors["reason"] == ["Give a reason; the researcher will see it."]
    world.submitted.refresh_from_db()
    assert world.submitted.status == R.SUBMITTED


def test_request_approve_with_failing_check_shows_it_and_changes_nothing(world):
    unapproved = factories.request(project=world.project, datasets=[world.dataset], ethics_approval=None, submit=True)
    response = client_for(world.officer).post(reverse("governance:request_approve", args=[unapproved.pk]))
    assert response.status_code == 400
    assert "ethics: No ethics approval is attached." in response.content.decode()
    unapproved.refresh_from_db()
    assert unapproved.status == R.SUBMITTED


def test_officer_in_the_project_gets_403_with_the_reason(world):
    officer = world.officer
    services.project_add_member(project=world.project, user=officer, by=world.member)
    client = client_for(officer)
    page = client.get(reverse("governance:request_detail", args=[world.submitted.pk])).content.decode()
    assert "You cannot decide on this request" in page and "Approve</button>" not in page
    response = client.post(reverse("governance:request_approve", args=[world.submitted.pk]))
    assert response.status_code == 403
    assert "Nobody decides on a request from a project they are a member of." in response.content.decode()


# Preview, letter, queue ---------------------------------------------------------------------------

def test_cohort_preview_rounds_counts_and_names_error_paths(world):
    client = client_for(world.member)
    url = reverse("governance:cohort_preview")
    counts = client.post(url, {"datasets": [world.dataset.pk], "age_min": "30", "age_max": "33"}).content.decode()
    assert 'data-preview-patients>about 5<' in counts and 'data-threshold="met"' in counts
    few = client.post(url, {"datasets": [world.dataset.pk], "age_min": "34"}).content.decode()
    assert "fewer than 3" in few and 'data-threshold="not-met"' in few
    bad = client.post(url, {"datasets": [world.dataset.pk], "advanced_json": '{"any": []}'}).content.decode()
    assert "<code>$.any</code>" in bad and "takes a non-empty list of conditions" in bad
    none = client.post(url, {"age_min": "30"}).content.decode()
    assert "Choose at least one dataset" in none


def test_ethics_letter_served_as_attachment_and_audited(world):
    member = world.member
    response = client_for(member).get(reverse("governance:ethics_letter", args=[world.approval.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == factories.PDF_LETTER
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"].startswith("attachment;")
    assert AuditEvent.objects.filter(verb="ethics.letter_opened", actor=member, target_id=str(world.approval.pk)).count() == 1


def test_ethics_verify_through_the_page(world):
    response = client_for(world.officer).post(reverse("governance:ethics_verify", args=[world.pending_approval.pk]))
    assert response.status_code == 302
    world.pending_approval.refresh_from_db()
    assert world.pending_approval.status == E.VERIFIED


def test_review_queue_filters_by_status_and_modality(world):
    officer = world.officer
    world.submitted, world.pending_approval  # noqa: B018
    other = factories.request(project=world.project, datasets=[world.dataset], ethics_approval=world.approval,
                              title="Taken request", submit=True)
    client_for(officer).post(reverse("governance:request_start_review", args=[other.pk]))
    client = client_for(officer)
    in_review = client.get(reverse("governance:review_queue"), {"status": "in_review"})
    assert [r.title for r in in_review.context["requests"]] == ["Taken request"]
    both = client.get(reverse("governance:review_queue"))
    assert [r.title for r in both.context["requests"]] == ["Waiting request", "Taken request"]
    speech = client.get(reverse("governance:review_queue"), {"modality": "speech"})
    assert list(speech.context["requests"]) == []
    assert [a.pk for a in both.context["approvals"]] == [world.pending_approval.pk]


def test_dataset_page_rounds_counts_for_researchers_and_not_for_staff(world):
    url = reverse("governance:dataset_detail", args=[world.dataset.name])
    researcher = client_for(world.member).get(url)
    steward = client_for(world.steward).get(url)
    assert (researcher.context["patients"], steward.context["patients"]) == ("about 5", "6")
    assert "ward-notes-p0" not in researcher.content.decode() and "MRN" not in steward.content.decode()


def test_dashboards_list_governance_work(world):
    world.draft, world.submitted, world.pending_approval  # noqa: B018  made before the pages are read
    member_page = client_for(world.member).get(reverse("dashboard")).content.decode()
    assert "Draft request" in member_page and "Discharge summaries" in member_page
    assert 'class="badge badge-draft">Draft<' in member_page and "New request" in member_page
    officer_page = client_for(world.officer).get(reverse("dashboard")).content.decode()
    assert "Waiting request" in officer_page and "Review queue: 1 request, 1 ethics approval" in officer_page
    steward_page = client_for(world.steward).get(reverse("dashboard")).content.decode()
    assert "6 records" in steward_page


# Constant queries on list pages ------------------------------------------------------------------

def _add_rows(w: World, page: str, count: int) -> None:
    for _ in range(count):
        if page == "dataset_list":
            factories.dataset_with_patients(2)
        elif page in ("project_list",):
            factories.project(pi=w.member, members=[factories.researcher()])
        else:
            project = factories.project(pi=w.member, members=[factories.researcher()])
            approval = factories.submitted_ethics(project)
            factories.request(project=project, datasets=[factories.dataset_with_patients(3)], ethics_approval=approval,
                              submit=True)


# page: (persona, url, the first row)
LIST_PAGES = {
    "project_list": ("member", lambda: reverse("governance:project_list"), lambda w: w.project),
    "request_list": ("member", lambda: reverse("governance:request_list"), lambda w: w.draft),
    "review_queue": ("officer", lambda: reverse("governance:review_queue"), lambda w: (w.submitted, w.pending_approval)),
    "dataset_list": ("member", lambda: reverse("governance:dataset_list"), lambda w: w.dataset),
    "researcher_dashboard": ("member", lambda: reverse("dashboard"), lambda w: w.draft),
    "officer_dashboard": ("officer", lambda: reverse("dashboard"), lambda w: (w.submitted, w.pending_approval)),
}


@pytest.mark.parametrize("page", list(LIST_PAGES))
def test_list_page_queries_do_not_grow_with_rows(world, page, django_assert_num_queries):
    persona, url_for, first_row = LIST_PAGES[page]
    first_row(world)
    client = client_for(world.person(persona))
    assert client.get(url_for()).status_code == 200  # warm the session
    with CaptureQueriesContext(connection) as one_row:
        assert client.get(url_for()).status_code == 200
    _add_rows(world, page, 4)
    with django_assert_num_queries(len(one_row.captured_queries)):
        response = client.get(url_for())
    assert response.status_code == 200
    assert rows_shown(page, response) == (10 if page.endswith("dashboard") else 5)


def rows_shown(page: str, response) -> int:
    if page.endswith("dashboard"):
        return len(response.context["sections"][0].items)
    return len(response.context[page.split("_")[0] + "s" if page != "review_queue" else "requests"])
