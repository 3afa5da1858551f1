"""Staging a molecules cohort: structures go out as they are stored, never rewritten by the redactor."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from governance import services as governance
from governance.models import CohortRecord, DataAccessRequest, Dataset, Record
from governance.records import ClinicalRecord, PatientIdentity
from governance.synthetic_molecules import generate_molecules
from tests import factories
from training import services as training_services
from training.staging import stage_cohort

pytestmark = pytest.mark.django_db


def molecule_dataset(*, n_patients: int, seed: int = 5, steward=None) -> Dataset:
    """A molecules dataset of `n_patients` synthetic patients (compounds and variant proteins)."""
    steward = steward or factories.steward()
    generated = generate_molecules(n_patients, seed)
    dataset = governance.dataset_register(by=steward, name=f"molecules-{Dataset.objects.count() + 1}-{seed}",
                                          title="Synthetic compounds", modality="molecules", location="synthetic")
    governance.dataset_import_records(dataset=dataset, patients=generated.patients, records=generated.records,
                                      by=steward, source="synthetic")
    return dataset


def placeholder_model_folder() -> Path:
    folder = settings.DATA_ROOT / "base-models" / "placeholder-molecule-lm"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"placeholder weights")
    return folder


def approved_molecule_request(
    *, dataset: Dataset, model_folder: Path, recipe: dict, officer=None, holdout_fraction: float = 0.2,
    cohort_definition: dict | None = None,
) -> DataAccessRequest:
    """An approved molecules request (frozen cohort) on `dataset`, its base model registered from `model_folder`."""
    officer = officer or factories.officer()
    researcher = factories.researcher()
    governance.policy_update(by=officer, note="small molecule cohorts for tests", min_patients=5, suppression_limit=5,
                             differencing_minimum=2, holdout_fraction=holdout_fraction)
    model = training_services.base_model_register(by=None, path=model_folder, name="molecule-lm", family="llama",
                                                  modality="molecules", licence="Apache-2.0")
    project = governance.project_create(by=researcher, title="Compound generation (project)",
                                        lay_summary="A generative model of patients' compounds.")
    today = timezone.localdate()
    ethics = governance.ethics_submit(by=researcher, project=project, committee="North Research Ethics Committee",
                                      reference="REC/25/0007", approved_on=today - timedelta(days=30),
                                      expires_on=today + timedelta(days=365), scope="Compounds and proteins.",
                                      letter=factories.PDF_LETTER)
    governance.ethics_verify(approval=ethics, by=officer)
    request = governance.request_create(
        by=researcher, project=project, datasets=[dataset], title="Generate compounds", purpose="Compound design aid.",
        modality="molecules", cohort_definition=cohort_definition or {}, base_model_name=model.name, recipe=recipe,
        ethics_approval=ethics,
    )
    governance.request_submit(request=request, by=researcher)
    return governance.request_approve(request=request, by=officer, conditions="Tests.")


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "holdout")
            for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_stage_molecules_writes_the_stored_structures_under_pseudonyms(tmp_path):
    dataset = molecule_dataset(n_patients=10)
    request = approved_molecule_request(dataset=dataset, model_folder=placeholder_model_folder(), recipe={})

    counts = stage_cohort(cohort=request.cohort, data_dir=tmp_path / "data", seed=3)

    members = CohortRecord.objects.filter(cohort=request.cohort)
    assert counts == {"train": members.filter(split="train").count(),
                      "holdout": members.filter(split="holdout").count(), "declined": 0}
    rows = _rows(tmp_path / "data")
    assert all(set(row) == {"record", "patient", "text"} for row in rows)
    stored = {(dataset.storage_dir / path).read_text(encoding="utf-8")
              for path in Record.objects.filter(dataset=dataset).values_list("file_path", flat=True)}
    assert sorted(row["text"] for row in rows) == sorted(
        (dataset.storage_dir / r.file_path).read_text(encoding="utf-8") for r in Record.objects.filter(dataset=dataset))
    assert {row["text"] for row in rows} <= stored
    assert any("(" in row["text"] for row in rows) and any(row["text"].isalpha() for row in rows)
    raw = "".join((tmp_path / "data" / f"{split}.jsonl").read_text() for split in ("train", "holdout"))
    assert [key for key in Record.objects.filter(dataset=dataset).values_list("source_id", flat=True) if key in raw] == []


def test_stage_molecules_declines_damaged_files_and_structures_spelling_an_identifier(tmp_path):
    steward = factories.steward()
    dataset = molecule_dataset(n_patients=6, steward=steward)
    # A patient whose only protein spells her given name: redacting it would corrupt the sequence.
    maria = PatientIdentity(key="pat-maria", mrn="MRN7654321", given="Maria", family="Okafor",
                            birth_date=date(1971, 3, 4), sex="female", phone="", national_id="")
    governance.dataset_import_records(
        dataset=dataset, patients=[maria], by=steward, source="tests",
        records=[ClinicalRecord(record_id="seq-maria", patient_key="pat-maria", record_date=date(2022, 5, 6),
                                document_type="protein_sequence", conditions=(), text="MARIA", age_at_record=51)],
    )
    damaged = Record.objects.filter(dataset=dataset, document_type="smiles").order_by("pk").first()
    (dataset.storage_dir / damaged.file_path).write_text("C1CC(", encoding="utf-8")
    request = approved_molecule_request(dataset=dataset, model_folder=placeholder_model_folder(), recipe={})

    counts = stage_cohort(cohort=request.cohort, data_dir=tmp_path / "data", seed=3)

    assert counts["declined"] == 2
    assert counts["train"] + counts["holdout"] == request.cohort.record_count - 2
    texts = {row["text"] for row in _rows(tmp_path / "data")}
    assert "MARIA" not in texts and "C1CC(" not in texts and not any("[" in t and "NAME" in t for t in texts)
