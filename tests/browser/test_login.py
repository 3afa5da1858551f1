import pytest

from tests import factories
from tests.browser.conftest import sign_in


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_officer_signs_in_with_totp_and_sees_dashboard(page):
    officer = factories.officer()
    sign_in(page, officer, factories.PASSWORD, totp_code=lambda: factories.totp_code(officer))
    assert page.locator("h1").inner_text() == f"Welcome, {officer.full_name}"
    assert page.locator("section[data-role=governance_officer] h2").inner_text() == "Waiting for a governance decision"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_wrong_password_shows_generic_error(page):
    researcher = factories.researcher()
    page.goto("/login/")
    page.fill("input[name=email]", researcher.email)
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    assert "do not match an active account" in page.locator("[role=alert]").inner_text()
