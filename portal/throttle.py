"""Counting failed sign-in attempts per account and per address, in the cache."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _keys(*identities: str) -> list[str]:
    return ["login-fail:" + hashlib.sha256(identity.lower().encode()).hexdigest() for identity in identities if identity]


def is_locked(*identities: str) -> bool:
    return any((cache.get(key) or 0) >= settings.LOGIN_MAX_FAILURES for key in _keys(*identities))


def register_failure(*identities: str) -> None:
    for key in _keys(*identities):
        if cache.add(key, 1, timeout=settings.LOGIN_WINDOW_SECONDS):
            continue
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=settings.LOGIN_WINDOW_SECONDS)


def clear(*identities: str) -> None:
    cache.delete_many(_keys(*identities))


def client_address(request) -> str:
    return request.META.get("REMOTE_ADDR", "")
