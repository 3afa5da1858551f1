"""Two reviewers sign an adapter off, an officer releases it, a sponsor accepts the terms and
downloads it; the downloaded zip verifies against the hospital's public key."""

from __future__ import annotations

import pytest

from egress import services
from egress.models import Adapter, Download
from egress.verify import verify_release
from tests import factories, flow
from tests.browser.conftest import sign_in

SCREENSHOTS = "/tmp"


@pytest.fixture
def eager_tasks():
    """Tasks queued on commit run in this process: they find their jobs finished and return."""
    from portal.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def sign_out(page):
    page.click("form.whoami button[type=submit]")
    page.wait_for_url("**/login/")


def sign_off(page, reviewer, adapter, reason: str, *, screenshot: str | None = None):
    sign_in(page, reviewer, factories.PASSWORD, totp_code=lambda: factories.totp_code(reviewer))
    page.goto(f"/adapters/{adapter.pk}/")
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    page.check("input[name=decision][value=approve]")
    page.fill("textarea[name=reason]", reason)
    page.click("text=Record my decision")
    page.wait_for_selector(".messages")
    sign_out(page)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_two_signoffs_release_and_sponsor_download(page, settings, tmp_path, eager_tasks):
    from playwright.sync_api import expect

    flow.fast_passwords(settings)
    cast = flow.cast()
    adapter = flow.adapter_in_review(cast=cast, title="Discharge summary drafting")
    services.signing_key_create()

    # Two privacy reviewers outside the project approve it, each behind their second factor.
    sign_off(page, cast.reviewer, adapter, "Validation clean; every audit gate passes with margin.",
             screenshot=f"{SCREENSHOTS}/rapha-review.png")
    sign_off(page, cast.second_reviewer, adapter, "Membership-inference AUC near chance; canaries unexposed.")
    adapter.refresh_from_db()
    assert adapter.status == Adapter.Status.APPROVED

    # The officer releases it to the project's sponsor.
    sign_in(page, cast.officer, factories.PASSWORD, totp_code=lambda: factories.totp_code(cast.officer))
    page.goto(f"/adapters/{adapter.pk}/")
    page.select_option("select[name=organisation]", str(cast.sponsor_org.pk))
    page.fill("textarea[name=terms]", "Use only for drafting discharge summaries; never re-identify anyone.")
    page.click("text=Sign and release")
    page.wait_for_url("**/releases/*/")
    expect(page.locator(".messages")).to_contain_text(f"Released to {cast.sponsor_org.name}")
    release = adapter.releases.get()
    sign_out(page)

    # The sponsor finds it, accepts the terms and downloads it.
    sign_in(page, cast.sponsor, factories.PASSWORD)
    page.goto("/releases/")
    page.click(f"a[href='/releases/{release.pk}/']")
    expect(page.locator("blockquote.terms")).to_contain_text("never re-identify anyone")
    expect(page.locator("text=Download release.zip")).to_have_count(0)
    page.click("text=Accept terms")
    expect(page.locator(".success")).to_contain_text("You accepted the terms")
    page.screenshot(path=f"{SCREENSHOTS}/rapha-release.png", full_page=True)
    with page.expect_download() as download_info:
        page.click("text=Download release.zip")
    download = download_info.value
    assert download.suggested_filename == f"release-{release.pk}.zip"
    zip_path = tmp_path / download.suggested_filename
    download.save_as(zip_path)

    verified = verify_release(zip_path, flow.public_key_path())
    assert verified.manifest["release_id"] == str(release.pk)
    assert verified.manifest["release_to"] == cast.sponsor_org.name
    assert [a["reviewer"] for a in verified.manifest["approvals"]] == [cast.reviewer.full_name,
                                                                       cast.second_reviewer.full_name]
    assert Download.objects.filter(release=release, user=cast.sponsor).count() == 1
