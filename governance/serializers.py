"""Small input and output serializers for the governance API. Inputs check shapes; services write."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from governance import selectors
from governance.cohorts import disclosed_count
from governance.models import Cohort, DataAccessRequest, Dataset, EthicsApproval, Modality, Project
from portal.models import Organisation, User


class StrictInput(serializers.Serializer):
    """An input serializer that names unknown fields instead of silently dropping them."""

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            unknown = sorted(set(data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class VisibleProjectField(serializers.PrimaryKeyRelatedField):
    """A project id, resolved among the projects the requesting user can see."""

    def get_queryset(self):
        return selectors.projects_for(self.context["request"].user)


class VisibleEthicsField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self):
        return selectors.ethics_for(self.context["request"].user)


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}],
                      "description": "A dataset's id or its name."})
class DatasetRefField(serializers.Field):
    default_error_messages = {"invalid": "A dataset id or name."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)) or (isinstance(data, str) and not data.strip()):
            self.fail("invalid")
        return data.strip() if isinstance(data, str) else data

    def to_representation(self, value):
        return value


def resolve_datasets(refs: list) -> list[Dataset]:
    """Datasets by id or name, in the order given; unknown references are one error naming them all."""
    ids = {ref for ref in refs if isinstance(ref, int)}
    names = {ref for ref in refs if isinstance(ref, str)}
    found = list(Dataset.objects.filter(pk__in=ids)) + list(Dataset.objects.filter(name__in=names))
    by_ref = {**{d.pk: d for d in found}, **{d.name: d for d in found}}
    missing = [str(ref) for ref in refs if ref not in by_ref]
    if missing:
        raise serializers.ValidationError(f"Unknown dataset(s): {', '.join(missing)}.")
    ordered: dict[int, Dataset] = {}
    for ref in refs:
        ordered.setdefault(by_ref[ref].pk, by_ref[ref])
    return list(ordered.values())


class DatasetRefsField(serializers.ListField):
    child = DatasetRefField()

    def to_internal_value(self, data):
        return resolve_datasets(super().to_internal_value(data))


# Shared pieces of output ------------------------------------------------------------------------

class UserRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    full_name = serializers.CharField()
    email = serializers.EmailField()


class OrganisationRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class ProjectRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()


class DatasetRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    title = serializers.CharField()


class EthicsRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    reference = serializers.CharField()
    status = serializers.CharField()
    expires_on = serializers.DateField()


class DisclosedCountOutput(serializers.Serializer):
    """A count as a researcher may see it: rounded, and suppressed below the policy's limit."""

    suppressed = serializers.BooleanField()
    value = serializers.IntegerField(allow_null=True)
    display = serializers.CharField()


class ReasonInput(StrictInput):
    reason = serializers.CharField(allow_blank=True, trim_whitespace=True)


class OptionalReasonInput(StrictInput):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class EmptyInput(StrictInput):
    pass


# Projects ------------------------------------------------------------------------------------

class ProjectListOutput(serializers.ModelSerializer):
    principal_investigator = UserRefOutput()
    members = UserRefOutput(many=True)
    sponsor = OrganisationRefOutput(allow_null=True)

    class Meta:
        model = Project
        fields = ["id", "title", "lay_summary", "principal_investigator", "members", "sponsor", "created_at"]


class RequestRefOutput(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()
    status = serializers.CharField()


class ProjectDetailOutput(ProjectListOutput):
    requests = RequestRefOutput(many=True)
    ethics_approvals = EthicsRefOutput(many=True)

    class Meta(ProjectListOutput.Meta):
        fields = ProjectListOutput.Meta.fields + ["requests", "ethics_approvals"]


class ProjectCreateInput(StrictInput):
    title = serializers.CharField(max_length=200)
    lay_summary = serializers.CharField()
    members = serializers.SlugRelatedField(
        slug_field="email", queryset=User.objects.filter(is_active=True), many=True, required=False,
        help_text="E-mail addresses of further members; the creator is the principal investigator.",
    )
    sponsor = serializers.PrimaryKeyRelatedField(
        queryset=Organisation.objects.all(), required=False, allow_null=True,
        help_text="The external sponsor organisation the adapters would be released to.",
    )


# Datasets ------------------------------------------------------------------------------------

class DatasetListOutput(serializers.ModelSerializer):
    threshold = serializers.IntegerField(help_text="The fewest distinct patients a cohort from this dataset may have.")
    records = DisclosedCountOutput(source="disclosed_records")
    patients = DisclosedCountOutput(source="disclosed_patients")

    class Meta:
        model = Dataset
        fields = ["id", "name", "title", "modality", "description", "threshold", "records", "patients"]


class DatasetDetailOutput(DatasetListOutput):
    document_types = serializers.ListField(child=serializers.CharField())
    attributes = serializers.ListField(child=serializers.CharField(), help_text="What a cohort filter can test.")

    class Meta(DatasetListOutput.Meta):
        fields = DatasetListOutput.Meta.fields + ["document_types", "attributes"]


# Ethics approvals ----------------------------------------------------------------------------

class EthicsOutput(serializers.ModelSerializer):
    project = ProjectRefOutput()
    submitted_by = UserRefOutput()
    decided_by = UserRefOutput(allow_null=True)

    class Meta:
        model = EthicsApproval
        fields = ["id", "project", "committee", "reference", "approved_on", "expires_on", "scope", "letter_sha256",
                  "status", "submitted_at", "submitted_by", "decided_at", "decided_by", "decision_reason"]


class EthicsCreateInput(StrictInput):
    project = VisibleProjectField(queryset=Project.objects.all())
    committee = serializers.CharField(max_length=200)
    reference = serializers.CharField(max_length=100)
    approved_on = serializers.DateField()
    expires_on = serializers.DateField()
    scope = serializers.CharField()
    letter = serializers.FileField(help_text="The committee's letter, as a PDF.")

    def validate_letter(self, letter):
        if letter.size > settings.ETHICS_LETTER_MAX_BYTES:
            raise serializers.ValidationError(
                f"The letter is larger than {settings.ETHICS_LETTER_MAX_BYTES // (1024 * 1024)} MB.")
        return letter


class EthicsListQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=EthicsApproval.Status.choices, required=False)
    project = serializers.IntegerField(required=False)


# Data-access requests -------------------------------------------------------------------------

class RequestListOutput(serializers.ModelSerializer):
    project = ProjectRefOutput()
    datasets = DatasetRefOutput(many=True)
    ethics_approval = EthicsRefOutput(allow_null=True)
    created_by = UserRefOutput()
    decided_by = UserRefOutput(allow_null=True)

    class Meta:
        model = DataAccessRequest
        fields = ["id", "title", "status", "modality", "project", "datasets", "ethics_approval", "created_at",
                  "created_by", "decided_at", "decided_by"]


class CohortOutput(serializers.Serializer):
    patients = DisclosedCountOutput()
    records = DisclosedCountOutput()
    definition_hash = serializers.CharField()
    frozen_at = serializers.DateTimeField()


class RequestDetailOutput(RequestListOutput):
    submitted_by = UserRefOutput(allow_null=True)
    reviewed_by = UserRefOutput(allow_null=True)
    cohort = serializers.SerializerMethodField(
        help_text="The frozen cohort once approved, its counts rounded and suppressed as for researchers.")

    class Meta(RequestListOutput.Meta):
        fields = RequestListOutput.Meta.fields + [
            "purpose", "cohort_definition", "base_model_name", "recipe", "requested_epsilon", "submitted_at",
            "submitted_by", "reviewed_at", "reviewed_by", "decision_conditions", "decision_reason",
            "suspended_reason", "closed_at", "cohort",
        ]

    @extend_schema_field(CohortOutput(allow_null=True))
    def get_cohort(self, request: DataAccessRequest) -> dict | None:
        cohort = Cohort.objects.filter(request=request).first()
        if cohort is None:
            return None
        policy = self.context["policy"]
        return CohortOutput({"patients": disclosed_count(cohort.patient_count, policy),
                             "records": disclosed_count(cohort.record_count, policy),
                             "definition_hash": cohort.definition_hash, "frozen_at": cohort.frozen_at}).data


class RequestListQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=DataAccessRequest.Status.choices, required=False)
    project = serializers.IntegerField(required=False)


class RequestCreateInput(StrictInput):
    project = VisibleProjectField(queryset=Project.objects.all())
    datasets = DatasetRefsField(allow_empty=True)
    title = serializers.CharField(max_length=200)
    purpose = serializers.CharField()
    modality = serializers.ChoiceField(choices=Modality.choices, default=Modality.TEXT)
    cohort_definition = serializers.JSONField(required=False, default=dict,
                                              help_text="A cohort filter (see cohort-preview).")
    base_model_name = serializers.CharField(max_length=100)
    recipe = serializers.DictField(required=False, default=dict)
    ethics_approval = VisibleEthicsField(queryset=EthicsApproval.objects.all(), required=False, allow_null=True)
    requested_epsilon = serializers.FloatField(required=False, allow_null=True)


class RequestUpdateInput(StrictInput):
    datasets = DatasetRefsField(required=False, allow_empty=True)
    title = serializers.CharField(max_length=200, required=False)
    purpose = serializers.CharField(required=False)
    cohort_definition = serializers.JSONField(required=False)
    base_model_name = serializers.CharField(max_length=100, required=False)
    recipe = serializers.DictField(required=False)
    ethics_approval = VisibleEthicsField(queryset=EthicsApproval.objects.all(), required=False, allow_null=True)
    requested_epsilon = serializers.FloatField(required=False, allow_null=True)


class ApproveInput(StrictInput):
    conditions = serializers.CharField(required=False, allow_blank=True, default="",
                                       help_text="Conditions the researcher must keep to.")


class CohortPreviewInput(StrictInput):
    datasets = DatasetRefsField(allow_empty=True)
    definition = serializers.JSONField(required=False, default=dict)


class CohortPreviewOutput(serializers.Serializer):
    patients = DisclosedCountOutput()
    records = DisclosedCountOutput()
    threshold = serializers.IntegerField()
    meets_threshold = serializers.BooleanField()
    policy_version = serializers.IntegerField()


class ErrorOutput(serializers.Serializer):
    detail = serializers.CharField()
