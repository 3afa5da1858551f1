"""Governance endpoints under /api/v1/ (names are a public contract)."""

from django.urls import path

from governance import api

urlpatterns = [
    path("projects", api.ProjectsView.as_view(), name="api-projects"),
    path("projects/<int:pk>", api.ProjectDetailView.as_view(), name="api-project-detail"),
    path("datasets", api.DatasetsView.as_view(), name="api-datasets"),
    path("datasets/<int:pk>", api.DatasetDetailView.as_view(), name="api-dataset-detail"),
    path("ethics-approvals", api.EthicsApprovalsView.as_view(), name="api-ethics-approvals"),
    path("ethics-approvals/<int:pk>", api.EthicsApprovalDetailView.as_view(), name="api-ethics-approval-detail"),
    path("ethics-approvals/<int:pk>/verify", api.EthicsVerifyView.as_view(), name="api-ethics-approval-verify"),
    path("ethics-approvals/<int:pk>/reject", api.EthicsRejectView.as_view(), name="api-ethics-approval-reject"),
    path("ethics-approvals/<int:pk>/revoke", api.EthicsRevokeView.as_view(), name="api-ethics-approval-revoke"),
    path("access-requests", api.AccessRequestsView.as_view(), name="api-access-requests"),
    path("access-requests/cohort-preview", api.CohortPreviewView.as_view(), name="api-access-requests-cohort-preview"),
    path("access-requests/<int:pk>", api.AccessRequestDetailView.as_view(), name="api-access-request-detail"),
    path("access-requests/<int:pk>/submit", api.AccessRequestSubmitView.as_view(), name="api-access-request-submit"),
    path("access-requests/<int:pk>/approve", api.AccessRequestApproveView.as_view(), name="api-access-request-approve"),
    path("access-requests/<int:pk>/reject", api.AccessRequestRejectView.as_view(), name="api-access-request-reject"),
    path("access-requests/<int:pk>/request-changes", api.AccessRequestChangesView.as_view(),
         name="api-access-request-request-changes"),
    path("access-requests/<int:pk>/withdraw", api.AccessRequestWithdrawView.as_view(),
         name="api-access-request-withdraw"),
]
