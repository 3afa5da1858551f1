"""Staging a frozen cohort for one job: per-job pseudonyms, identifiers redacted from the text.

What the sandbox sees under /data is `train.jsonl` and `holdout.jsonl`:
{"record": "r-000017", "patient": "p-000004", "text": "..."}. Record and patient ids are
pseudonyms drawn for this job only; the patient's known direct identifiers (name, MRN, phone,
national id, date of birth in common formats) are replaced in the text by placeholders before
it is written. The egress scan still checks the adapter for them: redaction is a first line,
not the only one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import defaultdict
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

    counts = {"train": 0, "holdout": 0}
    handles = {split: open(data_dir / f"{split}.jsonl", "w", encoding="utf-8") for split in counts}
    try:
        order = sorted(members, key=lambda row: record_alias[row[0]])
        redactors = {}
        for record_id, patient_id, split in order:
            record = records[record_id]
            text = (record.dataset.storage_dir / record.file_path).read_text(encoding="utf-8")
            if patient_id not in redactors:
                redactors[patient_id] = redactor(identifiers[patient_id])
            row = {"record": record_alias[record_id], "patient": patient_alias[patient_id], "text": redactors[patient_id](text)}
            handles[split].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    for path in data_dir.iterdir():
        path.chmod(0o644)
    return counts


def remove_staging(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
