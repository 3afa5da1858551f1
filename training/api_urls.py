"""Training endpoints under /api/v1/ (names are a public contract)."""

from django.urls import path

from training import api

urlpatterns = [
    path("jobs", api.JobsView.as_view(), name="api-jobs"),
    path("jobs/<uuid:pk>", api.JobDetailView.as_view(), name="api-job-detail"),
    path("jobs/<uuid:pk>/cancel", api.JobCancelView.as_view(), name="api-job-cancel"),
    path("base-models", api.BaseModelsView.as_view(), name="api-base-models"),
    path("base-models/<int:pk>", api.BaseModelDetailView.as_view(), name="api-base-model-detail"),
]
