from django.urls import path

app_name = "egress"
urlpatterns: list = []
