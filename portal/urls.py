"""The URL root: the one place that mounts every app's pages and API."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse

from portal import api, views

api_v1 = [
    path("me", api.MeView.as_view(), name="api-me"),
    path("audit-events", api.AuditEventList.as_view(), name="api-audit-events"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include("governance.api_urls")),
    path("", include("training.api_urls")),
    path("", include("egress.api_urls")),
]


@extend_schema(exclude=True)
@api_view(["GET"])
@permission_classes([AllowAny])
def api_root(request):
    names = ["api-me", "api-projects", "api-datasets", "api-ethics-approvals", "api-access-requests", "api-audit-events",
             "api-jobs", "api-base-models", "api-adapters", "api-releases", "api-signing-key", "api-schema"]
    return Response({name.removeprefix("api-"): reverse(name, request=request) for name in names})


urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.login_view, name="login"),
    path("login/verify/", views.two_factor_verify, name="two_factor_verify"),
    path("logout/", views.logout_view, name="logout"),
    path("account/two-factor/setup/", views.two_factor_setup, name="two_factor_setup"),
    # The admin signs in through our login (throttled, with the second factor), never its own form.
    path("admin/login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    path("admin/", admin.site.urls),
    path("", include("governance.urls")),
    path("", include("training.urls")),
    path("", include("egress.urls")),
    path("api/v1/", api_root, name="api-root"),
    path("api/v1/", include(api_v1)),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
    path("audit/", views.audit_log, name="audit_log"),
]
