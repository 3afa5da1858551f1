"""What the governance pages share: finding objects a user may see, and showing them readably."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import get_object_or_404

from governance.cohorts import disclosed_count
from governance.models import DataAccessRequest, DisclosurePolicy, EthicsApproval, Project
from portal import permissions as p
from portal.models import Role, User

SYSTEM_LABELS = {"icd10": "ICD-10", "snomed": "SNOMED CT"}
RECIPE_LABELS = {"rank": "LoRA rank", "alpha": "LoRA alpha", "learning_rate": "Learning rate", "epochs": "Epochs",
                 "dp": "Differential privacy (DP-SGD)", "target_modules": "Target modules"}


def sees_exact_counts(user: User) -> bool:
    """Hospital staff see exact counts; researchers and sponsors see rounded, suppressed ones."""
    return bool(user.role_names - {Role.RESEARCHER, Role.SPONSOR})


def shown_count(user: User, count: int, policy: DisclosurePolicy) -> str:
    return str(count) if sees_exact_counts(user) else disclosed_count(count, policy)["display"]


# A user who may not see an object gets 404, exactly as for one that does not exist.

def visible_project(user: User, pk: int) -> Project:
    project = get_object_or_404(Project.objects.select_related("principal_investigator", "sponsor"), pk=pk)
    if not p.has_permission(user, p.PROJECT_VIEW, project=project):
        raise Http404("No such project.")
    return project


def visible_request(user: User, pk: int) -> DataAccessRequest:
    queryset = DataAccessRequest.objects.select_related(
        "project", "project__principal_investigator", "ethics_approval", "created_by", "submitted_by", "decided_by",
    )
    obj = get_object_or_404(queryset, pk=pk)
    if not p.has_permission(user, p.REQUEST_VIEW, request=obj):
        raise Http404("No such request.")
    return obj


def visible_approval(user: User, pk: int) -> EthicsApproval:
    approval = get_object_or_404(EthicsApproval.objects.select_related("project", "submitted_by", "decided_by"), pk=pk)
    if not p.has_permission(user, p.PROJECT_VIEW, project=approval.project):
        raise Http404("No such ethics approval.")
    return approval


def _either(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def describe_definition(node: dict) -> dict:
    """A cohort definition as a tree of sentences: {"text": ..., "children": [...]}."""
    if not node:
        return {"text": "Every record of the chosen datasets", "children": []}
    (key, value), = node.items()
    if key == "all":
        return {"text": "All of these:", "children": [describe_definition(child) for child in value]}
    if key == "any":
        return {"text": "Any of these:", "children": [describe_definition(child) for child in value]}
    if key == "not":
        return {"text": "None of this:", "children": [describe_definition(value)]}
    if key == "age":
        if "min" in value and "max" in value:
            text = f"Age {value['min']} to {value['max']} at the time of the record"
        elif "min" in value:
            text = f"Aged {value['min']} or over at the time of the record"
        else:
            text = f"Aged {value['max']} or under at the time of the record"
    elif key == "sex":
        text = f"Sex is {_either(value)}"
    elif key == "condition":
        system = SYSTEM_LABELS.get(value["system"], value["system"])
        text = f"{'An' if system[0] in 'AEIOU' else 'A'} {system} code starting with {_either(value['prefixes'])}"
    elif key == "date":
        if "from" in value and "to" in value:
            text = f"Recorded between {value['from']} and {value['to']}"
        elif "from" in value:
            text = f"Recorded on or after {value['from']}"
        else:
            text = f"Recorded on or before {value['to']}"
    elif key == "document_type":
        text = f"Document type is {_either([v.replace('_', ' ') for v in value])}"
    else:
        text = f"{key}: {value}"
    return {"text": text, "children": []}


def cohort_criteria(definition: dict) -> list[dict]:
    """The top-level criteria of a definition, all of which a record must meet."""
    if set(definition) == {"all"}:
        return [describe_definition(child) for child in definition["all"]]
    return [describe_definition(definition)]


def recipe_rows(recipe: dict) -> list[tuple[str, object]]:
    def shown(value: object) -> object:
        if isinstance(value, dict):
            return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return value

    return [(RECIPE_LABELS.get(key, key.replace("_", " ").capitalize()), shown(value)) for key, value in recipe.items()]
