from django.urls import path

from governance.views import access_requests, datasets, ethics, projects

app_name = "governance"
urlpatterns = [
    path("projects/", projects.project_list, name="project_list"),
    path("projects/new/", projects.project_create, name="project_create"),
    path("projects/<int:pk>/", projects.project_detail, name="project_detail"),
    path("projects/<int:pk>/ethics/", projects.ethics_submit, name="ethics_submit"),
    path("ethics/<int:pk>/", ethics.ethics_detail, name="ethics_detail"),
    path("ethics/<int:pk>/letter/", ethics.ethics_letter, name="ethics_letter"),
    path("ethics/<int:pk>/verify/", ethics.ethics_verify, name="ethics_verify"),
    path("ethics/<int:pk>/reject/", ethics.ethics_reject, name="ethics_reject"),
    path("ethics/<int:pk>/revoke/", ethics.ethics_revoke, name="ethics_revoke"),
    path("requests/", access_requests.request_list, name="request_list"),
    path("requests/new/", access_requests.request_create, name="request_create"),
    path("requests/cohort-preview/", access_requests.cohort_preview, name="cohort_preview"),
    path("requests/<int:pk>/", access_requests.request_detail, name="request_detail"),
    path("requests/<int:pk>/edit/", access_requests.request_edit, name="request_edit"),
    path("requests/<int:pk>/submit/", access_requests.request_submit, name="request_submit"),
    path("requests/<int:pk>/withdraw/", access_requests.request_withdraw, name="request_withdraw"),
    path("requests/<int:pk>/start-review/", access_requests.request_start_review, name="request_start_review"),
    path("requests/<int:pk>/approve/", access_requests.request_approve, name="request_approve"),
    path("requests/<int:pk>/reject/", access_requests.request_reject, name="request_reject"),
    path("requests/<int:pk>/request-changes/", access_requests.request_changes, name="request_changes"),
    path("review/queue/", access_requests.review_queue, name="review_queue"),
    path("datasets/", datasets.dataset_list, name="dataset_list"),
    path("datasets/<slug:name>/", datasets.dataset_detail, name="dataset_detail"),
    path("datasets/<slug:name>/budget/", datasets.dataset_budget, name="dataset_budget"),
]
