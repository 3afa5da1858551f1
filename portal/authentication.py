"""`Authorization: Bearer <token>` for sponsor API tokens."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from portal.audit import record_event_now
from portal.services import api_token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0] != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: expected 'Bearer <token>'.")
        token = api_token_authenticate(parts[1])
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None or not token.is_usable():
            why = "revoked" if token.revoked_at is not None else "expired"
            # A known token used after its end is worth a line in the audit log (unknown ones are noise).
            record_event_now(actor=token.user, verb="api_token.refused", target=token,
                             payload={"reason": why, "path": request.path, "address": request.META.get("REMOTE_ADDR")})
            raise exceptions.AuthenticationFailed(f"This token has {'been revoked' if why == 'revoked' else 'expired'}.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.")
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Makes unauthenticated API calls answer 401 (with a challenge) instead of 403.
        return f'{self.keyword} realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes sponsor tokens in the OpenAPI schema."""

    target_class = "portal.authentication.BearerTokenAuthentication"
    name = "sponsorToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A sponsor API token issued by a governance officer."}
