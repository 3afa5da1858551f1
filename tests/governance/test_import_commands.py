"""The import commands: the synthetic hospital is idempotent per seed; FHIR bundles import all or nothing."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from governance.models import Dataset, Patient, Record, RecordCondition
from governance.synthetic import generate_hospital, write_fhir_bundles
from portal.models import AuditEvent
from tests import factories

DANGLING = "urn:uuid:00000000-0000-4000-8000-00000000dead"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def _stored_files(settings) -> list:
    return sorted(p for p in settings.DATA_ROOT.rglob("*") if p.is_file())


@pytest.mark.django_db
def test_generate_synthetic_hospital_twice_adds_nothing(settings):
    factories.steward()
    hospital = generate_hospital(6, 11)
    first = _run("generate_synthetic_hospital", patients=6, seed=11, dataset="synth")
    counts = (Patient.objects.count(), Record.objects.count(), RecordCondition.objects.count())
    files = _stored_files(settings)

    second = _run("generate_synthetic_hospital", patients=6, seed=11, dataset="synth")

    n = len(hospital.records)
    assert first == f"synth: 6 patients and {n} records added, 0 already present.\n"
    assert second == f"synth: 0 patients and 0 records added, {n} already present.\n"
    assert counts == (6, n, sum(len(set(r.conditions)) for r in hospital.records))
    assert (Patient.objects.count(), Record.objects.count(), RecordCondition.objects.count()) == counts
    assert _stored_files(settings) == files
    assert Dataset.objects.get(name="synth").modality == "text"


@pytest.mark.django_db
def test_generate_synthetic_hospital_without_steward_fails():
    with pytest.raises(CommandError) as error:
        _run("generate_synthetic_hospital", patients=2)
    assert str(error.value) == ("No data steward exists yet: create one (make demo seeds one) or pass --steward EMAIL.")
    assert Dataset.objects.count() == 0


@pytest.mark.django_db
def test_import_fhir_written_bundles_imported(tmp_path):
    factories.steward()
    hospital = generate_hospital(6, 5)
    paths = write_fhir_bundles(hospital, tmp_path / "fhir", per_bundle=3)
    assert len(paths) == 2

    output = _run("import_fhir", str(tmp_path / "fhir"), dataset="fhir-notes")

    n = len(hospital.records)
    assert output.endswith(f"fhir-notes: 6 patients and {n} records added, 0 already present, 0 entries skipped.\n")
    dataset = Dataset.objects.get(name="fhir-notes")
    assert set(Record.objects.filter(dataset=dataset).values_list("source_id", flat=True)) == {
        r.record_id for r in hospital.records}
    for generated in hospital.records:
        stored = Record.objects.get(dataset=dataset, source_id=generated.record_id)
        assert (stored.record_date, stored.age, stored.document_type) == (
            generated.record_date, generated.age_at_record, generated.document_type)
        assert set(stored.conditions.values_list("system", "code")) == set(generated.conditions)
    again = _run("import_fhir", *[str(p) for p in paths], dataset="fhir-notes")
    assert again.endswith(f"fhir-notes: 0 patients and 0 records added, {n} already present, 0 entries skipped.\n")


@pytest.mark.django_db
def test_import_fhir_dangling_reference_imports_nothing(tmp_path, settings):
    factories.steward()
    folder = tmp_path / "fhir"
    good, bad = write_fhir_bundles(generate_hospital(4, 8), folder, per_bundle=2)
    bundle = json.loads(bad.read_text())
    index, entry = next((i, e) for i, e in enumerate(bundle["entry"])
                        if e["resource"]["resourceType"] == "DocumentReference")
    entry["resource"]["subject"]["reference"] = DANGLING
    bad.write_text(json.dumps(bundle))
    events = AuditEvent.objects.count()

    with pytest.raises(CommandError) as error:
        _run("import_fhir", str(folder), dataset="fhir-notes")

    assert str(error.value) == (
        f"Nothing imported. {bad}: entry {index} (DocumentReference {entry['fullUrl']}): dangling reference in "
        f"subject: '{DANGLING}' does not resolve to a resource in this bundle"
    )
    assert not Dataset.objects.filter(name="fhir-notes").exists()
    assert (Patient.objects.count(), Record.objects.count()) == (0, 0)
    assert AuditEvent.objects.count() == events
    assert _stored_files(settings) == []
