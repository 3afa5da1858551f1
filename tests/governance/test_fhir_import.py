"""FHIR R4 bundle import: round trips through the generator, Synthea-shaped fixtures, malformed input."""

from __future__ import annotations

import base64
import copy
import json
from datetime import date
from pathlib import Path

import fhir.resources.R4B
import pytest

from governance.importers.fhir import (
    FHIR_PACKAGE,
    FhirImportError,
    ParsedBundle,
    parse_bundle,
    parse_bundle_file,
)
from governance.records import PatientIdentity
from governance.synthetic import generate_hospital, write_fhir_bundles

FIXTURES = Path(__file__).parent / "fixtures"


# These tests are Django-free. tests/conftest.py (when present) has autouse fixtures that need
# pytest-django (settings, cache); shadow them so this module also runs under ``-p no:django``.
@pytest.fixture(autouse=True)
def _isolated_storage():
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    yield


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


@pytest.fixture(scope="module")
def hospital():
    return generate_hospital(60, seed=2024)


def small_bundle(bundle_type: str = "collection") -> dict:
    """One patient, one encounter, one coded condition, one letter (urn:uuid references)."""
    entries = [
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "id": "p-1", "birthDate": "1980-06-15", "gender": "male",
                      "identifier": [{"system": "https://hospital.example.org/mrn", "value": "MRN7000001"}],
                      "name": [{"family": "Okafor", "given": ["Femi"]}]}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Encounter", "id": "e-1", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"}}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000003",
         "resource": {"resourceType": "Condition", "id": "c-1",
                      "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
                      "subject": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"},
                      "encounter": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"}}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000004",
         "resource": {"resourceType": "DocumentReference", "id": "doc-1", "status": "current",
                      "date": "2021-06-14T10:00:00Z",
                      "subject": {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"},
                      "context": {"encounter": [{"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"}]},
                      "content": [{"attachment": {"contentType": "text/plain", "data": b64("Dear Dr Shah,\n")}}]}},
    ]
    bundle = {"resourceType": "Bundle", "type": bundle_type, "entry": entries}
    if bundle_type == "transaction":
        for e in entries:
            e["request"] = {"method": "POST", "url": e["resource"]["resourceType"]}
    return bundle


def raises(data, *, match: str) -> FhirImportError:
    with pytest.raises(FhirImportError, match=match) as info:
        parse_bundle(data, source="test.json")
    return info.value


# -- library choice -------------------------------------------------------------------------------


def test_fhir_package_is_r4b():
    assert FHIR_PACKAGE == "fhir.resources.R4B"
    assert fhir.resources.R4B.__fhir_version__.startswith("4.")


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle_type", ["transaction", "collection", "searchset"])
def test_parse_bundle_round_trip_equals_source(tmp_path, hospital, bundle_type):
    paths = write_fhir_bundles(hospital, tmp_path, per_bundle=25, bundle_type=bundle_type)
    assert len(paths) == 3
    patients, records = [], []
    for path in paths:
        parsed = parse_bundle_file(path)
        assert parsed.bundle_type == bundle_type and parsed.source == str(path)
        assert parsed.skipped == ()
        patients.extend(parsed.patients)
        records.extend(parsed.records)
    assert tuple(patients) == hospital.patients
    assert tuple(records) == hospital.records


def test_parse_bundle_accepts_bytes_str_and_dict(tmp_path, hospital):
    path = write_fhir_bundles(hospital, tmp_path, per_bundle=5)[0]
    raw = path.read_bytes()
    a = parse_bundle(raw, source="x")
    assert a == parse_bundle(raw.decode("utf-8"), source="x") == parse_bundle(json.loads(raw), source="x")
    assert isinstance(a, ParsedBundle) and len(a.patients) == 5


# -- Synthea-shaped transaction fixture ----------------------------------------------------------------


def test_parse_bundle_synthea_patient_identifiers():
    parsed = parse_bundle_file(FIXTURES / "synthea_transaction.json")
    assert parsed.patients == (PatientIdentity(
        key="5cbc121b-cd71-4428-b8b7-31e53eba8184", mrn="7f3e1a50-4a8e-4d8b-9f6e-2b2f3c1d9a10",
        given="Ada662", family="Dicki44", birth_date=date(1962, 10, 30), sex="female",
        phone="555-736-1244", national_id="999-58-2323"),)


def test_parse_bundle_synthea_records_and_conditions():
    parsed = parse_bundle_file(FIXTURES / "synthea_transaction.json")
    first, second = parsed.records
    assert first.record_id == "d1a90000-0000-4000-8000-000000000002"  # DiagnosticReport note
    assert first.record_date == date(2019, 2, 12) and first.age_at_record == 56
    assert first.document_type == "progress_note"
    # prediabetes (no encounter, onset 2018) then hypertension (same encounter)
    assert first.conditions == (("snomed", "15777000"), ("snomed", "59621000"))
    assert first.text.startswith("2019-02-12\n\n# Chief Complaint")
    # second note: its subject is a conditional reference on the MRN
    assert second.record_id == "d0c00000-0000-4000-8000-000000000002"
    assert second.record_date == date(2020, 6, 3) and second.age_at_record == 57
    assert second.conditions == (("snomed", "15777000"), ("snomed", "10509002"), ("icd10", "J20.9"))
    assert "acute bronchitis" in second.text


def test_parse_bundle_synthea_skipped_with_reasons():
    parsed = parse_bundle_file(FIXTURES / "synthea_transaction.json")
    skipped = {s.entry_index: (s.resource_type, s.reason) for s in parsed.skipped}
    assert set(skipped) == {5, 7, 10, 12}
    assert skipped[5][0] == "DiagnosticReport" and "presentedForm" in skipped[5][1]
    assert skipped[7][0] == "DocumentReference" and "duplicate" in skipped[7][1]
    assert skipped[10][0] == "Condition" and "refuted" in skipped[10][1]
    assert skipped[12][0] == "DocumentReference" and "image/png" in skipped[12][1]


# -- searchset fixture: relative/absolute/identifier references, charset, abatement -------------------


def test_parse_bundle_searchset_patients():
    parsed = parse_bundle_file(FIXTURES / "searchset_nhs.json")
    p1, p2 = parsed.patients
    assert (p1.key, p1.mrn, p1.national_id, p1.phone) == ("p1", "M0001187", "9990000018", "0117 496 0123")
    assert (p1.given, p1.family) == ("Chloë Anne", "Brontë-Nuñez")  # the official name, not the usual one
    assert (p2.key, p2.mrn, p2.national_id, p2.sex) == ("p2", "M0004412", "9990000026", "male")
    assert p2.birth_date == date(1948, 1, 1)  # partial birthDate "1948"


def test_parse_bundle_searchset_records():
    parsed = parse_bundle_file(FIXTURES / "searchset_nhs.json")
    letter, report, note = parsed.records
    assert (letter.record_id, letter.patient_key, letter.document_type) == ("letter-1", "p1", "clinic_letter")
    assert "Chloë Brontë-Nuñez" in letter.text and "m²" in letter.text  # iso-8859-1 decoded
    assert letter.conditions == (("icd10", "N18.3"), ("snomed", "433144002"))  # within onset..abatement
    assert (report.document_type, report.record_date, report.conditions) == ("radiology_report", date(2022, 5, 5), ())
    assert (note.patient_key, note.record_date, note.age_at_record) == ("p2", date(2021, 11, 11), 73)
    reasons = {s.entry_index: s.reason for s in parsed.skipped}
    assert reasons == {3: "no ICD-10 or SNOMED CT coding", 7: "search outcome entry"}


# -- malformed fixtures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "entry_index", "reason"), [
    ("bad_invalid_json.json", None, "invalid JSON"),
    ("bad_not_a_bundle.json", None, "not a Bundle"),
    ("bad_unsupported_type.json", None, "unsupported bundle type 'batch-response'"),
    ("bad_invalid_resource.json", 0, "invalid Patient: birthDate"),
    ("bad_dangling_reference.json", 1, "dangling reference in subject"),
    ("bad_base64.json", 1, "not valid base64"),
    ("bad_ambiguous_conditional.json", 2, "ambiguous conditional reference"),
    ("bad_missing_subject.json", 1, "missing subject"),
])
def test_parse_bundle_malformed_fixture_raises(name, entry_index, reason):
    with pytest.raises(FhirImportError) as info:
        parse_bundle_file(FIXTURES / name)
    err = info.value
    assert err.entry_index == entry_index
    assert reason in err.reason
    assert str(FIXTURES / name) in str(err)
    if entry_index is not None:
        assert f"entry {entry_index} (" in str(err) and "urn:uuid:" in str(err)


def test_fhir_import_error_message_names_entry():
    err = FhirImportError(3, "DocumentReference", "bad things", full_url="urn:uuid:x", source="s.json")
    assert str(err) == "s.json: entry 3 (DocumentReference urn:uuid:x): bad things"
    assert (err.entry_index, err.resource_type, err.reason) == (3, "DocumentReference", "bad things")


# -- further error cases (built in code) ----------------------------------------------------------------


def test_parse_bundle_small_bundle_parses():
    parsed = parse_bundle(small_bundle(), source="t")
    (record,) = parsed.records
    assert record.conditions == (("icd10", "I10"),) and record.age_at_record == 40


def test_parse_bundle_one_bad_entry_among_many_raises(tmp_path, hospital):
    bundle = json.loads(write_fhir_bundles(hospital, tmp_path, per_bundle=60)[0].read_text())
    last_doc = max(i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "DocumentReference")
    bundle["entry"][last_doc]["resource"]["content"][0]["attachment"]["data"] = "not*base64"
    err = raises(bundle, match="not valid base64")
    assert err.entry_index == last_doc


def test_parse_bundle_unknown_resource_type_raises():
    bundle = small_bundle()
    bundle["entry"].append({"resource": {"resourceType": "Spaceship", "id": "x"}})
    assert raises(bundle, match="unknown resource type 'Spaceship'").entry_index == 4


def test_parse_bundle_transaction_without_request_raises():
    bundle = small_bundle("transaction")
    del bundle["entry"][2]["request"]
    assert raises(bundle, match="no request").entry_index == 2


def test_parse_bundle_transaction_delete_raises():
    bundle = small_bundle("transaction")
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Patient/old"}})
    assert raises(bundle, match="DELETE is not supported").entry_index == 4


def test_parse_bundle_relative_reference_dangling_raises():
    bundle = small_bundle()
    bundle["entry"][2]["resource"]["encounter"] = {"reference": "Encounter/nowhere"}
    assert raises(bundle, match="dangling reference in encounter").entry_index == 2


def test_parse_bundle_relative_reference_resolves_by_type_and_id():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["subject"] = {"reference": "Patient/p-1"}
    assert parse_bundle(bundle, source="t").records[0].patient_key == "p-1"


def test_parse_bundle_conditional_reference_without_match_raises():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["subject"] = {"reference": "Patient?identifier=https://hospital.example.org/mrn|NOPE"}
    raises(bundle, match="matches no resource")


def test_parse_bundle_conditional_reference_unsupported_parameter_raises():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["subject"] = {"reference": "Patient?name=Okafor"}
    raises(bundle, match="unsupported search parameter 'name'")


def test_parse_bundle_subject_not_patient_raises():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["subject"] = {"reference": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002"}
    raises(bundle, match="refers to a Encounter, not a Patient")


def test_parse_bundle_text_not_in_charset_raises():
    bundle = small_bundle()
    attachment = bundle["entry"][3]["resource"]["content"][0]["attachment"]
    attachment["data"] = base64.b64encode(b"caf\xe9").decode()  # latin-1 bytes declared as UTF-8
    raises(bundle, match="not valid utf-8")


def test_parse_bundle_hash_mismatch_raises():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["content"][0]["attachment"]["hash"] = base64.b64encode(b"\0" * 20).decode()
    raises(bundle, match="hash does not match")


def test_parse_bundle_record_before_birth_raises():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["date"] = "1979-01-01T00:00:00Z"
    raises(bundle, match="before the patient's birth date")


def test_parse_bundle_patient_without_birth_date_raises():
    bundle = small_bundle()
    del bundle["entry"][0]["resource"]["birthDate"]
    assert raises(bundle, match="no birthDate").entry_index == 0


def test_parse_bundle_duplicate_full_url_raises():
    bundle = small_bundle()
    duplicate = copy.deepcopy(bundle["entry"][2])
    duplicate["resource"]["id"] = "c-2"
    bundle["entry"].append(duplicate)
    raises(bundle, match="duplicate fullUrl")


def test_parse_bundle_url_only_attachment_skipped():
    bundle = small_bundle()
    bundle["entry"][3]["resource"]["content"][0]["attachment"] = {"contentType": "text/plain",
                                                                 "url": "https://x.example/Binary/1"}
    parsed = parse_bundle(bundle, source="t")
    assert parsed.records == () and "no inline data" in parsed.skipped[0].reason


def test_parse_bundle_condition_without_encounter_uses_onset():
    bundle = small_bundle()
    cond = bundle["entry"][2]["resource"]
    del cond["encounter"]
    cond["onsetDateTime"] = "2022-01-01"  # after the letter: not attached
    assert parse_bundle(bundle, source="t").records[0].conditions == ()
    cond["onsetDateTime"] = "2020-01-01"
    assert parse_bundle(bundle, source="t").records[0].conditions == (("icd10", "I10"),)


def test_parse_bundle_non_object_raises():
    assert raises("[1, 2]", match="expected a JSON object").entry_index is None
