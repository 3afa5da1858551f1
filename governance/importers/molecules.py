"""Import molecules (SMILES in CSV, or SDF) and protein sequences (FASTA) into a molecules dataset.

The unit of privacy is the patient, as everywhere else: every entry belongs to one patient (a
compound measured in the patient's samples, a tumour's variant protein, an antibody sequenced from
the patient) and names that patient, with the birth date and sex that the cohort filter and the
per-patient counts need. An entry without a patient is invalid. The record's text is the
structure itself: the canonical SMILES (RDKit) or the upper-case one-letter amino-acid sequence.

Formats (UTF-8):

* CSV with a header row, columns in any order: ``patient_id, birth_date, sex, record_id, date,
  smiles`` and optionally ``name`` (the compound's name). Unknown columns are refused.
* SDF (read with RDKit's ``Chem.SDMolSupplier``): one molecule per record, the same fields as data
  items (``> <patient_id>`` ...); ``name`` falls back to the title line.
* FASTA: ``>RECORD_ID patient=P birth_date=YYYY-MM-DD sex=female date=YYYY-MM-DD [name=KRAS_G12D]``,
  then the sequence on one or more lines (whitespace ignored, a final ``*`` stop dropped, letters
  upper-cased). Letters: the 20 standard amino acids and X, B, Z, U, O.

Dates are ISO ``YYYY-MM-DD``; sex is female, male, other or unknown. Every entry is checked on its
own; an invalid one is reported with its line number and the reason (RDKit's own message for a
structure it refuses: parse error, valence, kekulisation, ...) and left out. A file that cannot be
read at all (not UTF-8, missing or unknown CSV columns) raises :class:`MoleculeImportError`. What
the database receives is decided by the caller: ``import_molecules`` writes the valid entries in
one transaction, and nothing at all when no entry is valid.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from governance.records import ClinicalRecord, PatientIdentity, age_on

__all__ = [
    "AMINO_ACIDS", "FORMATS", "InvalidEntry", "MoleculeImportError", "ParsedMolecules", "StructureError",
    "canonical_smiles", "checked_protein", "checked_structure", "parse_file",
]

FORMATS = ("csv", "sdf", "fasta")
SUFFIXES = {".csv": "csv", ".sdf": "sdf", ".sd": "sdf", ".fasta": "fasta", ".fa": "fasta", ".faa": "fasta"}
SMILES_TYPE = "smiles"
PROTEIN_TYPE = "protein_sequence"

# 20 standard amino acids, X (unknown), B (D/N), Z (E/Q), U (selenocysteine), O (pyrrolysine).
AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY" "XBZUO")
MIN_PROTEIN_LENGTH = 5
MAX_PROTEIN_LENGTH = 5000
MAX_SMILES_LENGTH = 1000
MAX_NAME_LENGTH = 100
SEXES = ("female", "male", "other", "unknown")

CSV_REQUIRED = ("patient_id", "birth_date", "sex", "record_id", "date", "smiles")
CSV_OPTIONAL = ("name",)
ENTRY_FIELDS = ("patient_id", "birth_date", "sex", "record_id", "date")
FASTA_KEYS = {"patient": "patient_id", "birth_date": "birth_date", "sex": "sex", "date": "date", "name": "name"}
_RDKIT_STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


class MoleculeImportError(ValueError):
    """A file that cannot be imported at all; the message names the file (and line) and the reason."""


class StructureError(ValueError):
    """A SMILES or sequence that is not a valid structure; the message is the reason."""


@dataclass(frozen=True)
class InvalidEntry:
    line: int  # first line of the entry in the file
    record_id: str  # "" when the entry names none
    reason: str

    def __str__(self) -> str:
        named = f" ({self.record_id})" if self.record_id else ""
        return f"line {self.line}{named}: {self.reason}"


@dataclass(frozen=True)
class ParsedMolecules:
    source: str
    format: str
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]
    invalid: tuple[InvalidEntry, ...]

    @property
    def entries(self) -> int:
        return len(self.records) + len(self.invalid)


# --- structures --------------------------------------------------------------------------------

@contextmanager
def rdkit_messages() -> Iterator[list[str]]:
    """Route RDKit's log to a list for the duration (nothing reaches stderr); yields that list."""
    from rdkit import rdBase

    rdBase.LogToPythonLogger()
    logger = logging.getLogger("rdkit")
    captured: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(_RDKIT_STAMP.sub("", record.getMessage()).strip())

    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [_Collect()], False
    try:
        yield captured
    finally:
        logger.handlers, logger.propagate = saved


def _reason(messages: list[str], fallback: str) -> str:
    # RDKit repeats the input and draws a caret under it; the first line is the diagnosis.
    return messages[0] if messages else fallback


def canonical_smiles(smiles: str) -> tuple[str, int]:
    """RDKit's canonical SMILES and heavy-atom count of ``smiles``, or StructureError with RDKit's reason."""
    from rdkit import Chem

    smiles = smiles.strip()
    if not smiles:
        raise StructureError("empty SMILES")
    if len(smiles) > MAX_SMILES_LENGTH:
        raise StructureError(f"SMILES longer than {MAX_SMILES_LENGTH} characters")
    if any(ch.isspace() for ch in smiles):
        raise StructureError("SMILES contains whitespace")
    with rdkit_messages() as messages:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise StructureError(f"invalid SMILES: {_reason(messages, 'RDKit could not parse it')}")
    heavy = mol.GetNumHeavyAtoms()
    if heavy == 0:
        raise StructureError("SMILES has no heavy atoms")
    return Chem.MolToSmiles(mol), heavy


def checked_protein(sequence: str) -> str:
    """The sequence upper-cased, whitespace and a final ``*`` removed; StructureError if not a protein."""
    cleaned = "".join(sequence.split()).upper()
    if cleaned.endswith("*"):
        cleaned = cleaned[:-1]
    if not cleaned:
        raise StructureError("empty sequence")
    for position, letter in enumerate(cleaned, 1):
        if letter not in AMINO_ACIDS:
            raise StructureError(
                f"{letter!r} at position {position} is not an amino-acid letter "
                "(allowed: the 20 standard amino acids and X, B, Z, U, O)")
    if not MIN_PROTEIN_LENGTH <= len(cleaned) <= MAX_PROTEIN_LENGTH:
        raise StructureError(
            f"sequence of {len(cleaned)} residues; allowed {MIN_PROTEIN_LENGTH} to {MAX_PROTEIN_LENGTH}")
    return cleaned


def checked_structure(document_type: str, text: str) -> str:
    """The structure of a stored record, checked again (staging reads it back from disk)."""
    if document_type == SMILES_TYPE:
        return canonical_smiles(text)[0]
    if document_type == PROTEIN_TYPE:
        return checked_protein(text)
    raise StructureError(f"document type {document_type!r} is not a molecule or a protein sequence")


# --- entries -------------------------------------------------------------------------------------

@dataclass
class _Collector:
    """Turns checked entries into identities and records; checks what spans entries."""

    patients: dict[str, PatientIdentity] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)  # patient -> line
    record_lines: dict[str, int] = field(default_factory=dict)
    records: list[ClinicalRecord] = field(default_factory=list)
    invalid: list[InvalidEntry] = field(default_factory=list)

    def reject(self, line: int, record_id: str, reason: str) -> None:
        self.invalid.append(InvalidEntry(line, record_id, reason))

    def add(self, line: int, fields: dict[str, str], *, document_type: str, text: str, attributes: dict) -> None:
        record_id = fields.get("record_id", "").strip()
        try:
            identity, record_date = self._identity(line, fields)
            if not record_id:
                raise StructureError("no record_id")
            if len(record_id) > 100:
                raise StructureError("record_id longer than 100 characters")
            if record_id in self.record_lines:
                raise StructureError(f"record_id already used on line {self.record_lines[record_id]}")
        except StructureError as exc:
            self.reject(line, record_id, str(exc))
            return
        self.patients.setdefault(identity.key, identity)
        self.first_seen.setdefault(identity.key, line)
        self.record_lines[record_id] = line
        name = (fields.get("name") or "").strip()
        if name:
            attributes = {**attributes, "name": name[:MAX_NAME_LENGTH]}
        self.records.append(ClinicalRecord(
            record_id=record_id, patient_key=identity.key, record_date=record_date, document_type=document_type,
            conditions=(), text=text, age_at_record=age_on(identity.birth_date, record_date),
            attributes=tuple(sorted(attributes.items())),
        ))

    def _identity(self, line: int, fields: dict[str, str]) -> tuple[PatientIdentity, date]:
        missing = [name for name in ENTRY_FIELDS if not (fields.get(name) or "").strip()]
        if missing:
            raise StructureError(f"missing {', '.join(missing)} (every entry belongs to a patient)")
        key = fields["patient_id"].strip()
        if len(key) > 100:
            raise StructureError("patient_id longer than 100 characters")
        birth_date = _date(fields["birth_date"], "birth_date")
        record_date = _date(fields["date"], "date")
        sex = fields["sex"].strip().lower()
        if sex not in SEXES:
            raise StructureError(f"sex {fields['sex'].strip()!r} is not one of {', '.join(SEXES)}")
        if record_date < birth_date:
            raise StructureError(f"date {record_date} is before the patient's birth date")
        known = self.patients.get(key)
        if known is not None and (known.birth_date, known.sex) != (birth_date, sex):
            raise StructureError(
                f"patient {key} has birth date {known.birth_date} and sex {known.sex} on line "
                f"{self.first_seen[key]}, here {birth_date} and {sex}")
        identity = known or PatientIdentity(key=key, mrn="", given="", family="", birth_date=birth_date, sex=sex,
                                            phone="", national_id="")
        return identity, record_date

    def result(self, source: str, fmt: str) -> ParsedMolecules:
        used = {record.patient_key for record in self.records}
        return ParsedMolecules(
            source=source, format=fmt, patients=tuple(p for key, p in self.patients.items() if key in used),
            records=tuple(self.records), invalid=tuple(sorted(self.invalid, key=lambda e: e.line)),
        )


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise StructureError(f"{name} {value.strip()!r} is not a date (YYYY-MM-DD)") from None


def _smiles_entry(collector: _Collector, line: int, fields: dict[str, str], smiles: str) -> None:
    try:
        canonical, heavy = canonical_smiles(smiles)
    except StructureError as exc:
        collector.reject(line, (fields.get("record_id") or "").strip(), str(exc))
        return
    collector.add(line, fields, document_type=SMILES_TYPE, text=canonical,
                  attributes={"kind": "small_molecule", "heavy_atoms": heavy})


def _protein_entry(collector: _Collector, line: int, fields: dict[str, str], sequence: str) -> None:
    try:
        checked = checked_protein(sequence)
    except StructureError as exc:
        collector.reject(line, (fields.get("record_id") or "").strip(), str(exc))
        return
    collector.add(line, fields, document_type=PROTEIN_TYPE, text=checked,
                  attributes={"kind": "protein", "length": len(checked)})


# --- files ---------------------------------------------------------------------------------------

def parse_file(path: Path | str, fmt: str | None = None) -> ParsedMolecules:
    """Read one CSV, SDF or FASTA file (format from ``fmt``, else from the suffix)."""
    path = Path(path)
    fmt = fmt or SUFFIXES.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise MoleculeImportError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass --format {'|'.join(FORMATS)}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise MoleculeImportError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise MoleculeImportError(f"{path}: line {line} is not UTF-8") from None
    parser = {"csv": _parse_csv, "sdf": _parse_sdf, "fasta": _parse_fasta}[fmt]
    collector = _Collector()
    parser(text, str(path), collector)
    return collector.result(str(path), fmt)


def _parse_csv(text: str, source: str, collector: _Collector) -> None:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        raise MoleculeImportError(f"{source}: the file is empty (a header row is expected)")
    reader.fieldnames = header
    missing = [name for name in CSV_REQUIRED if name not in header]
    unknown = [name for name in header if name not in CSV_REQUIRED + CSV_OPTIONAL]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if missing or unknown or duplicated:
        problems = [f"missing column(s) {', '.join(missing)}" if missing else "",
                    f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                    f"repeated column(s) {', '.join(duplicated)}" if duplicated else ""]
        raise MoleculeImportError(
            f"{source}: line 1: {'; '.join(p for p in problems if p)} "
            f"(columns: {', '.join(CSV_REQUIRED)}, optionally {', '.join(CSV_OPTIONAL)})")
    try:
        for row in reader:
            line = reader.line_num  # the row's (last) line; blank lines are skipped by the reader
            if None in row or None in row.values():
                collector.reject(line, (row.get("record_id") or "").strip(),
                                 f"has a different number of fields from the header's {len(header)}")
                continue
            if not any(value.strip() for value in row.values()):
                continue  # a blank row
            _smiles_entry(collector, line, row, row["smiles"])
    except csv.Error as exc:
        raise MoleculeImportError(f"{source}: line {reader.line_num}: not valid CSV ({exc})") from None


def _sdf_blocks(text: str) -> Iterator[tuple[int, str]]:
    """Each record's first line number and text, up to and including its ``$$$$`` line."""
    lines = text.splitlines(keepends=True)
    start, block = 1, []
    for number, raw in enumerate(lines, 1):
        block.append(raw)
        if raw.rstrip() == "$$$$":
            yield start, "".join(block)
            start, block = number + 1, []
    if any(raw.strip() for raw in block):
        yield start, "".join(block) + ("" if block[-1].endswith("\n") else "\n") + "$$$$\n"


def _parse_sdf(text: str, source: str, collector: _Collector) -> None:
    from rdkit import Chem

    for line, block in _sdf_blocks(text):
        supplier = Chem.SDMolSupplier()
        with rdkit_messages() as messages:
            # Unsanitised first: the data items are readable even when the chemistry is not.
            supplier.SetData(block, sanitize=False, removeHs=False)
            mol = next(iter(supplier), None)
        if mol is None:
            collector.reject(line, "", f"unreadable SDF record: {_reason(messages, 'RDKit could not parse it')}")
            continue
        # GetProp, not GetPropsAsDict: the latter turns a patient id "007" into the number 7.
        fields = {name: mol.GetProp(name) if mol.HasProp(name) else "" for name in ENTRY_FIELDS}
        fields["name"] = mol.GetProp("name") if mol.HasProp("name") else mol.GetProp("_Name") if mol.HasProp("_Name") else ""
        with rdkit_messages() as messages:
            problem = None
            try:
                Chem.SanitizeMol(mol)
            except Exception as exc:  # noqa: BLE001 -- RDKit raises its own exception types
                problem = _reason(messages, str(exc) or exc.__class__.__name__)
            else:
                # Read again the standard way (sanitised, stereo perceived from the record's wedges or 3D).
                supplier.SetData(block)
                mol = next(iter(supplier), None)
        if problem is not None or mol is None:
            collector.reject(line, fields["record_id"].strip(), f"invalid molecule: {problem or _reason(messages, 'RDKit refused it')}")
            continue
        # Canonicalise through SMILES, so that an SDF and a CSV entry of one molecule store one text.
        _smiles_entry(collector, line, fields, Chem.MolToSmiles(mol))


def _parse_fasta(text: str, source: str, collector: _Collector) -> None:
    header: tuple[int, str] | None = None
    sequence: list[str] = []
    orphan_line = 0  # first sequence line before any header

    def flush() -> None:
        if header is not None:
            _fasta_entry(collector, *header, "".join(sequence))

    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith(">"):
            flush()
            header, sequence = (number, stripped[1:].strip()), []
        elif header is None:
            if not orphan_line:
                orphan_line = number
                collector.reject(number, "", "sequence line before any '>' header (an entry needs a header "
                                             "naming its record and patient)")
        else:
            sequence.append(stripped)
    flush()


def _fasta_entry(collector: _Collector, line: int, header: str, sequence: str) -> None:
    tokens = header.split()
    if not tokens or "=" in tokens[0]:
        collector.reject(line, "", "the header names no record id ('>RECORD_ID patient=... ')")
        return
    fields = {"record_id": tokens[0]}
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep or key not in FASTA_KEYS:
            collector.reject(line, tokens[0], f"header field {token!r} is not one of "
                                              f"{', '.join(k + '=' for k in FASTA_KEYS)}")
            return
        fields[FASTA_KEYS[key]] = value
    _protein_entry(collector, line, fields, sequence)
