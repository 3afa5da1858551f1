"""HTML forms of governance. Forms check the shape of input; services decide and write."""

from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_email
from django.db.models import Q

from governance.cohorts import SEXES
from governance.models import DOCUMENT_TYPE_CHOICES, DataAccessRequest, Dataset, EthicsApproval, Modality, Project
from portal.models import Organisation, User

DATE_INPUT = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
CONDITION_SYSTEM_CHOICES = [("", "Any (no condition filter)"), ("icd10", "ICD-10"), ("snomed", "SNOMED CT")]
RECIPE_FIELDS = ("rank", "alpha", "learning_rate", "epochs")
DP_FIELDS = {"epsilon": "target_epsilon", "delta": "delta", "max_grad_norm": "max_grad_norm"}


def add_service_errors(exc: ValidationError, form: forms.Form, routes: dict[str, tuple[forms.Form, str | None]] | None = None) -> None:
    """Show a service's ValidationError on the form(s): each message next to the field it names.

    `routes` sends a service field to another form or field; a field no form has becomes a
    form-wide error that still names it.
    """
    routes = routes or {}
    if not hasattr(exc, "error_dict"):
        for message in exc.messages:
            form.add_error(None, message)
        return
    for name, messages in exc.message_dict.items():
        target_form, target = routes.get(name, (form, name if name in form.fields else None))
        for message in messages:
            if target is None and name != NON_FIELD_ERRORS and name not in routes:
                message = f"{name.replace('_', ' ').capitalize()}: {message}"
            target_form.add_error(target, message)


class ProjectForm(forms.Form):
    title = forms.CharField(max_length=200)
    lay_summary = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="In plain language: what you want to do, and how it could help patients.",
    )
    sponsor = forms.ModelChoiceField(
        queryset=Organisation.objects.filter(kind=Organisation.Kind.SPONSOR).order_by("name"),
        required=False,
        empty_label="No external sponsor",
        label="Sponsor organisation",
        help_text="The external organisation that may receive the trained adapters, if any.",
    )
    members = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="E-mail addresses of colleagues, separated by commas or new lines. "
                  "You are added as principal investigator.",
    )

    def clean_members(self) -> list[User]:
        emails = [e.lower() for e in re.split(r"[\s,;]+", self.cleaned_data["members"]) if e]
        for email in emails:
            try:
                validate_email(email)
            except ValidationError:
                raise ValidationError(f"{email} is not an e-mail address.") from None
        users = list(User.objects.filter(email__in=emails, is_active=True))
        missing = sorted(set(emails) - {u.email for u in users})
        if missing:
            raise ValidationError(f"No active account has the e-mail address {', '.join(missing)}.")
        return users


class EthicsForm(forms.Form):
    committee = forms.CharField(max_length=200, help_text="The research ethics committee that gave the approval.")
    reference = forms.CharField(max_length=100, help_text="The committee's reference, e.g. 24/LO/0123.")
    approved_on = forms.DateField(widget=DATE_INPUT)
    expires_on = forms.DateField(widget=DATE_INPUT)
    scope = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="What the committee approved, as the letter words it.")
    letter = forms.FileField(
        widget=forms.FileInput(attrs={"accept": "application/pdf,.pdf"}),
        help_text=f"The committee's letter as a PDF of at most {settings.ETHICS_LETTER_MAX_BYTES // (1024 * 1024)} MB. "
                  "It is checked by its content, not its name.",
    )

    def letter_bytes(self) -> bytes:
        # One byte over the limit is enough for the service to refuse it with its message.
        return self.cleaned_data["letter"].read(settings.ETHICS_LETTER_MAX_BYTES + 1)


class ReasonForm(forms.Form):
    """A refusal, a revocation or a request for changes. The service insists on the reason."""

    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="Required. The researchers will see it.")


class ApproveForm(forms.Form):
    conditions = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional conditions of the approval; the researchers will see them.",
    )


class WithdrawForm(forms.Form):
    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), label="Reason (optional)")


class _DatasetChoice(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Dataset) -> str:
        return f"{obj.title} ({obj.get_modality_display()})"


class _EthicsChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: EthicsApproval) -> str:
        return f"{obj.project.title}: {obj.committee} {obj.reference} ({obj.get_status_display().lower()})"


def member_projects(user: User):
    return Project.objects.filter(Q(members=user) | Q(principal_investigator=user)).distinct().order_by("title")


class RequestForm(forms.Form):
    """The request itself. The cohort definition comes from the CohortForm shown beside it."""

    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label="Choose a project")
    title = forms.CharField(max_length=200)
    purpose = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="What the model will be trained to do, and why these records are needed.",
    )
    modality = forms.ChoiceField(choices=Modality.choices)
    datasets = _DatasetChoice(queryset=Dataset.objects.none(), widget=forms.CheckboxSelectMultiple)
    base_model_name = forms.CharField(max_length=100, label="Base model", help_text="The name of a registered base model.")
    # The bounds of each recipe setting are hospital policy, checked by the service that owns them.
    rank = forms.IntegerField(required=False, label="LoRA rank")
    alpha = forms.IntegerField(required=False, label="LoRA alpha")
    learning_rate = forms.FloatField(required=False, label="Learning rate", widget=forms.NumberInput(attrs={"step": "any"}))
    epochs = forms.IntegerField(required=False)
    dp_epsilon = forms.FloatField(
        required=False, label="Differential privacy: target ε", widget=forms.NumberInput(attrs={"step": "any"}),
        help_text="Per patient, spent from each dataset's privacy budget when the adapter is released. "
                  "Empty: no differential privacy (not allowed on datasets with a budget).",
    )
    dp_delta = forms.FloatField(
        required=False, label="δ", widget=forms.NumberInput(attrs={"step": "any"}),
        help_text="Empty: 10⁻⁵, or 0.1 / patients for cohorts above 10,000. Must stay below 1 / patients.",
    )
    dp_max_grad_norm = forms.FloatField(
        required=False, label="Clipping norm", widget=forms.NumberInput(attrs={"step": "any"}),
        help_text="Each patient's gradient is clipped to this norm (default 0.1).",
    )
    ethics_approval = _EthicsChoice(
        queryset=EthicsApproval.objects.none(), required=False, empty_label="None yet",
        help_text="A request can be saved without one, but not approved until a verified approval is attached.",
    )

    def __init__(self, *args: Any, user: User, instance: DataAccessRequest | None = None, **kwargs: Any):
        if instance is not None and "initial" not in kwargs:
            kwargs["initial"] = self.initial_from(instance)
        super().__init__(*args, **kwargs)
        projects = member_projects(user)
        self.fields["project"].queryset = projects
        self.fields["datasets"].queryset = Dataset.objects.order_by("title")
        approvals = EthicsApproval.objects.filter(
            status__in=[EthicsApproval.Status.SUBMITTED, EthicsApproval.Status.VERIFIED]
        ).select_related("project").order_by("project__title", "-submitted_at")
        if instance is not None:
            # The project and modality of a request are fixed once it exists.
            self.fields["project"].disabled = True
            self.fields["modality"].disabled = True
            approvals = approvals.filter(project=instance.project)
        else:
            approvals = approvals.filter(project__in=projects)
        self.fields["ethics_approval"].queryset = approvals

    @staticmethod
    def initial_from(instance: DataAccessRequest) -> dict:
        initial = {
            "project": instance.project_id, "title": instance.title, "purpose": instance.purpose,
            "modality": instance.modality, "datasets": [d.pk for d in instance.datasets.all()],
            "base_model_name": instance.base_model_name, "ethics_approval": instance.ethics_approval_id,
        }
        initial.update({name: instance.recipe.get(name) for name in RECIPE_FIELDS})
        dp = instance.recipe.get("dp") or {}
        initial.update({f"dp_{field}": dp.get(key) for field, key in DP_FIELDS.items()})
        return initial

    def recipe(self, previous: dict | None = None) -> dict:
        """The recipe from the form, keeping any settings this form does not show."""
        recipe = {k: v for k, v in (previous or {}).items() if k not in RECIPE_FIELDS and k != "dp"}
        recipe.update({name: self.cleaned_data[name] for name in RECIPE_FIELDS if self.cleaned_data.get(name) is not None})
        dp = {key: self.cleaned_data[f"dp_{field}"] for field, key in DP_FIELDS.items()
              if self.cleaned_data.get(f"dp_{field}") is not None}
        if dp:
            recipe["dp"] = dp  # the service says what is missing (target ε) or out of bounds
        return recipe


class CohortForm(forms.Form):
    """The cohort filter as plain fields, turned into the JSON language of governance/cohorts.py."""

    age_min = forms.IntegerField(required=False, label="Age from", widget=forms.NumberInput(attrs={"min": 0, "max": 130}))
    age_max = forms.IntegerField(required=False, label="Age to", widget=forms.NumberInput(attrs={"min": 0, "max": 130}))
    sex = forms.MultipleChoiceField(choices=[(s, s.capitalize()) for s in SEXES], required=False, widget=forms.CheckboxSelectMultiple)
    condition_system = forms.ChoiceField(choices=CONDITION_SYSTEM_CHOICES, required=False, label="Condition code system")
    condition_prefixes = forms.CharField(
        required=False, max_length=500, label="Condition code prefixes",
        help_text="Comma-separated, e.g. E11, I10. A record matches if any of its codes starts with one of them.",
    )
    date_from = forms.DateField(required=False, widget=DATE_INPUT, label="Recorded from")
    date_to = forms.DateField(required=False, widget=DATE_INPUT, label="Recorded to")
    document_types = forms.MultipleChoiceField(
        choices=[(value, label.capitalize()) for value, label in DOCUMENT_TYPE_CHOICES], required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    advanced_json = forms.CharField(
        required=False, label="Advanced: the definition as JSON",
        widget=forms.Textarea(attrs={"rows": 5, "class": "code", "spellcheck": "false"}),
        help_text='When filled in, this replaces the fields above. Combine conditions with "all", "any" and "not", '
                  'e.g. {"all": [{"age": {"min": 18}}, {"not": {"sex": ["male"]}}]}.',
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("condition_prefixes", "").strip() and not data.get("condition_system"):
            self.add_error("condition_system", "Choose the code system of these prefixes.")
        if data.get("condition_system") and not self._prefixes(data.get("condition_prefixes", "")):
            self.add_error("condition_prefixes", "Give at least one code prefix, or set the code system to Any.")
        return data

    @staticmethod
    def _prefixes(text: str) -> list[str]:
        return [p.strip() for p in text.split(",") if p.strip()]

    @property
    def uses_json(self) -> bool:
        return bool(self.cleaned_data.get("advanced_json", "").strip())

    def definition(self) -> dict | str:
        """The definition to hand to the service: the JSON text if given, else built from the fields."""
        data = self.cleaned_data
        if self.uses_json:
            return data["advanced_json"]
        nodes: list[dict] = []
        age = {bound: data[f"age_{bound}"] for bound in ("min", "max") if data.get(f"age_{bound}") is not None}
        if age:
            nodes.append({"age": age})
        if data.get("sex"):
            nodes.append({"sex": list(data["sex"])})
        if data.get("condition_system"):
            nodes.append({"condition": {"system": data["condition_system"], "prefixes": self._prefixes(data["condition_prefixes"])}})
        dates = {key: data[f"date_{key}"].isoformat() for key in ("from", "to") if data.get(f"date_{key}")}
        if dates:
            nodes.append({"date": dates})
        if data.get("document_types"):
            nodes.append({"document_type": list(data["document_types"])})
        return {"all": nodes} if nodes else {}

    @staticmethod
    def initial_from(definition: dict) -> dict:
        """Fill the plain fields when the definition has their shape, else the JSON box."""
        nodes = definition.get("all", []) if set(definition) == {"all"} else [definition] if definition else []
        initial: dict[str, Any] = {}
        as_json = {"advanced_json": json.dumps(definition, indent=2)}
        for node in nodes:
            if not isinstance(node, dict) or len(node) != 1:
                return as_json
            (key, value), = node.items()
            if key == "age" and "age_min" not in initial and "age_max" not in initial:
                initial.update({f"age_{bound}": v for bound, v in value.items()})
            elif key == "sex" and "sex" not in initial:
                initial["sex"] = value
            elif key == "condition" and "condition_system" not in initial:
                initial.update(condition_system=value["system"], condition_prefixes=", ".join(value["prefixes"]))
            elif key == "date" and "date_from" not in initial and "date_to" not in initial:
                initial.update({f"date_{bound}": v for bound, v in value.items()})
            elif key == "document_type" and "document_types" not in initial:
                initial["document_types"] = value
            else:
                return as_json
        return initial


class QueueFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Submitted or in review"), (DataAccessRequest.Status.SUBMITTED, "Submitted"),
                 (DataAccessRequest.Status.IN_REVIEW, "In review")],
    )
    modality = forms.ChoiceField(required=False, choices=[("", "All modalities"), *Modality.choices])


class RequestFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *DataAccessRequest.Status.choices])
