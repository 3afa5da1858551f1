"""The training pages: who may see and do what, live progress, failure reasons kept from
researchers, starting and cancelling, and lists whose query count does not grow with their rows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from portal.models import AuditEvent
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
def job(cast, settings, tmp_path):
    settings.VAR_DIR = tmp_path  # the container log lives under VAR_DIR/job-logs
    job = flow.succeeded_job(request=flow.approved_request(cast=cast))
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    job.log_path.write_text("step 1 loss 6.2\nstep 2 loss 5.9\n")
    return job


def statuses(cast, method: str, url: str, data=None) -> dict[str, int]:
    row = {}
    for persona in flow.PERSONAS:
        client = flow.signed_in(Client(), cast.person(persona))
        response = client.post(url, data or {}) if method == "post" else client.get(url)
        row[persona] = response.status_code
    return row


STAFF_ONLY_LOGS = {"anonymous": 302, "officer": 200, "member": 403, "non_member": 403, "steward": 200, "reviewer": 200,
                   "sponsor": 403, "other_sponsor": 403}
JOB_PAGE = {"anonymous": 302, "officer": 200, "member": 200, "non_member": 404, "steward": 200, "reviewer": 200,
            "sponsor": 403, "other_sponsor": 403}
MATRIX = {
    "job_list": ("get", lambda job: "/jobs/",
                 {**JOB_PAGE, "non_member": 200}),
    "job_detail": ("get", lambda job: f"/jobs/{job.pk}/", JOB_PAGE),
    "job_progress": ("get", lambda job: f"/jobs/{job.pk}/progress/", JOB_PAGE),
    "job_log": ("get", lambda job: f"/jobs/{job.pk}/log/", {**STAFF_ONLY_LOGS, "non_member": 403}),
    # Cancelling a finished job changes nothing: those allowed are sent back to the job's page.
    "job_cancel": ("post", lambda job: f"/jobs/{job.pk}/cancel/",
                   {"anonymous": 302, "officer": 302, "member": 302, "non_member": 404, "steward": 403,
                    "reviewer": 403, "sponsor": 403, "other_sponsor": 403}),
    # The request already has a succeeded job: the member is sent back to the request with the reason.
    "job_start": ("post", lambda job: f"/requests/{job.request_id}/train/",
                  {"anonymous": 302, "officer": 403, "member": 302, "non_member": 404, "steward": 403,
                   "reviewer": 403, "sponsor": 403, "other_sponsor": 403}),
    "base_model_list": ("get", lambda job: "/base-models/",
                        {"anonymous": 302, "officer": 200, "member": 200, "non_member": 200, "steward": 200,
                         "reviewer": 200, "sponsor": 403, "other_sponsor": 403}),
}


@pytest.mark.parametrize("page", sorted(MATRIX))
def test_pages_answer_each_persona_as_their_role_allows(page, cast, job):
    method, url, expected = MATRIX[page]
    assert statuses(cast, method, url(job)) == expected
    assert TrainingJob.objects.filter(kind=TrainingJob.Kind.TRAIN).count() == 1
    assert TrainingJob.objects.get(pk=job.pk).status == S.SUCCEEDED


def test_job_list_shows_researchers_only_their_projects_jobs(cast, job):
    member_page = flow.signed_in(Client(), cast.member).get("/jobs/").content.decode()
    outsider_page = flow.signed_in(Client(), cast.non_member).get("/jobs/").content.decode()
    assert f"/jobs/{job.pk}/" in member_page
    assert f"/jobs/{job.pk}/" not in outsider_page
    assert "No jobs yet" in outsider_page


def test_running_job_page_polls_its_progress_fragment_until_finished(cast):
    request = flow.approved_request(cast=cast)
    job = services.job_start(request=request, by=cast.member)
    services.job_transition(job=job, to=S.STAGING)
    services.job_transition(job=job, to=S.RUNNING, backend="bubblewrap", step=6, total_steps=24, loss=4.25,
                            tokens_per_second=910.0, eta_seconds=95.0, loss_curve=flow.loss_curve(6))
    client = flow.signed_in(Client(), cast.member)

    page = client.get(f"/jobs/{job.pk}/").content.decode()
    fragment = client.get(f"/jobs/{job.pk}/progress/").content.decode()

    assert f'data-poll-url="/jobs/{job.pk}/progress/"' in page
    assert "data-poll-stop" not in fragment
    assert '<progress class="bar" max="100" value="25"' in fragment
    assert "1 min 35 s" in fragment
    assert "<svg" in fragment and "<polyline" in fragment and "style=" not in fragment
    services.job_transition(job=job, to=S.SUCCEEDED, step=24)
    assert "data-poll-stop" in client.get(f"/jobs/{job.pk}/progress/").content.decode()
    assert "data-poll-url" not in client.get(f"/jobs/{job.pk}/").content.decode()


def test_finished_job_shows_eval_loss_base_and_adapted(cast, job):
    page = flow.signed_in(Client(), cast.member).get(f"/jobs/{job.pk}/").content.decode()
    assert "6.400" in page and "3.100" in page
    assert "LoRA (full precision)" in page
    assert "improved" in page


def test_failure_reason_is_for_hospital_staff_researchers_read_a_generic_sentence(cast, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    request = flow.approved_request(cast=cast)
    job = services.job_start(request=request, by=cast.member)
    services.job_transition(job=job, to=S.FAILED, reason="Worker error: RuntimeError: CUDA out of memory on gpu0")
    log_link = f"/jobs/{job.pk}/log/"

    researcher_page = flow.signed_in(Client(), cast.member).get(f"/jobs/{job.pk}/").content.decode()
    steward_page = flow.signed_in(Client(), cast.steward).get(f"/jobs/{job.pk}/").content.decode()

    assert GENERIC_FAILURE in researcher_page
    assert "CUDA out of memory" not in researcher_page
    assert log_link not in researcher_page
    assert "CUDA out of memory" in steward_page
    assert log_link in steward_page


def test_log_is_plain_text_for_staff_and_404_when_none_was_kept(cast, job):
    response = flow.signed_in(Client(), cast.steward).get(f"/jobs/{job.pk}/log/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert b"".join(response.streaming_content) == b"step 1 loss 6.2\nstep 2 loss 5.9\n"
    job.log_path.unlink()
    assert flow.signed_in(Client(), cast.steward).get(f"/jobs/{job.pk}/log/").status_code == 404


def test_start_training_from_the_request_creates_a_queued_job_and_redirects_to_it(cast):
    request = flow.approved_request(cast=cast)
    response = flow.signed_in(Client(), cast.member).post(f"/requests/{request.pk}/train/")
    job = TrainingJob.objects.get(request=request)
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert job.status == S.QUEUED
    assert job.created_by == cast.member
    assert AuditEvent.objects.filter(verb="job.queued", target_id=str(job.pk)).count() == 1


def test_start_training_twice_is_refused_with_the_reason(cast, job):
    response = flow.signed_in(Client(), cast.member).post(f"/requests/{job.request_id}/train/", follow=True)
    assert "already has a training job" in response.content.decode()
    assert TrainingJob.objects.filter(request=job.request, kind=TrainingJob.Kind.TRAIN).count() == 1


def test_member_cancels_a_queued_job(cast):
    job = services.job_start(request=flow.approved_request(cast=cast), by=cast.member)
    response = flow.signed_in(Client(), cast.member).post(f"/jobs/{job.pk}/cancel/")
    job.refresh_from_db()
    assert response.status_code == 302
    assert job.status == S.CANCELLED
    assert job.cancel_requested_by == cast.member
    assert list(AuditEvent.objects.filter(target_id=str(job.pk)).values_list("verb", flat=True)) == [
        "job.queued", "job.cancel_requested", "job.cancelled"]


def test_cancel_is_post_only(cast, job):
    assert flow.signed_in(Client(), cast.member).get(f"/jobs/{job.pk}/cancel/").status_code == 405


def test_request_jobs_panel_offers_start_to_members_of_an_approved_request(cast, rf):
    from django.template import Context, Template

    request = flow.approved_request(cast=cast)
    template = Template("{% load training_tags %}{% request_training obj %}")

    def render(user) -> str:
        http_request = rf.get("/")
        http_request.user = user
        return template.render(Context({"request": http_request, "obj": request, "csrf_token": "t"}))

    assert f'action="/requests/{request.pk}/train/"' in render(cast.member)
    assert f'action="/requests/{request.pk}/train/"' not in render(cast.officer)
    job = services.job_start(request=request, by=cast.member)
    member_view = render(cast.member)
    assert f"/jobs/{job.pk}/" in member_view
    assert f'action="/requests/{request.pk}/train/"' not in member_view


def test_base_models_list_shows_the_registry(cast):
    model = flow.tiny_base_model()
    page = flow.signed_in(Client(), cast.member).get("/base-models/").content.decode()
    assert model.name in page
    assert model.manifest_sha256[:16] in page
    assert f'<td class="num">{len(model.files)}</td>' in page


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_job_list_queries_do_not_grow_with_rows(cast, django_assert_num_queries):
    request = flow.approved_request(cast=cast)
    client = flow.signed_in(Client(), cast.officer)
    services.job_transition(job=services.job_start(request=request, by=cast.member), to=S.FAILED, reason="x")
    one = _queries(client, "/jobs/")
    for _ in range(4):
        services.job_transition(job=services.job_start(request=request, by=cast.member), to=S.FAILED, reason="x")
    assert TrainingJob.objects.count() == 5
    with django_assert_num_queries(one):
        client.get("/jobs/")


def test_base_model_list_queries_do_not_grow_with_rows(cast, django_assert_num_queries):
    from tests import factories

    flow.tiny_base_model()
    client = flow.signed_in(Client(), cast.steward)
    one = _queries(client, "/base-models/")
    for name in ("tiny-a", "tiny-b", "tiny-c"):
        factories.text_base_model(name)
    with django_assert_num_queries(one):
        client.get("/base-models/")
