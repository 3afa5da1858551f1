"""Synthetic hospital generator: determinism, identifiers, codes, ages, FHIR export. Django-free."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from governance.records import (
    CONDITION_SYSTEMS,
    NOTE_TYPES,
    age_on,
    format_nhs_number,
    identifier_surface_forms,
    is_valid_icd10,
    is_valid_nhs_number,
    is_valid_snomed,
    verhoeff_valid,
)
from governance.synthetic import (
    CONDITIONS,
    MRN_SYSTEM,
    generate_hospital,
    synthetic_corpus,
    write_fhir_bundles,
)

PHONE_RE = re.compile(r"^(07700 900\d{3}|020 7946 0\d{3}|01(13|21|31|61) 496 0\d{3}|0191 498 0\d{3})$")


# These tests are Django-free. tests/conftest.py (when present) has autouse fixtures that need
# pytest-django (settings, cache); shadow them so this module also runs under ``-p no:django``.
@pytest.fixture(autouse=True)
def _isolated_storage():
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    yield


@pytest.fixture(scope="module")
def hospital():
    return generate_hospital(150, seed=1234)


def test_generate_hospital_same_seed_equal():
    assert generate_hospital(40, seed=5) == generate_hospital(40, seed=5)


def test_generate_hospital_different_seed_differs():
    a, b = generate_hospital(40, seed=5), generate_hospital(40, seed=6)
    assert a.patients != b.patients
    assert [r.text for r in a.records] != [r.text for r in b.records]


def test_generate_hospital_global_random_untouched():
    random.seed(99)
    before = random.getstate()
    generate_hospital(10, seed=1)
    assert random.getstate() == before


def test_generate_hospital_zero_patients_empty():
    h = generate_hospital(0, seed=1)
    assert h.patients == () and h.records == ()


def test_generate_hospital_negative_patients_rejected():
    with pytest.raises(ValueError):
        generate_hospital(-1, seed=1)


def test_generate_hospital_records_per_patient_between_one_and_eight(hospital):
    counts = {p.key: 0 for p in hospital.patients}
    for r in hospital.records:
        counts[r.patient_key] += 1
    assert all(1 <= n <= 8 for n in counts.values())
    assert len(set(counts.values())) >= 5  # a spread, not a constant


def test_generate_hospital_ids_unique_and_shaped(hospital):
    keys = [p.key for p in hospital.patients]
    assert keys == [f"pat-{i:06d}" for i in range(1, len(keys) + 1)]
    ids = [r.record_id for r in hospital.records]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"doc-\d{7}", i) for i in ids)


def test_generate_hospital_identifiers_valid_and_unique(hospital):
    mrns = [p.mrn for p in hospital.patients]
    nhs = [p.national_id for p in hospital.patients]
    assert len(set(mrns)) == len(mrns) and len(set(nhs)) == len(nhs)
    for p in hospital.patients:
        assert re.fullmatch(r"MRN\d{7}", p.mrn)
        assert p.national_id.startswith("999") and is_valid_nhs_number(p.national_id)
        assert PHONE_RE.match(p.phone), p.phone
        assert p.sex in ("female", "male")
        assert p.given and p.family


def test_generate_hospital_text_contains_identifiers(hospital):
    by_key = {p.key: p for p in hospital.patients}
    for r in hospital.records:
        p = by_key[r.patient_key]
        assert p.mrn in r.text
        assert p.family.lower() in r.text.lower()
        assert p.national_id in r.text or format_nhs_number(p.national_id) in r.text
        if r.document_type in ("clinic_letter", "discharge_summary"):
            assert p.phone in r.text
            assert p.birth_date.strftime("%d/%m/%Y") in r.text
        assert any(form in r.text for form in identifier_surface_forms(p))


def test_generate_hospital_text_contains_condition_codes(hospital):
    for r in hospital.records:
        assert r.conditions, r.record_id
        for system, code in r.conditions:
            assert code in r.text, (r.record_id, code)


def test_generate_hospital_codes_valid_format(hospital):
    for r in hospital.records:
        assert len(set(r.conditions)) == len(r.conditions)
        for system, code in r.conditions:
            assert system in CONDITION_SYSTEMS
            assert is_valid_icd10(code) if system == "icd10" else is_valid_snomed(code), code


def test_generate_hospital_age_consistent_with_birth_date(hospital):
    by_key = {p.key: p for p in hospital.patients}
    for r in hospital.records:
        birth = by_key[r.patient_key].birth_date
        assert r.age_at_record == age_on(birth, r.record_date)
        assert 18 <= r.age_at_record <= 110
        assert hospital.start <= r.record_date <= hospital.end


def test_generate_hospital_records_in_date_order_per_patient(hospital):
    last: dict[str, date] = {}
    for r in hospital.records:
        assert r.record_date >= last.get(r.patient_key, date.min)
        last[r.patient_key] = r.record_date


def test_generate_hospital_all_document_types_present(hospital):
    assert {r.document_type for r in hospital.records} == set(NOTE_TYPES)


def test_generate_hospital_text_reads_like_notes(hospital):
    words = [len(r.text.split()) for r in hospital.records]
    assert max(words) <= 450 and min(words) >= 40
    texts = {t: "\n".join(r.text for r in hospital.records if r.document_type == t) for t in NOTE_TYPES}
    assert "Dear Dr" in texts["clinic_letter"] and "Yours sincerely" in texts["clinic_letter"]
    assert "Impression" in texts["radiology_report"] and "Findings" in texts["radiology_report"]
    assert "Microscopy" in texts["pathology_report"] and "Conclusion" in texts["pathology_report"]
    assert "Procedure" in texts["operative_note"] and "Anaesthetic" in texts["operative_note"]
    assert re.search(r"[Mm]edication", texts["discharge_summary"])
    assert re.search(r"\b\d+(\.\d+)? (mg|g|micrograms)\b.*\b(BD|OD|TDS|QDS|twice daily|once daily|at night)\b",
                     texts["discharge_summary"])
    assert re.search(r"BP \d{2,3}/\d{2,3}", texts["progress_note"])


def test_generate_hospital_custom_window_respected():
    h = generate_hospital(30, seed=3, start=date(2020, 1, 1), end=date(2020, 3, 31))
    assert h.records
    assert all(date(2020, 1, 1) <= r.record_date <= date(2020, 3, 31) for r in h.records)


def test_conditions_catalogue_valid_and_unique():
    assert len(CONDITIONS) >= 40
    assert len({c.icd10 for c in CONDITIONS}) == len(CONDITIONS)
    assert len({c.snomed for c in CONDITIONS}) == len(CONDITIONS)
    for c in CONDITIONS:
        assert is_valid_icd10(c.icd10) and is_valid_snomed(c.snomed), c.key
    required = {("E11.9", "44054006"), ("I10", "38341003"), ("J44.9", "13645005"), ("I50.9", "84114007"),
                ("I48.9", "49436004"), ("J18.9", "233604007")}
    assert required <= {(c.icd10, c.snomed) for c in CONDITIONS}


def test_verhoeff_known_values_checked():
    assert verhoeff_valid("2363") and not verhoeff_valid("2364")
    assert is_valid_snomed("22298006") and not is_valid_snomed("22298007")


def test_nhs_number_check_digit_validated():
    assert is_valid_nhs_number("9990000018") and is_valid_nhs_number("999 000 0018")
    assert not is_valid_nhs_number("9990000019")


def test_synthetic_corpus_yields_record_texts(hospital):
    assert list(synthetic_corpus(hospital)) == [r.text for r in hospital.records]


def test_generate_hospital_2000_patients_fast():
    started = time.perf_counter()
    h = generate_hospital(2000, seed=42)
    elapsed = time.perf_counter() - started
    assert len(h.patients) == 2000
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_write_fhir_bundles_same_seed_byte_identical(tmp_path):
    a = write_fhir_bundles(generate_hospital(30, seed=8), tmp_path / "a", per_bundle=10)
    b = write_fhir_bundles(generate_hospital(30, seed=8), tmp_path / "b", per_bundle=10)
    assert [p.name for p in a] == [p.name for p in b] == [f"transaction-{i:04d}.json" for i in (1, 2, 3)]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_write_fhir_bundles_transaction_shape(tmp_path, hospital):
    path = write_fhir_bundles(hospital, tmp_path, per_bundle=5, bundle_type="transaction")[0]
    bundle = json.loads(path.read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    entries = bundle["entry"]
    assert all(e["fullUrl"].startswith("urn:uuid:") and e["request"]["method"] == "POST" for e in entries)
    patients = [e for e in entries if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == 5
    first = patients[0]
    assert first["request"]["ifNoneExist"] == f"identifier={MRN_SYSTEM}|{hospital.patients[0].mrn}"
    mr = [i for i in first["resource"]["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code") == "MR"]
    assert mr and mr[0]["value"] == hospital.patients[0].mrn
    full_urls = {e["fullUrl"] for e in entries}
    types = {e["resource"]["resourceType"] for e in entries}
    assert {"Patient", "Encounter", "Condition"} <= types and types & {"DocumentReference", "DiagnosticReport"}
    for e in entries:
        subject = e["resource"].get("subject")
        if subject:
            assert subject["reference"] in full_urls
    conditions = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Condition"]
    systems = {c["system"] for cond in conditions for c in cond["code"]["coding"]}
    assert systems == {"http://hl7.org/fhir/sid/icd-10", "http://snomed.info/sct"}


def test_write_fhir_bundles_searchset_relative_references(tmp_path, hospital):
    bundle = json.loads(write_fhir_bundles(hospital, tmp_path, per_bundle=3, bundle_type="searchset")[0].read_text())
    assert bundle["type"] == "searchset" and bundle["total"] == 3
    for e in bundle["entry"]:
        assert e["fullUrl"].startswith("https://") and "request" not in e
        assert e["search"]["mode"] == ("match" if e["resource"]["resourceType"] == "Patient" else "include")
        subject = e["resource"].get("subject")
        if subject:
            assert re.fullmatch(r"Patient/pat-\d{6}", subject["reference"])


def test_write_fhir_bundles_reports_use_presented_form(tmp_path, hospital):
    entries = [e["resource"] for p in write_fhir_bundles(hospital, tmp_path, bundle_type="collection")
               for e in json.loads(p.read_text())["entry"]]
    reports = [r for r in entries if r["resourceType"] == "DiagnosticReport"]
    docs = [r for r in entries if r["resourceType"] == "DocumentReference"]
    n_reports = sum(r.document_type in ("radiology_report", "pathology_report") for r in hospital.records)
    assert len(reports) == n_reports and len(docs) == len(hospital.records) - n_reports
    assert all(r["presentedForm"][0]["contentType"].startswith("text/plain") for r in reports)
    assert all(d["content"][0]["attachment"]["contentType"].startswith("text/plain") for d in docs)


def test_write_fhir_bundles_unknown_type_rejected(tmp_path, hospital):
    with pytest.raises(ValueError, match="bundle_type"):
        write_fhir_bundles(hospital, tmp_path, bundle_type="batch")


def test_write_fhir_bundles_identical_across_processes(tmp_path):
    """No hash-order or clock dependence: two interpreters with different hash seeds agree."""
    script = (
        "import hashlib, sys\n"
        "from governance.synthetic import generate_hospital, write_fhir_bundles\n"
        "h = generate_hospital(25, seed=3)\n"
        "digest = hashlib.sha256(repr(h).encode())\n"
        "for p in write_fhir_bundles(h, sys.argv[1], per_bundle=10):\n"
        "    digest.update(p.read_bytes())\n"
        "print(digest.hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / hash_seed)], cwd=root, env=env,
                                capture_output=True, text=True, check=True)
        outputs.append(result.stdout.strip())
    assert outputs[0] == outputs[1] and len(outputs[0]) == 64
