"""The training API: jobs (list, progress numbers, start, cancel) and base models, per persona."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from portal import services as portal_services
from tests import flow
from training import services
from training.models import TrainingJob
from training.selectors import GENERIC_FAILURE

S = TrainingJob.Status
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    flow.fast_passwords(settings)


@pytest.fixture
def cast():
    return flow.cast()


@pytest.fixture
def job(cast):
    return flow.succeeded_job(request=flow.approved_request(cast=cast))


def client_for(cast, persona: str) -> APIClient:
    user = cast.person(persona)
    if persona in ("sponsor", "other_sponsor"):
        client = APIClient()
        raw = portal_services.api_token_issue(user=user, name="ci", by=cast.officer)[1]
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client
    return flow.signed_in(APIClient(), user)


JOB_READ = {"anonymous": 401, "officer": 200, "member": 200, "non_member": 404, "steward": 200, "reviewer": 200,
            "sponsor": 403, "other_sponsor": 403}
MATRIX = {
    "jobs": ("get", lambda job: "/api/v1/jobs", None, {**JOB_READ, "non_member": 200}),
    "job": ("get", lambda job: f"/api/v1/jobs/{job.pk}", None, JOB_READ),
    # A finished job: cancelling changes nothing, those allowed get the job back.
    "job_cancel": ("post", lambda job: f"/api/v1/jobs/{job.pk}/cancel", {},
                   {**JOB_READ, "steward": 403, "reviewer": 403}),
    # The request already has a succeeded job: the member gets 400 with the reason.
    "job_start": ("post", lambda job: "/api/v1/jobs", lambda job: {"request": job.request_id},
                  {"anonymous": 401, "officer": 403, "member": 400, "non_member": 404, "steward": 403,
                   "reviewer": 403, "sponsor": 403, "other_sponsor": 403}),
    "base_models": ("get", lambda job: "/api/v1/base-models", None,
                    {"anonymous": 401, "officer": 200, "member": 200, "non_member": 200, "steward": 200,
                     "reviewer": 200, "sponsor": 403, "other_sponsor": 403}),
    "base_model": ("get", lambda job: f"/api/v1/base-models/{job.base_model_id}", None,
                   {"anonymous": 401, "officer": 200, "member": 200, "non_member": 200, "steward": 200,
                    "reviewer": 200, "sponsor": 403, "other_sponsor": 403}),
}


@pytest.mark.parametrize("endpoint", sorted(MATRIX))
def test_endpoints_answer_each_persona_as_their_role_allows(endpoint, cast, job):
    method, url, body, expected = MATRIX[endpoint]
    row = {}
    for persona in flow.PERSONAS:
        client = client_for(cast, persona)
        if method == "post":
            response = client.post(url(job), body(job) if callable(body) else body, format="json")
        else:
            response = client.get(url(job))
        row[persona] = response.status_code
    assert row == expected
    assert TrainingJob.objects.filter(kind=TrainingJob.Kind.TRAIN).count() == 1


def test_job_detail_has_the_progress_numbers(cast, job):
    data = flow.signed_in(APIClient(), cast.member).get(f"/api/v1/jobs/{job.pk}").json()
    assert data["status"] == "succeeded"
    assert (data["step"], data["total_steps"], data["percent"]) == (24, 24, 100)
    assert (data["eval_loss_base"], data["eval_loss_adapted"]) == (6.4, 3.1)
    assert data["loss_curve"] == flow.loss_curve()
    assert data["quantization"] == "none"
    assert data["failure"] == ""


def test_job_failure_reason_is_for_staff_only(cast):
    job = services.job_start(request=flow.approved_request(cast=cast), by=cast.member)
    services.job_transition(job=job, to=S.FAILED, reason="Worker error: OSError: disk full on /var/staging")
    member = flow.signed_in(APIClient(), cast.member).get(f"/api/v1/jobs/{job.pk}").json()
    steward = flow.signed_in(APIClient(), cast.steward).get(f"/api/v1/jobs/{job.pk}").json()
    assert member["failure"] == GENERIC_FAILURE
    assert steward["failure"] == "Worker error: OSError: disk full on /var/staging"


def test_member_starts_and_cancels_a_job_through_the_api(cast):
    request = flow.approved_request(cast=cast)
    client = flow.signed_in(APIClient(), cast.member)
    started = client.post("/api/v1/jobs", {"request": request.pk}, format="json")
    assert started.status_code == 201
    assert started.json()["status"] == "queued"
    cancelled = client.post(f"/api/v1/jobs/{started.json()['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert TrainingJob.objects.get(pk=started.json()["id"]).cancel_requested_by == cast.member


def test_job_start_input_is_checked(cast):
    client = flow.signed_in(APIClient(), cast.member)
    assert client.post("/api/v1/jobs", {"request": "x", "gpu": 1}, format="json").json() == {"gpu": ["Unknown field."]}
    assert client.post("/api/v1/jobs", {"request": 999999}, format="json").status_code == 404


def test_job_list_filters_are_checked(cast, job):
    client = flow.signed_in(APIClient(), cast.officer)
    assert [j["id"] for j in client.get("/api/v1/jobs?status=succeeded&kind=train").json()["results"]] == [str(job.pk)]
    assert client.get("/api/v1/jobs?status=done").json() == {
        "status": [f"One of {', '.join(S.values)}."]}


def test_base_model_detail_lists_its_file_hashes(cast, job):
    data = flow.signed_in(APIClient(), cast.member).get(f"/api/v1/base-models/{job.base_model_id}").json()
    assert data["files"] == job.base_model.files
    assert data["file_count"] == len(job.base_model.files)
    assert data["manifest_sha256"] == job.base_model.manifest_sha256


def test_job_list_queries_do_not_grow_with_rows(cast, django_assert_num_queries):
    request = flow.approved_request(cast=cast)
    client = flow.signed_in(APIClient(), cast.member)

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/api/v1/jobs").status_code == 200
        return len(captured)

    services.job_transition(job=services.job_start(request=request, by=cast.member), to=S.FAILED, reason="x")
    one = count()
    for _ in range(3):
        services.job_transition(job=services.job_start(request=request, by=cast.member), to=S.FAILED, reason="x")
    with django_assert_num_queries(one):
        client.get("/api/v1/jobs")
