"""Governance officers and privacy reviewers must pass a second factor before anything else."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import redirect

SESSION_KEY = "two_factor_verified"
_ALLOWED_PREFIXES = ("/login", "/logout", "/account/two-factor", "/static/", "/favicon")


class RequireTwoFactorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and user.requires_two_factor
            and not request.session.get(SESSION_KEY)
            and not request.path.startswith(_ALLOWED_PREFIXES)
        ):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": "Two-factor authentication is required for this account."}, status=403)
            if user.has_two_factor:
                return redirect("two_factor_verify")
            return redirect("two_factor_setup")
        return self.get_response(request)
