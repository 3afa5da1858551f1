"""The cohort filter: a small declarative JSON language over a dataset's record index.

    {"all": [{"age": {"min": 18, "max": 80}}, {"sex": ["female"]},
             {"condition": {"system": "icd10", "prefixes": ["E11"]}},
             {"date": {"from": "2018-01-01", "to": "2024-12-31"}},
             {"document_type": ["discharge_summary"]},
             {"not": {"condition": {"system": "snomed", "prefixes": ["38341003"]}}}]}

Nodes combine with `all`, `any` and `not`. A definition is validated against the datasets'
attributes before anything runs; every error names the path of the node at fault. A cohort is
the set of records that match, and the patients who have at least one of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import date
from typing import Any, Iterable

from django.db.models import Count, Q

from governance.models import Dataset, DisclosurePolicy, Record, RecordCondition
from governance.records import CONDITION_SYSTEMS

ATTRIBUTES = ("age", "sex", "condition", "date", "document_type")
COMBINATORS = ("all", "any", "not")
SEXES = ("female", "male", "other", "unknown")
MAX_DEPTH = 8
MAX_NODES = 200


class CohortDefinitionError(ValueError):
    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class _Validator:
    def __init__(self, document_types: set[str]):
        self.document_types = document_types
        self.nodes = 0

    def node(self, node: Any, path: str, depth: int) -> dict:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise CohortDefinitionError(path, f"the definition has more than {MAX_NODES} conditions")
        if depth > MAX_DEPTH:
            raise CohortDefinitionError(path, f"nesting deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict) or len(node) != 1:
            raise CohortDefinitionError(path, "each condition is an object with exactly one key, e.g. {\"age\": {...}}")
        (key, value), = node.items()
        where = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise CohortDefinitionError(where, f"'{key}' takes a non-empty list of conditions")
            return {key: [self.node(child, f"{where}[{i}]", depth + 1) for i, child in enumerate(value)]}
        if key == "not":
            return {"not": self.node(value, where, depth + 1)}
        if key not in ATTRIBUTES:
            raise CohortDefinitionError(
                where, f"unknown attribute '{key}'; the dataset's attributes are {', '.join(ATTRIBUTES)} "
                f"(combine them with {', '.join(COMBINATORS)})"
            )
        return {key: getattr(self, key)(value, where)}

    @staticmethod
    def _keys(value: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise CohortDefinitionError(path, f"expected an object with keys {', '.join(sorted(allowed))}")
        unknown = set(value) - allowed
        if unknown:
            raise CohortDefinitionError(path, f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
        missing = required - set(value)
        if missing:
            raise CohortDefinitionError(path, f"missing key(s) {', '.join(sorted(missing))}")
        if not value:
            raise CohortDefinitionError(path, f"give at least one of {', '.join(sorted(allowed))}")
        return value

    def age(self, value: Any, path: str) -> dict:
        value = self._keys(value, path, {"min", "max"})
        for bound in value.values():
            if not isinstance(bound, int) or isinstance(bound, bool) or not 0 <= bound <= 130:
                raise CohortDefinitionError(path, "ages are whole numbers from 0 to 130")
        if "min" in value and "max" in value and value["min"] > value["max"]:
            raise CohortDefinitionError(path, f"reversed range: min {value['min']} is above max {value['max']}")
        return dict(value)

    def sex(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not value or any(v not in SEXES for v in value):
            raise CohortDefinitionError(path, f"a non-empty list drawn from {', '.join(SEXES)}")
        return sorted(set(value))

    def condition(self, value: Any, path: str) -> dict:
        value = self._keys(value, path, {"system", "prefixes"}, {"system", "prefixes"})
        if value["system"] not in CONDITION_SYSTEMS:
            raise CohortDefinitionError(path, f"unknown code system {value['system']!r}; use one of {', '.join(CONDITION_SYSTEMS)}")
        prefixes = value["prefixes"]
        if (
            not isinstance(prefixes, list) or not prefixes
            or any(not isinstance(p, str) or not p.strip() or len(p) > 20 or not p.replace(".", "").isalnum() for p in prefixes)
        ):
            raise CohortDefinitionError(path, "prefixes is a non-empty list of code prefixes such as \"E11\" or \"4405\"")
        return {"system": value["system"], "prefixes": sorted({p.strip().upper() for p in prefixes})}

    def date(self, value: Any, path: str) -> dict:
        value = self._keys(value, path, {"from", "to"})
        parsed = {}
        for key, raw in value.items():
            try:
                parsed[key] = date.fromisoformat(raw)
            except (TypeError, ValueError):
                raise CohortDefinitionError(path, f"'{key}' must be a date like 2020-01-31, not {raw!r}") from None
        if "from" in parsed and "to" in parsed and parsed["from"] > parsed["to"]:
            raise CohortDefinitionError(path, f"reversed date range: {value['from']} is after {value['to']}")
        return {key: parsed[key].isoformat() for key in parsed}

    def document_type(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not value or any(not isinstance(v, str) for v in value):
            raise CohortDefinitionError(path, "a non-empty list of document types")
        unknown = set(value) - self.document_types
        if unknown:
            known = ", ".join(sorted(self.document_types)) or "none"
            raise CohortDefinitionError(path, f"document type(s) {', '.join(sorted(unknown))} do not occur in the dataset(s); known: {known}")
        return sorted(set(value))


def validate_definition(definition: Any, datasets: Iterable[Dataset]) -> dict:
    """Return the normalised definition, or raise CohortDefinitionError naming the path."""
    datasets = list(datasets)
    if not datasets:
        raise CohortDefinitionError("$", "choose at least one dataset")
    if isinstance(definition, str):
        try:
            definition = json.loads(definition)
        except json.JSONDecodeError as exc:
            raise CohortDefinitionError("$", f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if definition in ({}, None):
        return {}
    document_types = set(
        Record.objects.filter(dataset__in=datasets).values_list("document_type", flat=True).distinct()
    )
    return _Validator(document_types).node(definition, "$", 0)


def definition_hash(definition: dict, datasets: Iterable[Dataset]) -> str:
    body = {"definition": definition, "datasets": sorted(d.name for d in datasets)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _compile(node: dict, datasets: list[int] | None = None) -> Q:
    (key, value), = node.items()
    if key == "all":
        q = Q()
        for child in value:
            q &= _compile(child, datasets)
        return q
    if key == "any":
        q = Q(pk__in=[])
        for child in value:
            q |= _compile(child, datasets)
        return q
    if key == "not":
        return ~_compile(value, datasets)
    if key == "age":
        q = Q()
        if "min" in value:
            q &= Q(age__gte=value["min"])
        if "max" in value:
            q &= Q(age__lte=value["max"])
        return q
    if key == "sex":
        return Q(sex__in=value)
    if key == "date":
        q = Q()
        if "from" in value:
            q &= Q(record_date__gte=value["from"])
        if "to" in value:
            q &= Q(record_date__lte=value["to"])
        return q
    if key == "document_type":
        return Q(document_type__in=value)
    if key == "condition":
        # A prefix is a range on the (dataset, system, code) index, on PostgreSQL and SQLite alike;
        # the few matching record ids are gathered once (a semi-join), not probed per record.
        codes = Q(pk__in=[])
        for prefix in value["prefixes"]:
            codes |= Q(code__gte=prefix, code__lt=prefix + "\uffff")
        matching = RecordCondition.objects.filter(system=value["system"]).filter(codes)
        if datasets is not None:
            matching = matching.filter(dataset_id__in=datasets)
        return Q(pk__in=matching.values("record_id"))
    raise CohortDefinitionError("$", f"unknown node {key!r}")  # unreachable after validation


def cohort_records(datasets: Iterable[Dataset], definition: dict):
    ids = [dataset.pk for dataset in datasets]
    queryset = Record.objects.filter(dataset_id__in=ids)
    return queryset.filter(_compile(definition, ids)) if definition else queryset


def cohort_counts(datasets: Iterable[Dataset], definition: dict) -> tuple[int, int]:
    """(records, distinct patients) matching the definition, in one query."""
    totals = cohort_records(datasets, definition).aggregate(records=Count("pk"), patients=Count("patient_id", distinct=True))
    return totals["records"], totals["patients"]


def disclosed_count(count: int, policy: DisclosurePolicy) -> dict:
    """What a researcher may see of a count: rounded to the base, small counts suppressed."""
    if count < policy.suppression_limit:
        return {"suppressed": True, "value": None, "display": f"fewer than {policy.suppression_limit}"}
    rounded = int(policy.rounding_base * math.floor(count / policy.rounding_base + 0.5))
    return {"suppressed": False, "value": rounded, "display": f"about {rounded}"}
