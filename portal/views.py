"""Sign-in (password, then TOTP for the roles that need it), sign-out, the role dashboard, sponsor
API tokens for officers and the audit log."""

from __future__ import annotations

import segno
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from portal import permissions, services, throttle
from portal.audit import record_event, verify_chain
from portal.forms import LoginForm, TokenIssueForm, TotpForm
from portal.middleware import SESSION_KEY
from portal.models import ApiToken, AuditEvent, User

PENDING_KEY = "pending_two_factor_user"
GENERIC_LOGIN_ERROR = "That e-mail and password do not match an active account."
LOCKED_ERROR = "Too many failed attempts. Wait {minutes} minutes and try again."


def _locked_message() -> str:
    return LOCKED_ERROR.format(minutes=max(1, settings.LOGIN_WINDOW_SECONDS // 60))


def _next_url(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return settings.LOGIN_REDIRECT_URL


def _complete_login(request, user: User, *, second_factor: bool) -> None:
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    request.session[SESSION_KEY] = second_factor
    with transaction.atomic():
        record_event(actor=user, verb="auth.login", target=user, payload={"two_factor": second_factor})


@require_http_methods(["GET", "POST"])
def login_view(request):
    form = LoginForm(request.POST or None)
    error = None
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"].lower()
        address = throttle.client_address(request)
        if throttle.is_locked(email, address):
            error = _locked_message()
        else:
            user = authenticate(request, username=email, password=form.cleaned_data["password"])
            if user is None:
                throttle.register_failure(email, address)
                error = GENERIC_LOGIN_ERROR
            else:
                throttle.clear(email)
                if user.has_two_factor:
                    request.session.cycle_key()
                    request.session[PENDING_KEY] = user.pk
                    request.session["login_next"] = _next_url(request)
                    return redirect("two_factor_verify")
                _complete_login(request, user, second_factor=False)
                return redirect("two_factor_setup" if user.requires_two_factor else _next_url(request))
    status = 200 if error is None else 400
    return render(request, "portal/login.html", {"form": form, "error": error}, status=status)


@require_http_methods(["GET", "POST"])
def two_factor_verify(request):
    user_id = request.session.get(PENDING_KEY)
    if user_id is None and request.user.is_authenticated and request.user.has_two_factor:
        user_id = request.user.pk  # signed in, but the session has not passed the second factor
    user = User.objects.filter(pk=user_id, is_active=True).first() if user_id else None
    if user is None:
        return redirect("login")
    form = TotpForm(request.POST or None)
    error = None
    if request.method == "POST" and form.is_valid():
        identity = f"totp:{user.pk}"
        if throttle.is_locked(identity):
            error = _locked_message()
        elif services.totp_verify(user=user, code=form.cleaned_data["code"]):
            throttle.clear(identity)
            next_url = request.session.pop("login_next", settings.LOGIN_REDIRECT_URL)
            request.session.pop(PENDING_KEY, None)
            _complete_login(request, user, second_factor=True)
            return redirect(next_url)
        else:
            throttle.register_failure(identity)
            error = "That code is not valid. Codes change every 30 seconds and each works once."
    return render(request, "portal/two_factor_verify.html", {"form": form, "error": error}, status=200 if error is None else 400)


@login_required
@require_http_methods(["GET", "POST"])
def two_factor_setup(request):
    user: User = request.user
    if user.has_two_factor:
        return redirect("dashboard")
    if not user.totp_secret:
        services.totp_begin_enrolment(user=user)
    form = TotpForm(request.POST or None)
    error = None
    if request.method == "POST" and form.is_valid():
        if services.totp_verify(user=user, code=form.cleaned_data["code"]):
            request.session[SESSION_KEY] = True
            messages.success(request, "Two-factor authentication is on for your account.")
            return redirect("dashboard")
        error = "That code is not valid. Check the clock on your phone and try the next code."
    uri = services.totp_provisioning_uri(user)
    qr_svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#111827", light="#ffffff")
    context = {"form": form, "error": error, "secret": user.totp_secret, "qr_svg": qr_svg}
    return render(request, "portal/two_factor_setup.html", context, status=200 if error is None else 400)


@require_POST
def logout_view(request):
    if request.user.is_authenticated:
        with transaction.atomic():
            record_event(actor=request.user, verb="auth.logout", target=request.user)
    logout(request)
    return redirect("login")


@login_required
def dashboard(request):
    from portal.dashboards import dashboard_sections

    return render(request, "portal/dashboard.html", {"sections": dashboard_sections(request.user)})


# Sponsor API tokens (officers) and the audit log -----------------------------------------------------

AUDIT_PAGE_SIZE = 50


def _tokens_page(request, form, *, status: int = 200):
    tokens = ApiToken.objects.select_related("user", "organisation", "created_by", "revoked_by").order_by("-created_at")
    return render(request, "portal/tokens.html", {"tokens": tokens, "form": form}, status=status)


@require_http_methods(["GET", "POST"])
@permissions.permission_required(permissions.TOKEN_ISSUE)
def tokens(request):
    """List every sponsor token; issue one. The raw token is on the response page, once, never stored."""
    if request.method == "GET":
        return _tokens_page(request, TokenIssueForm())
    form = TokenIssueForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            token, raw = services.api_token_issue(user=data["user"], name=data["name"], by=request.user,
                                                  days_valid=data["days_valid"], scopes=data["scopes"])
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            response = render(request, "portal/token_issued.html", {"token": token, "raw": raw})
            response["Cache-Control"] = "no-store"
            return response
    return _tokens_page(request, form, status=400)


@require_POST
@permissions.permission_required(permissions.TOKEN_ISSUE)
def token_revoke(request, pk: int):
    token = services.api_token_revoke(token=get_object_or_404(ApiToken, pk=pk), by=request.user)
    messages.success(request, f"Token {token.prefix}… of {token.user.email} is revoked; it stops working at once.")
    return redirect("tokens")


@permissions.permission_required(permissions.AUDIT_VIEW)
def audit_log(request):
    """The newest audit events, a page at a time, and whether the whole hash chain verifies."""
    events = AuditEvent.objects.select_related("actor").order_by("-seq")
    filters = {key: request.GET.get(key, "").strip() for key in ("verb", "target_type", "target_id")}
    for key, value in filters.items():
        if value:
            events = events.filter(**{key: value})
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    checked, chain_break = verify_chain()
    return render(request, "portal/audit_log.html", {
        "page": page, "events": page.object_list, "filters": filters, "query": query.urlencode(),
        "checked": checked, "chain_break": chain_break,
    })
