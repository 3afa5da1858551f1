"""The cohort filter language: every node type and combinator against a small known dataset, and
validation errors that name the path of the node at fault."""

from __future__ import annotations

from datetime import date

import pytest

from governance import services
from governance.cohorts import (
    CohortDefinitionError,
    cohort_counts,
    cohort_records,
    definition_hash,
    disclosed_count,
    validate_definition,
)
from governance.models import DisclosurePolicy
from tests import factories

# Five patients, seven records: (record, patient, sex, age, date, document type, conditions).
RECORDS = [
    ("a1", "a", "female", 25, date(2019, 3, 1), "discharge_summary", [("icd10", "E11.9"), ("snomed", "44054006")]),
    ("a2", "a", "female", 27, date(2021, 5, 1), "clinic_letter", [("icd10", "I10")]),
    ("b1", "b", "male", 40, date(2020, 1, 1), "clinic_letter", [("icd10", "E10.9")]),
    ("c1", "c", "female", 65, date(2022, 7, 15), "radiology_report", [("snomed", "38341003")]),
    ("c2", "c", "female", 66, date(2023, 1, 1), "discharge_summary", []),
    ("d1", "d", "male", 80, date(2018, 12, 31), "progress_note", [("icd10", "J44.9"), ("icd10", "I10")]),
    ("e1", "e", "other", 18, date(2020, 6, 30), "discharge_summary", [("icd10", "E11.65")]),
]
ALL = {row[0] for row in RECORDS}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def dataset(db):
    target = factories.dataset(name="known")
    sexes = {patient: sex for _, patient, sex, *_ in RECORDS}
    patients = [factories.patient_identity(key, sex=sex) for key, sex in sexes.items()]
    records = [
        factories.clinical_record(record_id, patient, age=age, record_date=day, document_type=kind, conditions=codes)
        for record_id, patient, _, age, day, kind, codes in RECORDS
    ]
    services.dataset_import_records(dataset=target, patients=patients, records=records, by=None, source="tests")
    return target


def _matching(dataset, definition) -> set[str]:
    normalised = validate_definition(definition, [dataset])
    return set(cohort_records([dataset], normalised).values_list("source_id", flat=True))


# Each node type ---------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize(("definition", "expected"), [
    pytest.param({}, ALL, id="empty-is-everything"),
    pytest.param({"age": {"min": 40}}, {"b1", "c1", "c2", "d1"}, id="age-min-inclusive"),
    pytest.param({"age": {"max": 25}}, {"a1", "e1"}, id="age-max-inclusive"),
    pytest.param({"age": {"min": 25, "max": 27}}, {"a1", "a2"}, id="age-range"),
    pytest.param({"sex": ["male"]}, {"b1", "d1"}, id="sex-one"),
    pytest.param({"sex": ["female", "other"]}, {"a1", "a2", "c1", "c2", "e1"}, id="sex-several"),
    pytest.param({"condition": {"system": "icd10", "prefixes": ["E11"]}}, {"a1", "e1"}, id="icd10-prefix"),
    pytest.param({"condition": {"system": "icd10", "prefixes": ["E1"]}}, {"a1", "b1", "e1"}, id="icd10-short-prefix"),
    pytest.param({"condition": {"system": "icd10", "prefixes": ["e11.6"]}}, {"e1"}, id="icd10-lowercase-dotted"),
    pytest.param({"condition": {"system": "icd10", "prefixes": ["I10", "J44"]}}, {"a2", "d1"}, id="icd10-two-prefixes"),
    pytest.param({"condition": {"system": "snomed", "prefixes": ["4405"]}}, {"a1"}, id="snomed-prefix"),
    pytest.param({"condition": {"system": "snomed", "prefixes": ["E11"]}}, set(), id="system-is-respected"),
    pytest.param({"date": {"from": "2020-01-01"}}, {"a2", "b1", "c1", "c2", "e1"}, id="date-from-inclusive"),
    pytest.param({"date": {"to": "2019-12-31"}}, {"a1", "d1"}, id="date-to-inclusive"),
    pytest.param({"date": {"from": "2020-01-01", "to": "2020-06-30"}}, {"b1", "e1"}, id="date-range"),
    pytest.param({"document_type": ["clinic_letter"]}, {"a2", "b1"}, id="document-type"),
])
def test_cohort_filter_node_matches_known_records(dataset, definition, expected):
    assert _matching(dataset, definition) == expected


@pytest.mark.django_db
@pytest.mark.parametrize(("definition", "expected"), [
    pytest.param({"all": [{"sex": ["female"]}, {"age": {"min": 60}}]}, {"c1", "c2"}, id="all"),
    pytest.param({"any": [{"condition": {"system": "icd10", "prefixes": ["I10"]}},
                          {"document_type": ["radiology_report"]}]}, {"a2", "c1", "d1"}, id="any"),
    pytest.param({"not": {"sex": ["female"]}}, {"b1", "d1", "e1"}, id="not"),
    pytest.param({"not": {"condition": {"system": "icd10", "prefixes": ["I10"]}}},
                 {"a1", "b1", "c1", "c2", "e1"}, id="not-condition"),
    pytest.param({"all": [{"any": [{"condition": {"system": "icd10", "prefixes": ["E11"]}},
                                   {"condition": {"system": "icd10", "prefixes": ["I10"]}}]},
                          {"not": {"age": {"max": 20}}}]}, {"a1", "a2", "d1"}, id="all-any-not"),
    pytest.param({"any": [{"all": [{"sex": ["male"]}, {"date": {"from": "2020-01-01"}}]},
                          {"all": [{"sex": ["other"]}, {"not": {"document_type": ["clinic_letter"]}}]}]},
                 {"b1", "e1"}, id="any-of-alls"),
    pytest.param({"not": {"not": {"sex": ["male"]}}}, {"b1", "d1"}, id="double-not"),
    pytest.param({"all": [{"sex": ["male"]}, {"sex": ["female"]}]}, set(), id="contradiction"),
])
def test_cohort_filter_combinators_match_known_records(dataset, definition, expected):
    assert _matching(dataset, definition) == expected


@pytest.mark.django_db
def test_cohort_counts_distinct_patients(dataset):
    assert cohort_counts([dataset], validate_definition({"sex": ["female"]}, [dataset])) == (4, 2)
    assert cohort_counts([dataset], {}) == (7, 5)


@pytest.mark.django_db
def test_cohort_filter_json_string_accepted(dataset):
    assert _matching(dataset, '{"sex": ["male"]}') == {"b1", "d1"}


@pytest.mark.django_db
def test_cohort_filter_spans_datasets(dataset):
    other = factories.dataset_with_patients(2, sex="male", ages=[90, 91])
    definition = validate_definition({"sex": ["male"]}, [dataset, other])
    assert cohort_counts([dataset, other], definition) == (4, 4)


@pytest.mark.django_db
def test_validate_definition_normalises(dataset):
    definition = {"all": [{"sex": ["male", "female", "male"]},
                          {"condition": {"system": "icd10", "prefixes": ["i10", "e11", "I10"]}},
                          {"date": {"from": "2020-01-01"}}]}
    assert validate_definition(definition, [dataset]) == {"all": [
        {"sex": ["female", "male"]},
        {"condition": {"system": "icd10", "prefixes": ["E11", "I10"]}},
        {"date": {"from": "2020-01-01"}},
    ]}


@pytest.mark.django_db
def test_definition_hash_ignores_dataset_order_and_key_order(dataset):
    other = factories.dataset_with_patients(1)
    one = definition_hash({"age": {"min": 1, "max": 2}}, [dataset, other])
    assert one == definition_hash({"age": {"max": 2, "min": 1}}, [other, dataset])
    assert one != definition_hash({"age": {"min": 1, "max": 3}}, [dataset, other])


# Validation errors name the path -----------------------------------------------------------------

ATTRIBUTES_HINT = ("the dataset's attributes are age, sex, condition, date, document_type "
                   "(combine them with all, any, not)")


@pytest.mark.django_db
@pytest.mark.parametrize(("definition", "path", "message"), [
    pytest.param({"weight": {"min": 1}}, "$.weight", f"unknown attribute 'weight'; {ATTRIBUTES_HINT}", id="unknown-attribute"),
    pytest.param({"all": [{"not": {"height": 1}}]}, "$.all[0].not.height",
                 f"unknown attribute 'height'; {ATTRIBUTES_HINT}", id="unknown-attribute-nested"),
    pytest.param({"all": [{"age": {"min": 5}}, {"sex": ["x"]}]}, "$.all[1].sex",
                 "a non-empty list drawn from female, male, other, unknown", id="bad-sex"),
    pytest.param({"any": []}, "$.any", "'any' takes a non-empty list of conditions", id="empty-any"),
    pytest.param({"all": {"sex": ["male"]}}, "$.all", "'all' takes a non-empty list of conditions", id="all-not-list"),
    pytest.param({"age": {"min": 5}, "sex": ["male"]}, "$",
                 'each condition is an object with exactly one key, e.g. {"age": {...}}', id="two-keys"),
    pytest.param([{"sex": ["male"]}], "$", 'each condition is an object with exactly one key, e.g. {"age": {...}}',
                 id="list-at-root"),
    pytest.param({"age": {"min": "18"}}, "$.age", "ages are whole numbers from 0 to 130", id="age-string"),
    pytest.param({"age": {"min": True}}, "$.age", "ages are whole numbers from 0 to 130", id="age-bool"),
    pytest.param({"age": {"max": 131}}, "$.age", "ages are whole numbers from 0 to 130", id="age-too-old"),
    pytest.param({"age": {"min": 80, "max": 18}}, "$.age", "reversed range: min 80 is above max 18", id="age-reversed"),
    pytest.param({"age": {"low": 1}}, "$.age", "unknown key(s) low; allowed: max, min", id="age-unknown-key"),
    pytest.param({"age": {}}, "$.age", "give at least one of max, min", id="age-empty"),
    pytest.param({"age": 18}, "$.age", "expected an object with keys max, min", id="age-not-object"),
    pytest.param({"condition": {"system": "loinc", "prefixes": ["1"]}}, "$.condition",
                 "unknown code system 'loinc'; use one of icd10, snomed", id="condition-system"),
    pytest.param({"condition": {"system": "icd10"}}, "$.condition", "missing key(s) prefixes", id="condition-missing"),
    pytest.param({"condition": {"system": "icd10", "prefixes": ["E11%"]}}, "$.condition",
                 'prefixes is a non-empty list of code prefixes such as "E11" or "4405"', id="condition-wildcard"),
    pytest.param({"condition": {"system": "icd10", "prefixes": []}}, "$.condition",
                 'prefixes is a non-empty list of code prefixes such as "E11" or "4405"', id="condition-empty"),
    pytest.param({"date": {"from": "01/02/2020"}}, "$.date", "'from' must be a date like 2020-01-31, not '01/02/2020'",
                 id="date-format"),
    pytest.param({"date": {"from": "2024-01-01", "to": "2020-01-01"}}, "$.date",
                 "reversed date range: 2024-01-01 is after 2020-01-01", id="date-reversed"),
    pytest.param({"not": {"document_type": ["operative_note"]}}, "$.not.document_type",
                 "document type(s) operative_note do not occur in the dataset(s); known: clinic_letter, "
                 "discharge_summary, progress_note, radiology_report", id="document-type-absent"),
    pytest.param('{"age": {"min": 18}', "$", "not valid JSON (Expecting ',' delimiter at line 1 column 20)",
                 id="malformed-json"),
])
def test_validate_definition_error_names_path(dataset, definition, path, message):
    with pytest.raises(CohortDefinitionError) as error:
        validate_definition(definition, [dataset])
    assert (error.value.path, error.value.message) == (path, message)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.django_db
def test_validate_definition_too_deep_names_path(dataset):
    definition: dict = {"sex": ["male"]}
    for _ in range(9):
        definition = {"not": definition}
    with pytest.raises(CohortDefinitionError) as error:
        validate_definition(definition, [dataset])
    assert (error.value.path, error.value.message) == ("$" + ".not" * 9, "nesting deeper than 8 levels")


@pytest.mark.django_db
def test_validate_definition_eight_levels_accepted(dataset):
    definition: dict = {"sex": ["male"]}
    for _ in range(8):
        definition = {"not": definition}
    assert _matching(dataset, definition) == {"b1", "d1"}


@pytest.mark.django_db
def test_validate_definition_too_many_conditions_names_path(dataset):
    with pytest.raises(CohortDefinitionError) as error:
        validate_definition({"any": [{"sex": ["male"]}] * 200}, [dataset])
    assert (error.value.path, error.value.message) == ("$.any[199]", "the definition has more than 200 conditions")


@pytest.mark.django_db
def test_validate_definition_no_datasets_refused():
    with pytest.raises(CohortDefinitionError) as error:
        validate_definition({"sex": ["male"]}, [])
    assert str(error.value) == "$: choose at least one dataset"


# Disclosure of counts -----------------------------------------------------------------------------

@pytest.mark.parametrize(("count", "shown"), [
    (0, None), (9, None), (10, 10), (11, 10), (12, 10), (13, 15), (17, 15), (18, 20), (102, 100), (103, 105),
])
def test_disclosed_count_rounds_and_suppresses(count, shown):
    policy = DisclosurePolicy(version=1, rounding_base=5, suppression_limit=10)
    expected = ({"suppressed": True, "value": None, "display": "fewer than 10"} if shown is None
                else {"suppressed": False, "value": shown, "display": f"about {shown}"})
    assert disclosed_count(count, policy) == expected
