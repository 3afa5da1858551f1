from django.urls import path

from egress import views

app_name = "egress"
urlpatterns = [
    path("adapters/", views.adapter_list, name="adapter_list"),
    path("adapters/<uuid:pk>/", views.adapter_detail, name="adapter_detail"),
    path("adapters/<uuid:pk>/signoff/", views.adapter_signoff, name="adapter_signoff"),
    path("adapters/<uuid:pk>/release/", views.adapter_release, name="adapter_release"),
    path("releases/", views.release_list, name="release_list"),
    path("releases/<uuid:pk>/", views.release_detail, name="release_detail"),
    path("releases/<uuid:pk>/accept-terms/", views.release_accept_terms, name="release_accept_terms"),
    path("releases/<uuid:pk>/download/", views.release_download, name="release_download"),
    path("releases/<uuid:pk>/revoke/", views.release_revoke, name="release_revoke"),
]
