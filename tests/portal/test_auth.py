from __future__ import annotations

import pytest
from django.urls import reverse

from portal.middleware import SESSION_KEY
from portal.models import AuditEvent, Role
from tests import factories


def _login(client, user, password=factories.PASSWORD):
    return client.post(reverse("login"), {"email": user.email, "password": password})


@pytest.mark.django_db
def test_login_researcher_reaches_dashboard(client):
    user = factories.researcher()
    response = _login(client, user)
    assert response.status_code == 302 and response.url == reverse("dashboard")
    page = client.get(reverse("dashboard"))
    assert page.status_code == 200
    assert b"You have no projects yet" in page.content
    assert AuditEvent.objects.filter(verb="auth.login", actor=user).count() == 1


@pytest.mark.django_db
def test_login_wrong_password_generic_error(client):
    user = factories.researcher()
    response = _login(client, user, password="wrong-password-123")
    assert response.status_code == 400
    assert b"do not match an active account" in response.content
    unknown = client.post(reverse("login"), {"email": "nobody@example.org", "password": "wrong-password-123"})
    assert b"do not match an active account" in unknown.content


@pytest.mark.django_db
def test_login_rate_limited_after_failures(client, settings):
    settings.LOGIN_MAX_FAILURES = 3
    user = factories.researcher()
    for _ in range(3):
        _login(client, user, password="wrong-password-123")
    response = _login(client, user)  # the right password no longer helps while locked
    assert response.status_code == 400
    assert b"Too many failed attempts" in response.content
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_login_officer_needs_totp_before_dashboard(client):
    officer = factories.officer()
    response = _login(client, officer)
    assert response.url == reverse("two_factor_verify")
    assert client.get(reverse("dashboard")).status_code == 302  # not signed in yet
    bad = client.post(reverse("two_factor_verify"), {"code": "000000"})
    assert bad.status_code == 400
    good = client.post(reverse("two_factor_verify"), {"code": factories.totp_code(officer)})
    assert good.status_code == 302
    assert client.session[SESSION_KEY] is True
    page = client.get(reverse("dashboard"))
    assert page.status_code == 200 and b"Waiting for a governance decision" in page.content


@pytest.mark.django_db
def test_totp_code_replay_refused(client):
    officer = factories.officer()
    code = factories.totp_code(officer)
    _login(client, officer)
    assert client.post(reverse("two_factor_verify"), {"code": code}).status_code == 302
    other = client.__class__()
    _login(other, officer)
    assert other.post(reverse("two_factor_verify"), {"code": code}).status_code == 400


@pytest.mark.django_db
def test_reviewer_without_totp_is_sent_to_setup(client):
    reviewer = factories.reviewer(totp=False)
    response = _login(client, reviewer)
    assert response.url == reverse("two_factor_setup")
    assert client.get(reverse("dashboard")).url == reverse("two_factor_setup")
    assert client.get("/api/v1/me").status_code == 403
    setup = client.get(reverse("two_factor_setup"))
    assert setup.status_code == 200 and b"<svg" in setup.content
    reviewer.refresh_from_db()
    confirmed = client.post(reverse("two_factor_setup"), {"code": factories.totp_code(reviewer)})
    assert confirmed.url == reverse("dashboard")
    assert client.get(reverse("dashboard")).status_code == 200


@pytest.mark.django_db
def test_security_headers_present(client):
    response = client.get(reverse("login"))
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


@pytest.mark.django_db
@pytest.mark.parametrize("role", list(Role.values))
def test_dashboard_each_role_has_empty_state(client, role):
    user = factories.user(role)
    client.force_login(user)
    session = client.session
    session[SESSION_KEY] = True
    session.save()
    response = client.get(reverse("dashboard"))
    assert response.status_code == 200
    assert f'data-role="{role}"'.encode() in response.content
    assert b'class="empty"' in response.content
