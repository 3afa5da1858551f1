"""Headless Debian Chromium driven by Playwright (never `playwright install`: no downloads here)."""

from __future__ import annotations

import os
import shutil

import pytest

# Playwright's sync API runs an event loop in the test thread; the ORM calls made by the test
# itself (arranging data, asserting on rows) are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


def chromium_path() -> str | None:
    candidate = os.environ.get("RAPHA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return candidate if candidate and os.path.exists(candidate) else None


@pytest.fixture
def page(live_server):
    path = chromium_path()
    if path is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=live_server.url)
        page = context.new_page()
        page.set_default_timeout(15000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def sign_in(page, user, password, totp_code=None):
    page.goto("/login/")
    page.fill("input[name=email]", user.email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    if totp_code is not None:
        page.wait_for_url("**/login/verify/")
        page.fill("input[name=code]", totp_code())
        page.click("button[type=submit]")
    page.wait_for_selector("h1")
