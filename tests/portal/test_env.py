import pytest
from django.core.exceptions import ImproperlyConfigured

from portal import env


@pytest.mark.parametrize("raw,expected", [("true", True), ("0", False), ("YES", True), ("off", False)])
def test_env_bool_accepts_common_forms(monkeypatch, raw, expected):
    monkeypatch.setenv("RAPHA_X", raw)
    assert env.env_bool("RAPHA_X", not expected) is expected


def test_env_bool_malformed_names_variable(monkeypatch):
    monkeypatch.setenv("RAPHA_X", "maybe")
    with pytest.raises(ImproperlyConfigured, match="RAPHA_X='maybe'.*true/false"):
        env.env_bool("RAPHA_X", False)


def test_env_int_malformed_names_variable(monkeypatch):
    monkeypatch.setenv("RAPHA_N", "12x")
    with pytest.raises(ImproperlyConfigured, match="RAPHA_N='12x'.*whole number"):
        env.env_int("RAPHA_N", 1)


def test_env_int_below_minimum_refused(monkeypatch):
    monkeypatch.setenv("RAPHA_N", "3")
    with pytest.raises(ImproperlyConfigured, match="at least 5"):
        env.env_int("RAPHA_N", 10, minimum=5)


def test_env_database_postgres_url_parsed(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://rapha:s%40cret@db.internal:6543/rapha?sslmode=require")
    config = env.env_database("DATABASE_URL", None)
    assert (config["ENGINE"], config["NAME"], config["USER"], config["PASSWORD"], config["HOST"], config["PORT"]) == (
        "django.db.backends.postgresql", "rapha", "rapha", "s@cret", "db.internal", "6543")
    assert config["OPTIONS"] == {"sslmode": "require"}


@pytest.mark.parametrize("raw", ["mysql://x/y", "postgresql://host", "postgresql://h:port/db"])
def test_env_database_malformed_refused(monkeypatch, raw):
    monkeypatch.setenv("DATABASE_URL", raw)
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        env.env_database("DATABASE_URL", None)


def test_env_broker_malformed_refused(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "localhost:6379")
    with pytest.raises(ImproperlyConfigured, match="CELERY_BROKER_URL.*redis://"):
        env.env_broker("CELERY_BROKER_URL", "filesystem://")


def test_env_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "key"
    secret.write_text("s3cr3t\n")
    monkeypatch.delenv("RAPHA_KEY", raising=False)
    monkeypatch.setenv("RAPHA_KEY_FILE", str(secret))
    assert env.env_secret("RAPHA_KEY") == "s3cr3t"


def test_settings_malformed_value_stops_startup(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "sometimes"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "DJANGO_DEBUG='sometimes' is invalid" in result.stderr
