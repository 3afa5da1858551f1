"""The egress API: who may call what (sponsors with Bearer tokens), sign-off and release, the
sponsor's terms and download with a token (refusals, expiry, revocation, other organisations,
throttling), every download audited, the public key, and lists of constant query count."""

from __future__ import annotations

import zipfile
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from egress import services
from egress.models import Adapter, Download, Release
from egress.verify import verify_release
from portal import services as portal_services
from portal.models import ApiToken, AuditEvent
from tests import factories, flow

A = Adapter.Status
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    flow.fast_passwords(settings)


@pytest.fixture
def cast():
    return flow.cast()


def bearer(token_raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_raw}")
    return client


def issue(cast, user, **kw) -> tuple[ApiToken, str]:
    return portal_services.api_token_issue(user=user, name="ci", by=cast.officer, **kw)


def client_for(cast, persona: str) -> APIClient:
    """Sponsors call with a Bearer token, as their scripts do; hospital staff with a session."""
    user = cast.person(persona)
    if persona in ("sponsor", "other_sponsor"):
        return bearer(issue(cast, user)[1])
    return flow.signed_in(APIClient(), user)


def in_review(cast, **kw) -> Adapter:
    return flow.adapter_in_review(cast=cast, **kw)


def released(cast, **kw) -> Release:
    adapter = flow.approved_adapter(adapter=in_review(cast, **kw), reviewers=(cast.reviewer, cast.second_reviewer))
    return flow.release(adapter=adapter, organisation=cast.sponsor_org, officer=cast.officer)


ADAPTER_READ = {"anonymous": 401, "officer": 200, "member": 200, "non_member": 404, "steward": 403, "reviewer": 200,
                "sponsor": 403, "other_sponsor": 403}
RELEASE_READ = {"anonymous": 401, "officer": 200, "member": 403, "non_member": 403, "steward": 403, "reviewer": 200,
                "sponsor": 200, "other_sponsor": 404}
ONLY = {"anonymous": 401, **{persona: 403 for persona in flow.PERSONAS[1:]}}
# endpoint: (what it needs, method, url, expected). Writes carry an empty body: allowed personas get
# 400 with the field errors and nothing changes; the others are refused before it is read.
MATRIX = {
    "adapters": ("adapter", "get", lambda a: "/api/v1/adapters", {**ADAPTER_READ, "non_member": 200}),
    "adapter": ("adapter", "get", lambda a: f"/api/v1/adapters/{a.pk}", ADAPTER_READ),
    "adapter_signoffs": ("adapter", "post", lambda a: f"/api/v1/adapters/{a.pk}/signoffs", {**ONLY, "reviewer": 400}),
    "adapter_release": ("adapter", "post", lambda a: f"/api/v1/adapters/{a.pk}/release", {**ONLY, "officer": 400}),
    "releases": ("release", "get", lambda r: "/api/v1/releases", {**RELEASE_READ, "other_sponsor": 200}),
    "release": ("release", "get", lambda r: f"/api/v1/releases/{r.pk}", RELEASE_READ),
    "release_manifest": ("release", "get", lambda r: f"/api/v1/releases/{r.pk}/manifest", RELEASE_READ),
    "release_accept_terms": ("release", "post", lambda r: f"/api/v1/releases/{r.pk}/accept-terms",
                             {**ONLY, "sponsor": 200, "other_sponsor": 404}),
    "release_download": ("accepted", "get", lambda r: f"/api/v1/releases/{r.pk}/download",
                         {**ONLY, "sponsor": 200, "other_sponsor": 404}),
    "release_revoke": ("release", "post", lambda r: f"/api/v1/releases/{r.pk}/revoke", {**ONLY, "officer": 400}),
    "signing_key": ("release", "get", lambda r: "/api/v1/signing-key", {persona: 200 for persona in flow.PERSONAS}),
}


@pytest.mark.parametrize("endpoint", sorted(MATRIX))
def test_endpoints_answer_each_persona_as_their_role_allows(endpoint, cast):
    needs, method, url, expected = MATRIX[endpoint]
    target = in_review(cast) if needs == "adapter" else released(cast)
    if needs == "accepted":
        services.terms_accept(release=target, by=cast.sponsor)
    row = {}
    for persona in flow.PERSONAS:
        client = client_for(cast, persona)
        response = client.post(url(target), {}, format="json") if method == "post" else client.get(url(target))
        row[persona] = response.status_code
    assert row == expected
    assert Release.objects.filter(revoked_at__isnull=False).count() == 0


def test_unauthenticated_calls_get_a_bearer_challenge():
    response = APIClient().get("/api/v1/releases")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_two_distinct_reviewers_approve_through_the_api(cast):
    adapter = in_review(cast)
    first = flow.signed_in(APIClient(), cast.reviewer).post(
        f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "approve", "reason": "Gates pass."}, format="json")
    second = flow.signed_in(APIClient(), cast.second_reviewer).post(
        f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "approve", "reason": "Clean."}, format="json")
    assert first.status_code == 201
    assert first.json()["status"] == "in_review"
    assert first.json()["approvals"] == 1
    assert second.status_code == 201
    assert second.json()["status"] == "approved"
    assert [s["reviewer"] for s in second.json()["signoffs"]] == [cast.reviewer.full_name, cast.second_reviewer.full_name]


def test_same_reviewer_twice_is_refused_through_the_api(cast):
    adapter = in_review(cast)
    client = flow.signed_in(APIClient(), cast.reviewer)
    client.post(f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "approve", "reason": "Fine."}, format="json")
    again = client.post(f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "approve", "reason": "Again."}, format="json")
    assert again.status_code == 403
    assert again.json() == {"detail": "You have already signed this adapter off; a second reviewer must decide."}
    assert adapter.signoffs.count() == 1


def test_reviewer_on_the_project_is_refused_through_the_api(cast):
    insider = factories.reviewer()
    adapter = in_review(cast, members=(insider,))
    response = flow.signed_in(APIClient(), insider).post(
        f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "approve", "reason": "Mine."}, format="json")
    assert response.status_code == 403
    assert response.json() == {"detail": "Nobody signs off an adapter from their own project or request."}
    assert adapter.signoffs.count() == 0


def test_signoff_on_an_approved_adapter_is_a_conflict(cast):
    adapter = flow.approved_adapter(adapter=in_review(cast), reviewers=(cast.reviewer, cast.second_reviewer))
    response = flow.signed_in(APIClient(), factories.reviewer()).post(
        f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "reject", "reason": "Late."}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "This adapter is approved, not awaiting review."}


def test_signoff_input_names_unknown_and_bad_fields(cast):
    adapter = in_review(cast)
    response = flow.signed_in(APIClient(), cast.reviewer).post(
        f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "maybe", "reason": "x", "extra": 1}, format="json")
    assert response.status_code == 400
    assert response.json() == {"extra": ["Unknown field."]}
    response = flow.signed_in(APIClient(), cast.reviewer).post(
        f"/api/v1/adapters/{adapter.pk}/signoffs", {"decision": "maybe", "reason": "x"}, format="json")
    assert response.json() == {"decision": ['"maybe" is not a valid choice.']}


def test_adapter_detail_gives_staff_the_verdicts_and_researchers_none(cast):
    adapter = in_review(cast)
    staff = flow.signed_in(APIClient(), cast.reviewer).get(f"/api/v1/adapters/{adapter.pk}").json()
    researcher = flow.signed_in(APIClient(), cast.member).get(f"/api/v1/adapters/{adapter.pk}").json()
    assert len(staff["validation"]) == 14
    assert researcher["validation"] is None
    assert researcher["validation_summary"] == "Accepted: 14 of 14 rules passed."
    assert researcher["cohort_patients"] == "about 10"
    assert [g["status"] for g in researcher["gates"]] == ["pass", "pass", "pass", "pass"]
    assert [a["name"] for a in researcher["attacks"]] == ["loss", "zlib", "reference"]
    assert researcher["differential_privacy"] is None


def test_officer_releases_through_the_api(cast):
    adapter = flow.approved_adapter(adapter=in_review(cast), reviewers=(cast.reviewer, cast.second_reviewer))
    services.signing_key_create()
    response = flow.signed_in(APIClient(), cast.officer).post(
        f"/api/v1/adapters/{adapter.pk}/release", {"organisation": cast.sponsor_org.pk, "terms": ""}, format="json")
    assert response.status_code == 201
    release = Release.objects.get(pk=response.json()["id"])
    assert response.json()["organisation"] == cast.sponsor_org.name
    assert response.json()["terms_sha256"] == release.terms_sha256
    assert verify_release(release.zip_path, flow.public_key_path()).manifest_sha256 == release.manifest_sha256


def test_release_to_a_hospital_organisation_is_refused(cast):
    adapter = flow.approved_adapter(adapter=in_review(cast), reviewers=(cast.reviewer, cast.second_reviewer))
    hospital = factories.organisation()
    response = flow.signed_in(APIClient(), cast.officer).post(
        f"/api/v1/adapters/{adapter.pk}/release", {"organisation": hospital.pk}, format="json")
    assert response.status_code == 400
    assert response.json() == {"organisation": [f'Invalid pk "{hospital.pk}" - object does not exist.']}


def test_sponsor_downloads_with_a_token_after_accepting_the_terms(cast, tmp_path):
    release = released(cast)
    token, raw = issue(cast, cast.sponsor)
    client = bearer(raw)

    refused = client.get(f"/api/v1/releases/{release.pk}/download")
    accepted = client.post(f"/api/v1/releases/{release.pk}/accept-terms")
    download = client.get(f"/api/v1/releases/{release.pk}/download")

    assert refused.status_code == 403
    assert refused.json() == {"detail": "Accept the data-use terms of this release before the first download."}
    assert accepted.status_code == 200
    assert accepted.json()["terms_accepted_at"] is not None
    assert download.status_code == 200
    assert download["Content-Type"] == "application/zip"
    assert download["Content-Disposition"] == f'attachment; filename="release-{release.pk}.zip"'
    body = b"".join(download.streaming_content)
    path = tmp_path / "downloaded.zip"
    path.write_bytes(body)
    verified = verify_release(path, flow.public_key_path())
    assert verified.manifest["release_id"] == str(release.pk)
    assert Download.objects.get(release=release).token == token
    events = AuditEvent.objects.filter(target_id=str(release.pk), verb__startswith="release.download").order_by("seq")
    assert [(e.verb, e.payload["token"]) for e in events] == [
        ("release.download_refused", token.prefix), ("release.downloaded", token.prefix)]


@pytest.mark.parametrize("state", ["expired", "revoked"])
def test_expired_or_revoked_token_is_401(cast, state):
    release = released(cast)
    token, raw = issue(cast, cast.sponsor)
    services.terms_accept(release=release, by=cast.sponsor, token=token)
    if state == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        portal_services.api_token_revoke(token=token, by=cast.officer)
    response = bearer(raw).get(f"/api/v1/releases/{release.pk}/download")
    assert response.status_code == 401
    assert response.json() == {"detail": f"This token has {'expired' if state == 'expired' else 'been revoked'}."}
    assert Download.objects.count() == 0


def test_other_organisations_release_is_404_and_the_attempt_audited(cast):
    release = released(cast)
    token, raw = issue(cast, cast.other_sponsor)
    listing = bearer(raw).get("/api/v1/releases")
    response = bearer(raw).get(f"/api/v1/releases/{release.pk}/download")
    assert listing.json()["results"] == []
    assert response.status_code == 404
    assert AuditEvent.objects.filter(target_id=str(release.pk), verb="release.download_refused",
                                     actor=cast.other_sponsor).count() == 1


def test_revoked_release_is_refused_with_the_reason(cast):
    release = released(cast)
    token, raw = issue(cast, cast.sponsor)
    services.terms_accept(release=release, by=cast.sponsor, token=token)
    revoke = flow.signed_in(APIClient(), cast.officer).post(
        f"/api/v1/releases/{release.pk}/revoke", {"reason": "Consent withdrawn by two patients."}, format="json")
    response = bearer(raw).get(f"/api/v1/releases/{release.pk}/download")
    detail = bearer(raw).get(f"/api/v1/releases/{release.pk}").json()
    assert revoke.status_code == 200
    assert response.status_code == 403
    assert response.json() == {"detail": f"This release was revoked on {timezone.now():%Y-%m-%d}: "
                                         "Consent withdrawn by two patients."}
    assert detail["revoked"] is True and detail["revoked_reason"] == "Consent withdrawn by two patients."
    assert Download.objects.count() == 0


def test_token_without_download_scope_may_read_but_not_download(cast):
    release = released(cast)
    services.terms_accept(release=release, by=cast.sponsor)
    token, raw = issue(cast, cast.sponsor, scopes=[ApiToken.Scope.RELEASES_READ])
    assert bearer(raw).get(f"/api/v1/releases/{release.pk}").status_code == 200
    response = bearer(raw).get(f"/api/v1/releases/{release.pk}/download")
    assert response.status_code == 403
    assert response.json() == {"detail": "This token lacks the releases:download scope."}


def test_downloads_are_throttled(cast, monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"download": "2/hour"})
    release = released(cast)
    token, raw = issue(cast, cast.sponsor)
    client = bearer(raw)
    client.post(f"/api/v1/releases/{release.pk}/accept-terms")
    codes = [client.get(f"/api/v1/releases/{release.pk}/download").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert Download.objects.count() == 2


def test_manifest_endpoint_returns_the_signed_manifest(cast):
    release = released(cast)
    body = bearer(issue(cast, cast.sponsor)[1]).get(f"/api/v1/releases/{release.pk}/manifest").json()
    assert body["manifest_sha256"] == release.manifest_sha256
    assert body["signature"] == release.signature
    assert body["manifest"]["release_to"] == cast.sponsor_org.name
    with zipfile.ZipFile(release.zip_path) as archive:
        assert archive.read("manifest.sig").decode().strip() == body["signature"]


def test_signing_key_is_public_text_and_404_before_one_exists(settings):
    missing = APIClient().get("/api/v1/signing-key")
    assert missing.status_code == 404
    assert "create_signing_key" in missing.json()["detail"]
    services.signing_key_create()
    response = APIClient().get("/api/v1/signing-key")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == flow.public_key_path().read_bytes()
    assert response.content.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_api_root_lists_the_egress_and_training_endpoints():
    names = set(APIClient().get("/api/v1/").json())
    assert {"jobs", "base-models", "adapters", "releases", "signing-key"} <= names


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_adapter_and_release_lists_keep_their_query_count(cast, django_assert_num_queries):
    first = released(cast)
    services.terms_accept(release=first, by=cast.sponsor)
    services.release_download(release=first, by=cast.sponsor, token=None, address=None)
    officer = flow.signed_in(APIClient(), cast.officer)
    sponsor = bearer(issue(cast, cast.sponsor)[1])
    calls = [(officer, "/api/v1/adapters"), (officer, "/api/v1/releases"), (sponsor, "/api/v1/releases")]
    one = [_queries(client, url) for client, url in calls]
    released(cast, title="Second")
    released(cast, title="Third")
    for (client, url), count in zip(calls, one):
        with django_assert_num_queries(count):
            client.get(url)
    assert len(officer.get("/api/v1/releases").json()["results"]) == 3
