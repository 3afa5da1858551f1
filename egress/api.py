"""The egress REST API: adapters (sign-off, release), releases (terms, download, manifest,
revocation) and the public signing key.

Same shape as training's API: one named permission per method, the object found among those the
user may see (else 404), one service call. A state that does not allow the move (EgressError) is
409. For sponsor Bearer tokens `request.auth` is the ApiToken, passed to the services as `token=`;
the token's scopes are checked here for reads and by the services for terms and downloads.
"""

from __future__ import annotations

from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from egress import selectors, services
from egress.models import Adapter, Release, SignOff
from portal import permissions as p
from portal.models import ApiToken, Organisation, User
from training.api import INVALID, NOT_FOUND, REFUSED, ApiErrorOutput, ServiceAPIView, StrictInput


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This change does not fit the object's current state."
    default_code = "conflict"


CONFLICT = OpenApiResponse(ApiErrorOutput, description="The adapter's or release's current state does not allow this.")


class EgressAPIView(ServiceAPIView):
    def handle_exception(self, exc):
        if isinstance(exc, services.EgressError):
            exc = Conflict(" ".join(exc.messages))
        return super().handle_exception(exc)


def _token(request) -> ApiToken | None:
    return request.auth if isinstance(request.auth, ApiToken) else None


def _require_scope(request, scope: str) -> None:
    token = _token(request)
    if token is not None and scope not in token.scopes:
        raise PermissionDenied(f"This token lacks the {scope} scope.")


# Adapters ------------------------------------------------------------------------------------------

class SignOffOutput(serializers.Serializer):
    reviewer = serializers.CharField(source="reviewer.full_name")
    decision = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class AdapterListOutput(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    job = serializers.UUIDField(source="job_id")
    request = serializers.IntegerField(source="job.request_id")
    request_title = serializers.CharField(source="job.request.title")
    project = serializers.IntegerField(source="job.request.project_id")
    base_model = serializers.CharField(source="job.base_model.name")
    approvals = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class GateOutput(serializers.Serializer):
    gate = serializers.CharField()
    status = serializers.CharField(help_text="pass, warn or fail.")
    value = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    detail = serializers.CharField()


class AttackOutput(serializers.Serializer):
    name = serializers.CharField()
    auc = serializers.FloatField()
    auc_ci_low = serializers.FloatField()
    auc_ci_high = serializers.FloatField()
    p_value = serializers.FloatField()
    tpr_at_1pct_fpr = serializers.FloatField()
    tpr_at_0_1pct_fpr = serializers.FloatField()
    tpr_at_1pct_fpr_lower = serializers.FloatField()
    n_members = serializers.IntegerField()
    n_nonmembers = serializers.IntegerField()
    roc = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))


class AdapterDetailOutput(AdapterListOutput):
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    recipe = serializers.JSONField(source="job.recipe")
    cohort_patients = serializers.SerializerMethodField(help_text="Rounded and suppressed as the disclosure policy says.")
    eval_loss_base = serializers.FloatField(source="job.eval_loss_base", allow_null=True)
    eval_loss_adapted = serializers.FloatField(source="job.eval_loss_adapted", allow_null=True)
    differential_privacy = serializers.SerializerMethodField()
    validation_summary = serializers.SerializerMethodField()
    validation = serializers.SerializerMethodField(help_text="Every rule's verdict; hospital staff only (null for others).")
    rejected_reason = serializers.SerializerMethodField()
    audit_policy_version = serializers.IntegerField(source="audit_report.policy_version", default=None)
    gates = GateOutput(many=True, source="audit_report.gates", default=list)
    attacks = serializers.SerializerMethodField()
    signoffs = SignOffOutput(many=True, source="signoffs.all")

    def get_cohort_patients(self, adapter: Adapter) -> str:
        return selectors.cohort_display(adapter)

    def get_differential_privacy(self, adapter: Adapter) -> dict | None:
        return selectors.dp_facts(adapter)

    def get_validation_summary(self, adapter: Adapter) -> str:
        return selectors.validation_summary(adapter)

    def get_validation(self, adapter: Adapter) -> list | None:
        return adapter.validation_report.get("verdicts", []) if self.context["staff"] else None

    def get_rejected_reason(self, adapter: Adapter) -> str:
        return selectors.rejection_text(adapter, staff=self.context["staff"])

    @extend_schema_field(AttackOutput(many=True))
    def get_attacks(self, adapter: Adapter) -> list:
        return [{k: v for k, v in row.items() if k != "label"} for row in selectors.attack_rows(adapter.audit_report or {})]


def visible_adapter(user: User, pk) -> Adapter:
    adapter = get_object_or_404(selectors.adapters_for(user).select_related("job__request__cohort"), pk=pk)
    p.check_permission(user, p.ADAPTER_VIEW, adapter=adapter)
    return adapter


def _adapter_output(request, pk) -> dict:
    adapter = visible_adapter(request.user, pk)
    return AdapterDetailOutput(adapter, context={"staff": selectors.is_hospital_staff(request.user)}).data


class AdaptersView(EgressAPIView):
    required_permissions = {"GET": p.ADAPTER_VIEW}

    @extend_schema(responses=AdapterListOutput(many=True), summary="Adapters you can see (researchers: their projects')",
                   parameters=[OpenApiParameter("status", str, enum=Adapter.Status.values),
                               OpenApiParameter("queue", bool, description="Only those waiting for your sign-off.")])
    def get(self, request):
        status_filter = request.query_params.get("status")
        if status_filter and status_filter not in Adapter.Status.values:
            raise ValidationError({"status": [f"One of {', '.join(Adapter.Status.values)}."]})
        if request.query_params.get("queue") in ("1", "true"):
            p.check_permission(request.user, p.ADAPTER_REVIEW)
            return self.page(selectors.review_queue(request.user), AdapterListOutput)
        return self.page(selectors.adapters_for(request.user, status=status_filter), AdapterListOutput)


class AdapterDetailView(EgressAPIView):
    required_permissions = {"GET": p.ADAPTER_VIEW}

    @extend_schema(responses={200: AdapterDetailOutput, 404: NOT_FOUND},
                   summary="One adapter: validation, audit gates and numbers, sign-offs")
    def get(self, request, pk):
        return Response(_adapter_output(request, pk))


class SignOffInput(StrictInput):
    decision = serializers.ChoiceField(choices=SignOff.Decision.values)
    reason = serializers.CharField(help_text="Required either way; it is part of the release record.")


class AdapterSignOffView(EgressAPIView):
    required_permissions = {"POST": p.ADAPTER_REVIEW}

    @extend_schema(request=SignOffInput, responses={201: AdapterDetailOutput, 400: INVALID, 403: REFUSED, 404: NOT_FOUND,
                                                    409: CONFLICT},
                   summary="Record your sign-off (two distinct approvals approve; one rejection rejects)")
    def post(self, request, pk):
        adapter = visible_adapter(request.user, pk)
        data = self.valid(SignOffInput)
        services.signoff_record(adapter=adapter, by=request.user, decision=data["decision"], reason=data["reason"])
        return Response(_adapter_output(request, pk), status=status.HTTP_201_CREATED)


class ReleaseInput(StrictInput):
    organisation = serializers.PrimaryKeyRelatedField(
        queryset=Organisation.objects.filter(kind=Organisation.Kind.SPONSOR),
        help_text="The id of a sponsor organisation.")
    terms = serializers.CharField(required=False, allow_blank=True, default="",
                                  help_text="Data-use terms; empty for the hospital's standard terms.")


# Releases ------------------------------------------------------------------------------------------

class ReleaseListOutput(serializers.Serializer):
    id = serializers.UUIDField()
    adapter = serializers.UUIDField(source="adapter_id")
    organisation = serializers.CharField(source="organisation.name")
    base_model = serializers.CharField(source="adapter.job.base_model.public_name")
    manifest_sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()
    revoked = serializers.BooleanField(source="is_revoked")
    revoked_at = serializers.DateTimeField(allow_null=True)
    revoked_reason = serializers.CharField()


class ReleaseDetailOutput(ReleaseListOutput):
    zip_sha256 = serializers.CharField()
    signature = serializers.CharField()
    terms = serializers.CharField()
    terms_sha256 = serializers.CharField()
    terms_accepted_at = serializers.SerializerMethodField(help_text="When you accepted these terms; null if not yet.")
    download_count = serializers.IntegerField()
    files = serializers.DictField(source="manifest.files", child=serializers.DictField())

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_terms_accepted_at(self, release: Release):
        acceptance = release.acceptances.filter(user=self.context["user"], terms_sha256=release.terms_sha256).first()
        return acceptance.accepted_at.isoformat() if acceptance else None


def visible_release(request, pk) -> Release:
    release = get_object_or_404(selectors.releases_for(request.user), pk=pk)
    p.check_permission(request.user, p.RELEASE_VIEW, release=release)
    return release


def _release_output(request, pk) -> dict:
    return ReleaseDetailOutput(visible_release(request, pk), context={"user": request.user}).data


class AdapterReleaseView(EgressAPIView):
    required_permissions = {"POST": p.RELEASE_CREATE}

    @extend_schema(request=ReleaseInput, responses={201: ReleaseDetailOutput, 400: INVALID, 403: REFUSED, 404: NOT_FOUND,
                                                    409: CONFLICT},
                   summary="Sign and release an approved adapter to a sponsor organisation")
    def post(self, request, pk):
        adapter = visible_adapter(request.user, pk)
        data = self.valid(ReleaseInput)
        release = services.release_create(adapter=adapter, organisation=data["organisation"], by=request.user,
                                          terms=data["terms"])
        return Response(_release_output(request, release.pk), status=status.HTTP_201_CREATED)


class ReleasesView(EgressAPIView):
    required_permissions = {"GET": p.RELEASE_VIEW}

    @extend_schema(responses=ReleaseListOutput(many=True), summary="Releases you can see (sponsors: your organisation's)")
    def get(self, request):
        _require_scope(request, ApiToken.Scope.RELEASES_READ)
        return self.page(selectors.releases_for(request.user), ReleaseListOutput)


class ReleaseDetailView(EgressAPIView):
    required_permissions = {"GET": p.RELEASE_VIEW}

    @extend_schema(responses={200: ReleaseDetailOutput, 404: NOT_FOUND}, summary="One release: files, terms, your acceptance")
    def get(self, request, pk):
        _require_scope(request, ApiToken.Scope.RELEASES_READ)
        return Response(_release_output(request, pk))


class AcceptTermsView(EgressAPIView):
    required_permissions = {"POST": p.RELEASE_DOWNLOAD}

    @extend_schema(request=None, responses={200: ReleaseDetailOutput, 403: REFUSED, 404: NOT_FOUND},
                   summary="Accept the release's data-use terms (needed before the first download)")
    def post(self, request, pk):
        services.terms_accept(release=visible_release(request, pk), by=request.user, token=_token(request))
        return Response(_release_output(request, pk))


class DownloadView(EgressAPIView):
    required_permissions = {"GET": p.RELEASE_DOWNLOAD}
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "download"

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY, 403: REFUSED, 404: NOT_FOUND},
                   summary="Download the signed release zip (terms accepted first; every download is recorded)")
    def get(self, request, pk):
        # Not `visible_release`: the service decides, and records an attempt on another
        # organisation's release before answering 404 as for one that does not exist.
        path = services.release_download(release=get_object_or_404(Release, pk=pk), by=request.user,
                                         token=_token(request), address=request.META.get("REMOTE_ADDR"))
        return FileResponse(open(path, "rb"), as_attachment=True, filename=f"release-{pk}.zip",
                            content_type="application/zip")


class ManifestView(EgressAPIView):
    required_permissions = {"GET": p.RELEASE_VIEW}

    @extend_schema(responses={200: OpenApiTypes.OBJECT, 404: NOT_FOUND},
                   summary="The signed manifest (canonical JSON inside the zip) and its signature")
    def get(self, request, pk):
        _require_scope(request, ApiToken.Scope.RELEASES_READ)
        release = visible_release(request, pk)
        return Response({"manifest": release.manifest, "manifest_sha256": release.manifest_sha256,
                         "signature": release.signature})


class RevokeInput(StrictInput):
    reason = serializers.CharField(help_text="The sponsor sees this reason.")


class RevokeView(EgressAPIView):
    required_permissions = {"POST": p.RELEASE_REVOKE}

    @extend_schema(request=RevokeInput, responses={200: ReleaseDetailOutput, 400: INVALID, 403: REFUSED, 404: NOT_FOUND},
                   summary="Revoke a release: no further downloads; the sponsor sees the reason")
    def post(self, request, pk):
        release = visible_release(request, pk)
        data = self.valid(RevokeInput)
        services.release_revoke(release=release, by=request.user, reason=data["reason"])
        return Response(_release_output(request, pk))


class SigningKeyView(APIView):
    """The public half of the release-signing key, for sponsors to verify downloads with."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR, 404: NOT_FOUND},
                   summary="The Ed25519 public key (PEM) that signs every release")
    def get(self, request):
        pem = selectors.public_key_pem()
        if pem is None:
            raise NotFound("No release-signing key exists yet: an administrator creates one with "
                           "`python manage.py create_signing_key`.")
        return HttpResponse(pem, content_type="text/plain; charset=utf-8")
