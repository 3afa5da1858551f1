"""The DICOM importer and the synthetic imaging generator.

The folder under test holds pydicom's own test files: some as shipped (each skipped for its own
reason), some completed with the birth date the importer needs (none of pydicom's files has one),
plus a non-DICOM file, a zero-byte file, a truncated copy, a duplicate and report files.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import warnings
from io import StringIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command
from pydicom.data import get_testdata_file

from governance.importers.dicom import NATIVE_TRANSFER_SYNTAXES, DicomImportError, parse_dicom_folder
from governance.models import Dataset, DirectIdentifier, Patient, Record
from governance.synthetic_imaging import (
    QUADRANTS,
    generate_imaging,
    synthetic_images,
    synthetic_reports,
    write_dicom_tree,
)
from portal.models import AuditEvent
from tests import factories

BIRTH = "19500101"
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
SUPPORTED = ("supported: Implicit VR Little Endian, Explicit VR Little Endian, Deflated Explicit VR Little Endian, "
             "Explicit VR Big Endian, RLE Lossless")
CT_REPORT = "CT abdomen. Findings: no focal liver lesion. Impression: normal study."
MR_REPORT = "MRI. Findings: small T2 hyperintense focus. Impression: likely benign."
DFL_REPORT = "Secondary capture reviewed. No abnormality."


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _read(data_or_path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
        return pydicom.dcmread(source)


def shipped(name: str, dest: Path) -> Path:
    """A copy of one of pydicom's test files, byte for byte."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(get_testdata_file(name), dest)
    return dest


def completed(name: str, dest: Path, *, uid_suffix: str, **changes) -> Path:
    """pydicom's test file with a birth date (and ``changes``), a SOP Instance UID of its own,
    written in its original transfer syntax."""
    ds = _read(get_testdata_file(name))
    ds.PatientBirthDate = BIRTH
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{uid_suffix}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def diagnostic_report(text: str, *, study_uid: str | None = None, accession: str | None = None) -> dict:
    identifiers = []
    if study_uid:
        identifiers.append({"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"})
    if accession:
        identifiers.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]}, "value": accession})
    return {"resourceType": "DiagnosticReport", "status": "final", "identifier": identifiers,
            "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
            "presentedForm": [{"contentType": "text/plain; charset=utf-8",
                               "data": base64.b64encode(text.encode()).decode()}]}


def pydicom_folder(root: Path) -> dict[str, tuple[str, str]]:
    """Write the test folder; returns every file's expected (status, reason) for a vision-language import."""
    # Importable, one per natively decoded transfer syntax.
    completed("CT_small.dcm", root / "ct" / "CT_small.dcm", uid_suffix="1")  # Explicit VR Little Endian
    (root / "ct" / f"{CT_STUDY}.txt").write_text(CT_REPORT + "\n")
    (root / "ct" / "README.txt").write_text("Exported from the PACS.\n")
    completed("MR_small_implicit.dcm", root / "mr" / "series" / "implicit.dcm", uid_suffix="2")
    completed("MR_small_bigendian.dcm", root / "mr" / "series" / "bigendian.dcm", uid_suffix="3")
    completed("MR_small_RLE.dcm", root / "mr" / "series" / "rle.dcm", uid_suffix="4")
    (root / "mr" / "report.json").write_text(json.dumps(diagnostic_report(MR_REPORT, study_uid=MR_STUDY)))
    (root / "mr" / "dicom-metadata.json").write_text(json.dumps({"00100010": {"vr": "PN"}}))
    completed("image_dfl.dcm", root / "other" / "deflated.dcm", uid_suffix="5", PatientID="DFL1",
              PatientName="Deflated^Test", StudyDate="20200301", AccessionNumber="ACC0042")
    (root / "other" / "ACC0042.txt").write_text(DFL_REPORT)
    completed("MR_small.dcm", root / "unreported" / "MR_small.dcm", uid_suffix="6", StudyInstanceUID=f"{MR_STUDY}.9")
    (root / "unreported" / f"{MR_STUDY}.9.txt").write_text("  \n")  # an empty report is no report
    # Broken or unsupported copies.
    (root / "dup").mkdir()
    shutil.copyfile(root / "ct" / "CT_small.dcm", root / "dup" / "CT_small.dcm")
    cut = (root / "ct" / "CT_small.dcm").read_bytes()[:20000]
    (root / "junk").mkdir()
    (root / "junk" / "CT_small_cut.dcm").write_bytes(cut)
    (root / "junk" / "notes.bin").write_bytes(b"Not an image at all.\n" * 20)
    (root / "junk" / "empty.dcm").write_bytes(b"")
    for name in ("CT_small.dcm", "JPEG-lossy.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm",
                 "DICOMDIR", "rtplan.dcm", "SC_rgb_rle_2frame.dcm", "liver_1frame.dcm"):
        shipped(name, root / "shipped" / name)

    def codec(name: str, uid: str) -> tuple[str, str]:
        return "skipped", f"unsupported transfer syntax {name} ({uid}): it needs a codec plugin; {SUPPORTED}"

    pixel_offset = cut.index(b"\xe0\x7f\x10\x00") + 12  # tag, VR OW, 2 reserved bytes, 4-byte length
    return {
        "ct/CT_small.dcm": ("imported", ""),
        f"ct/{CT_STUDY}.txt": ("report", "paired with 1 instance(s)"),
        "ct/README.txt": ("ignored", "no imported instance has this StudyInstanceUID or AccessionNumber"),
        "dup/CT_small.dcm": ("skipped", "duplicate of ct/CT_small.dcm"),
        "junk/CT_small_cut.dcm": ("skipped", "truncated: element (7FE0,0010) declares 32768 bytes, the file holds "
                                             f"{len(cut) - pixel_offset}"),
        "junk/empty.dcm": ("skipped", "empty file"),
        "junk/notes.bin": ("skipped", "not a DICOM file (no 128-byte preamble and 'DICM' prefix)"),
        "mr/dicom-metadata.json": ("ignored", "not a FHIR resource (no resourceType)"),
        "mr/report.json": ("report", "paired with 3 instance(s)"),
        "mr/series/bigendian.dcm": ("imported", ""),
        "mr/series/implicit.dcm": ("imported", ""),
        "mr/series/rle.dcm": ("imported", ""),
        "other/ACC0042.txt": ("report", "paired with 1 instance(s)"),
        "other/deflated.dcm": ("imported", ""),
        "shipped/CT_small.dcm": ("skipped", "no valid PatientBirthDate (empty): ages are computed from it"),
        "shipped/DICOMDIR": ("skipped", "a DICOMDIR (media directory), not an image"),
        "shipped/JPEG-lossy.dcm": codec("JPEG Extended (Process 2 and 4)", "1.2.840.10008.1.2.4.51"),
        "shipped/MR_small_jp2klossless.dcm": codec("JPEG 2000 Image Compression (Lossless Only)",
                                                   "1.2.840.10008.1.2.4.90"),
        "shipped/MR_small_jpeg_ls_lossless.dcm": codec("JPEG-LS Lossless Image Compression", "1.2.840.10008.1.2.4.80"),
        "shipped/MR_truncated.dcm": ("skipped", "truncated: element (7FE0,0010) declares 8192 bytes, the file holds 8130"),
        "shipped/SC_rgb_jpeg_dcmtk.dcm": codec("JPEG Baseline (Process 1)", "1.2.840.10008.1.2.4.50"),
        "shipped/SC_rgb_rle_2frame.dcm": ("skipped", "multi-frame instance (2 frames): one record is one image"),
        "shipped/liver_1frame.dcm": ("skipped", "modality SEG is a derived object, not an acquired image"),
        "shipped/no_meta.dcm": ("skipped", "not a DICOM file (no 128-byte preamble and 'DICM' prefix)"),
        "shipped/rtplan.dcm": ("skipped", "no pixel data (RT Plan Storage)"),
        "shipped/rtplan_truncated.dcm": ("skipped", "truncated: element (300A,00B0) declares 976 bytes, the file "
                                                    "holds 711"),
        f"unreported/{MR_STUDY}.9.txt": ("ignored", "empty report"),
        "unreported/MR_small.dcm": ("skipped", f"no paired report (looked for {MR_STUDY}.9.txt and a FHIR "
                                               "DiagnosticReport with its study UID or accession number)"),
    }


def _run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def _stored_files(settings) -> list[Path]:
    return sorted(p for p in settings.DATA_ROOT.rglob("*") if p.is_file())


# The importer ------------------------------------------------------------------------------------

def test_parse_folder_gives_every_file_its_outcome(tmp_path):
    expected = pydicom_folder(tmp_path)

    parsed = parse_dicom_folder(tmp_path, modality="vision_language")

    assert {o.path: (o.status, o.reason) for o in parsed.outcomes} == expected
    assert [o.path for o in parsed.outcomes] == sorted(expected)
    texts = {r.record_id.rsplit(".", 1)[1]: r.text for r in parsed.records}
    assert texts == {"1": CT_REPORT, "2": MR_REPORT, "3": MR_REPORT, "4": MR_REPORT, "5": DFL_REPORT}
    assert sorted((p.key, p.mrn, p.given, p.family, p.birth_date.isoformat(), p.sex) for p in parsed.patients) == [
        ("1CT1", "1CT1", "CT1", "CompressedSamples", "1950-01-01", "other"),
        ("4MR1", "4MR1", "MR1", "CompressedSamples", "1950-01-01", "female"),
        ("DFL1", "DFL1", "Test", "Deflated", "1950-01-01", "unknown"),
    ]
    by_suffix = {r.record_id.rsplit(".", 1)[1]: r for r in parsed.records}
    ct = by_suffix["1"]
    assert (ct.patient_key, ct.record_date.isoformat(), ct.document_type, ct.age_at_record) == (
        "1CT1", "2004-01-19", "ct_study", 54)
    assert ct.attachment == (tmp_path / "ct" / "CT_small.dcm").read_bytes()
    assert ct.attachment_suffix == ".dcm"
    assert dict(ct.attributes) == {
        "modality": "CT", "body_part": "", "rows": 128, "columns": 128, "photometric_interpretation": "MONOCHROME2",
        "transfer_syntax": "1.2.840.10008.1.2.1", "burned_in_annotation": "unknown", "series_number": 1,
        "instance_number": 1, "report": "text_file",
    }
    syntaxes = {dict(r.attributes)["transfer_syntax"] for r in parsed.records}
    assert syntaxes == {str(uid) for uid in NATIVE_TRANSFER_SYNTAXES}
    assert {r.document_type for r in parsed.records} == {"ct_study", "mr_study", "imaging_study"}
    assert dict(by_suffix["2"].attributes)["report"] == "fhir"


def test_parse_folder_for_diffusion_imports_instances_without_report(tmp_path):
    expected = pydicom_folder(tmp_path)

    parsed = parse_dicom_folder(tmp_path, modality="diffusion")

    expected["unreported/MR_small.dcm"] = ("imported", "")
    assert {o.path: (o.status, o.reason) for o in parsed.outcomes} == expected
    unreported = next(r for r in parsed.records if r.record_id.endswith(".6"))
    assert (unreported.text, dict(unreported.attributes)["report"]) == ("", "none")


@pytest.mark.django_db
def test_import_dicom_command_prints_each_file_and_imports_once(tmp_path, settings):
    steward = factories.steward()
    expected = pydicom_folder(tmp_path / "export")

    output = _run("import_dicom", str(tmp_path / "export"), dataset="ct-mr", steward=steward.email)

    lines = output.splitlines()
    assert lines[:-1] == [f"{status} {path}" + (f": {reason}" if reason else "")
                          for path, (status, reason) in sorted(expected.items())]
    assert lines[-1] == "ct-mr: 3 patients and 5 records added, 0 already present, 17 files skipped."
    dataset = Dataset.objects.get(name="ct-mr")
    assert dataset.modality == "vision_language"
    records = Record.objects.filter(dataset=dataset)
    assert records.count() == 5
    for record in records:
        stored = dataset.storage_dir / record.attributes["attachment_path"]
        assert _read(stored).SOPInstanceUID == record.source_id
        assert (dataset.storage_dir / record.file_path).read_text() in (CT_REPORT, MR_REPORT, DFL_REPORT)
        assert "1CT1" not in json.dumps(record.attributes) and "CompressedSamples" not in json.dumps(record.attributes)
    kinds = set(DirectIdentifier.objects.filter(patient__dataset=dataset).values_list("kind", "value"))
    assert {("mrn", "1CT1"), ("name", "CT1 CompressedSamples"), ("birth_date", "1950-01-01"),
            ("source_id", "4MR1"), ("name", "Test Deflated")} <= kinds
    assert AuditEvent.objects.filter(verb="dataset.imported").count() == 1
    files = _stored_files(settings)

    again = _run("import_dicom", str(tmp_path / "export"), dataset="ct-mr", steward=steward.email)

    assert again.splitlines()[-1] == "ct-mr: 0 patients and 0 records added, 5 already present, 17 files skipped."
    assert Record.objects.filter(dataset=dataset).count() == 5
    assert _stored_files(settings) == files


def _same_sop_different_files(root: Path) -> str:
    completed("CT_small.dcm", root / "a" / "one.dcm", uid_suffix="1")
    completed("CT_small.dcm", root / "b" / "two.dcm", uid_suffix="1", StudyDescription="changed")
    (root / f"{CT_STUDY}.txt").write_text(CT_REPORT)
    uid = _read(root / "a" / "one.dcm").SOPInstanceUID
    return f"Nothing imported. a/one.dcm, b/two.dcm: two different files carry SOP Instance UID {uid}"


def _one_patient_id_two_people(root: Path) -> str:
    completed("CT_small.dcm", root / "a.dcm", uid_suffix="1")
    completed("CT_small.dcm", root / "b.dcm", uid_suffix="2", PatientBirthDate="19600101", PatientName="Other^Person")
    (root / f"{CT_STUDY}.txt").write_text(CT_REPORT)
    return "Nothing imported. a.dcm, b.dcm: one PatientID names two different patients (their name and birth date differ)"


def _report_not_utf8(root: Path) -> str:
    completed("CT_small.dcm", root / "study" / "ct.dcm", uid_suffix="1")
    completed("MR_small.dcm", root / "study" / "mr.dcm", uid_suffix="1")
    (root / f"{MR_STUDY}.txt").write_text(MR_REPORT)
    (root / "study" / f"{CT_STUDY}.txt").write_bytes("Lésion.".encode("latin-1"))
    return f"Nothing imported. study/{CT_STUDY}.txt: report is not UTF-8 text (invalid continuation byte at byte 1)"


def _invalid_diagnostic_report(root: Path) -> str:
    completed("CT_small.dcm", root / "ct.dcm", uid_suffix="1")
    report = diagnostic_report(CT_REPORT, study_uid=CT_STUDY)
    report["effectiveDateTime"] = "2020-13-45"
    (root / "report.json").write_text(json.dumps(report))
    return ("Nothing imported. report.json: invalid FHIR R4 DiagnosticReport: effectiveDateTime: Value error, "
            "DateTime value string does not match spec regex.")


def _two_reports_disagree(root: Path) -> str:
    completed("CT_small.dcm", root / "ct.dcm", uid_suffix="1")
    (root / "r1.json").write_text(json.dumps(diagnostic_report(CT_REPORT, study_uid=CT_STUDY)))
    (root / "r2.json").write_text(json.dumps(diagnostic_report("Something else.", study_uid=CT_STUDY)))
    return f"Nothing imported. r1.json, r2.json: two DiagnosticReports for study {CT_STUDY} disagree"


@pytest.mark.django_db
@pytest.mark.parametrize("build", [_same_sop_different_files, _one_patient_id_two_people, _report_not_utf8,
                                   _invalid_diagnostic_report, _two_reports_disagree])
def test_import_dicom_bad_folder_changes_nothing(tmp_path, settings, build):
    factories.steward()
    message = build(tmp_path)

    with pytest.raises(CommandError) as error:
        _run("import_dicom", str(tmp_path), dataset="imaging")

    assert str(error.value) == message
    assert (Dataset.objects.count(), Patient.objects.count(), Record.objects.count()) == (0, 0, 0)
    assert _stored_files(settings) == []


@pytest.mark.django_db
def test_import_dicom_into_a_text_dataset_changes_nothing(tmp_path, settings):
    factories.dataset_with_patients(2, name="notes")
    completed("CT_small.dcm", tmp_path / "ct.dcm", uid_suffix="1")
    (tmp_path / f"{CT_STUDY}.txt").write_text(CT_REPORT)
    files = _stored_files(settings)

    with pytest.raises(CommandError) as error:
        _run("import_dicom", str(tmp_path), dataset="notes")

    assert str(error.value) == "Dataset 'notes' holds text data, not vision_language."
    assert (Patient.objects.count(), Record.objects.count()) == (2, 2)
    assert _stored_files(settings) == files


@pytest.mark.django_db
def test_import_dicom_nothing_importable_fails(tmp_path):
    factories.steward()
    shipped("JPEG-lossy.dcm", tmp_path / "a.dcm")

    with pytest.raises(CommandError) as error:
        _run("import_dicom", str(tmp_path), dataset="imaging")

    assert str(error.value) == f"Nothing imported: no importable DICOM instance under {tmp_path}."
    assert Dataset.objects.count() == 0


def test_parse_folder_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DicomImportError) as error:
        parse_dicom_folder(tmp_path / "nowhere", modality="diffusion")
    assert str(error.value) == f"{tmp_path / 'nowhere'}: no such folder"


# The synthetic generator -------------------------------------------------------------------------

def _lesion(ds: pydicom.Dataset) -> tuple[float, str] | None:
    """(diameter in mm, quadrant) of the bright disc in an image, measured from its pixels alone."""
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    threshold = 120.0 if ds.Modality == "CT" else 550.0
    mask = values > threshold
    mask[int(ds.Rows) - 4:, :] = False  # leave out burned-in text along the bottom edge
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    spacing = float(ds.PixelSpacing[0])
    diameter = 2 * math.sqrt(mask.sum() / math.pi) * spacing
    # The image's left is the patient's right; its top is superior.
    side = "right" if cols.mean() < ds.Columns / 2 else "left"
    level = "upper" if rows.mean() < ds.Rows / 2 else "lower"
    return diameter, f"{side} {level}"


@pytest.mark.parametrize("size", [64, 32])
def test_synthetic_images_are_valid_dicom_and_match_their_reports(size):
    imaging = generate_imaging(14, seed=3, size=size, burned_in_fraction=0.3)

    lesions = 0
    for study in imaging.studies:
        for data in study.instances:
            assert data[128:132] == b"DICM"
            ds = _read(data)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == (pydicom.uid.CTImageStorage if study.modality == "CT" else pydicom.uid.MRImageStorage)
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert (ds.Rows, ds.Columns, ds.pixel_array.dtype, ds.PatientID) == (size, size, np.uint16, study.patient_key)
            assert ds.BurnedInAnnotation == ("YES" if study.burned_in else "NO")
            measured = _lesion(ds)
            if study.finding is None:
                assert measured is None
                assert "Findings: No focal lesion." in study.report
            else:
                lesions += 1
                diameter, quadrant = measured
                assert quadrant == study.finding.quadrant
                assert abs(diameter - study.finding.size_mm) <= 1.5
                assert f"lesion, {study.finding.size_mm} mm, in the {study.finding.quadrant} zone" in study.report
            assert f"Accession number: {study.accession_number}" in study.report
    assert lesions > 0 and any(s.finding is None for s in imaging.studies)
    assert any(s.burned_in for s in imaging.studies) and not all(s.burned_in for s in imaging.studies)


def test_synthetic_imaging_is_deterministic_and_follows_patients():
    imaging = generate_imaging(20, seed=5)

    assert generate_imaging(20, seed=5) == imaging
    assert generate_imaging(20, seed=6).records != imaging.records
    per_patient = {p.key: [s for s in imaging.studies if s.patient_key == p.key] for p in imaging.patients}
    assert all(len(studies) >= 1 for studies in per_patient.values())
    followed = [studies for studies in per_patient.values() if len(studies) > 1]
    assert followed and len(followed) < len(per_patient)
    for studies in followed:
        assert [s.study_date for s in studies] == sorted(s.study_date for s in studies)
        first = studies[0].finding
        for later in studies[1:]:
            if first is not None:
                assert later.finding.quadrant == first.quadrant and later.finding.size_mm >= first.size_mm
                assert "(previously" in later.report or "(unchanged)" in later.report
    assert {r.record_id for r in imaging.records} == {
        _read(data).SOPInstanceUID for s in imaging.studies for data in s.instances}
    assert len({r.record_id for r in imaging.records}) == len(imaging.records)
    assert {p.key for p in imaging.patients} == {r.patient_key for r in imaging.records}


@pytest.mark.parametrize("reports, source", [("text", "text_file"), ("fhir", "fhir")])
def test_synthetic_tree_imports_as_generated(tmp_path, reports, source):
    imaging = generate_imaging(8, seed=2)
    write_dicom_tree(imaging, tmp_path, reports=reports)

    parsed = parse_dicom_folder(tmp_path, modality="vision_language")

    assert parsed.count("skipped") == 0 and parsed.count("ignored") == 0
    assert parsed.count("report") == len(imaging.studies)
    assert set(parsed.patients) == set(imaging.patients)
    relabel = {"text_file": source}
    generated = {(r.record_id, r.patient_key, r.record_date, r.document_type, r.text, r.attachment,
                  tuple((k, relabel.get(v, v) if k == "report" else v) for k, v in r.attributes))
                 for r in imaging.records}
    imported = {(r.record_id, r.patient_key, r.record_date, r.document_type, r.text, r.attachment, r.attributes)
                for r in parsed.records}
    assert imported == generated


def test_synthetic_reports_and_images_for_model_building():
    reports = synthetic_reports(30, seed=9)
    images = synthetic_images(6, seed=9, size=32)

    assert synthetic_reports(30, seed=9) == reports and synthetic_reports(30, seed=10) != reports
    assert len(reports) == 30 and all(r.startswith(("CT CHEST\n", "MRI HEAD\n")) for r in reports)
    assert any(q in r for r in reports for q in QUADRANTS) and any("No focal lesion" in r for r in reports)
    assert len(images) == 6
    for image in images:
        assert image.pixels.shape == (32, 32)
        assert np.array_equal(_read(image.dicom).pixel_array, image.pixels)
        assert (image.finding is None) == ("No focal lesion" in image.report)


@pytest.mark.django_db
def test_generate_synthetic_imaging_twice_adds_nothing(settings):
    factories.steward()
    imaging = generate_imaging(5, seed=4)
    n = len(imaging.records)

    first = _run("generate_synthetic_imaging", patients=5, seed=4)
    files = _stored_files(settings)
    second = _run("generate_synthetic_imaging", patients=5, seed=4)
    diffusion = _run("generate_synthetic_imaging", patients=5, seed=4, modality="diffusion")

    assert first == f"synthetic-imaging: 5 patients and {n} records added, 0 already present.\n"
    assert second == f"synthetic-imaging: 0 patients and 0 records added, {n} already present.\n"
    assert diffusion == f"synthetic-imaging-diffusion: 5 patients and {n} records added, 0 already present.\n"
    assert {d.name: d.modality for d in Dataset.objects.all()} == {
        "synthetic-imaging": "vision_language", "synthetic-imaging-diffusion": "diffusion"}
    assert set(Record.objects.values_list("document_type", flat=True)) <= {"ct_study", "mr_study"}
    assert set(_stored_files(settings)) >= set(files)
