"""Synthetic imaging studies: small CT/MR-like DICOM images with a drawn finding and a report that says so.

Deterministic per seed. Patients are the first ``patients`` of ``generate_hospital(patients, seed)``
(same names, MRNs, birth dates and sexes as the synthetic notes), seen as DICOM holds them: the
MRN is the PatientID (and the source key), and DICOM carries no phone or national id. About a
third of the patients have two or three studies, months apart; a lesion seen once is seen again
at follow-up, the same or larger, and the report says what it measured before.

Each study is one series of one or two instances (single-frame, Explicit VR Little Endian, CT
Image Storage or MR Image Storage, 64×64 by default or 32×32). The image is coronal-like: the
top of the image is superior and the image's left is the patient's right (radiological
convention), so "right upper zone" means the upper-left quarter of the pixel grid.

* CT chest: stored values are uint16 (12 bits) with RescaleIntercept -1024 (HU = stored - 1024):
  air -1000 HU outside an elliptical body of soft tissue (40 HU, noise SD 8); a lesion is a disc
  of 180 HU ("Round hyperdense lesion, 8 mm, in the right upper zone.").
* MR head: uint16 (12 bits), no rescale: background about 10, tissue about 300, a lesion is a
  disc of 800 ("Round T2 hyperintense lesion, ...").

Lesion diameters are 5-15 mm; pixel spacing is 64/size mm, so the disc is drawn to scale. Its
centre lies in the middle of its quarter of the image, within a few pixels, so the disc stays
inside its quarter and inside the body.

Every file also carries what real exports carry and de-identification must remove: the
patient's name, ID and birth date, an accession number (also quoted in the report), a referring
physician, the institution, and a private block that repeats the patient ID.

For building models without touching the demo datasets: ``synthetic_reports(n, seed)`` gives a
report corpus (for a tokenizer) and ``synthetic_images(n, seed)`` images with their reports.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from governance.importers.dicom import read_instance
from governance.records import ClinicalRecord, PatientIdentity
from governance.synthetic import _CLINICIAN_SURNAMES, _HOSPITALS, _INITIALS, generate_hospital

__all__ = [
    "QUADRANTS",
    "Finding",
    "SyntheticImage",
    "SyntheticImaging",
    "SyntheticStudy",
    "derived_uid",
    "generate_imaging",
    "synthetic_images",
    "synthetic_reports",
    "write_dicom_tree",
]

QUADRANTS = ("right upper", "left upper", "right lower", "left lower")
LESION_SIZES_MM = (5, 6, 8, 10, 12, 15)
IMAGE_SIZES = (32, 64)
PRIVATE_CREATOR = "RAPHA SYNTHETIC"
_CT = {"sop_class": CTImageStorage, "body_part": "CHEST", "title": "CT CHEST", "lesion": "hyperdense",
       "background": 24, "tissue": 1064, "lesion_value": 1204, "noise": 8, "window": (40, 400), "intercept": -1024}
_MR = {"sop_class": MRImageStorage, "body_part": "HEAD", "title": "MRI HEAD", "lesion": "T2 hyperintense",
       "background": 10, "tissue": 300, "lesion_value": 800, "noise": 8, "window": (500, 1000), "intercept": 0}
_SPEC = {"CT": _CT, "MR": _MR}
_INDICATIONS = {
    "CT": ("Cough for six weeks.", "Weight loss.", "Haemoptysis.", "Breathlessness.", "Smoker, chest pain."),
    "MR": ("Headache.", "New seizure.", "Dizziness.", "Visual disturbance.", "Memory problems."),
}
_UID_NAMESPACE = "rapha-synthetic-imaging"


@dataclass(frozen=True)
class Finding:
    size_mm: int
    quadrant: str  # one of QUADRANTS
    previous_size_mm: int | None = None  # at the patient's previous study, if any


@dataclass(frozen=True)
class SyntheticStudy:
    patient_key: str  # the PatientID (MRN)
    study_instance_uid: str
    accession_number: str
    study_date: date
    modality: str  # "CT" | "MR"
    finding: Finding | None
    report: str
    instances: tuple[bytes, ...]  # DICOM Part 10 files
    burned_in: bool = False


@dataclass(frozen=True)
class SyntheticImaging:
    seed: int
    size: int
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]  # one per instance, as the DICOM importer reads them
    studies: tuple[SyntheticStudy, ...]


@dataclass(frozen=True)
class SyntheticImage:
    dicom: bytes
    pixels: np.ndarray  # stored values (apply RescaleSlope/Intercept for HU)
    report: str
    modality: str
    finding: Finding | None


@dataclass(frozen=True)
class _Plan:
    modality: str
    indication: str
    finding: Finding | None
    accession: str
    follow_up: bool


def generate_imaging(
    patients: int,
    seed: int,
    *,
    size: int = 64,
    burned_in_fraction: float = 0.0,
    start: date = date(2016, 1, 1),
    end: date = date(2025, 6, 30),
) -> SyntheticImaging:
    """``patients`` patients with one to three studies each; equal arguments give equal results.

    ``burned_in_fraction`` of the studies carry BurnedInAnnotation YES and a block of "text"
    pixels along the bottom edge of the image.
    """
    if not 0 <= patients <= 100_000:
        raise ValueError("patients must be between 0 and 100000")
    if size not in IMAGE_SIZES:
        raise ValueError(f"size must be one of {IMAGE_SIZES}")
    if not 0.0 <= burned_in_fraction <= 1.0:
        raise ValueError("burned_in_fraction must be between 0 and 1")
    hospital = generate_hospital(patients, seed)
    rng = random.Random(f"{_UID_NAMESPACE}:{seed}")
    institution = rng.choice(_HOSPITALS)[0]
    identities: list[PatientIdentity] = []
    records: list[ClinicalRecord] = []
    studies: list[SyntheticStudy] = []
    used_accessions: set[str] = set()
    for number, person in enumerate(hospital.patients, 1):
        identity = PatientIdentity(key=person.mrn, mrn=person.mrn, given=person.given, family=person.family,
                                   birth_date=person.birth_date, sex=person.sex, phone="", national_id="")
        identities.append(identity)
        first_day = max(start, _birthday(identity.birth_date, 18))
        when = first_day + timedelta(days=rng.randrange(max(1, (end - first_day).days - 800)))
        modality = "CT" if rng.random() < 0.6 else "MR"
        count = rng.choices((1, 2, 3), weights=(6, 2, 1))[0]
        finding = None
        for index in range(count):
            plan = _plan(rng, modality, finding, follow_up=index > 0, used=used_accessions)
            finding = plan.finding
            study = _study(rng, seed, identity, number, index, when, plan, size, institution,
                           burned_in=rng.random() < burned_in_fraction)
            studies.append(study)
            for data in study.instances:
                records.append(read_instance(data).record(study.report, report_source="text_file"))
            when = when + timedelta(days=rng.randrange(60, 400))
    return SyntheticImaging(seed=seed, size=size, patients=tuple(identities), records=tuple(records),
                            studies=tuple(studies))


def synthetic_reports(n: int, seed: int) -> list[str]:
    """``n`` radiology reports in the generator's style, with no patients behind them (a tokenizer corpus)."""
    rng = random.Random(f"{_UID_NAMESPACE}:reports:{seed}")
    used: set[str] = set()
    reports = []
    finding = None
    for i in range(n):
        follow_up = finding is not None and rng.random() < 0.3
        plan = _plan(rng, "CT" if rng.random() < 0.6 else "MR", finding if follow_up else None,
                     follow_up=follow_up, used=used)
        finding = plan.finding
        reports.append(_report(plan))
    return reports


def synthetic_images(n: int, seed: int, *, size: int = 64) -> list[SyntheticImage]:
    """``n`` images (the first instance of successive studies) with their reports, for pretraining."""
    images = []
    for study in generate_imaging(max(1, n), seed, size=size).studies[:n]:  # at least one study per patient
        ds = pydicom.dcmread(io.BytesIO(study.instances[0]))
        images.append(SyntheticImage(dicom=study.instances[0], pixels=ds.pixel_array, report=study.report,
                                     modality=study.modality, finding=study.finding))
    return images


def write_dicom_tree(imaging: SyntheticImaging, folder: str | Path, *, reports: str = "text") -> list[Path]:
    """Write ``<MRN>/<StudyUID>/<SeriesUID>/<n>.dcm`` and each study's report; returns the files written.

    ``reports="text"`` writes ``<MRN>/<StudyUID>/<StudyUID>.txt``; ``"fhir"`` writes a FHIR R4
    DiagnosticReport ``<MRN>/<StudyUID>/report.json`` linked by accession number; ``"none"`` none.
    """
    if reports not in ("text", "fhir", "none"):
        raise ValueError("reports must be text, fhir or none")
    root = Path(folder)
    written: list[Path] = []
    for study in imaging.studies:
        study_dir = root / study.patient_key / study.study_instance_uid
        for number, data in enumerate(study.instances, 1):
            series = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID)
            path = study_dir / series / f"{number}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
        if reports == "text":
            path = study_dir / f"{study.study_instance_uid}.txt"
            path.write_text(study.report + "\n", encoding="utf-8")
            written.append(path)
        elif reports == "fhir":
            path = study_dir / "report.json"
            path.write_text(json.dumps(_diagnostic_report(study), indent=1), encoding="utf-8")
            written.append(path)
    return written


# Plans and reports -------------------------------------------------------------------------------

def _plan(rng: random.Random, modality: str, previous: Finding | None, *, follow_up: bool, used: set[str]) -> _Plan:
    if previous is not None:
        grown = min(LESION_SIZES_MM[-1], previous.size_mm + rng.choice((0, 0, 1, 2, 3)))
        finding = Finding(size_mm=grown, quadrant=previous.quadrant, previous_size_mm=previous.size_mm)
    elif rng.random() < 0.55:
        finding = Finding(size_mm=rng.choice(LESION_SIZES_MM), quadrant=rng.choice(QUADRANTS))
    else:
        finding = None
    while True:
        accession = f"ACC{rng.randrange(10**7, 10**8)}"
        if accession not in used:
            used.add(accession)
            break
    indication = "Follow-up of known lesion." if follow_up and previous is not None else rng.choice(_INDICATIONS[modality])
    return _Plan(modality=modality, indication=indication, finding=finding, accession=accession, follow_up=follow_up)


def _report(plan: _Plan) -> str:
    spec = _SPEC[plan.modality]
    finding = plan.finding
    if finding is None:
        findings = "No focal lesion."
        impression = "Normal study."
    else:
        before = ""
        if finding.previous_size_mm is not None:
            before = (" (unchanged)" if finding.previous_size_mm == finding.size_mm
                      else f" (previously {finding.previous_size_mm} mm)")
        findings = f"Round {spec['lesion']} lesion, {finding.size_mm} mm, in the {finding.quadrant} zone{before}."
        impression = f"{finding.size_mm} mm lesion in the {finding.quadrant} zone; follow-up imaging is advised."
    return "\n".join((
        spec["title"],
        f"Accession number: {plan.accession}",
        f"Indication: {plan.indication}",
        f"Findings: {findings}",
        f"Impression: {impression}",
    ))


def _diagnostic_report(study: SyntheticStudy) -> dict:
    return {
        "resourceType": "DiagnosticReport",
        "id": study.accession_number.lower(),
        "status": "final",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "ACSN"}]}, "value": study.accession_number}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "CT" if study.modality == "CT" else "MR"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        "effectiveDateTime": study.study_date.isoformat(),
        "presentedForm": [{"contentType": "text/plain; charset=utf-8",
                           "data": base64.b64encode(study.report.encode("utf-8")).decode("ascii")}],
    }


# Images ------------------------------------------------------------------------------------------

def _study(rng: random.Random, seed: int, identity: PatientIdentity, number: int, index: int, when: date, plan: _Plan,
           size: int, institution: str, *, burned_in: bool) -> SyntheticStudy:
    def uid(kind: str) -> str:
        return derived_uid(_UID_NAMESPACE, str(seed), str(number), str(index), kind)

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    referrer = f"{rng.choice(_CLINICIAN_SURNAMES)}^{rng.choice(_INITIALS)}"
    clock = f"{rng.randrange(8, 18):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    instances = []
    for slice_number in range(1, rng.choice((1, 2)) + 1):
        pixels = _render(plan, size, np.random.default_rng(rng.getrandbits(64)), burned_in=burned_in)
        instances.append(_dicom(
            identity=identity, plan=plan, pixels=pixels, when=when, study_uid=study_uid, series_uid=series_uid,
            frame_uid=frame_uid, sop_uid=uid(f"instance-{slice_number}"), slice_number=slice_number,
            study_id=f"{index + 1}", clock=clock, referrer=referrer, institution=institution, burned_in=burned_in,
        ))
    return SyntheticStudy(patient_key=identity.key, study_instance_uid=study_uid, accession_number=plan.accession,
                          study_date=when, modality=plan.modality, finding=plan.finding, report=_report(plan),
                          instances=tuple(instances), burned_in=burned_in)


def _spacing(size: int) -> float:
    return 64.0 / size


def _render(plan: _Plan, size: int, rng: np.random.Generator, *, burned_in: bool) -> np.ndarray:
    spec = _SPEC[plan.modality]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    centre = size / 2
    body = ((cols - centre) / (0.48 * size)) ** 2 + ((rows - centre) / (0.44 * size)) ** 2 <= 1.0
    image = np.where(body, spec["tissue"], spec["background"]).astype(np.float64)
    image += rng.normal(0.0, spec["noise"], size=(size, size))
    if plan.finding is not None:
        offset = 0.2 * size
        jitter = size / 32
        row = centre + (-offset if "upper" in plan.finding.quadrant else offset) + rng.uniform(-jitter, jitter)
        col = centre + (-offset if plan.finding.quadrant.startswith("right") else offset) + rng.uniform(-jitter, jitter)
        radius = plan.finding.size_mm / 2 / _spacing(size)
        disc = (rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2
        image[disc] = spec["lesion_value"] + rng.normal(0.0, spec["noise"], size=int(disc.sum()))
    if burned_in:  # a block of "text" along the bottom edge, outside the body
        image[size - 3:size - 1, 2:size // 2] = 4000
    return np.clip(np.rint(image), 0, 4095).astype(np.uint16)


def _dicom(*, identity: PatientIdentity, plan: _Plan, pixels: np.ndarray, when: date, study_uid: str,
           series_uid: str, frame_uid: str, sop_uid: str, slice_number: int, study_id: str, clock: str, referrer: str,
           institution: str, burned_in: bool) -> bytes:
    spec = _SPEC[plan.modality]
    size = pixels.shape[0]
    spacing = _spacing(size)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = spec["sop_class"]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RAPHA_SYNTH_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: some synthetic names are not Latin-1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if plan.modality == "CT" else "OTHER"]
    ds.SOPClassUID = spec["sop_class"]
    ds.SOPInstanceUID = sop_uid
    stamp = when.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = stamp
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = clock
    ds.AccessionNumber = plan.accession
    ds.Modality = plan.modality
    ds.Manufacturer = "Rapha Synthetic"
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = referrer
    ds.StudyDescription = spec["title"]
    ds.SeriesDescription = f"{spec['title']} coronal"
    ds.PatientName = f"{identity.family}^{identity.given}"
    ds.PatientID = identity.mrn
    ds.PatientBirthDate = identity.birth_date.strftime("%Y%m%d")
    ds.PatientSex = {"female": "F", "male": "M"}.get(identity.sex, "O")
    ds.BodyPartExamined = spec["body_part"]
    ds.SliceThickness = "5"
    if plan.modality == "CT":
        ds.KVP = "120"
    else:
        ds.MagneticFieldStrength = "1.5"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = slice_number
    ds.ImagePositionPatient = [-size * spacing / 2, -10.0 * slice_number, size * spacing / 2]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: rows run to the patient's left, columns down
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if plan.modality == "CT":
        ds.RescaleIntercept = str(spec["intercept"])
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = (str(v) for v in spec["window"])
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    block = ds.private_block(0x0099, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", identity.mrn)  # vendors keep identifiers in private tags too
    ds.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def derived_uid(*parts: str) -> str:
    """A UID under the 2.25 root (PS3.5 B.2) computed from ``parts``: equal parts, equal UID."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _birthday(birth: date, years: int) -> date:
    try:
        return birth.replace(year=birth.year + years)
    except ValueError:  # 29 February
        return birth.replace(year=birth.year + years, day=28)
