"""Counting a cohort over a million-record index, against a plain COUNT(*) of the same table.

    .venv/bin/python bench/bench_cohort.py [--records 1000000]

Builds (once, cached in var/bench/) an index of --records records over records/4 patients with
realistic attribute spreads, then times cohort_counts() for three filters of increasing
complexity against `SELECT COUNT(*)` of the whole record table in the same run (best of 5).
Runs on the embedded SQLite by default; with DATABASE_URL set, on that PostgreSQL database
(which it must be allowed to create tables in: it migrates it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAPHA_VAR_DIR", str(ROOT / "var" / "bench"))
os.environ.setdefault("RAPHA_ALLOW_INSECURE_SECRET", "true")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

FILTERS = {
    "age range": {"age": {"min": 40, "max": 70}},
    "age + sex + ICD-10 prefix": {"all": [{"age": {"min": 40}}, {"sex": ["female"]},
                                          {"condition": {"system": "icd10", "prefixes": ["E11"]}}]},
    "any of two codes, not a document type, date range": {"all": [
        {"any": [{"condition": {"system": "icd10", "prefixes": ["I50"]}},
                 {"condition": {"system": "snomed", "prefixes": ["38341003"]}}]},
        {"not": {"document_type": ["progress_note"]}},
        {"date": {"from": "2018-01-01", "to": "2023-12-31"}}]},
}
CODES = [("icd10", c) for c in ("E11.9", "I10", "J44.9", "I50.9", "I48.91", "J18.9", "N18.3", "J45.909", "I21.4", "C50.911")] + \
        [("snomed", c) for c in ("44054006", "38341003", "13645005", "84114007", "49436004")]
TYPES = ("discharge_summary", "clinic_letter", "operative_note", "radiology_report", "pathology_report", "progress_note")


def build(records: int) -> "Dataset":
    from django.db import connection, transaction

    from governance.models import Dataset, Patient, Record, RecordCondition
    from portal.models import User

    name = f"bench-{records}"
    dataset = Dataset.objects.filter(name=name).first()
    if dataset is not None and dataset.records.count() == records:
        return dataset
    steward, _ = User.objects.get_or_create(email="bench-steward@rapha.test", defaults={"full_name": "Bench"})
    Dataset.objects.filter(name=name).delete()
    dataset = Dataset.objects.create(name=name, title=name, modality="text", steward=steward, location="bench",
                                     pseudonym_salt="bench")
    rng = random.Random(1)
    patients = max(1, records // 4)
    with transaction.atomic():
        Patient.objects.bulk_create([Patient(dataset=dataset, key=f"p{i}", sex=rng.choice(("female", "male")), birth_year=1950)
                                     for i in range(patients)], batch_size=10000)
    ids = list(Patient.objects.filter(dataset=dataset).order_by("pk").values_list("pk", "sex"))
    start = datetime.date(2015, 1, 1)
    batch = 20000
    for offset in range(0, records, batch):
        rows = []
        for i in range(offset, min(records, offset + batch)):
            pk, sex = ids[i % patients]
            rows.append(Record(dataset=dataset, patient_id=pk, source_id=f"r{i}", record_date=start + datetime.timedelta(days=rng.randrange(4000)),
                               age=rng.randrange(18, 96), sex=sex, document_type=rng.choice(TYPES), file_path="-", sha256="-"))
        with transaction.atomic():
            Record.objects.bulk_create(rows, batch_size=batch)
            created = Record.objects.filter(dataset=dataset, source_id__in=[r.source_id for r in rows]).values_list("pk", flat=True)
            RecordCondition.objects.bulk_create(
                [RecordCondition(dataset=dataset, record_id=pk, system=s, code=c)
                 for pk in created for s, c in rng.sample(CODES, rng.randrange(0, 3))], batch_size=batch)
        print(f"  built {min(records, offset + batch)} records", file=sys.stderr, flush=True)
    return dataset


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from governance.cohorts import cohort_counts, validate_definition
    from governance.models import Record

    call_command("migrate", verbosity=0)
    dataset = build(args.records)
    with connection.cursor() as cursor:  # fresh planner statistics, as autovacuum keeps them on PostgreSQL
        cursor.execute("ANALYZE")
    baseline = best_of(lambda: Record.objects.filter(dataset=dataset).count())
    rows = []
    for label, definition in FILTERS.items():
        normalised = validate_definition(definition, [dataset])
        result = {}
        seconds = best_of(lambda: result.update(counts=cohort_counts([dataset], normalised)))
        records, patients = result["counts"]
        rows.append((label, seconds, seconds / baseline, records, patients))
    engine = connection.vendor
    lines = [
        f"Index of {args.records:,} records over {args.records // 4:,} patients on {engine}; best of 5. "
        f"Baseline: `COUNT(*)` of the dataset's records, {baseline * 1000:.0f} ms in the same run.",
        "",
        "| filter | seconds | × baseline | records | distinct patients |",
        "| --- | --- | --- | --- | --- |",
    ] + [f"| {label} | {seconds:.3f} | {ratio:.1f} | {records:,} | {patients:,} |" for label, seconds, ratio, records, patients in rows]
    print(json.dumps({"baseline_seconds": baseline, "rows": rows, "engine": engine}))
    print("----- markdown -----")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
