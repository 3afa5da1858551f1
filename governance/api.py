"""The governance REST API: projects, datasets, ethics approvals, data-access requests.

Every view follows one shape: a role-level permission per HTTP method, the object fetched from a
selector (so what a user may not see answers 404), the object-level `check_permission`, then one
service call. Service errors map to HTTP: ValidationError → 400 (messages per field),
PermissionDenied → 403 (with the reason), TransitionError → 409.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from governance import selectors, services
from governance.cohorts import ATTRIBUTES, disclosed_count
from governance.models import DataAccessRequest, Dataset, EthicsApproval, Patient, Project, Record
from governance.serializers import (
    ApproveInput,
    CohortPreviewInput,
    CohortPreviewOutput,
    DatasetDetailOutput,
    DatasetListOutput,
    EmptyInput,
    ErrorOutput,
    EthicsCreateInput,
    EthicsListQuery,
    EthicsOutput,
    OptionalReasonInput,
    ProjectCreateInput,
    ProjectDetailOutput,
    ProjectListOutput,
    ReasonInput,
    RequestCreateInput,
    RequestDetailOutput,
    RequestListOutput,
    RequestListQuery,
    RequestUpdateInput,
)
from portal import permissions as p
from portal.api import HasPermission
from portal.models import User


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This change does not fit the object's current state."
    default_code = "conflict"


class HasMethodPermission(HasPermission):
    """`HasPermission` with one named permission per HTTP method (`required_permissions`)."""

    def has_permission(self, request, view) -> bool:
        method = "GET" if request.method == "HEAD" else request.method
        permission = view.required_permissions.get(method)
        if permission is None:  # a method the view does not offer: let it answer 405
            return True
        reason = p.denial_reason(request.user, permission)
        if reason:
            raise PermissionDenied(reason)
        return True


def _error_detail(exc: DjangoValidationError) -> dict:
    if hasattr(exc, "error_dict"):
        return exc.message_dict
    return {"non_field_errors": exc.messages}


CONFLICT = OpenApiResponse(ErrorOutput, description="The object's current status does not allow this.")
REFUSED = OpenApiResponse(ErrorOutput, description="Your role, or separation of duties, does not allow this.")


class GovernanceView(GenericAPIView):
    permission_classes = [IsAuthenticated, HasMethodPermission]
    parser_classes = [JSONParser]
    metadata_class = None  # OPTIONS answers 405: the OpenAPI schema describes every endpoint
    required_permissions: dict[str, str] = {}

    def handle_exception(self, exc):
        if isinstance(exc, services.TransitionError):
            exc = Conflict(" ".join(exc.messages))
        elif isinstance(exc, DjangoValidationError):
            exc = ValidationError(_error_detail(exc))
        return super().handle_exception(exc)

    def valid(self, serializer_class, data=None) -> dict:
        serializer = serializer_class(data=self.request.data if data is None else data,
                                      context={"request": self.request})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def page(self, queryset, output_class):
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(output_class(page, many=True).data)


# Projects ------------------------------------------------------------------------------------

def _project(user: User, pk: int) -> Project:
    project = get_object_or_404(selectors.projects_for(user).prefetch_related("requests", "ethics_approvals"), pk=pk)
    p.check_permission(user, p.PROJECT_VIEW, project=project)
    return project


class ProjectsView(GovernanceView):
    required_permissions = {"GET": p.PROJECT_VIEW, "POST": p.PROJECT_CREATE}

    @extend_schema(responses=ProjectListOutput(many=True), summary="Projects you can see")
    def get(self, request):
        return self.page(selectors.projects_for(request.user), ProjectListOutput)

    @extend_schema(request=ProjectCreateInput, responses={201: ProjectDetailOutput, 403: REFUSED},
                   summary="Create a project; you become its principal investigator")
    def post(self, request):
        data = self.valid(ProjectCreateInput)
        project = services.project_create(
            by=request.user, title=data["title"], lay_summary=data["lay_summary"], members=data.get("members", []),
            sponsor=data.get("sponsor"),
        )
        return Response(ProjectDetailOutput(_project(request.user, project.pk)).data, status=status.HTTP_201_CREATED)


class ProjectDetailView(GovernanceView):
    required_permissions = {"GET": p.PROJECT_VIEW}

    @extend_schema(responses=ProjectDetailOutput, summary="One project, its requests and ethics approvals")
    def get(self, request, pk: int):
        return Response(ProjectDetailOutput(_project(request.user, pk)).data)


# Datasets: counts only, rounded and suppressed as for researchers; never a patient or a record --

def _datasets(user: User):
    patients = (Patient.objects.filter(dataset=OuterRef("pk")).order_by().values("dataset")
                .annotate(n=Count("pk")).values("n"))
    return selectors.datasets_visible(user).annotate(patient_total=Coalesce(Subquery(patients), 0))


def _with_counts(datasets, policy):
    for dataset in datasets:
        dataset.threshold = services.required_patients([dataset], policy)
        dataset.disclosed_records = disclosed_count(dataset.record_total, policy)
        dataset.disclosed_patients = disclosed_count(dataset.patient_total, policy)
    return datasets


class DatasetsView(GovernanceView):
    required_permissions = {"GET": p.DATASET_VIEW}

    @extend_schema(responses=DatasetListOutput(many=True), summary="Datasets, with disclosed counts")
    def get(self, request):
        page = self.paginate_queryset(_datasets(request.user))
        return self.get_paginated_response(
            DatasetListOutput(_with_counts(page, services.policy_current()), many=True).data)


class DatasetDetailView(GovernanceView):
    required_permissions = {"GET": p.DATASET_VIEW}

    @extend_schema(responses=DatasetDetailOutput, summary="One dataset: disclosed counts and what a filter can test")
    def get(self, request, pk: int):
        dataset: Dataset = get_object_or_404(_datasets(request.user), pk=pk)
        _with_counts([dataset], services.policy_current())
        dataset.document_types = list(
            Record.objects.filter(dataset=dataset).order_by("document_type").values_list("document_type", flat=True)
            .distinct())
        dataset.attributes = list(ATTRIBUTES)
        return Response(DatasetDetailOutput(dataset).data)


# Ethics approvals ----------------------------------------------------------------------------

def _approval(user: User, pk: int) -> EthicsApproval:
    approval = get_object_or_404(selectors.ethics_for(user), pk=pk)
    p.check_permission(user, p.PROJECT_VIEW, project=approval.project)
    return approval


class EthicsApprovalsView(GovernanceView):
    required_permissions = {"GET": p.PROJECT_VIEW, "POST": p.ETHICS_SUBMIT}
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(parameters=[EthicsListQuery], responses=EthicsOutput(many=True),
                   summary="Ethics approvals of the projects you can see")
    def get(self, request):
        query = self.valid(EthicsListQuery, request.query_params)
        approvals = selectors.ethics_for(request.user, status=query.get("status"))
        if "project" in query:
            approvals = approvals.filter(project_id=query["project"])
        return self.page(approvals, EthicsOutput)

    @extend_schema(request={"multipart/form-data": EthicsCreateInput}, responses={201: EthicsOutput, 403: REFUSED},
                   summary="Submit an ethics approval with the committee's letter (PDF)")
    def post(self, request):
        data = self.valid(EthicsCreateInput)
        approval = services.ethics_submit(
            by=request.user, project=data["project"], committee=data["committee"], reference=data["reference"],
            approved_on=data["approved_on"], expires_on=data["expires_on"], scope=data["scope"],
            letter=data["letter"].read(),
        )
        return Response(EthicsOutput(_approval(request.user, approval.pk)).data, status=status.HTTP_201_CREATED)


class EthicsApprovalDetailView(GovernanceView):
    required_permissions = {"GET": p.PROJECT_VIEW}

    @extend_schema(responses=EthicsOutput, summary="One ethics approval")
    def get(self, request, pk: int):
        return Response(EthicsOutput(_approval(request.user, pk)).data)


class _EthicsDecisionView(GovernanceView):
    required_permissions = {"POST": p.ETHICS_DECIDE}

    def decide(self, request, pk: int, action, input_class) -> Response:
        approval = _approval(request.user, pk)
        p.check_permission(request.user, p.ETHICS_DECIDE, approval=approval)
        data = self.valid(input_class)
        action(approval=approval, by=request.user, **data)
        return Response(EthicsOutput(_approval(request.user, pk)).data)


class EthicsVerifyView(_EthicsDecisionView):
    @extend_schema(request=EmptyInput, responses={200: EthicsOutput, 403: REFUSED, 409: CONFLICT},
                   summary="Verify a submitted ethics approval")
    def post(self, request, pk: int):
        return self.decide(request, pk, services.ethics_verify, EmptyInput)


class EthicsRejectView(_EthicsDecisionView):
    @extend_schema(request=ReasonInput, responses={200: EthicsOutput, 403: REFUSED, 409: CONFLICT},
                   summary="Reject a submitted ethics approval, with a reason")
    def post(self, request, pk: int):
        return self.decide(request, pk, services.ethics_reject, ReasonInput)


class EthicsRevokeView(_EthicsDecisionView):
    @extend_schema(request=ReasonInput, responses={200: EthicsOutput, 403: REFUSED, 409: CONFLICT},
                   summary="Revoke a verified ethics approval; approved requests relying on it are suspended")
    def post(self, request, pk: int):
        return self.decide(request, pk, services.ethics_revoke, ReasonInput)


# Data-access requests ---------------------------------------------------------------------------

def _access_request(user: User, pk: int, permission: str = p.REQUEST_VIEW) -> DataAccessRequest:
    access_request = get_object_or_404(selectors.requests_for(user), pk=pk)
    p.check_permission(user, permission, request=access_request)
    return access_request


def _detail(user: User, pk: int) -> dict:
    return RequestDetailOutput(_access_request(user, pk), context={"policy": services.policy_current()}).data


class AccessRequestsView(GovernanceView):
    required_permissions = {"GET": p.REQUEST_VIEW, "POST": p.REQUEST_CREATE}

    @extend_schema(parameters=[RequestListQuery], responses=RequestListOutput(many=True),
                   summary="Data-access requests you can see, optionally by status")
    def get(self, request):
        query = self.valid(RequestListQuery, request.query_params)
        requests = selectors.requests_for(request.user, status=query.get("status"))
        if "project" in query:
            requests = requests.filter(project_id=query["project"])
        return self.page(requests, RequestListOutput)

    @extend_schema(request=RequestCreateInput, responses={201: RequestDetailOutput, 403: REFUSED},
                   summary="Create a draft data-access request")
    def post(self, request):
        data = self.valid(RequestCreateInput)
        access_request = services.request_create(by=request.user, **data)
        return Response(_detail(request.user, access_request.pk), status=status.HTTP_201_CREATED)


class AccessRequestDetailView(GovernanceView):
    required_permissions = {"GET": p.REQUEST_VIEW, "PATCH": p.REQUEST_EDIT}

    @extend_schema(responses=RequestDetailOutput, summary="One data-access request")
    def get(self, request, pk: int):
        return Response(_detail(request.user, pk))

    @extend_schema(request=RequestUpdateInput, responses={200: RequestDetailOutput, 403: REFUSED, 409: CONFLICT},
                   summary="Edit a draft, or a request sent back with changes requested")
    def patch(self, request, pk: int):
        access_request = _access_request(request.user, pk, p.REQUEST_EDIT)
        data = self.valid(RequestUpdateInput)
        if not data:
            raise ValidationError({"non_field_errors": ["Nothing to change."]})
        services.request_update(request=access_request, by=request.user, **data)
        return Response(_detail(request.user, pk))


class _RequestMoveView(GovernanceView):
    def move(self, request, pk: int, action, input_class) -> Response:
        access_request = _access_request(request.user, pk, self.required_permissions["POST"])
        data = self.valid(input_class)
        action(request=access_request, by=request.user, **data)
        return Response(_detail(request.user, pk))


MOVE_RESPONSES = {200: RequestDetailOutput, 403: REFUSED, 409: CONFLICT}


class AccessRequestSubmitView(_RequestMoveView):
    required_permissions = {"POST": p.REQUEST_EDIT}

    @extend_schema(request=EmptyInput, responses=MOVE_RESPONSES, summary="Submit a draft for a governance decision")
    def post(self, request, pk: int):
        return self.move(request, pk, services.request_submit, EmptyInput)


class AccessRequestApproveView(_RequestMoveView):
    required_permissions = {"POST": p.REQUEST_DECIDE}

    @extend_schema(request=ApproveInput, responses=MOVE_RESPONSES,
                   summary="Approve: re-checks ethics, threshold and differencing, then freezes the cohort")
    def post(self, request, pk: int):
        return self.move(request, pk, services.request_approve, ApproveInput)


class AccessRequestRejectView(_RequestMoveView):
    required_permissions = {"POST": p.REQUEST_DECIDE}

    @extend_schema(request=ReasonInput, responses=MOVE_RESPONSES, summary="Reject, with a reason")
    def post(self, request, pk: int):
        return self.move(request, pk, services.request_reject, ReasonInput)


class AccessRequestChangesView(_RequestMoveView):
    required_permissions = {"POST": p.REQUEST_DECIDE}

    @extend_schema(request=ReasonInput, responses=MOVE_RESPONSES,
                   summary="Send back to the researcher with the changes needed")
    def post(self, request, pk: int):
        return self.move(request, pk, services.request_changes, ReasonInput)


class AccessRequestWithdrawView(_RequestMoveView):
    required_permissions = {"POST": p.REQUEST_EDIT}

    @extend_schema(request=OptionalReasonInput, responses=MOVE_RESPONSES, summary="Withdraw an open request")
    def post(self, request, pk: int):
        return self.move(request, pk, services.request_withdraw, OptionalReasonInput)


class CohortPreviewView(GovernanceView):
    required_permissions = {"POST": p.REQUEST_VIEW}

    @extend_schema(request=CohortPreviewInput, responses={200: CohortPreviewOutput, 403: REFUSED},
                   summary="Preview a cohort filter: counts rounded, small ones suppressed, never exact")
    def post(self, request):
        data = self.valid(CohortPreviewInput)
        preview = services.cohort_preview(by=request.user, datasets=data["datasets"], definition=data["definition"])
        return Response(CohortPreviewOutput(preview).data)

