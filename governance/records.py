"""Plain, Django-free record types shared by the synthetic generator and the importers.

A ``PatientIdentity`` holds the direct identifiers of one patient. They are kept only so that
egress checks can scan outputs for them; they are never part of a training cohort.
A ``ClinicalRecord`` is one clinical document (text) with the coded conditions attached to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

# Clinical notes (text datasets; the synthetic hospital writes each of them).
NOTE_TYPES = (
    "discharge_summary",
    "clinic_letter",
    "operative_note",
    "radiology_report",
    "pathology_report",
    "progress_note",
)
DOCUMENT_TYPES = (
    *NOTE_TYPES,
    # Recordings (speech datasets): the record's text is the transcript.
    "consultation_recording",
    "dictation",
    # Molecules datasets (governance/importers/molecules.py): the record's text is the structure.
    "smiles",  # a compound from a patient's sample, as canonical SMILES
    "protein_sequence",  # a patient's protein (e.g. a tumour variant), one-letter amino-acid codes
    # Imaging datasets (governance/importers/dicom.py): one DICOM instance; the text is its study's report.
    "ct_study",
    "mr_study",
    "imaging_study",  # any other modality (CR, DX, US, NM, PT, ...)
)

CONDITION_SYSTEMS = ("icd10", "snomed")

# FHIR code-system URIs for the two condition systems.
ICD10_URI = "http://hl7.org/fhir/sid/icd-10"
SNOMED_URI = "http://snomed.info/sct"


@dataclass(frozen=True)
class PatientIdentity:
    """Direct identifiers of one patient (kept only for the egress identifier scan)."""

    key: str  # source patient id, e.g. "pat-000123"
    mrn: str  # medical record number, e.g. "MRN4829301"; "" when the source has none
    given: str
    family: str
    birth_date: date
    sex: str  # "female" | "male" (an import may also carry FHIR's "other" | "unknown")
    phone: str  # "" when the source has none
    national_id: str  # e.g. a 10-digit NHS number; "" when the source has none


@dataclass(frozen=True)
class ClinicalRecord:
    record_id: str  # e.g. "doc-0000456"
    patient_key: str
    record_date: date
    document_type: str  # one of DOCUMENT_TYPES
    conditions: tuple[tuple[str, str], ...]  # (system, code), system in CONDITION_SYSTEMS
    text: str  # the document; for studies and recordings the paired report or transcript ("" if none)
    age_at_record: int
    # Non-text modalities: the file behind the record (DICOM instance, 16 kHz WAV, ...), stored
    # content-addressed beside the text with this suffix, and non-identifying attributes (DICOM
    # modality and body part, duration, molecule kind, ...) kept on Record.attributes. Identifiers
    # found in a file go to PatientIdentity / the identifier index, never into attributes.
    attachment: bytes | None = None
    attachment_suffix: str = ""
    attributes: tuple[tuple[str, object], ...] = ()


def age_on(birth_date: date, on: date) -> int:
    """Completed years of age on ``on`` (a 29 February birthday counts from 1 March)."""
    years = on.year - birth_date.year
    if (on.month, on.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


_ICD10_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?$")
_SNOMED_RE = re.compile(r"^[1-9][0-9]{5,17}$")

# Verhoeff tables (SNOMED CT identifiers end in a Verhoeff check digit).
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


def is_valid_icd10(code: str) -> bool:
    """WHO ICD-10 shape: letter, two characters, optional dot and 1-4 more (e.g. "E11.9", "C61")."""
    return bool(_ICD10_RE.match(code))


def is_valid_snomed(code: str) -> bool:
    """SNOMED CT concept id: 6-18 digits, no leading zero, valid Verhoeff check digit."""
    return bool(_SNOMED_RE.match(code)) and verhoeff_valid(code)


def nhs_check_digit(nine_digits: str) -> int | None:
    """Modulus-11 check digit for the first nine digits of an NHS number (None: not issuable)."""
    total = sum(int(d) * w for d, w in zip(nine_digits, range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid_nhs_number(value: str) -> bool:
    digits = value.replace(" ", "")
    if len(digits) != 10 or not digits.isdigit():
        return False
    return nhs_check_digit(digits[:9]) == int(digits[9])


def format_nhs_number(value: str) -> str:
    """The 3-3-4 spaced form in which NHS numbers are usually printed ("999 123 4567")."""
    if len(value) == 10 and value.isdigit():
        return f"{value[:3]} {value[3:6]} {value[6:]}"
    return value


def identifier_surface_forms(identity: PatientIdentity) -> tuple[str, ...]:
    """The strings under which this patient's identifiers appear in free text.

    Meant for identifier scans: the MRN, the national id both bare and 3-3-4 spaced, the phone
    number, the full name, and the birth date as dd/mm/yyyy. Empty values are left out.
    """
    forms = [
        identity.mrn,
        identity.national_id,
        format_nhs_number(identity.national_id),
        identity.phone,
        f"{identity.given} {identity.family}".strip(),
        identity.birth_date.strftime("%d/%m/%Y"),
    ]
    seen: dict[str, None] = {}
    for form in forms:
        if form and form not in seen:
            seen[form] = None
    return tuple(seen)
