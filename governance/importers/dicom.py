"""Import a folder tree of DICOM files (a PACS or DICOMweb export) into an imaging dataset.

One ``ClinicalRecord`` per DICOM *instance* (one file), so that every image is one training
example and a cohort can count, split and decline images one by one; the patient is the unit of
grouping (``patient_key``), exactly as for notes.

* Patient: ``PatientID`` is the source key and the MRN (with ``IssuerOfPatientID`` when present the
  key is ``<PatientID>^<Issuer>``), ``PatientName`` gives family and given names (middle names join
  the given name), ``PatientBirthDate`` the birth date, ``PatientSex`` M/F/O the sex ("unknown"
  otherwise). They go to ``PatientIdentity`` and from there to the identifier index, never into
  the record's attributes. Instances of one PatientID must agree on name, birth date and sex.
* Record: ``record_id`` is the SOP Instance UID, ``record_date`` the Study Date (else Series,
  Acquisition or Content Date), ``document_type`` ``ct_study`` (CT), ``mr_study`` (MR) or
  ``imaging_study``, ``attachment`` the original file's bytes (suffix ``.dcm``), ``attributes``
  non-identifying facts only: modality, body_part, rows, columns, photometric_interpretation,
  transfer_syntax (UID), burned_in_annotation (yes/no/unknown), series_number, instance_number
  and report (where the report came from: text_file/fhir/none).
* Paired report (the record's text). In order of preference, for an instance at ``dir/x.dcm``:
  1. ``<StudyInstanceUID>.txt``, 2. ``<AccessionNumber>.txt`` in ``dir`` or the nearest folder
  above it inside the import root (UTF-8, surrounding whitespace stripped); 3. a FHIR R4
  DiagnosticReport (a ``.json`` file holding the resource or a Bundle of them, validated with
  ``fhir.resources.R4B``) whose ``identifier`` carries the study UID (system ``urn:dicom:uid``,
  value ``urn:oid:<uid>``, as FHIR ImagingStudy does), 4. one whose ``identifier`` of type
  v2-0203 ``ACSN`` carries the accession number. Its text is the first ``presentedForm`` with
  contentType text/plain (inline base64), else ``conclusion``. ``vision_language`` datasets need a
  report (instances without one are skipped); ``diffusion`` datasets take "" when there is none.
* Supported transfer syntaxes are those pydicom decodes with no codec plugin: Implicit and
  Explicit VR Little Endian, Deflated Explicit VR Little Endian, Explicit VR Big Endian and RLE
  Lossless. Every imported instance's pixel data is decoded once at import to prove it. Only
  single-frame images of 8 or 16-bit integers (MONOCHROME1/2, RGB, YBR_FULL(_422), PALETTE COLOR)
  are imported; derived objects with pixel data (SEG, RTDOSE, ...) are not.

Outcomes, one per file (``ParsedFolder.outcomes``): ``imported``; ``skipped`` with a reason
(not DICOM, empty, truncated or malformed, no pixel data, unsupported transfer syntax, pixel
data that does not decode, multi-frame, an unsupported pixel format, a derived object, no
PatientID, birth date or study date, a study dated before the birth date, no paired report for
a vision-language dataset, a byte-identical duplicate of another file); ``report`` (a report
file paired with at least one instance); ``ignored`` (a report file no instance refers to, a JSON
file that is not a DiagnosticReport). A file never crashes the import. Reasons never quote a
patient's name, ID or birth date. What cannot be settled per file raises ``DicomImportError`` and nothing is
returned: two different files with one SOP Instance UID, instances of one PatientID that
disagree about the patient, a paired text report that is not UTF-8, a DiagnosticReport that
fails validation, two reports for one study that disagree.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    RLELossless,
    UID,
)

from governance.records import ClinicalRecord, PatientIdentity, age_on

__all__ = [
    "IMAGING_MODALITIES",
    "NATIVE_TRANSFER_SYNTAXES",
    "DicomImportError",
    "DicomInstance",
    "DicomSkip",
    "FileOutcome",
    "ParsedFolder",
    "parse_dicom_folder",
    "read_instance",
]

IMAGING_MODALITIES = ("vision_language", "diffusion")
NATIVE_TRANSFER_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
)
# Derived objects that carry pixel data but are not images of the patient.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "SR", "KO", "REG", "DOC"})
PHOTOMETRIC_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")
DOCUMENT_TYPE_BY_MODALITY = {"CT": "ct_study", "MR": "mr_study"}
DEFAULT_DOCUMENT_TYPE = "imaging_study"
DICOM_UID_SYSTEM = "urn:dicom:uid"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_SEXES = {"M": "male", "F": "female", "O": "other"}
_REPORT_SUFFIXES = (".txt", ".json")

IMPORTED, SKIPPED, REPORT, IGNORED = "imported", "skipped", "report", "ignored"


class DicomImportError(ValueError):
    """A folder that cannot be imported; names the file(s) and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DicomSkip(ValueError):
    """One file that is not imported, and why."""


@dataclass(frozen=True)
class FileOutcome:
    path: str  # relative to the import root
    status: str  # imported | skipped | report | ignored
    reason: str = ""  # why skipped or ignored; what a report was paired with
    record_id: str = ""  # the SOP Instance UID of an imported instance


@dataclass(frozen=True)
class ParsedFolder:
    root: str
    modality: str
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]
    outcomes: tuple[FileOutcome, ...]

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)


@dataclass(frozen=True)
class DicomInstance:
    """What one readable DICOM image contributes, before its report is paired."""

    identity: PatientIdentity
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    accession_number: str
    study_date: date
    document_type: str
    attributes: tuple[tuple[str, object], ...]
    data: bytes = field(repr=False)

    def record(self, text: str, *, report_source: str) -> ClinicalRecord:
        return ClinicalRecord(
            record_id=self.sop_instance_uid, patient_key=self.identity.key, record_date=self.study_date,
            document_type=self.document_type, conditions=(), text=text,
            age_at_record=age_on(self.identity.birth_date, self.study_date), attachment=self.data,
            attachment_suffix=".dcm", attributes=self.attributes + (("report", report_source),),
        )


# One instance ------------------------------------------------------------------------------------

def read_instance(data: bytes) -> DicomInstance:
    """Read one DICOM Part 10 file; raises ``DicomSkip`` with the reason it cannot be imported."""
    if not data:
        raise DicomSkip("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values; the reasons below are what count
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            raise DicomSkip("not a DICOM file (no 128-byte preamble and 'DICM' prefix)") from None
        except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed file, never a crash
            raise DicomSkip(f"malformed DICOM: {_short(exc)}") from None
        try:
            return _instance(ds, data)
        except DicomSkip:
            raise
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot convert, a broken sequence...
            raise DicomSkip(f"malformed DICOM: {_short(exc)}") from None


def _instance(ds: pydicom.Dataset, data: bytes) -> DicomInstance:
    elements = list(ds.elements())  # raw: nothing converted yet
    if not elements:
        raise DicomSkip("truncated: no data set after the file meta information")
    last = elements[-1]
    length = getattr(last, "length", None)
    if isinstance(length, int) and length != 0xFFFFFFFF and last.value is not None and len(last.value) < length:
        raise DicomSkip(f"truncated: element {last.tag} declares {length} bytes, the file holds {len(last.value)}")
    sop_class = UID(str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or ""))
    if sop_class == MediaStorageDirectoryStorage:
        raise DicomSkip("a DICOMDIR (media directory), not an image")
    if "PixelData" not in ds:
        kind = sop_class.name if sop_class else "unknown SOP class"
        raise DicomSkip(f"no pixel data ({kind})")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if not syntax:
        raise DicomSkip("no Transfer Syntax UID in the file meta information")
    if syntax not in NATIVE_TRANSFER_SYNTAXES:
        supported = ", ".join(UID(s).name for s in NATIVE_TRANSFER_SYNTAXES)
        raise DicomSkip(f"unsupported transfer syntax {syntax.name} ({syntax}): it needs a codec plugin; "
                        f"supported: {supported}")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in NON_IMAGE_MODALITIES:
        raise DicomSkip(f"modality {modality} is a derived object, not an acquired image")
    frames = _int(ds.get("NumberOfFrames")) or 1
    if frames > 1:
        raise DicomSkip(f"multi-frame instance ({frames} frames): one record is one image")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in PHOTOMETRIC_INTERPRETATIONS:
        raise DicomSkip(f"photometric interpretation {photometric or 'missing'} is not supported "
                        f"(supported: {', '.join(PHOTOMETRIC_INTERPRETATIONS)})")
    try:
        pixels = ds.pixel_array  # decoded once, to prove it decodes
    except Exception as exc:  # noqa: BLE001
        raise DicomSkip(f"pixel data does not decode: {_short(exc)}") from None
    if pixels.dtype.kind not in "uib" or pixels.dtype.itemsize > 2:
        raise DicomSkip(f"{pixels.dtype.itemsize * 8}-bit {pixels.dtype.kind} pixel data is not supported "
                        "(8 or 16-bit integers only)")
    sop_instance = str(ds.get("SOPInstanceUID", "") or "").strip()
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    if not sop_instance:
        raise DicomSkip("no SOP Instance UID")
    if not study_uid:
        raise DicomSkip("no Study Instance UID")
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise DicomSkip("no PatientID (images are grouped by patient)")
    birth = _dicom_date(ds.get("PatientBirthDate"))
    if birth is None:
        raise DicomSkip(f"no valid PatientBirthDate ({_state(ds.get('PatientBirthDate'))}): ages are computed from it")
    study_date = None
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        study_date = _dicom_date(ds.get(keyword))
        if study_date is not None:
            break
    if study_date is None:
        raise DicomSkip("no valid StudyDate (nor Series, Acquisition or Content Date)")
    if study_date < birth:
        raise DicomSkip("the study is dated before the patient's birth date")
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    name = ds.get("PatientName")
    given = " ".join(part for part in (name.given_name, name.middle_name) if part).strip() if name else ""
    family = name.family_name.strip() if name else ""
    identity = PatientIdentity(
        key=f"{patient_id}^{issuer}" if issuer else patient_id, mrn=patient_id, given=given, family=family,
        birth_date=birth, sex=_SEXES.get(str(ds.get("PatientSex", "") or "").strip().upper(), "unknown"),
        phone="", national_id="",
    )
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    attributes = (
        ("modality", modality),
        ("body_part", str(ds.get("BodyPartExamined", "") or "").strip().upper()),
        ("rows", int(ds.Rows)),
        ("columns", int(ds.Columns)),
        ("photometric_interpretation", photometric),
        ("transfer_syntax", str(syntax)),
        ("burned_in_annotation", {"YES": "yes", "NO": "no"}.get(burned, "unknown")),
        ("series_number", _int(ds.get("SeriesNumber"))),
        ("instance_number", _int(ds.get("InstanceNumber"))),
    )
    return DicomInstance(
        identity=identity, sop_instance_uid=sop_instance, study_instance_uid=study_uid,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        accession_number=str(ds.get("AccessionNumber", "") or "").strip(), study_date=study_date,
        document_type=DOCUMENT_TYPE_BY_MODALITY.get(modality, DEFAULT_DOCUMENT_TYPE), attributes=attributes, data=data,
    )


def _dicom_date(value: Any) -> date | None:
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _state(value: Any) -> str:
    """How a date is wrong, without quoting it."""
    return "empty" if str(value or "").strip() == "" else "not a YYYYMMDD date"


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# Reports -----------------------------------------------------------------------------------------

@dataclass
class _FhirReport:
    path: str
    text: str
    study_uids: list[str]
    accessions: list[str]


def _fhir_reports(path: Path, rel: str) -> tuple[list[_FhirReport], str]:
    """DiagnosticReports in one .json file, and why the file is ignored when it holds none."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [], f"not valid JSON ({_short(exc)})"
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        return [], "not a FHIR resource (no resourceType)"
    if doc["resourceType"] == "DiagnosticReport":
        resources = [("", doc)]
    elif doc["resourceType"] == "Bundle":
        entries = doc.get("entry") if isinstance(doc.get("entry"), list) else []
        resources = [(f"entry {i} ", e["resource"]) for i, e in enumerate(entries)
                     if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                     and e["resource"].get("resourceType") == "DiagnosticReport"]
        if not resources:
            return [], "a FHIR Bundle with no DiagnosticReport"
    else:
        return [], f"not a FHIR DiagnosticReport (resourceType {doc['resourceType']})"
    reports = []
    model_class = get_fhir_model_class("DiagnosticReport")
    for where, raw in resources:
        try:
            model = model_class.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or '(root)'}: {e.get('msg')}"
                                 for e in exc.errors()[:3])
            raise DicomImportError(rel, f"{where}invalid FHIR R4 DiagnosticReport: {problems}") from None
        if model.status == "entered-in-error":
            continue
        text = _fhir_text(model, raw, rel, where)
        study_uids, accessions = [], []
        for identifier in model.identifier or []:
            value = (identifier.value or "").strip()
            if not value:
                continue
            if identifier.system == DICOM_UID_SYSTEM:
                study_uids.append(value.removeprefix("urn:oid:"))
            codes = [c.code for c in (identifier.type.coding or [])] if identifier.type else []
            if "ACSN" in codes:
                accessions.append(value)
        if text and (study_uids or accessions):
            reports.append(_FhirReport(rel, text, study_uids, accessions))
    if not reports:
        return [], "no DiagnosticReport with text and a study UID or accession number identifier"
    return reports, ""


def _fhir_text(model: Any, raw: dict, rel: str, where: str) -> str:
    for k, attachment in enumerate(model.presentedForm or []):
        media = (attachment.contentType or "").split(";")[0].strip().lower()
        data = (raw.get("presentedForm") or [])[k].get("data")
        if media != "text/plain" or not isinstance(data, str):
            continue
        try:
            payload = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DicomImportError(rel, f"{where}presentedForm.{k}.data is not valid base64 ({exc})") from None
        charset = "utf-8"
        for param in (attachment.contentType or "").split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            text = payload.decode("utf-8-sig" if charset.lower().replace("_", "-") == "utf-8" else charset)
        except (LookupError, UnicodeDecodeError) as exc:
            raise DicomImportError(rel, f"{where}presentedForm.{k}: text does not decode as {charset} ({exc})") from None
        if text.strip():
            return text.strip()
    return (model.conclusion or "").strip()


class _Reports:
    """Every report in the folder, and the files actually paired with an instance."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.text_files: dict[tuple[Path, str], Path] = {}  # (folder, stem) -> file
        self.fhir_by_study: dict[str, list[_FhirReport]] = defaultdict(list)
        self.fhir_by_accession: dict[str, list[_FhirReport]] = defaultdict(list)
        self.used: dict[str, int] = defaultdict(int)  # relative path -> instances paired
        self.ignored: dict[str, str] = {}  # relative path -> reason
        self._texts: dict[Path, str] = {}

    def add_text(self, path: Path) -> None:
        self.text_files[(path.parent, path.stem)] = path

    def add_json(self, path: Path) -> None:
        rel = _rel(path, self.root)
        reports, why = _fhir_reports(path, rel)
        if not reports:
            self.ignored[rel] = why
        for report in reports:
            for uid in report.study_uids:
                self.fhir_by_study[uid].append(report)
            for accession in report.accessions:
                self.fhir_by_accession[accession].append(report)

    def find(self, instance: DicomInstance, path: Path) -> tuple[str, str] | None:
        """(text, source kind) of the report for this instance, or None."""
        for stem in (instance.study_instance_uid, instance.accession_number):
            if not stem:
                continue
            folder = path.parent
            while True:
                found = self.text_files.get((folder, stem))
                if found is not None and self._text_file(found):
                    self.used[_rel(found, self.root)] += 1
                    return self._text_file(found), "text_file"
                if folder == self.root or self.root not in folder.parents:
                    break
                folder = folder.parent
        for index, key in ((self.fhir_by_study, instance.study_instance_uid),
                           (self.fhir_by_accession, instance.accession_number)):
            candidates = index.get(key, []) if key else []
            if candidates:
                texts = {c.text for c in candidates}
                if len(texts) > 1:
                    files = ", ".join(sorted({c.path for c in candidates}))
                    raise DicomImportError(files, f"two DiagnosticReports for study {key} disagree")
                for candidate in candidates:
                    self.used[candidate.path] += 1
                return candidates[0].text, "fhir"
        return None

    def is_empty(self, path: Path) -> bool:
        return self._texts.get(path) == ""

    def _text_file(self, path: Path) -> str:
        """The file's text ("" when it is empty: then the search goes on)."""
        if path not in self._texts:
            try:
                self._texts[path] = path.read_bytes().decode("utf-8-sig").strip()
            except UnicodeDecodeError as exc:
                raise DicomImportError(_rel(path, self.root),
                                       f"report is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return self._texts[path]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# The folder --------------------------------------------------------------------------------------

def parse_dicom_folder(root: str | Path, *, modality: str) -> ParsedFolder:
    """Read every file under ``root``; a collection-level problem raises DicomImportError.

    Everything is held in memory until the import writes it (as for FHIR bundles): import a
    very large export in parts (one folder per patient or per month), each all or nothing.
    """
    if modality not in IMAGING_MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(IMAGING_MODALITIES)}, not {modality!r}")
    root = Path(root)
    if not root.is_dir():
        raise DicomImportError(str(root), "no such folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    reports = _Reports(root)
    candidates = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            reports.add_text(path)
        elif suffix == ".json":
            reports.add_json(path)
        else:
            candidates.append(path)

    outcomes: dict[str, FileOutcome] = {}
    instances: list[tuple[Path, DicomInstance]] = []
    by_sop: dict[str, tuple[str, bytes]] = {}
    for path in candidates:
        rel = _rel(path, root)
        try:
            instance = read_instance(path.read_bytes())
        except DicomSkip as skip:
            outcomes[rel] = FileOutcome(rel, SKIPPED, str(skip))
            continue
        except OSError as exc:
            outcomes[rel] = FileOutcome(rel, SKIPPED, f"cannot be read ({exc.strerror or exc})")
            continue
        seen = by_sop.get(instance.sop_instance_uid)
        if seen is not None:
            if seen[1] != instance.data:
                raise DicomImportError(f"{seen[0]}, {rel}",
                                       f"two different files carry SOP Instance UID {instance.sop_instance_uid}")
            outcomes[rel] = FileOutcome(rel, SKIPPED, f"duplicate of {seen[0]}")
            continue
        by_sop[instance.sop_instance_uid] = (rel, instance.data)
        instances.append((path, instance))

    patients: dict[str, tuple[str, PatientIdentity]] = {}
    records: list[ClinicalRecord] = []
    for path, instance in instances:
        rel = _rel(path, root)
        found = reports.find(instance, path)
        if found is None and modality == "vision_language":
            looked = [f"{instance.study_instance_uid}.txt"] + ([f"{instance.accession_number}.txt"]
                                                              if instance.accession_number else [])
            outcomes[rel] = FileOutcome(rel, SKIPPED, f"no paired report (looked for {' or '.join(looked)} and a FHIR "
                                                      "DiagnosticReport with its study UID or accession number)")
            continue
        identity = instance.identity
        known = patients.get(identity.key)
        if known is not None and _person(known[1]) != _person(identity):
            differ = [label for label, a, b in zip(("name", "name", "birth date", "sex"), _person(known[1]),
                                                    _person(identity)) if a != b]
            raise DicomImportError(f"{known[0]}, {rel}", "one PatientID names two different patients "
                                   f"(their {' and '.join(dict.fromkeys(differ))} differ)")
        patients.setdefault(identity.key, (rel, identity))
        text, source = found if found is not None else ("", "none")
        records.append(instance.record(text, report_source=source))
        outcomes[rel] = FileOutcome(rel, IMPORTED, "", instance.sop_instance_uid)

    for (_, _), path in reports.text_files.items():
        rel = _rel(path, root)
        if reports.used.get(rel):
            outcomes[rel] = FileOutcome(rel, REPORT, f"paired with {reports.used[rel]} instance(s)")
        elif reports.is_empty(path):
            outcomes[rel] = FileOutcome(rel, IGNORED, "empty report")
        else:
            outcomes[rel] = FileOutcome(rel, IGNORED, "no imported instance has this StudyInstanceUID or AccessionNumber")
    for path in files:
        rel = _rel(path, root)
        if path.suffix.lower() != ".json":
            continue
        if reports.used.get(rel):
            outcomes[rel] = FileOutcome(rel, REPORT, f"paired with {reports.used[rel]} instance(s)")
        else:
            outcomes[rel] = FileOutcome(rel, IGNORED, reports.ignored.get(
                rel, "no imported instance has its study UID or accession number"))
    return ParsedFolder(
        root=str(root), modality=modality, patients=tuple(identity for _, identity in patients.values()),
        records=tuple(records), outcomes=tuple(outcomes[_rel(p, root)] for p in files),
    )


def _person(identity: PatientIdentity) -> tuple:
    return identity.given.lower(), identity.family.lower(), identity.birth_date, identity.sex
