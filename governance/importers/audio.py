"""Import recordings with transcripts (a folder of WAV/FLAC files and FHIR R4 JSON) into speech records.

Folder layout (files anywhere below the folder; hidden files are ignored)::

    patients.json          FHIR R4 Patient resources: standalone, or the entries of a Bundle
    visit-001.wav          a recording (WAV or FLAC, any sample rate, any number of channels)
    visit-001.txt          its transcript (UTF-8), paired by name
    visit-001.json         a FHIR R4 Media or DocumentReference naming the recording and its patient

Each recording is described by one FHIR R4 ``Media`` or ``DocumentReference`` (standalone or in a
Bundle, validated with ``fhir.resources.R4B`` as in :mod:`governance.importers.fhir`):

* the audio: an attachment whose ``url`` is the file's path relative to the JSON file (``file:``
  prefix allowed; never outside the folder), with an ``audio/*`` contentType or a .wav/.flac name
  (``Media.content``; ``DocumentReference.content[].attachment``);
* the patient: ``subject``, a reference to one of the folder's Patient resources (``Patient/<id>``,
  or a Bundle fullUrl); identity (name, birth date, MRN, national id, phone) comes from that Patient;
* the transcript: a ``text/plain`` attachment with inline data in the DocumentReference, else the
  paired ``<audio name>.txt`` beside the audio file;
* the date: DocumentReference ``date`` or ``context.period.start``; Media ``createdDateTime``,
  ``createdPeriod.start`` or ``issued``;
* the document type: a coding of the Rapha document-type system (``dictation``,
  ``consultation_recording``), else ``consultation_recording``; the record id is the resource id.

Audio is decoded with soundfile (libsndfile), down-mixed to mono by averaging the channels,
resampled to 16 kHz with ``scipy.signal.resample_poly`` and stored as the record's attachment: a
16 kHz mono PCM16 WAV. Attributes: ``duration_seconds``, ``original_sample_rate``, ``channels``.

Two kinds of problems:

* **A recording that cannot be used** is refused on its own and reported per entry (the import
  carries on with the others): a zero-length file, a wrong or corrupt header, a truncated WAV (its
  header declares more audio than the file holds; libsndfile would silently read the part that is
  there), an unreadable FLAC, no audio samples, a missing or empty transcript, a recording longer
  than ``max_seconds`` (refused, not cut: a cut recording would no longer match its transcript),
  an audio file no resource describes, a resource naming a missing file, an unresolvable subject,
  a missing date or one before the patient's birth.
* **A folder that cannot be read** raises :class:`AudioImportError` and nothing is imported: a JSON
  file that is not JSON or not valid FHIR R4, a Patient without a birth date, duplicate resource
  ids or patient keys, one audio file named by two resources.

What the database receives is all-or-nothing (``services.dataset_import_records``); the import
command also has ``--strict``, which refuses everything when any recording is refused.
"""

from __future__ import annotations

import io
import json
import math
import re
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from governance.importers.fhir import DOCUMENT_TYPE_SYSTEM, FhirImportError, _Entry, _first_date, _Parser
from governance.records import DOCUMENT_TYPES, ClinicalRecord, PatientIdentity, age_on

__all__ = [
    "AUDIO_SUFFIXES",
    "SPEECH_DOCUMENT_TYPES",
    "TARGET_SAMPLE_RATE",
    "AudioDecodeError",
    "AudioImportError",
    "DecodedAudio",
    "EntryReport",
    "ParsedAudioFolder",
    "decode_audio",
    "parse_audio_folder",
    "pcm16_wav_bytes",
    "recording_attachment",
]

TARGET_SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac")
SPEECH_DOCUMENT_TYPES = ("consultation_recording", "dictation")
DEFAULT_DOCUMENT_TYPE = "consultation_recording"
RECORDING_TYPES = ("Media", "DocumentReference")
_UNKNOWN_LENGTHS = (0, 0xFFFFFFFF)  # streaming writers leave the data size open


class AudioDecodeError(ValueError):
    """One recording's audio cannot be used; the message says why (never its content)."""


class AudioImportError(ValueError):
    """The folder cannot be imported at all; names the file (and entry) and the reason."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: Any  # float32 numpy array, mono, TARGET_SAMPLE_RATE
    original_sample_rate: int
    channels: int
    duration_seconds: float  # of the original recording


@dataclass(frozen=True)
class EntryReport:
    entry: str  # the audio file (relative to the folder) or the describing resource
    imported: bool
    reason: str = ""


@dataclass(frozen=True)
class ParsedAudioFolder:
    folder: str
    patients: tuple[PatientIdentity, ...]  # only the patients of accepted recordings
    records: tuple[ClinicalRecord, ...]
    entries: tuple[EntryReport, ...]

    @property
    def refused(self) -> tuple[EntryReport, ...]:
        return tuple(e for e in self.entries if not e.imported)


# --- audio ---------------------------------------------------------------------------------------

def decode_audio(data: bytes, *, suffix: str, max_seconds: float | None = None) -> DecodedAudio:
    """Decode WAV or FLAC bytes to 16 kHz mono float32; raise :class:`AudioDecodeError` if unusable."""
    import numpy as np
    import soundfile

    suffix = suffix.lower()
    if not data:
        raise AudioDecodeError("the file is empty (0 bytes)")
    if suffix == ".wav":
        _check_wav_container(data)
    elif suffix == ".flac":
        if data[:4] != b"fLaC":
            raise AudioDecodeError("not a FLAC file (it does not start with 'fLaC')")
    else:
        raise AudioDecodeError(f"unsupported audio format {suffix!r} (supported: {', '.join(AUDIO_SUFFIXES)})")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as handle:
            rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
            if rate <= 0 or channels <= 0:
                raise AudioDecodeError("the header gives no sample rate or no channels")
            if max_seconds is not None and frames / rate > max_seconds:
                raise AudioDecodeError(
                    f"the recording is {frames / rate:.1f} s long; the limit is {max_seconds:g} s "
                    "(RAPHA_AUDIO_MAX_SECONDS); it is refused rather than cut, so that audio and transcript agree"
                )
            samples = handle.read(dtype="float32", always_2d=True)
    except AudioDecodeError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        detail = getattr(exc, "error_string", None) or exc.__class__.__name__
        kind = "FLAC" if suffix == ".flac" else "WAV"
        raise AudioDecodeError(f"not a readable {kind} file ({detail})") from None
    if samples.shape[0] == 0:
        raise AudioDecodeError("the file holds no audio samples")
    if samples.shape[0] < frames:
        raise AudioDecodeError(f"truncated: the header declares {frames} frames, only {samples.shape[0]} could be read")
    if not np.isfinite(samples).all():
        raise AudioDecodeError("the audio holds non-finite samples")
    mono = samples.mean(axis=1, dtype=np.float64)
    return DecodedAudio(
        samples=resample_to(mono, rate, TARGET_SAMPLE_RATE),
        original_sample_rate=rate,
        channels=channels,
        duration_seconds=round(samples.shape[0] / rate, 3),
    )


def resample_to(samples: Any, rate: int, target: int) -> Any:
    """Polyphase resampling (``scipy.signal.resample_poly``) from ``rate`` to ``target`` Hz, float32."""
    import numpy as np
    from scipy.signal import resample_poly

    if rate == target:
        return np.asarray(samples, dtype=np.float32)
    g = math.gcd(rate, target)
    return resample_poly(np.asarray(samples, dtype=np.float64), target // g, rate // g).astype(np.float32)


def _check_wav_container(data: bytes) -> None:
    """RIFF/WAVE magic, and a data chunk no longer than what the file holds (truncation)."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise AudioDecodeError("not a WAV file (no RIFF/WAVE header)")
    if data[:4] == b"RF64":
        return  # 64-bit sizes live in a ds64 chunk; libsndfile checks those
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        body = offset + 8
        if chunk == b"data":
            available = len(data) - body
            if size not in _UNKNOWN_LENGTHS and size > available:
                raise AudioDecodeError(
                    f"truncated: the header declares {size} bytes of audio, the file holds {available}"
                )
            return
        offset = body + size + (size & 1)
    raise AudioDecodeError("the WAV file has no data chunk (wrong or truncated header)")


def pcm16_wav_bytes(samples: Any, sample_rate: int = TARGET_SAMPLE_RATE) -> bytes:
    """Mono float samples in [-1, 1] as a PCM16 WAV file (clipped; the same bytes for the same samples)."""
    import numpy as np

    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def recording_attachment(data: bytes, *, suffix: str, max_seconds: float | None) -> tuple[bytes, tuple]:
    """The stored form of a recording: 16 kHz mono PCM16 WAV bytes, and its record attributes."""
    audio = decode_audio(data, suffix=suffix, max_seconds=max_seconds)
    attributes = (
        ("duration_seconds", audio.duration_seconds),
        ("original_sample_rate", audio.original_sample_rate),
        ("channels", audio.channels),
    )
    return pcm16_wav_bytes(audio.samples), attributes


# --- folder --------------------------------------------------------------------------------------

@dataclass
class _Resource:
    source: Path  # the JSON file
    name: str  # its path relative to the folder
    index: int | None  # entry index inside a Bundle (None: standalone)
    full_url: str | None
    rtype: str
    raw: dict
    model: Any

    @property
    def where(self) -> str:
        where = self.name if self.index is None else f"{self.name} entry {self.index}"
        return f"{where} ({self.rtype}/{self.raw.get('id')})" if self.raw.get("id") else f"{where} ({self.rtype})"


def parse_audio_folder(folder: str | Path, *, max_seconds: float) -> ParsedAudioFolder:
    """Read a folder of recordings (see the module docstring). Raises :class:`AudioImportError`."""
    root = Path(folder)
    if not root.is_dir():
        raise AudioImportError(f"{folder}: no such folder")
    root = root.resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    resources = [r for path in files if path.suffix.lower() == ".json" for r in _read_resources(path, root)]
    _check_unique(resources)
    patients, refs = _patients(resources)

    entries: dict[str, EntryReport] = {}
    records: list[ClinicalRecord] = []
    used_patients: dict[str, PatientIdentity] = {}
    described: dict[Path, _Resource] = {}
    for resource in (r for r in resources if r.rtype in RECORDING_TYPES):
        label = resource.where
        try:
            audio_path = _audio_path(resource, root)
        except AudioDecodeError as exc:
            entries[label] = EntryReport(label, False, str(exc))
            continue
        if audio_path in described:
            raise AudioImportError(f"{label}: {audio_path.relative_to(root)} is also described by "
                                   f"{described[audio_path].where}")
        described[audio_path] = resource
        name = str(audio_path.relative_to(root))
        try:
            record, identity = _recording(resource, audio_path, patients, refs, max_seconds)
        except AudioDecodeError as exc:
            entries[name] = EntryReport(name, False, str(exc))
            continue
        entries[name] = EntryReport(name, True)
        records.append(record)
        used_patients[identity.key] = identity
    for path in files:
        if path.suffix.lower() in AUDIO_SUFFIXES and path not in described:
            name = str(path.relative_to(root))
            entries[name] = EntryReport(name, False, "no FHIR Media or DocumentReference in the folder names this file")
    ids = [record.record_id for record in records]
    for record_id in sorted({i for i in ids if ids.count(i) > 1}):
        raise AudioImportError(f"record id {record_id!r} is used by two recordings")
    return ParsedAudioFolder(
        folder=str(root),
        patients=tuple(used_patients.values()),
        records=tuple(records),
        entries=tuple(entries[k] for k in sorted(entries)),
    )


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_resources(path: Path, root: Path) -> list[_Resource]:
    name = str(path.relative_to(root))
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AudioImportError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise AudioImportError(f"{name}: not a FHIR resource (a JSON object with a resourceType)")
    if doc["resourceType"] != "Bundle":
        return [_resource(path, name, None, None, doc)]
    raw_entries = doc.get("entry") or []
    if not isinstance(raw_entries, list):
        raise AudioImportError(f"{name}: Bundle.entry must be a list")
    out = []
    for index, entry in enumerate(raw_entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            raise AudioImportError(f"{name}: entry {index} has no resource object")
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        out.append(_resource(path, name, index, full_url, entry["resource"]))
    return out


def _resource(path: Path, name: str, index: int | None, full_url: str | None, raw: dict) -> _Resource:
    where = name if index is None else f"{name} entry {index}"
    rtype = raw.get("resourceType")
    if not isinstance(rtype, str):
        raise AudioImportError(f"{where}: resource has no resourceType")
    try:
        model_class = get_fhir_model_class(rtype)
    except ValueError:
        raise AudioImportError(f"{where}: unknown resource type {rtype!r}") from None
    try:
        model = model_class.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
        raise AudioImportError(f"{where}: invalid FHIR R4 {rtype}: {loc}: {first.get('msg', 'invalid')}") from None
    return _Resource(path, name, index, full_url, rtype, raw, model)


def _check_unique(resources: list[_Resource]) -> None:
    seen: dict[tuple[str, str], _Resource] = {}
    for r in resources:
        rid = r.raw.get("id")
        if not rid:
            continue
        if (r.rtype, rid) in seen:
            first = seen[(r.rtype, rid)]
            raise AudioImportError(f"{r.where} duplicates {first.where}")
        seen[(r.rtype, rid)] = r


def _patients(resources: list[_Resource]) -> tuple[dict[str, PatientIdentity], dict[str, str]]:
    """Patient identities by key, and every reference spelling that names each key."""
    patients: dict[str, PatientIdentity] = {}
    refs: dict[str, str] = {}
    for r in resources:
        if r.rtype != "Patient":
            continue
        parser = _Parser(r.name)
        try:  # the FHIR importer's reading of a Patient (identifiers, name, birth date)
            identity = parser._identity(_Entry(r.index or 0, r.full_url, "Patient", r.raw, r.model))
        except FhirImportError as exc:
            raise AudioImportError(f"{r.where}: {exc.reason}") from None
        if identity.key in patients:
            raise AudioImportError(f"{r.where}: duplicate patient key {identity.key!r}")
        patients[identity.key] = identity
        for spelling in (f"Patient/{identity.key}", r.full_url):
            if spelling:
                refs[spelling] = identity.key
    return patients, refs


def _audio_path(resource: _Resource, root: Path) -> Path:
    m = resource.model
    attachments = [m.content] if resource.rtype == "Media" else [c.attachment for c in (m.content or [])]
    for attachment in attachments:
        if attachment is None:
            continue
        media = (attachment.contentType or "").split(";")[0].strip().lower()
        url = attachment.url or ""
        if not (media.startswith("audio/") or url.lower().endswith(AUDIO_SUFFIXES)):
            continue
        if not url:
            raise AudioDecodeError("the audio attachment has no url (inline audio is not supported; name the file)")
        relative = url[len("file:"):] if url.startswith("file:") else url
        if "://" in relative or relative.startswith("/"):
            raise AudioDecodeError(f"the audio url {url!r} is not a path relative to the folder")
        path = (resource.source.parent / relative).resolve()
        if root not in path.parents:
            raise AudioDecodeError(f"the audio url {url!r} points outside the folder")
        return path
    raise AudioDecodeError("no audio attachment (an audio/* contentType or a .wav/.flac url)")


def _recording(resource: _Resource, audio_path: Path, patients: dict[str, PatientIdentity], refs: dict[str, str],
               max_seconds: float) -> tuple[ClinicalRecord, PatientIdentity]:
    m = resource.model
    if getattr(m, "status", None) == "entered-in-error":
        raise AudioDecodeError("status is entered-in-error")
    reference = getattr(m.subject, "reference", None) if m.subject is not None else None
    if not reference:
        raise AudioDecodeError("no subject: the resource must name its patient")
    key = refs.get(reference)
    if key is None:
        raise AudioDecodeError(f"subject {reference!r} is not a Patient resource in the folder")
    identity = patients[key]
    if resource.rtype == "DocumentReference":
        when = _first_date(m.date, m.context.period.start if m.context and m.context.period else None)
    else:
        when = _first_date(m.createdDateTime, m.createdPeriod.start if m.createdPeriod else None, m.issued)
    if when is None:
        raise AudioDecodeError("no date (DocumentReference.date or context.period; Media.created[x] or issued)")
    if when < identity.birth_date:
        raise AudioDecodeError(f"dated {when.isoformat()}, before the patient's birth date")
    transcript = _transcript(resource, audio_path)
    if not audio_path.is_file():
        raise AudioDecodeError("the audio file named by the resource does not exist")
    attachment, attributes = recording_attachment(audio_path.read_bytes(), suffix=audio_path.suffix,
                                                  max_seconds=max_seconds)
    record = ClinicalRecord(
        record_id=resource.raw.get("id") or _url_key(resource.full_url) or audio_path.stem,
        patient_key=identity.key,
        record_date=when,
        document_type=_document_type(resource),
        conditions=(),
        text=transcript,
        age_at_record=age_on(identity.birth_date, when),
        attachment=attachment,
        attachment_suffix=".wav",
        attributes=attributes,
    )
    return record, identity


def _transcript(resource: _Resource, audio_path: Path) -> str:
    if resource.rtype == "DocumentReference":
        for content in resource.model.content or []:
            attachment = content.attachment
            media = (attachment.contentType or "").split(";")[0].strip().lower() if attachment else ""
            if media == "text/plain" and attachment.data is not None:
                try:
                    text = bytes(attachment.data).decode("utf-8-sig")
                except UnicodeDecodeError:
                    raise AudioDecodeError("the transcript attachment is not UTF-8 text") from None
                if not text.strip():
                    raise AudioDecodeError("the transcript attachment is empty")
                return text.strip()
    paired = audio_path.with_suffix(".txt")
    if not paired.is_file():
        raise AudioDecodeError(f"missing transcript: no text/plain attachment and no {paired.name} beside the audio")
    try:
        text = paired.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AudioDecodeError(f"the transcript {paired.name} is not UTF-8 text") from None
    if not text.strip():
        raise AudioDecodeError(f"the transcript {paired.name} is empty")
    return text.strip()


def _document_type(resource: _Resource) -> str:
    m = resource.model
    concepts = [m.type] if m.type is not None else []
    if resource.rtype == "DocumentReference":
        concepts += list(m.category or [])
    for concept in concepts:
        for coding in concept.coding or []:
            if coding.system == DOCUMENT_TYPE_SYSTEM and coding.code in DOCUMENT_TYPES:
                return coding.code
    return DEFAULT_DOCUMENT_TYPE


def _url_key(full_url: str | None) -> str | None:
    if not full_url:
        return None
    match = re.search(r"([A-Za-z0-9\-.]{1,64})$", full_url)
    return match.group(1) if match else None
