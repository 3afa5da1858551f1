"""The training REST API: jobs (list, progress, start, cancel) and the base-model registry.

Each view names one permission (`HasPermission`), finds the object among those the user may see
(else 404), then calls one service. Service errors map to HTTP in `ServiceAPIView`: a Django
ValidationError is 400 with its messages, PermissionDenied 403 with its reason, a missing
object 404. Egress's API builds on the same base.
"""

from __future__ import annotations

from django.core.exceptions import ObjectDoesNotExist, ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from governance.models import DataAccessRequest
from portal import permissions as p
from portal.api import HasPermission
from portal.models import User
from training import selectors, services
from training.models import BaseModel, TrainingJob


class StrictInput(serializers.Serializer):
    """An input serializer that names unknown fields instead of silently dropping them."""

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            unknown = sorted(set(data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ApiErrorOutput(serializers.Serializer):
    detail = serializers.CharField()


def error_detail(exc: DjangoValidationError):
    return exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}


class HasMethodPermission(HasPermission):
    """`HasPermission` with one named permission per HTTP method (`required_permissions`)."""

    def has_permission(self, request, view) -> bool:
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        permission = view.required_permissions.get(method)
        if permission is None:  # a method the view does not offer: let it answer 405
            return True
        reason = p.denial_reason(request.user, permission)
        if reason:
            raise PermissionDenied(reason)
        return True


class ServiceAPIView(GenericAPIView):
    """One named permission per method; service errors become 400/403/404."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions: dict[str, str] = {}

    def handle_exception(self, exc):
        if isinstance(exc, ObjectDoesNotExist):
            exc = NotFound()
        elif isinstance(exc, DjangoValidationError):
            exc = ValidationError(error_detail(exc))
        return super().handle_exception(exc)

    def valid(self, serializer_class) -> dict:
        serializer = serializer_class(data=self.request.data, context={"request": self.request})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def page(self, queryset, output_class, **context):
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(output_class(page, many=True, context=context).data)


NOT_FOUND = OpenApiResponse(ApiErrorOutput, description="No such object, or not one you may see.")
REFUSED = OpenApiResponse(ApiErrorOutput, description="Your role, or separation of duties, does not allow this.")
INVALID = OpenApiResponse(description="The input, or the object's state, does not allow this; the messages say why.")


# Jobs ------------------------------------------------------------------------------------------

class JobListOutput(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    status = serializers.CharField()
    request = serializers.IntegerField(source="request_id")
    request_title = serializers.CharField(source="request.title")
    project = serializers.IntegerField(source="request.project_id")
    base_model = serializers.CharField(source="base_model.name")
    percent = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class JobDetailOutput(JobListOutput):
    parent = serializers.UUIDField(source="parent_id", allow_null=True)
    created_by = serializers.CharField(source="created_by.full_name")
    backend = serializers.CharField()
    quantization = serializers.CharField()
    recipe = serializers.JSONField()
    started_at = serializers.DateTimeField(allow_null=True)
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    loss = serializers.FloatField(allow_null=True)
    tokens_per_second = serializers.FloatField(allow_null=True)
    eta_seconds = serializers.FloatField(allow_null=True)
    eval_loss_base = serializers.FloatField(allow_null=True)
    eval_loss_adapted = serializers.FloatField(allow_null=True)
    loss_curve = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    final_metrics = serializers.DictField(child=serializers.FloatField())
    failure = serializers.SerializerMethodField(
        help_text="Why the job ended badly: the reason for hospital staff, a generic sentence for others.")

    def get_failure(self, job: TrainingJob) -> str:
        return selectors.failure_text(self.context["user"], job)


class JobStartInput(StrictInput):
    request = serializers.IntegerField(help_text="The id of an approved data-access request.")


def visible_job(user: User, pk) -> TrainingJob:
    job = get_object_or_404(selectors.jobs_for(user).select_related("parent"), pk=pk)
    p.check_permission(user, p.JOB_VIEW, request=job.request)
    return job


class JobsView(ServiceAPIView):
    required_permissions = {"GET": p.JOB_VIEW, "POST": p.JOB_START}

    @extend_schema(responses=JobListOutput(many=True), summary="Training and audit jobs you can see",
                   parameters=[OpenApiParameter("status", str, enum=TrainingJob.Status.values),
                               OpenApiParameter("kind", str, enum=TrainingJob.Kind.values)])
    def get(self, request):
        status_filter = request.query_params.get("status")
        kind = request.query_params.get("kind")
        if status_filter and status_filter not in TrainingJob.Status.values:
            raise ValidationError({"status": [f"One of {', '.join(TrainingJob.Status.values)}."]})
        if kind and kind not in TrainingJob.Kind.values:
            raise ValidationError({"kind": [f"One of {', '.join(TrainingJob.Kind.values)}."]})
        return self.page(selectors.jobs_for(request.user, status=status_filter, kind=kind), JobListOutput)

    @extend_schema(request=JobStartInput, responses={201: JobDetailOutput, 400: INVALID, 403: REFUSED, 404: NOT_FOUND},
                   summary="Start training for an approved request (queued on a GPU worker)")
    def post(self, request):
        data = self.valid(JobStartInput)
        access_request = get_object_or_404(DataAccessRequest.objects.select_related("project"), pk=data["request"])
        if not p.has_permission(request.user, p.REQUEST_VIEW, request=access_request):
            raise NotFound()
        job = services.job_start(request=access_request, by=request.user)
        job = visible_job(request.user, job.pk)
        return Response(JobDetailOutput(job, context={"user": request.user}).data, status=status.HTTP_201_CREATED)


class JobDetailView(ServiceAPIView):
    required_permissions = {"GET": p.JOB_VIEW}

    @extend_schema(responses={200: JobDetailOutput, 404: NOT_FOUND}, summary="One job with its progress numbers")
    def get(self, request, pk):
        return Response(JobDetailOutput(visible_job(request.user, pk), context={"user": request.user}).data)


class JobCancelView(ServiceAPIView):
    required_permissions = {"POST": p.JOB_CANCEL}

    @extend_schema(request=None, responses={200: JobDetailOutput, 403: REFUSED, 404: NOT_FOUND},
                   summary="Cancel a job: a queued job ends now, a running one within seconds")
    def post(self, request, pk):
        job = services.job_cancel(job=visible_job(request.user, pk), by=request.user)
        return Response(JobDetailOutput(visible_job(request.user, job.pk), context={"user": request.user}).data)


# Base models -----------------------------------------------------------------------------------

class BaseModelOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    public_name = serializers.CharField()
    family = serializers.CharField()
    modality = serializers.CharField()
    licence = serializers.CharField()
    approved = serializers.BooleanField()
    file_count = serializers.SerializerMethodField()
    manifest_sha256 = serializers.CharField()
    registered_at = serializers.DateTimeField()

    def get_file_count(self, model: BaseModel) -> int:
        return len(model.files)


class BaseModelDetailOutput(BaseModelOutput):
    files = serializers.DictField(child=serializers.CharField(), help_text="Relative path → sha256.")


class BaseModelsView(ServiceAPIView):
    required_permissions = {"GET": p.BASE_MODEL_VIEW}

    @extend_schema(responses=BaseModelOutput(many=True), summary="Registered base models")
    def get(self, request):
        return self.page(selectors.base_models(), BaseModelOutput)


class BaseModelDetailView(ServiceAPIView):
    required_permissions = {"GET": p.BASE_MODEL_VIEW}

    @extend_schema(responses={200: BaseModelDetailOutput, 404: NOT_FOUND}, summary="One base model and its file hashes")
    def get(self, request, pk: int):
        return Response(BaseModelDetailOutput(get_object_or_404(selectors.base_models(), pk=pk)).data)
