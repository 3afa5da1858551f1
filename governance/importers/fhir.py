"""Import FHIR R4 Bundles (transaction, collection, searchset) into PatientIdentity / ClinicalRecord.

FHIR version: ``fhir.resources`` 8.x models FHIR R5 at its top level (``fhir.resources.patient``),
which rejects R4 content (for example R4's ``Encounter.class`` is a Coding, R5's a list, and R4's
``DocumentReference.context`` is an object, R5's a list). Synthea and most hospital exports are R4,
so every resource is validated with the ``fhir.resources.R4B`` models (FHIR 4.3.0), the library's
R4-family package; R4B is wire-compatible with R4 for the resources read here.

Rules (all-or-nothing: any error raises ``FhirImportError`` and nothing is returned):

* The bundle must be JSON, ``resourceType`` Bundle, ``type`` transaction, collection or searchset,
  and every entry's resource must pass ``fhir.resources`` validation. In a transaction every entry
  needs a ``request`` with method POST or PUT (an import cannot delete or read).
* Patients come from Patient resources. ``key`` is the resource id (else the fullUrl's uuid, else
  the fullUrl, else ``<source>#<index>``). ``mrn`` is the first identifier whose type is v2-0203
  ``MR`` or whose system contains "mrn"; ``national_id`` the first whose system is a national
  number system (NHS number, US SSN, ...) or whose type is SS, NH, NI or NN*. A Patient needs a
  birthDate (ages are computed from it); a partial one (1956, 1956-03) counts from its first day.
* Records come from DocumentReference (first ``content.attachment`` whose contentType is
  text/plain) and DiagnosticReport (first text/plain ``presentedForm``); the text is the base64
  ``data`` decoded with the contentType's charset (UTF-8 by default). Both need a ``subject``
  that resolves to a Patient in the bundle, and a date (DocumentReference: date, context.period
  start, encounter start; DiagnosticReport: effective[x], issued, encounter start).
* Skipped, with a reason in ``ParsedBundle.skipped`` (and a log warning), not errors: documents
  with no text/plain attachment (images, PDFs, HTML), attachments given only by URL, empty texts,
  DiagnosticReports without presentedForm (structured lab panels), entered-in-error documents,
  refuted / entered-in-error Conditions, Conditions with neither an ICD-10 nor a SNOMED CT coding,
  search outcome entries, and a document whose text duplicates one already read for the same
  patient (Synthea writes each note both as a DiagnosticReport and a DocumentReference).
* Errors: invalid JSON, not a Bundle, unsupported bundle type, a resource failing validation, bad
  base64 (strictly checked), text that does not decode in its charset, a reference the importer
  follows (subject, encounter) that does not resolve in the bundle, a conditional reference that
  matches more than one resource, a subject that is not a Patient, a missing subject, a missing
  birthDate or document date, a record dated before the patient's birth, duplicate fullUrls,
  resource ids, patient keys or record ids. References the importer does not follow (performer,
  author, serviceProvider...) are not checked; Synthea points those at a separate bundle.
* References resolve as ``urn:uuid:``/``urn:oid:`` or absolute URLs against entry fullUrls;
  relative ``Type/id`` against the referencing entry's server base, then by type and id in the
  bundle; conditional ``Type?identifier=system|value`` (also ``_id``) and identifier-only
  References by searching the bundle's resources of that type.
* Conditions: codes are (``icd10``, code) for systems http://hl7.org/fhir/sid/icd-10 (also -cm)
  and (``snomed``, code) for http://snomed.info/sct, in coding order. A Condition whose encounter
  is the encounter of one or more of the patient's records is attached to those records only.
  Otherwise (no encounter, or an encounter without a record) it is attached to every record of the
  patient dated on or after its onset (onset[x], else recordedDate; none: all records) and not
  after its abatement (if given). A record's codes keep the bundle's order without duplicates.
* Document types: a coding in the Rapha document-type system, else LOINC (18842-5 discharge
  summary, 11488-4 consult note -> clinic_letter, 11504-8/28570-0 operative, 18748-4 imaging,
  11526-1/60567-5 pathology, 11506-3/34117-2 progress), else a DiagnosticReport category (v2-0074
  RAD/CT/MR/US/... -> radiology_report, PAT/SP/CP -> pathology_report), else progress_note.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from pydantic import ValidationError

from governance.records import (
    DOCUMENT_TYPES,
    ICD10_URI,
    SNOMED_URI,
    ClinicalRecord,
    PatientIdentity,
    age_on,
)

__all__ = ["FHIR_PACKAGE", "FhirImportError", "ParsedBundle", "SkippedEntry", "parse_bundle", "parse_bundle_file"]

logger = logging.getLogger(__name__)

FHIR_PACKAGE = "fhir.resources.R4B"
SUPPORTED_BUNDLE_TYPES = ("transaction", "collection", "searchset")

DOCUMENT_TYPE_SYSTEM = "https://rapha.example.org/fhir/CodeSystem/document-type"
_ICD10_SYSTEMS = {ICD10_URI, "http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10-uk"}
_SNOMED_SYSTEMS = {SNOMED_URI}
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_NATIONAL_ID_SYSTEMS = {
    "https://fhir.nhs.uk/id/nhs-number",
    "http://hl7.org/fhir/sid/us-ssn",
    "urn:oid:2.16.840.1.113883.4.1",
    "http://ns.electronichealth.net.au/id/hi/ihi/1.0",
    "urn:oid:2.16.578.1.12.4.1.4.1",
}
_NATIONAL_ID_TYPES = {"SS", "NH", "NI"}  # and NN<country>, e.g. NNGBR
_LOINC_TYPES = {
    "18842-5": "discharge_summary",
    "11488-4": "clinic_letter",
    "11504-8": "operative_note",
    "28570-0": "operative_note",
    "18748-4": "radiology_report",
    "11526-1": "pathology_report",
    "60567-5": "pathology_report",
    "11506-3": "progress_note",
    "34117-2": "progress_note",
}
_RADIOLOGY_CATEGORIES = {"RAD", "CT", "MR", "US", "NMR", "NMS", "RX", "VUS", "OUS", "CUS", "XRC"}
_PATHOLOGY_CATEGORIES = {"PAT", "SP", "CP"}


class FhirImportError(ValueError):
    """A bundle that cannot be imported; names the entry (index, fullUrl or id) and the reason."""

    def __init__(
        self,
        entry_index: int | None,
        resource_type: str | None,
        reason: str,
        *,
        full_url: str | None = None,
        resource_id: str | None = None,
        source: str | None = None,
    ) -> None:
        self.entry_index = entry_index
        self.resource_type = resource_type
        self.reason = reason
        self.full_url = full_url
        self.resource_id = resource_id
        self.source = source
        where = "bundle" if entry_index is None else f"entry {entry_index}"
        detail = [resource_type] if resource_type else []
        if full_url:
            detail.append(full_url)
        elif resource_id:
            detail.append(f"id {resource_id}")
        if detail:
            where += f" ({' '.join(detail)})"
        super().__init__(f"{source}: {where}: {reason}" if source else f"{where}: {reason}")


@dataclass(frozen=True)
class SkippedEntry:
    entry_index: int
    resource_type: str
    full_url: str
    reason: str


@dataclass(frozen=True)
class ParsedBundle:
    source: str
    bundle_type: str
    bundle_id: str | None
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]
    skipped: tuple[SkippedEntry, ...]


@dataclass
class _Entry:
    index: int
    full_url: str | None
    rtype: str
    raw: dict
    model: Any

    @property
    def rid(self) -> str | None:
        return self.raw.get("id")


def parse_bundle_file(path: str | Path) -> ParsedBundle:
    """Read and parse one bundle file; ``source`` is the path."""
    p = Path(path)
    return parse_bundle(p.read_bytes(), source=str(p))


def parse_bundle(data: bytes | str | dict, *, source: str) -> ParsedBundle:
    """Parse one FHIR R4 Bundle. Raises FhirImportError; never returns a partial result."""
    return _Parser(source).parse(data)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.entries: list[_Entry | None] = []
        self.by_full_url: dict[str, int] = {}
        self.by_type_id: dict[tuple[str, str], int] = {}
        self.skipped: list[SkippedEntry] = []

    # -- errors --------------------------------------------------------------------------------
    def error(self, index: int | None, reason: str, entry: _Entry | None = None, rtype: str | None = None,
              full_url: str | None = None, rid: str | None = None) -> FhirImportError:
        if entry is not None:
            rtype, full_url, rid = entry.rtype, entry.full_url, entry.rid
        return FhirImportError(index, rtype, reason, full_url=full_url, resource_id=rid, source=self.source)

    def skip(self, entry: _Entry, reason: str) -> None:
        logger.warning("%s: entry %d (%s) skipped: %s", self.source, entry.index,
                       " ".join(x for x in (entry.rtype, entry.full_url or entry.rid) if x), reason)
        self.skipped.append(SkippedEntry(entry.index, entry.rtype, entry.full_url or "", reason))

    # -- top level -----------------------------------------------------------------------------
    def parse(self, data: bytes | str | dict) -> ParsedBundle:
        doc = self._load(data)
        if not isinstance(doc, dict):
            raise self.error(None, f"not a FHIR resource: expected a JSON object, got {type(doc).__name__}")
        rtype = doc.get("resourceType")
        if rtype != "Bundle":
            raise self.error(None, f"not a Bundle: resourceType is {rtype!r}", rtype=str(rtype) if rtype else None)
        raw_entries = doc.get("entry", [])
        if not isinstance(raw_entries, list):
            raise self.error(None, "Bundle.entry must be a list", rtype="Bundle")
        shell = {k: v for k, v in doc.items() if k != "entry"}
        try:
            Bundle.model_validate(shell)
        except ValidationError as exc:
            raise self.error(None, f"invalid Bundle: {_summarise(exc)}", rtype="Bundle") from None
        bundle_type = doc.get("type")
        if bundle_type not in SUPPORTED_BUNDLE_TYPES:
            raise self.error(None, f"unsupported bundle type {bundle_type!r} (supported: {', '.join(SUPPORTED_BUNDLE_TYPES)})",
                             rtype="Bundle")
        self.bundle_type = bundle_type
        for index, raw in enumerate(raw_entries):
            self.entries.append(self._entry(index, raw))
        self._index()
        patients = self._patients()
        records, conditions = self._documents_and_conditions(patients)
        self._attach_conditions(records, conditions)
        return ParsedBundle(
            source=self.source,
            bundle_type=bundle_type,
            bundle_id=doc.get("id"),
            patients=tuple(identity for identity, _ in patients.values()),
            records=tuple(r.build() for r in records),
            skipped=tuple(sorted(self.skipped, key=lambda s: s.entry_index)),
        )

    def _load(self, data: bytes | str | dict) -> Any:
        if isinstance(data, dict):
            return data
        if isinstance(data, (bytes, bytearray)):
            try:
                data = bytes(data).decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise self.error(None, f"invalid JSON: not UTF-8 ({exc})") from None
        if not isinstance(data, str):
            raise self.error(None, f"invalid input type {type(data).__name__}")
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise self.error(None, f"invalid JSON: {exc}") from None

    # -- entries -------------------------------------------------------------------------------
    def _entry(self, index: int, raw: Any) -> _Entry | None:
        if not isinstance(raw, dict):
            raise self.error(index, "entry is not a JSON object")
        full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
        resource = raw.get("resource")
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        rid = resource.get("id") if isinstance(resource, dict) else None
        try:
            entry_model = BundleEntry.model_validate({k: v for k, v in raw.items() if k != "resource"})
        except ValidationError as exc:
            raise self.error(index, f"invalid Bundle.entry: {_summarise(exc)}", rtype=rtype, full_url=full_url,
                             rid=rid) from None
        if self.bundle_type == "transaction":
            if entry_model.request is None:
                raise self.error(index, "transaction entry has no request", rtype=rtype, full_url=full_url, rid=rid)
            if entry_model.request.method not in ("POST", "PUT"):
                raise self.error(index, f"request method {entry_model.request.method} is not supported in an import "
                                 "(only POST and PUT)", rtype=rtype, full_url=full_url, rid=rid)
        if self.bundle_type == "searchset" and entry_model.search is not None and entry_model.search.mode == "outcome":
            entry = _Entry(index, full_url, str(rtype or "OperationOutcome"), resource if isinstance(resource, dict) else {}, None)
            self.skip(entry, "search outcome entry")
            return None
        if resource is None:
            raise self.error(index, "entry has no resource", full_url=full_url)
        if not isinstance(resource, dict) or not isinstance(rtype, str):
            raise self.error(index, "resource is not a JSON object with a resourceType", full_url=full_url)
        try:
            model_class = get_fhir_model_class(rtype)
        except ValueError:
            raise self.error(index, f"unknown resource type {rtype!r}", rtype=rtype, full_url=full_url, rid=rid) from None
        try:
            model = model_class.model_validate(resource)
        except ValidationError as exc:
            base64_errors = [e for e in exc.errors() if "base64" in e.get("type", "")]
            if base64_errors:
                loc = ".".join(str(x) for x in base64_errors[0]["loc"])
                raise self.error(index, f"attachment data is not valid base64 (at {loc})", rtype=rtype,
                                 full_url=full_url, rid=rid) from None
            raise self.error(index, f"invalid {rtype}: {_summarise(exc)}", rtype=rtype, full_url=full_url,
                             rid=rid) from None
        return _Entry(index, full_url, rtype, resource, model)

    def _index(self) -> None:
        for entry in self.entries:
            if entry is None:
                continue
            if entry.full_url:
                if entry.full_url in self.by_full_url:
                    raise self.error(entry.index, f"duplicate fullUrl (also entry {self.by_full_url[entry.full_url]})",
                                     entry)
                self.by_full_url[entry.full_url] = entry.index
            if entry.rid:
                key = (entry.rtype, entry.rid)
                if key in self.by_type_id:
                    raise self.error(entry.index, f"duplicate resource {entry.rtype}/{entry.rid} "
                                     f"(also entry {self.by_type_id[key]})", entry)
                self.by_type_id[key] = entry.index

    def _of_type(self, rtype: str) -> list[_Entry]:
        return [e for e in self.entries if e is not None and e.rtype == rtype]

    # -- references ----------------------------------------------------------------------------
    def resolve(self, entry: _Entry, field: str, ref: Any, expected: str | None) -> _Entry:
        """Resolve a Reference model to an entry of the bundle, or raise."""
        reference = getattr(ref, "reference", None)
        if not reference:
            ident = getattr(ref, "identifier", None)
            if ident is not None and (ident.value or ident.system):
                rtype = getattr(ref, "type", None) or expected
                if not rtype:
                    raise self.error(entry.index, f"{field}: identifier reference without a type", entry)
                return self._search(entry, field, rtype, [("identifier", f"{ident.system or ''}|{ident.value or ''}")],
                                    f"{rtype} with identifier {ident.system or ''}|{ident.value or ''}")
            raise self.error(entry.index, f"{field} has no reference", entry)
        if reference.startswith("#"):
            raise self.error(entry.index, f"{field}: contained reference {reference!r} is not supported", entry)
        if "?" in reference:
            rtype, _, query = reference.partition("?")
            rtype = rtype.rstrip("/").rsplit("/", 1)[-1]
            params = parse_qsl(query, keep_blank_values=True)
            if not rtype or not params:
                raise self.error(entry.index, f"{field}: malformed conditional reference {reference!r}", entry)
            return self._search(entry, field, rtype, params, reference)
        target: int | None = self.by_full_url.get(reference)
        if target is None and not reference.startswith("urn:"):
            match = re.search(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$", reference)
            if match:
                rtype, rid = match.group(1), match.group(2)
                base = _server_base(entry.full_url)
                if base and "://" not in reference:
                    target = self.by_full_url.get(f"{base}/{rtype}/{rid}")
                if target is None:
                    target = self.by_type_id.get((rtype, rid))
        if target is None:
            raise self.error(entry.index, f"dangling reference in {field}: {reference!r} does not resolve to a "
                             "resource in this bundle", entry)
        found = self.entries[target]
        if found is None:
            raise self.error(entry.index, f"{field}: {reference!r} refers to a search outcome entry", entry)
        return found

    def _search(self, entry: _Entry, field: str, rtype: str, params: list[tuple[str, str]], shown: str) -> _Entry:
        candidates = self._of_type(rtype)
        for name, value in params:
            if name == "identifier":
                candidates = [c for c in candidates if any(_identifier_matches(i, v) for v in value.split(",")
                                                           for i in c.raw.get("identifier") or [])]
            elif name == "_id":
                candidates = [c for c in candidates if c.rid in value.split(",")]
            else:
                raise self.error(entry.index, f"{field}: unsupported search parameter {name!r} in conditional "
                                 f"reference {shown!r} (supported: identifier, _id)", entry)
        if not candidates:
            raise self.error(entry.index, f"dangling reference in {field}: conditional reference {shown!r} matches "
                             "no resource in this bundle", entry)
        if len(candidates) > 1:
            where = ", ".join(str(c.index) for c in candidates)
            raise self.error(entry.index, f"ambiguous conditional reference in {field}: {shown!r} matches "
                             f"{len(candidates)} resources (entries {where})", entry)
        return candidates[0]

    def subject_patient(self, entry: _Entry, field: str = "subject") -> _Entry:
        ref = getattr(entry.model, field, None)
        if ref is None:
            raise self.error(entry.index, f"missing {field}: a {entry.rtype} must name its patient", entry)
        target = self.resolve(entry, field, ref, "Patient")
        if target.rtype != "Patient":
            raise self.error(entry.index, f"{field} refers to a {target.rtype}, not a Patient", entry)
        return target

    def encounter_of(self, entry: _Entry, ref: Any, field: str) -> _Entry | None:
        if ref is None:
            return None
        target = self.resolve(entry, field, ref, "Encounter")
        if target.rtype != "Encounter":
            raise self.error(entry.index, f"{field} refers to a {target.rtype}, not an Encounter", entry)
        return target

    # -- patients ------------------------------------------------------------------------------
    def _patients(self) -> dict[int, tuple[PatientIdentity, _Entry]]:
        out: dict[int, tuple[PatientIdentity, _Entry]] = {}
        keys: dict[str, int] = {}
        for entry in self._of_type("Patient"):
            identity = self._identity(entry)
            if identity.key in keys:
                raise self.error(entry.index, f"duplicate patient key {identity.key!r} (also entry {keys[identity.key]})",
                                 entry)
            keys[identity.key] = entry.index
            out[entry.index] = (identity, entry)
        return out

    def _identity(self, entry: _Entry) -> PatientIdentity:
        p = entry.model
        if p.birthDate is None:
            raise self.error(entry.index, "Patient has no birthDate (needed to compute ages)", entry)
        birth = _as_date(p.birthDate)
        mrn = national = ""
        for ident in p.identifier or []:
            system = (ident.system or "").lower()
            type_codes = {c.code for c in (ident.type.coding or [])} if ident.type else set()
            if not mrn and ident.value and ("MR" in type_codes or "mrn" in system):
                mrn = ident.value
            elif not national and ident.value and (
                    system in _NATIONAL_ID_SYSTEMS or type_codes & _NATIONAL_ID_TYPES
                    or any(code.startswith("NN") for code in type_codes if code)):
                national = ident.value
        given = family = ""
        names = list(p.name or [])
        if names:
            name = next((n for n in names if n.use == "official"), None) or next(
                (n for n in names if n.use == "usual"), None) or names[0]
            given = " ".join(name.given or [])
            family = name.family or ""
            if not given and not family and name.text:
                parts = name.text.rsplit(" ", 1)
                given, family = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        phone = next((t.value for t in p.telecom or [] if t.system == "phone" and t.value), "")
        key = entry.rid or _full_url_key(entry.full_url) or f"{self.source}#{entry.index}"
        return PatientIdentity(key=key, mrn=mrn, given=given, family=family, birth_date=birth,
                               sex=p.gender or "unknown", phone=phone, national_id=national)

    # -- documents and conditions --------------------------------------------------------------
    def _documents_and_conditions(self, patients):
        records: list[_Draft] = []
        conditions: list[_Cond] = []
        seen_text: dict[tuple[str, str], int] = {}
        record_ids: dict[str, int] = {}
        for entry in self.entries:
            if entry is None:
                continue
            if entry.rtype == "Condition":
                cond = self._condition(entry, patients)
                if cond is not None:
                    conditions.append(cond)
                continue
            if entry.rtype not in ("DocumentReference", "DiagnosticReport"):
                continue
            draft = self._document(entry, patients)
            if draft is None:
                continue
            key = (draft.patient.key, draft.text)
            if key in seen_text:
                self.skip(entry, f"duplicate of the text of entry {seen_text[key]} for the same patient")
                continue
            if draft.record_id in record_ids:
                raise self.error(entry.index, f"duplicate record id {draft.record_id!r} (also entry "
                                 f"{record_ids[draft.record_id]})", entry)
            seen_text[key] = entry.index
            record_ids[draft.record_id] = entry.index
            records.append(draft)
        return records, conditions

    def _document(self, entry: _Entry, patients) -> _Draft | None:
        m = entry.model
        is_docref = entry.rtype == "DocumentReference"
        if m.status == "entered-in-error" or (not is_docref and m.status == "cancelled"):
            self.skip(entry, f"status is {m.status}")
            return None
        patient_entry = self.subject_patient(entry)
        identity = patients[patient_entry.index][0]
        if is_docref:
            attachments = [(c.attachment, f"content.{k}.attachment", (entry.raw.get("content") or [])[k].get("attachment") or {})
                           for k, c in enumerate(m.content or [])]
        else:
            if not m.presentedForm:
                self.skip(entry, "no presentedForm (structured results only, no report text)")
                return None
            attachments = [(a, f"presentedForm.{k}", (entry.raw.get("presentedForm") or [])[k])
                           for k, a in enumerate(m.presentedForm)]
        chosen = None
        other_types: list[str] = []
        for attachment, loc, raw in attachments:
            media = (attachment.contentType or "").split(";")[0].strip().lower()
            if media == "text/plain":
                chosen = (attachment, loc, raw)
                break
            other_types.append(attachment.contentType or "no contentType")
        if chosen is None:
            found = ", ".join(other_types) or "no attachments"
            self.skip(entry, f"no text/plain attachment (found: {found})")
            return None
        attachment, loc, raw = chosen
        if raw.get("data") is None:
            self.skip(entry, f"{loc} has no inline data" + (" (url is not fetched)" if attachment.url else ""))
            return None
        payload = self._decode_base64(entry, loc, raw["data"])
        if attachment.hash is not None:
            expected = base64.b64encode(hashlib.sha1(payload).digest()).decode("ascii")
            if str(raw.get("hash")) != expected:
                raise self.error(entry.index, f"{loc}.hash does not match the SHA-1 of the data", entry)
        text = self._decode_text(entry, loc, attachment.contentType, payload)
        if not text.strip():
            self.skip(entry, f"{loc} is empty")
            return None
        if is_docref:
            enc_refs = list(m.context.encounter or []) if m.context is not None else []
            encounter = self.encounter_of(entry, enc_refs[0], "context.encounter") if enc_refs else None
            when = _first_date(m.date, m.context.period.start if m.context and m.context.period else None,
                               _encounter_start(encounter))
        else:
            encounter = self.encounter_of(entry, m.encounter, "encounter")
            when = _first_date(m.effectiveDateTime, m.effectivePeriod.start if m.effectivePeriod else None,
                               m.issued, _encounter_start(encounter))
        if when is None:
            raise self.error(entry.index, "document has no date (date, period, effective[x], issued or encounter)", entry)
        if when < identity.birth_date:
            raise self.error(entry.index, f"document dated {when.isoformat()} is before the patient's birth date "
                             f"{identity.birth_date.isoformat()}", entry)
        record_id = entry.rid or _full_url_key(entry.full_url) or f"{self.source}#{entry.index}"
        return _Draft(record_id=record_id, patient=identity, encounter=encounter.index if encounter else None,
                      record_date=when, document_type=self._document_type(entry), text=text, codes=[])

    def _decode_base64(self, entry: _Entry, loc: str, data: Any) -> bytes:
        if not isinstance(data, str):
            raise self.error(entry.index, f"{loc}.data is not valid base64 (not a string)", entry)
        compact = re.sub(r"\s+", "", data)
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.error(entry.index, f"{loc}.data is not valid base64 ({exc})", entry) from None

    def _decode_text(self, entry: _Entry, loc: str, content_type: str | None, payload: bytes) -> str:
        charset = "utf-8"
        for param in (content_type or "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"').lower()
        try:
            codecs.lookup(charset)
        except LookupError:
            raise self.error(entry.index, f"{loc}: unknown charset {charset!r}", entry) from None
        if codecs.lookup(charset).name == "utf-8":
            charset = "utf-8-sig"
        try:
            return payload.decode(charset)
        except UnicodeDecodeError as exc:
            raise self.error(entry.index, f"{loc}: text is not valid {charset} ({exc.reason} at byte {exc.start})",
                             entry) from None

    def _document_type(self, entry: _Entry) -> str:
        m = entry.model
        concepts = [m.type] if entry.rtype == "DocumentReference" else [m.code]
        codings = [c for cc in concepts if cc is not None for c in (cc.coding or [])]
        for c in codings:
            if c.system == DOCUMENT_TYPE_SYSTEM and c.code in DOCUMENT_TYPES:
                return c.code
        for c in codings:
            if c.system == "http://loinc.org" and c.code in _LOINC_TYPES:
                return _LOINC_TYPES[c.code]
        categories = [c for cc in (m.category or []) for c in (cc.coding or [])]
        for c in categories:
            if c.code in _RADIOLOGY_CATEGORIES:
                return "radiology_report"
            if c.code in _PATHOLOGY_CATEGORIES:
                return "pathology_report"
            if c.system == "http://loinc.org" and c.code in _LOINC_TYPES:
                return _LOINC_TYPES[c.code]
        return "progress_note"

    def _condition(self, entry: _Entry, patients) -> _Cond | None:
        m = entry.model
        patient = self.subject_patient(entry)
        encounter = self.encounter_of(entry, m.encounter, "encounter")
        status = {c.code for c in (m.verificationStatus.coding or [])} if m.verificationStatus else set()
        if status & {"refuted", "entered-in-error"}:
            self.skip(entry, f"verificationStatus is {', '.join(sorted(status))}")
            return None
        codes: list[tuple[str, str]] = []
        for coding in (m.code.coding or []) if m.code else []:
            if coding.system in _ICD10_SYSTEMS and coding.code:
                codes.append(("icd10", coding.code))
            elif coding.system in _SNOMED_SYSTEMS and coding.code:
                codes.append(("snomed", coding.code))
        if not codes:
            self.skip(entry, "no ICD-10 or SNOMED CT coding")
            return None
        onset = _first_date(m.onsetDateTime, m.onsetPeriod.start if m.onsetPeriod else None, m.recordedDate)
        abatement = _first_date(m.abatementDateTime, m.abatementPeriod.end if m.abatementPeriod else None)
        return _Cond(patient_key=patients[patient.index][0].key, encounter=encounter.index if encounter else None,
                     onset=onset, abatement=abatement, codes=codes)

    def _attach_conditions(self, records: list[_Draft], conditions: list[_Cond]) -> None:
        by_encounter: dict[tuple[str, int], list[_Draft]] = {}
        by_patient: dict[str, list[_Draft]] = {}
        for r in records:
            by_patient.setdefault(r.patient.key, []).append(r)
            if r.encounter is not None:
                by_encounter.setdefault((r.patient.key, r.encounter), []).append(r)
        for cond in conditions:
            targets = by_encounter.get((cond.patient_key, cond.encounter), []) if cond.encounter is not None else []
            if not targets:
                targets = [r for r in by_patient.get(cond.patient_key, [])
                           if (cond.onset is None or r.record_date >= cond.onset)
                           and (cond.abatement is None or r.record_date <= cond.abatement)]
            for r in targets:
                for code in cond.codes:
                    if code not in r.codes:
                        r.codes.append(code)


@dataclass
class _Draft:
    record_id: str
    patient: PatientIdentity
    encounter: int | None
    record_date: date
    document_type: str
    text: str
    codes: list[tuple[str, str]]

    def build(self) -> ClinicalRecord:
        return ClinicalRecord(record_id=self.record_id, patient_key=self.patient.key, record_date=self.record_date,
                              document_type=self.document_type, conditions=tuple(self.codes), text=self.text,
                              age_at_record=age_on(self.patient.birth_date, self.record_date))


@dataclass
class _Cond:
    patient_key: str
    encounter: int | None
    onset: date | None
    abatement: date | None
    codes: list[tuple[str, str]]


def _summarise(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _as_date(value: Any) -> date | None:
    """A FHIR date/dateTime/instant as a calendar date (partial dates count from their first day)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()  # the date as written, in its own offset
    if isinstance(value, date):
        return value
    text = str(value)
    match = re.match(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", text)
    if not match:
        return None
    return date(int(match.group(1)), int(match.group(2) or 1), int(match.group(3) or 1))


def _first_date(*values: Any) -> date | None:
    for value in values:
        d = _as_date(value)
        if d is not None:
            return d
    return None


def _encounter_start(encounter: _Entry | None) -> date | None:
    if encounter is None or encounter.model.period is None:
        return None
    return _as_date(encounter.model.period.start)


def _full_url_key(full_url: str | None) -> str | None:
    if not full_url:
        return None
    for prefix in ("urn:uuid:", "urn:oid:"):
        if full_url.startswith(prefix):
            return full_url[len(prefix):]
    match = re.search(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$", full_url)
    return match.group(2) if match else full_url


def _server_base(full_url: str | None) -> str | None:
    if not full_url or "://" not in full_url:
        return None
    match = re.match(r"^(.*)/[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$", full_url)
    return match.group(1) if match else None


def _identifier_matches(identifier: Any, token: str) -> bool:
    """FHIR token search on one identifier: "system|value", "|value" (no system), "system|", "value"."""
    if not isinstance(identifier, dict):
        return False
    system, value = identifier.get("system"), identifier.get("value")
    if "|" not in token:
        return value == token
    want_system, want_value = token.split("|", 1)
    if want_system == "":
        return not system and value == want_value
    if want_value == "":
        return system == want_system
    return system == want_system and value == want_value
