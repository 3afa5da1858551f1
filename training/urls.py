from django.urls import path

from training import views

app_name = "training"
urlpatterns = [
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/<uuid:pk>/", views.job_detail, name="job_detail"),
    path("jobs/<uuid:pk>/progress/", views.job_progress, name="job_progress"),
    path("jobs/<uuid:pk>/log/", views.job_log, name="job_log"),
    path("jobs/<uuid:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("requests/<int:pk>/train/", views.job_start, name="job_start"),
    path("base-models/", views.base_model_list, name="base_model_list"),
]
