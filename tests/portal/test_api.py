from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from portal import services
from portal.models import ApiToken, AuditEvent
from tests import factories


@pytest.fixture
def api():
    return APIClient()


@pytest.mark.django_db
def test_me_unauthenticated_401(api):
    response = api.get("/api/v1/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_me_session_returns_user_org_roles(api):
    org = factories.organisation("St Elsewhere")
    user = factories.researcher(org=org)
    api.force_login(user)
    data = api.get("/api/v1/me").json()
    assert data == {
        "id": user.pk, "email": user.email, "full_name": user.full_name,
        "organisation": {"id": org.pk, "name": "St Elsewhere", "kind": "hospital"},
        "roles": ["researcher"], "two_factor": False,
    }


@pytest.mark.django_db
def test_me_bearer_token_sponsor(api):
    officer = factories.officer()
    sponsor = factories.sponsor()
    token, raw = services.api_token_issue(user=sponsor, name="ci", by=officer)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/me").json()["roles"] == ["sponsor"]
    assert ApiToken.objects.get(pk=token.pk).token_hash != raw


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["expired", "revoked", "garbage"])
def test_me_bad_token_401(api, state):
    officer = factories.officer()
    token, raw = services.api_token_issue(user=factories.sponsor(), name="t", by=officer)
    if state == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif state == "revoked":
        services.api_token_revoke(token=token, by=officer)
    else:
        raw = "rpt_not-a-real-token"
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = api.get("/api/v1/me")
    assert response.status_code == 401
    refused = AuditEvent.objects.filter(verb="api_token.refused")
    assert list(refused.values_list("payload__reason", flat=True)) == ([] if state == "garbage" else [state])


@pytest.mark.django_db
def test_token_issue_by_researcher_refused():
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.api_token_issue(user=factories.sponsor(), name="t", by=factories.researcher())
    assert ApiToken.objects.count() == 0


@pytest.mark.django_db
def test_audit_events_forbidden_for_researcher(api):
    api.force_login(factories.researcher())
    assert api.get("/api/v1/audit-events").status_code == 403


@pytest.mark.django_db
def test_openapi_schema_valid(api):
    from openapi_spec_validator import validate

    response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    validate(schema)
    assert "/api/v1/me" in schema["paths"]
