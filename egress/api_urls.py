"""Egress endpoints under /api/v1/ (names are a public contract)."""

from django.urls import path

from egress import api

urlpatterns = [
    path("adapters", api.AdaptersView.as_view(), name="api-adapters"),
    path("adapters/<uuid:pk>", api.AdapterDetailView.as_view(), name="api-adapter-detail"),
    path("adapters/<uuid:pk>/signoffs", api.AdapterSignOffView.as_view(), name="api-adapter-signoffs"),
    path("adapters/<uuid:pk>/release", api.AdapterReleaseView.as_view(), name="api-adapter-release"),
    path("releases", api.ReleasesView.as_view(), name="api-releases"),
    path("releases/<uuid:pk>", api.ReleaseDetailView.as_view(), name="api-release-detail"),
    path("releases/<uuid:pk>/accept-terms", api.AcceptTermsView.as_view(), name="api-release-accept-terms"),
    path("releases/<uuid:pk>/download", api.DownloadView.as_view(), name="api-release-download"),
    path("releases/<uuid:pk>/manifest", api.ManifestView.as_view(), name="api-release-manifest"),
    path("releases/<uuid:pk>/revoke", api.RevokeView.as_view(), name="api-release-revoke"),
    path("signing-key", api.SigningKeyView.as_view(), name="api-signing-key"),
]
