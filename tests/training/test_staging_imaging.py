"""Staging imaging cohorts: every image leaves de-identified (PS3.15 Annex E Basic Profile), burned-in ones never.

The cohort holds synthetic CT/MR studies (some marked BurnedInAnnotation YES) and two of pydicom's
own test files completed with a birth date (CT_small carries 179 private attributes, other patient
IDs, an institution and dates). The request behind the cohort is written directly: the imaging
request flow belongs to the model side; what is under test here is staging.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from governance import services as governance_services
from governance.importers.dicom import parse_dicom_folder
from governance.models import DataAccessRequest, Record
from governance.synthetic_imaging import generate_imaging, write_dicom_tree
from tests import factories
from tests.governance.test_dicom_import import CT_REPORT, CT_STUDY, MR_REPORT, MR_STUDY, completed
from training.staging import stage_cohort
from training.staging_imaging import BASIC_PROFILE, DEIDENTIFICATION_METHOD, MODEL_TAGS

pytestmark = pytest.mark.django_db
TABLE_UID = "1.2.826.0.1.3680043.2.1125.424242"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _read(source) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)


def _cohort(tmp_path: Path, modality: str):
    """A frozen cohort over every record of a new imaging dataset; returns (cohort, dataset)."""
    steward = factories.steward()
    imaging = generate_imaging(8, seed=21, burned_in_fraction=0.3)
    assert any(s.burned_in for s in imaging.studies)
    write_dicom_tree(imaging, tmp_path / "export")
    # Beyond what the profile lists: a person name, a date-time, free text and a UID it does not name.
    completed("CT_small.dcm", tmp_path / "export" / "ct" / "ct.dcm", uid_suffix="1",
              AccessionNumber="ACC7770001", ReferringPhysicianName="Hargreaves^Imelda",
              EvaluatorName="Whitfield^Rosalind", StudyUpdateDateTime="20040120101010",
              DetectorDescription="Calibrated by Rosalind Whitfield", TableFrameOfReferenceUID=TABLE_UID)
    (tmp_path / "export" / "ct" / f"{CT_STUDY}.txt").write_text(f"Accession ACC7770001. {CT_REPORT}")
    completed("MR_small.dcm", tmp_path / "export" / "mr" / "mr.dcm", uid_suffix="2")
    (tmp_path / "export" / "mr" / f"{MR_STUDY}.txt").write_text(f"Study {MR_STUDY}: {MR_REPORT}")
    parsed = parse_dicom_folder(tmp_path / "export", modality=modality)
    assert parsed.count("skipped") == 0
    dataset = governance_services.dataset_register(by=steward, name=f"imaging-{modality}", title="Imaging",
                                                   modality=modality, location="test")
    governance_services.dataset_import_records(dataset=dataset, patients=parsed.patients, records=parsed.records,
                                               by=steward, source="test")
    project = factories.project()
    request = DataAccessRequest.objects.create(
        project=project, title="Imaging", purpose="Staging test.", modality=modality, cohort_definition={},
        base_model_name="none", created_by=project.principal_investigator,
    )
    request.datasets.add(dataset)
    cohort = governance_services._freeze_cohort(request, governance_services.policy_current())
    return cohort, dataset


def _data_dir(settings, name: str) -> Path:
    folder = settings.STAGING_ROOT / name / "data"
    folder.mkdir(parents=True)
    return folder


def _lines(data_dir: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "holdout")
            for line in (data_dir / f"{split}.jsonl").read_text().splitlines()]


def _originals(dataset) -> dict[bytes, tuple[Record, pydicom.Dataset, bytes]]:
    """Every imported instance by the sha256 of its pixel array (unique: every image has its own noise)."""
    found = {}
    for record in Record.objects.filter(dataset=dataset):
        data = (dataset.storage_dir / record.attributes["attachment_path"]).read_bytes()
        ds = _read(data)
        found[hashlib.sha256(np.ascontiguousarray(ds.pixel_array).tobytes()).digest()] = (record, ds, data)
    return found


def _original_for(staged: pydicom.Dataset, originals) -> tuple[Record, pydicom.Dataset, bytes]:
    return originals[hashlib.sha256(np.ascontiguousarray(staged.pixel_array).tobytes()).digest()]


def _identifying_values(ds: pydicom.Dataset) -> set[str]:
    """The original file's identifiers: names, IDs, birth date, accession number and its own UIDs.

    (The institution is left to the profile check: MR_small's, "TOSHIBA", is also part of its
    manufacturer's name, which is no identifier and stays.)
    """
    values = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value and str(elem.value) not in pydicom.uid.UID_dictionary:
            values.add(str(elem.value))
        if elem.VR == "PN" and elem.value:
            values.add(str(elem.value))
            values.update(part for part in str(elem.value).replace("^", " ").split() if len(part) >= 4)
    for keyword in ("PatientID", "PatientBirthDate", "AccessionNumber"):
        if ds.get(keyword):
            values.add(str(ds.get(keyword)))
    for item in ds.get("OtherPatientIDsSequence", []):
        values.add(str(item.PatientID))
    for uid in (ds.file_meta.MediaStorageSOPInstanceUID,):
        values.add(str(uid))
    return values


def test_vision_language_staging_removes_every_profile_attribute(tmp_path, settings):
    cohort, dataset = _cohort(tmp_path, "vision_language")
    originals = _originals(dataset)
    burned = sum(1 for record, _, _ in originals.values() if record.attributes["burned_in_annotation"] == "yes")
    data_dir = _data_dir(settings, "job-1")

    counts = stage_cohort(cohort=cohort, data_dir=data_dir, seed=1)

    assert burned > 0
    assert counts == {"train": counts["train"], "holdout": counts["holdout"], "declined": burned}
    assert counts["train"] + counts["holdout"] == len(originals) - burned
    lines = _lines(data_dir)
    assert len(lines) == len(originals) - burned
    identifying = set().union(*(_identifying_values(ds) for _, ds, _ in originals.values()))
    assert {"1CT1", "CompressedSamples^CT1", "ABCD1234", "19500101", "ACC7770001", "Hargreaves^Imelda",
            "Whitfield", CT_STUDY, TABLE_UID} <= identifying
    for line in lines:
        assert set(line) == {"record", "patient", "image", "text"}
        assert line["image"] == f"images/{line['record']}.dcm"
        path = data_dir / line["image"]
        content = path.read_bytes()
        staged = _read(content)
        record, original, original_bytes = _original_for(staged, originals)
        assert record.attributes["burned_in_annotation"] != "yes"
        # Every attribute of Table E.1-1, at any depth: removed, emptied, or (UIDs) replaced.
        present = defaultdict(list)
        for elem in [*staged.file_meta, *staged.iterall()]:
            present[elem.tag].append(elem)
        for entry in BASIC_PROFILE:
            for elem in present.get(entry.tag, []):
                if entry.staged == "empty":
                    assert elem.value in (None, "", b"") or (elem.VR == "SQ" and len(elem.value) == 0), entry
                elif entry.staged == "replace":
                    assert elem.value and str(elem.value).encode() not in original_bytes, entry
                else:
                    pytest.fail(f"{entry.keyword} ({entry.action}) is still in the staged file")
        assert not any(elem.tag.is_private or elem.tag.group & 0xFF00 in (0x5000, 0x6000) for elem in staged.iterall())
        assert not [elem.keyword for elem in staged.iterall()
                    if elem.VR in ("PN", "DA", "DT", "TM", "LT", "ST", "UT") and elem.value]
        assert b"20040120101010" not in content and b"Calibrated" not in content
        # No identifying value of any original, anywhere in the staged bytes; nor in the text.
        leaked = [value for value in identifying if value.encode("utf-8") in content or value in line["text"]]
        assert leaked == []
        assert content[:128] == bytes(128) and content[128:132] == b"DICM"
        # What a model needs stays as it was, pixels included.
        for keyword in MODEL_TAGS:
            if keyword in original:
                assert staged.get(keyword) == original.get(keyword), keyword
        assert np.array_equal(staged.pixel_array, original.pixel_array)
        assert staged.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (staged.PatientIdentityRemoved, staged.DeidentificationMethod) == ("YES", DEIDENTIFICATION_METHOD)
        assert staged.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert staged.SOPClassUID == original.SOPClassUID
        assert staged.file_meta.MediaStorageSOPInstanceUID == staged.SOPInstanceUID != original.SOPInstanceUID
        # The report, with this study's accession number and UIDs replaced.
        report = (dataset.storage_dir / record.file_path).read_text()
        accession = str(original.get("AccessionNumber") or "")
        expected = report.replace(accession, "[ACCESSION]") if len(accession) >= 4 else report
        assert line["text"] == expected.replace(MR_STUDY, "[UID]")
    assert stat.S_IMODE((data_dir / "images").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (data_dir / "images").iterdir()} == {0o644}
    texts = [line["text"] for line in lines]
    assert any("Accession number: [ACCESSION]" in t for t in texts)
    assert f"Study [UID]: {MR_REPORT}" in texts and f"Accession [ACCESSION]. {CT_REPORT}" in texts


def test_staged_uids_are_consistent_within_a_job_and_new_for_the_next(tmp_path, settings):
    cohort, dataset = _cohort(tmp_path, "diffusion")
    originals = _originals(dataset)
    first, second = _data_dir(settings, "job-1"), _data_dir(settings, "job-2")

    stage_cohort(cohort=cohort, data_dir=first, seed=1)
    stage_cohort(cohort=cohort, data_dir=second, seed=2)

    studies = {}
    for data_dir in (first, second):
        by_original_study, staged_per_study = defaultdict(set), defaultdict(list)
        for line in _lines(data_dir):
            assert set(line) == {"record", "patient", "image"}
            staged = _read(data_dir / line["image"])
            _, original, _ = _original_for(staged, originals)
            by_original_study[original.StudyInstanceUID].add(staged.StudyInstanceUID)
            staged_per_study[original.StudyInstanceUID].append(line["record"])
        assert all(len(uids) == 1 for uids in by_original_study.values())  # a study stays one study
        assert any(len(instances) > 1 for instances in staged_per_study.values())
        studies[data_dir] = set().union(*by_original_study.values())
    assert len(studies[first]) == len(studies[second]) == len({ds.StudyInstanceUID for _, ds, _ in originals.values()
                                                                if ds.get("BurnedInAnnotation") != "YES"})
    assert studies[first].isdisjoint(studies[second])


def test_burned_in_images_are_staged_when_the_setting_allows(tmp_path, settings):
    settings.IMAGING_EXCLUDE_BURNED_IN = False
    cohort, dataset = _cohort(tmp_path, "diffusion")
    data_dir = _data_dir(settings, "job-1")

    counts = stage_cohort(cohort=cohort, data_dir=data_dir, seed=1)

    assert counts["declined"] == 0
    assert counts["train"] + counts["holdout"] == Record.objects.filter(dataset=dataset).count()
    burned = [_read(data_dir / line["image"]) for line in _lines(data_dir)]
    assert sum(1 for ds in burned if ds.get("BurnedInAnnotation") == "YES") == Record.objects.filter(
        dataset=dataset, attributes__burned_in_annotation="yes").count()


def test_staging_refuses_a_dicom_file_changed_since_import(tmp_path, settings):
    cohort, dataset = _cohort(tmp_path, "diffusion")
    record = Record.objects.filter(dataset=dataset).order_by("pk").first()
    path = dataset.storage_dir / record.attributes["attachment_path"]
    path.write_bytes(path.read_bytes() + b"\x00\x00")

    with pytest.raises(ValueError) as error:
        stage_cohort(cohort=cohort, data_dir=_data_dir(settings, "job-1"), seed=1)

    assert str(error.value) == f"record {record.source_id}: its DICOM file changed since import (sha256 mismatch)"
