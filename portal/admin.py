from django.contrib import admin

from portal.models import ApiToken, AuditEvent, Organisation, RoleAssignment, User


class ReadOnlyAdmin(admin.ModelAdmin):
    """Writes go through services (with their audit events); the admin only looks."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(ReadOnlyAdmin):
    list_display = ["email", "full_name", "organisation", "is_active"]
    search_fields = ["email", "full_name"]
    exclude = ["password", "totp_secret"]


@admin.register(Organisation)
class OrganisationAdmin(ReadOnlyAdmin):
    list_display = ["name", "kind", "parent"]


@admin.register(RoleAssignment)
class RoleAssignmentAdmin(ReadOnlyAdmin):
    list_display = ["user", "role", "granted_at", "granted_by"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["name", "prefix", "organisation", "expires_at", "revoked_at"]
    exclude = ["token_hash"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["seq", "created_at", "actor_label", "verb", "target_type", "target_id"]
    list_filter = ["verb"]
