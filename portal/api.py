"""API: who am I, and the audit log for the roles that may read it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions as drf_permissions, serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import permissions
from portal.models import AuditEvent, User


class HasPermission(drf_permissions.BasePermission):
    """DRF adapter for `portal.permissions`: a view names `required_permission`."""

    def has_permission(self, request, view) -> bool:
        reason = permissions.denial_reason(request.user, view.required_permission)
        if reason:
            raise PermissionDenied(reason)
        return True


class OrganisationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()


class MeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    full_name = serializers.CharField()
    organisation = OrganisationOutput(allow_null=True)
    roles = serializers.ListField(child=serializers.CharField())
    two_factor = serializers.BooleanField()


class MeView(APIView):
    @extend_schema(responses=MeOutput, summary="The signed-in user, their organisation and roles")
    def get(self, request):
        user: User = request.user
        return Response(
            MeOutput(
                {
                    "id": user.pk,
                    "email": user.email,
                    "full_name": user.full_name,
                    "organisation": user.organisation,
                    "roles": sorted(user.role_names),
                    "two_factor": user.has_two_factor,
                }
            ).data
        )


class AuditEventOutput(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["seq", "created_at", "actor_label", "verb", "target_type", "target_id", "payload", "prev_hash", "hash"]


class AuditEventList(generics.ListAPIView):
    permission_classes = [drf_permissions.IsAuthenticated, HasPermission]
    required_permission = permissions.AUDIT_VIEW
    serializer_class = AuditEventOutput

    def get_queryset(self):
        queryset = AuditEvent.objects.order_by("-seq")
        target_type = self.request.query_params.get("target_type")
        target_id = self.request.query_params.get("target_id")
        if target_type:
            queryset = queryset.filter(target_type=target_type)
        if target_id:
            queryset = queryset.filter(target_id=target_id)
        return queryset
