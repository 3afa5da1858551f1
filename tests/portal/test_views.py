"""The officers' token page (the raw token shown once) and the audit-log page (with the chain status)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from portal import services
from portal.models import ApiToken, AuditEvent
from tests import factories, flow

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    flow.fast_passwords(settings)


@pytest.fixture
def cast():
    return flow.cast()


def client_for(user) -> Client:
    return flow.signed_in(Client(), user)


MATRIX = {
    "tokens": ("get", "/tokens/", {"anonymous": 302, "officer": 200, "member": 403, "non_member": 403, "steward": 403,
                                   "reviewer": 403, "sponsor": 403, "other_sponsor": 403}),
    "token_issue": ("post", "/tokens/", {"anonymous": 302, "officer": 400, "member": 403, "non_member": 403,
                                         "steward": 403, "reviewer": 403, "sponsor": 403, "other_sponsor": 403}),
    "audit_log": ("get", "/audit/", {"anonymous": 302, "officer": 200, "member": 403, "non_member": 403,
                                     "steward": 200, "reviewer": 200, "sponsor": 403, "other_sponsor": 403}),
}


@pytest.mark.parametrize("page", sorted(MATRIX))
def test_pages_answer_each_persona_as_their_role_allows(page, cast):
    method, url, expected = MATRIX[page]
    row = {}
    for persona in flow.PERSONAS:
        client = client_for(cast.person(persona))
        row[persona] = (client.post(url, {}) if method == "post" else client.get(url)).status_code
    assert row == expected
    assert ApiToken.objects.count() == 0


def test_token_revoke_is_for_officers(cast):
    token, _ = services.api_token_issue(user=cast.sponsor, name="ci", by=cast.officer)
    assert client_for(cast.reviewer).post(f"/tokens/{token.pk}/revoke/").status_code == 403
    assert client_for(cast.sponsor).post(f"/tokens/{token.pk}/revoke/").status_code == 403
    response = client_for(cast.officer).post(f"/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert response.status_code == 302
    assert token.revoked_by == cast.officer
    assert AuditEvent.objects.filter(verb="api_token.revoked", target_id=str(token.pk)).count() == 1


def test_raw_token_is_shown_once_and_only_its_hash_kept(cast):
    client = client_for(cast.officer)
    response = client.post("/tokens/", {"user": cast.sponsor.pk, "name": "Nightly sync", "days_valid": 30,
                                        "scopes": ["releases:read", "releases:download"]})
    token = ApiToken.objects.get()
    page = response.content.decode()
    raw = page.split("data-token>")[1].split("</code>")[0]
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert raw.startswith("rpt_") and raw.startswith(token.prefix)
    assert token.token_hash == services.hash_token(raw)
    assert token.user == cast.sponsor and token.organisation == cast.sponsor_org
    assert token.scopes == ["releases:read", "releases:download"]
    listing = client.get("/tokens/").content.decode()
    assert token.prefix in listing
    assert raw not in listing
    assert raw not in str(AuditEvent.objects.filter(verb="api_token.issued").values_list("payload", flat=True))


def test_token_issue_refuses_non_sponsors_and_bad_lengths(cast):
    client = client_for(cast.officer)
    not_sponsor = client.post("/tokens/", {"user": cast.member.pk, "name": "x", "days_valid": 30,
                                           "scopes": ["releases:read"]})
    too_long = client.post("/tokens/", {"user": cast.sponsor.pk, "name": "x", "days_valid": 400,
                                        "scopes": ["releases:read"]})
    assert not_sponsor.status_code == 400
    assert "Select a valid choice" in not_sponsor.content.decode()
    assert too_long.status_code == 400
    assert "less than or equal to 365" in too_long.content.decode()
    assert ApiToken.objects.count() == 0


def test_audit_log_shows_events_and_chain_status(cast):
    services.api_token_issue(user=cast.sponsor, name="ci", by=cast.officer)
    page = client_for(cast.steward).get("/audit/").content.decode()
    total = AuditEvent.objects.count()
    assert f"all {total} events link up" in page
    assert "api_token.issued" in page
    filtered = client_for(cast.steward).get("/audit/?verb=api_token.issued").content.decode()
    assert filtered.count("<code>api_token.issued</code>") == 1
    assert "<code>user.created</code>" not in filtered


def test_audit_log_names_the_first_broken_link(cast):
    event = AuditEvent.objects.order_by("seq")[2]
    AuditEvent.objects.filter(pk=event.pk).update(payload={"tampered": True})
    page = client_for(cast.officer).get("/audit/").content.decode()
    assert "The chain is broken" in page
    assert f"event #{event.seq}: its contents do not match its hash" in page


def test_audit_log_is_paginated(cast):
    for n in range(40):
        services.api_token_issue(user=cast.sponsor, name=f"t{n}", by=cast.officer)
    total = AuditEvent.objects.count()
    assert total > 50
    first = client_for(cast.officer).get("/audit/").content.decode()
    second = client_for(cast.officer).get("/audit/?page=2").content.decode()
    assert "Page 1 of 2" in first and "Page 2 of 2" in second
    assert first.count('<tr><td class="num">') == 50
    assert second.count('<tr><td class="num">') == total - 50
    assert f'<tr><td class="num">{total}</td>' in first


def test_token_and_audit_lists_keep_their_query_count(cast, django_assert_num_queries):
    client = client_for(cast.officer)

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    services.api_token_issue(user=cast.sponsor, name="one", by=cast.officer)
    one = (count("/tokens/"), count("/audit/?verb=api_token.issued"))
    for n in range(3):
        services.api_token_issue(user=factories.sponsor(), name=f"more {n}", by=cast.officer)
    services.api_token_revoke(token=ApiToken.objects.first(), by=cast.officer)
    for url, queries in zip(("/tokens/", "/audit/?verb=api_token.issued"), one):
        with django_assert_num_queries(queries):
            client.get(url)
