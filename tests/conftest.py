"""Shared fixtures. Under CI=true a skipped test fails the run, unless it needs a GPU."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAPHA_ALLOW_INSECURE_SECRET", "true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"Skipped under CI=true, which must run everything but GPU tests: {reason}"


def _django_active(request) -> bool:
    return request.config.pluginmanager.hasplugin("django")


@pytest.fixture(autouse=True)
def _isolated_storage(request):
    """Every test gets its own data, staging, quarantine and release folders.

    They live in a fresh folder under /tmp whose parents the sandbox's unprivileged user can
    traverse (pytest's own tmp_path sits under a 0700 folder, which bubblewrap cannot enter).
    """
    if not _django_active(request):  # Django-free suites run with -p no:django
        yield
        return
    import shutil
    import tempfile
    from pathlib import Path

    settings = request.getfixturevalue("settings")
    root = Path(tempfile.mkdtemp(prefix="rapha-test-"))
    root.chmod(0o711)
    for name in ("DATA_ROOT", "STAGING_ROOT", "QUARANTINE_ROOT", "RELEASES_ROOT", "UPLOADS_ROOT", "MODELS_ROOT"):
        folder = root / name.lower()
        folder.mkdir()
        folder.chmod(0o711)
        setattr(settings, name, folder)
    settings.SIGNING_KEY_PATH = root / "keys" / "signing.pem"
    settings.VAR_DIR = root / "var"  # job logs and the like stay out of the repository's var/
    # Tests create many users; the production hasher's cost buys nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Production serves hashed static files after collectstatic; tests read them from the source.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clear_cache(request):
    if not _django_active(request):
        yield
        return
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def on_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


def redis_url() -> str | None:
    url = os.environ.get("CELERY_BROKER_URL", "")
    return url if url.startswith("redis://") else None
