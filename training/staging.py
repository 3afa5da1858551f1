"""Staging a frozen cohort for one job: per-job pseudonyms, identifiers redacted from the text.

What the sandbox sees under /data is `train.jsonl` and `holdout.jsonl`:
{"record": "r-000017", "patient": "p-000004", "text": "..."}. Record and patient ids are
pseudonyms drawn for this job only; the patient's known direct identifiers (name, MRN, phone,
national id, date of birth in common formats) are replaced in the text by placeholders before
it is written. The egress scan still checks the adapter for them: redaction is a first line,
not the only one.

The payload of a line depends on the dataset's modality: one *stager* per modality (registered
with :func:`register_stager`) turns a Record into the fields its runtime recipe reads. Stagers
that need files (pixels, audio) write them under ``data_dir`` (``images/``, ``audio/``), named
by the record's pseudonym, and put the relative path in the payload; the runtime refuses any
path outside the data directory. A stager may also decline a record (return None), for example
an image with burned-in annotation; declined records are counted, never silently dropped.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from governance.models import CohortRecord, DirectIdentifier, Record

K = DirectIdentifier.Kind
PLACEHOLDERS = {K.NAME: "[NAME]", K.MRN: "[MRN]", K.PHONE: "[PHONE]", K.NATIONAL_ID: "[ID]", K.BIRTH_DATE: "[DOB]"}


def date_forms(value: date) -> list[str]:
    return [
        value.isoformat(), value.strftime("%d/%m/%Y"), value.strftime("%m/%d/%Y"), value.strftime("%d.%m.%Y"),
        value.strftime("%d-%m-%Y"), value.strftime("%Y%m%d"), value.strftime("%d %b %Y"), value.strftime("%d %B %Y"),
        f"{value.day} {value.strftime('%b %Y')}", f"{value.day} {value.strftime('%B %Y')}",
        value.strftime("%B %d, %Y"), value.strftime("%b %d, %Y"),
    ]


def _surface_forms(kind: str, value: str) -> list[str]:
    if kind == K.BIRTH_DATE:
        return date_forms(date.fromisoformat(value))
    if kind == K.NAME:
        parts = [part for part in value.split() if len(part) >= 2]
        return [value, *parts]
    if kind in (K.PHONE, K.NATIONAL_ID):
        digits = re.sub(r"\D", "", value)
        forms = [value, digits]
        if kind == K.NATIONAL_ID and len(digits) == 10:
            forms.append(f"{digits[:3]} {digits[3:6]} {digits[6:]}")
        return forms
    return [value]


def redactor(identifiers: list[tuple[str, str]]):
    """A function that replaces every surface form of these identifiers in a text."""
    replacements: dict[str, str] = {}
    for kind, value in identifiers:
        for form in _surface_forms(kind, value):
            if len(form) >= 3:
                replacements.setdefault(form.lower(), PLACEHOLDERS.get(kind, "[REDACTED]"))
    if not replacements:
        return lambda text: text
    forms = sorted(replacements, key=len, reverse=True)
    # Whole words only: a surname like "Ward" must not eat "Ward 5" in someone else's sense.
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(form) for form in forms) + r")(?!\w)", re.IGNORECASE)
    return lambda text: pattern.sub(lambda match: replacements[match.group(0).lower()], text)


@dataclass(frozen=True)
class StageItem:
    """What a stager gets for one record."""

    record: Record
    alias: str  # the record's per-job pseudonym, e.g. "r-000017": name staged files after it
    data_dir: Path
    redact: Callable[[str], str]  # replaces this patient's direct identifiers in a text

    def source(self, relative: str) -> Path:
        return self.record.dataset.storage_dir / relative

    def text(self) -> str:
        """The record's text (note, report or transcript), identifiers redacted."""
        return self.redact(self.source(self.record.file_path).read_text(encoding="utf-8"))


Stager = Callable[[StageItem], "dict | None"]
_STAGERS: dict[str, Stager] = {}


def register_stager(modality: str) -> Callable[[Stager], Stager]:
    def decorator(function: Stager) -> Stager:
        if modality in _STAGERS:
            raise ValueError(f"a stager for {modality!r} is registered twice")
        _STAGERS[modality] = function
        return function
    return decorator


def stager_for(modality: str) -> Stager:
    try:
        return _STAGERS[modality]
    except KeyError:
        raise ValueError(f"no stager for modality {modality!r}") from None


@register_stager("text")
def stage_text(item: StageItem) -> dict:
    return {"text": item.text()}


def stage_cohort(*, cohort, data_dir: Path, seed: int) -> dict[str, int]:
    """Write train.jsonl and holdout.jsonl for a frozen cohort; returns counts per split."""
    data_dir.mkdir(parents=True, exist_ok=True)
    members = list(CohortRecord.objects.filter(cohort=cohort).values_list("record_id", "patient_id", "split"))
    rng = random.Random(seed)
    patient_ids = sorted({patient for _, patient, _ in members})
    record_ids = sorted({record for record, _, _ in members})
    rng.shuffle(patient_ids)
    rng.shuffle(record_ids)
    patient_alias = {pk: f"p-{i:06d}" for i, pk in enumerate(patient_ids, 1)}
    record_alias = {pk: f"r-{i:06d}" for i, pk in enumerate(record_ids, 1)}

    identifiers: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for patient_id, kind, value in DirectIdentifier.objects.filter(patient_id__in=patient_ids).exclude(
        kind=K.SOURCE_ID
    ).values_list("patient_id", "kind", "value"):
        identifiers[patient_id].append((kind, value))
    records = Record.objects.select_related("dataset").in_bulk(record_ids)

    counts = {"train": 0, "holdout": 0, "declined": 0}
    handles = {split: open(data_dir / f"{split}.jsonl", "w", encoding="utf-8") for split in ("train", "holdout")}
    try:
        order = sorted(members, key=lambda row: record_alias[row[0]])
        redactors = {}
        for record_id, patient_id, split in order:
            record = records[record_id]
            if patient_id not in redactors:
                redactors[patient_id] = redactor(identifiers[patient_id])
            item = StageItem(record=record, alias=record_alias[record_id], data_dir=data_dir, redact=redactors[patient_id])
            payload = stager_for(record.dataset.modality)(item)
            if payload is None:
                counts["declined"] += 1
                continue
            row = {"record": record_alias[record_id], "patient": patient_alias[patient_id], **payload}
            handles[split].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    for path in data_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return counts


def remove_staging(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# Modality stagers register themselves on import (one module per modality family).
from training import staging_speech  # noqa: E402,F401
from training import staging_molecules  # noqa: E402,F401
from training import staging_imaging  # noqa: E402,F401
