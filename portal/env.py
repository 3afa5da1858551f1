"""Typed readers for environment variables that fail loudly, naming the variable and the form."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def _bad(name: str, value: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"Environment variable {name}={value!r} is invalid: expected {expected}.")


def env_str(name: str, default: str) -> str:
    return _raw(name) or default


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise _bad(name, value, "one of true/false, 1/0, yes/no, on/off")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise _bad(name, value, "a whole number") from None
    if minimum is not None and number < minimum:
        raise _bad(name, value, f"a whole number of at least {minimum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(name) or default
    if value not in choices:
        raise _bad(name, value, "one of " + ", ".join(choices))
    return value


def env_secret(name: str, default: str | None = None) -> str | None:
    """A secret from NAME, or from the file named by NAME_FILE (for Docker/Kubernetes secrets)."""
    value = _raw(name)
    file_name = _raw(f"{name}_FILE")
    if value and file_name:
        raise ImproperlyConfigured(f"Set either {name} or {name}_FILE, not both.")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}.") from None
    return value or default


def env_database(name: str, default_sqlite_path: Path) -> dict:
    """A Django DATABASES entry from a postgres:// URL, or the embedded SQLite file."""
    value = _raw(name)
    if value is None:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(default_sqlite_path),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    url = urlparse(value)
    if url.scheme not in {"postgres", "postgresql"} or not url.path.strip("/"):
        raise _bad(name, value, "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")
    try:
        port = url.port
    except ValueError:
        raise _bad(name, value, "a numeric port in postgresql://USER@HOST:PORT/DBNAME") from None
    options = {key: values[-1] for key, values in parse_qs(url.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(url.path.lstrip("/")),
        "USER": unquote(url.username or ""),
        "PASSWORD": unquote(url.password or ""),
        "HOST": url.hostname or "",
        "PORT": str(port or ""),
        "CONN_MAX_AGE": 60,
        "OPTIONS": options,
    }


def env_broker(name: str, default: str) -> str:
    value = _raw(name) or default
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in {"redis", "rediss", "filesystem", "memory", "amqp"}:
        raise _bad(name, value, "redis://HOST:PORT/DB (or filesystem:// for the embedded broker)")
    return value
