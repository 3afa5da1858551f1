"""The egress pages: who may see and do what, sign-off by two distinct reviewers outside the
project, release by an officer, the sponsor's terms and download, revocation, what researchers
and staff each read on the review page, and lists whose query count does not grow with rows."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from egress import services
from egress.models import Adapter, Download, Release, SignOff, TermsAcceptance
from egress.verify import verify_release
from portal.models import AuditEvent
from tests import factories, flow

A = Adapter.Status
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    flow.fast_passwords(settings)


@pytest.fixture
def cast():
    return flow.cast()


def client_for(user) -> Client:
    return flow.signed_in(Client(), user)


def in_review(cast, **kw) -> Adapter:
    return flow.adapter_in_review(cast=cast, **kw)


def released(cast, **kw) -> Release:
    adapter = flow.approved_adapter(adapter=in_review(cast, **kw), reviewers=(cast.reviewer, cast.second_reviewer))
    return flow.release(adapter=adapter, organisation=cast.sponsor_org, officer=cast.officer)


def statuses(cast, method: str, url: str, data=None) -> dict[str, int]:
    row = {}
    for persona in flow.PERSONAS:
        client = client_for(cast.person(persona))
        response = client.post(url, data or {}) if method == "post" else client.get(url)
        row[persona] = response.status_code
    return row


def _accepted(cast, release):
    services.terms_accept(release=release, by=cast.sponsor)
    return release


ADAPTER_PAGE = {"anonymous": 302, "officer": 200, "member": 200, "non_member": 404, "steward": 403, "reviewer": 200,
                "sponsor": 403, "other_sponsor": 403}
RELEASE_PAGE = {"anonymous": 302, "officer": 200, "member": 403, "non_member": 403, "steward": 403, "reviewer": 200,
                "sponsor": 200, "other_sponsor": 404}
ONLY = {"anonymous": 302, **{persona: 403 for persona in flow.PERSONAS[1:]}}
# page: (what it needs, method, url, expected). Posts carry an empty form: allowed personas get the
# form back with its errors (400) and nothing changes; the others are refused before it is read.
MATRIX = {
    "adapter_list": ("adapter", "get", lambda a: "/adapters/", {**ADAPTER_PAGE, "non_member": 200}),
    "adapter_detail": ("adapter", "get", lambda a: f"/adapters/{a.pk}/", ADAPTER_PAGE),
    "adapter_signoff": ("adapter", "post", lambda a: f"/adapters/{a.pk}/signoff/", {**ONLY, "reviewer": 400}),
    "adapter_release": ("adapter", "post", lambda a: f"/adapters/{a.pk}/release/", {**ONLY, "officer": 400}),
    "release_list": ("release", "get", lambda r: "/releases/", {**RELEASE_PAGE, "other_sponsor": 200}),
    "release_detail": ("release", "get", lambda r: f"/releases/{r.pk}/", RELEASE_PAGE),
    "release_accept_terms": ("release", "post", lambda r: f"/releases/{r.pk}/accept-terms/",
                             {**ONLY, "sponsor": 302, "other_sponsor": 404}),
    "release_download": ("accepted", "get", lambda r: f"/releases/{r.pk}/download/",
                         {**ONLY, "sponsor": 200, "other_sponsor": 404}),
    "release_revoke": ("release", "post", lambda r: f"/releases/{r.pk}/revoke/", {**ONLY, "officer": 400}),
}


@pytest.mark.parametrize("page", sorted(MATRIX))
def test_pages_answer_each_persona_as_their_role_allows(page, cast):
    needs, method, url, expected = MATRIX[page]
    target = in_review(cast) if needs == "adapter" else released(cast)
    if needs == "accepted":
        _accepted(cast, target)
    assert statuses(cast, method, url(target)) == expected
    assert SignOff.objects.count() == (0 if needs == "adapter" else 2)
    assert Release.objects.filter(revoked_at__isnull=False).count() == 0


def test_two_distinct_reviewers_approve_through_the_page(cast):
    adapter = in_review(cast)
    first = client_for(cast.reviewer).post(f"/adapters/{adapter.pk}/signoff/",
                                           {"decision": "approve", "reason": "Gates pass with margin."})
    adapter.refresh_from_db()
    assert first.status_code == 302
    assert adapter.status == A.IN_REVIEW
    second = client_for(cast.second_reviewer).post(f"/adapters/{adapter.pk}/signoff/",
                                                   {"decision": "approve", "reason": "Validation clean."})
    adapter.refresh_from_db()
    assert second.status_code == 302
    assert adapter.status == A.APPROVED
    assert list(adapter.signoffs.values_list("reviewer", "decision")) == [
        (cast.reviewer.pk, "approve"), (cast.second_reviewer.pk, "approve")]
    assert AuditEvent.objects.filter(target_id=str(adapter.pk), verb="adapter.signoff_approve").count() == 2
    assert AuditEvent.objects.filter(target_id=str(adapter.pk), verb="adapter.approved").count() == 1


def test_same_reviewer_twice_is_refused(cast):
    adapter = in_review(cast)
    client = client_for(cast.reviewer)
    client.post(f"/adapters/{adapter.pk}/signoff/", {"decision": "approve", "reason": "Fine."})
    page = client.get(f"/adapters/{adapter.pk}/").content.decode()
    again = client.post(f"/adapters/{adapter.pk}/signoff/", {"decision": "approve", "reason": "Fine again."})
    adapter.refresh_from_db()
    assert again.status_code == 403
    assert "already signed this adapter off" in again.content.decode()
    assert "Record my decision" not in page
    assert adapter.signoffs.count() == 1
    assert adapter.status == A.IN_REVIEW


def test_reviewer_on_the_project_is_refused(cast):
    insider = factories.reviewer()
    adapter = in_review(cast, members=(insider,))
    client = client_for(insider)
    page = client.get(f"/adapters/{adapter.pk}/").content.decode()
    response = client.post(f"/adapters/{adapter.pk}/signoff/", {"decision": "approve", "reason": "Mine."})
    assert "Nobody signs off an adapter from their own project" in page
    assert "Record my decision" not in page
    assert response.status_code == 403
    assert adapter.signoffs.count() == 0


def test_one_rejection_rejects_and_the_researcher_reads_the_reason(cast):
    adapter = in_review(cast)
    response = client_for(cast.reviewer).post(f"/adapters/{adapter.pk}/signoff/",
                                              {"decision": "reject", "reason": "Canary exposure too close to the limit."})
    adapter.refresh_from_db()
    assert response.status_code == 302
    assert adapter.status == A.REJECTED
    page = client_for(cast.member).get(f"/adapters/{adapter.pk}/").content.decode()
    assert "Rejected in review: Canary exposure too close to the limit." in page


def test_signoff_without_reason_is_refused_with_the_field_error(cast):
    adapter = in_review(cast)
    response = client_for(cast.reviewer).post(f"/adapters/{adapter.pk}/signoff/", {"decision": "approve", "reason": ""})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert adapter.signoffs.count() == 0


def test_officer_releases_through_the_page_and_the_zip_verifies(cast):
    adapter = flow.approved_adapter(adapter=in_review(cast), reviewers=(cast.reviewer, cast.second_reviewer))
    services.signing_key_create()
    client = client_for(cast.officer)
    assert "Sign and release" in client.get(f"/adapters/{adapter.pk}/").content.decode()

    response = client.post(f"/adapters/{adapter.pk}/release/",
                           {"organisation": cast.sponsor_org.pk, "terms": "Research use only."})

    release = Release.objects.get(adapter=adapter)
    adapter.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"] == f"/releases/{release.pk}/"
    assert adapter.status == A.RELEASED
    assert release.organisation == cast.sponsor_org
    assert release.terms == "Research use only."
    verified = verify_release(release.zip_path, flow.public_key_path())
    assert sorted(verified.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert verified.manifest["release_to"] == cast.sponsor_org.name


def test_release_form_is_only_for_officers_once_approved(cast):
    adapter = in_review(cast)
    assert "Sign and release" not in client_for(cast.officer).get(f"/adapters/{adapter.pk}/").content.decode()
    response = client_for(cast.officer).post(f"/adapters/{adapter.pk}/release/", {"organisation": cast.sponsor_org.pk})
    assert response.status_code == 400
    assert "Only an approved adapter can be released" in response.content.decode()
    assert Release.objects.count() == 0


def test_sponsor_accepts_terms_then_downloads_through_the_pages(cast):
    release = released(cast)
    client = client_for(cast.sponsor)
    before = client.get(f"/releases/{release.pk}/").content.decode()
    refused = client.get(f"/releases/{release.pk}/download/")
    accepted = client.post(f"/releases/{release.pk}/accept-terms/")
    after = client.get(f"/releases/{release.pk}/").content.decode()
    download = client.get(f"/releases/{release.pk}/download/")

    assert "Accept terms" in before and "Download release.zip" not in before
    assert refused.status_code == 403
    assert "Accept the data-use terms" in refused.content.decode()
    assert accepted.status_code == 302
    assert "Download release.zip" in after and "Accept terms" not in after
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="release-{release.pk}.zip"'
    body = b"".join(download.streaming_content)
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json", "manifest.sig"]
    assert TermsAcceptance.objects.filter(release=release, user=cast.sponsor).count() == 1
    assert Download.objects.filter(release=release, user=cast.sponsor, token=None).count() == 1
    assert list(AuditEvent.objects.filter(target_id=str(release.pk), verb__startswith="release.download")
                .values_list("verb", flat=True)) == ["release.download_refused", "release.downloaded"]


def test_revoked_release_shows_the_reason_and_refuses_downloads(cast):
    release = _accepted(cast, released(cast))
    response = client_for(cast.officer).post(f"/releases/{release.pk}/revoke/", {"reason": "Consent withdrawn."})
    sponsor = client_for(cast.sponsor)
    page = sponsor.get(f"/releases/{release.pk}/").content.decode()
    download = sponsor.get(f"/releases/{release.pk}/download/")
    release.refresh_from_db()
    assert response.status_code == 302
    assert release.revoked_by == cast.officer
    assert "Consent withdrawn." in page and "Download release.zip" not in page
    assert download.status_code == 403
    assert "Consent withdrawn." in download.content.decode()
    assert Adapter.objects.get(pk=release.adapter_id).status == A.REVOKED


def test_review_page_shows_staff_the_verdicts_and_researchers_a_summary(cast):
    adapter = in_review(cast)
    staff = client_for(cast.reviewer).get(f"/adapters/{adapter.pk}/").content.decode()
    researcher = client_for(cast.member).get(f"/adapters/{adapter.pk}/").content.decode()
    summary = "Accepted: 14 of 14 rules passed."
    assert summary in staff and summary in researcher
    assert "Printable runs" in staff and "Printable runs" not in researcher
    for page in (staff, researcher):
        assert "about 10 patients" in page  # 12 patients, rounded to 5
        assert page.count("<svg") == 2  # the ROC curves and the loss curve
        assert "Membership inference (AUC)" in page and "0.530" in page and "400 / 400" in page
        assert "style=" not in page


def test_researcher_reads_a_summary_of_a_validation_rejection(cast, settings):
    job = flow.succeeded_job(request=flow.approved_request(cast=cast))
    quarantine = settings.QUARANTINE_ROOT / str(job.pk)
    quarantine.mkdir(parents=True)
    (quarantine / flow.ADAPTER_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    adapter = services.adapter_validate(adapter=services.adapter_receive(job=job, quarantine_dir=quarantine))
    assert adapter.status == A.REJECTED
    researcher = client_for(cast.member).get(f"/adapters/{adapter.pk}/").content.decode()
    staff = client_for(cast.officer).get(f"/adapters/{adapter.pk}/").content.decode()
    assert "The egress validator refused the file. Rejected:" in researcher
    assert adapter.rejected_reason not in researcher
    assert adapter.rejected_reason[:60] in staff


def test_dp_parameters_are_shown_when_the_recipe_used_dp_sgd(cast):
    recipe = {**flow.TINY_RECIPE, "dp": {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}}
    job = flow.succeeded_job(request=flow.approved_request(cast=cast, recipe=recipe),
                             final_metrics={"epsilon": 7.93, "noise_multiplier": 0.871, "sample_rate": 0.0625})
    page = client_for(cast.reviewer).get(f"/adapters/{flow.adapter_in_review(job=job).pk}/").content.decode()
    assert "Differential privacy (DP-SGD, per patient)" in page
    assert "7.93" in page and "0.871" in page and "(target 8.0)" in page


def test_reviewers_see_their_queue_first(cast):
    waiting = in_review(cast)
    page = client_for(cast.reviewer).get("/adapters/").content.decode()
    assert page.index("Waiting for your review") < page.index("All adapters")
    assert page.index(f"/adapters/{waiting.pk}/") < page.index("All adapters")
    assert "Waiting for your review" not in client_for(cast.member).get("/adapters/").content.decode()


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_adapter_list_queries_do_not_grow_with_rows(cast, django_assert_num_queries):
    in_review(cast)
    client = client_for(cast.reviewer)
    one = _queries(client, "/adapters/")
    in_review(cast, title="Second")
    in_review(cast, title="Third")
    assert Adapter.objects.count() == 3
    with django_assert_num_queries(one):
        client.get("/adapters/")


def test_release_list_queries_do_not_grow_with_rows(cast, django_assert_num_queries):
    first = released(cast)
    services.terms_accept(release=first, by=cast.sponsor)
    services.release_download(release=first, by=cast.sponsor, token=None, address=None)
    clients = {"officer": client_for(cast.officer), "sponsor": client_for(cast.sponsor)}
    one = {name: _queries(client, "/releases/") for name, client in clients.items()}
    released(cast, title="Second")
    released(cast, title="Third")
    assert Release.objects.count() == 3
    for name, client in clients.items():
        with django_assert_num_queries(one[name]):
            client.get("/releases/")
