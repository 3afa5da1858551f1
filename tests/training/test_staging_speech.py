"""Staging a speech cohort: each recording copied under its pseudonym as 16 kHz mono PCM16 WAV, its
transcript with the patient's name redacted; a recording changed since import is refused; a record
without a recording is declined and counted."""

from __future__ import annotations

import hashlib
import json
import wave
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from governance import services as governance_services
from governance.models import Record
from governance.synthetic_speech import generate_speech_hospital, synthetic_utterances
from tests import factories
from training import services as training_services
from training.staging import stage_cohort

N_PATIENTS, SEED = 8, 3


@pytest.fixture(scope="module")
def speech():
    return generate_speech_hospital(N_PATIENTS, seed=SEED)


def _speech_model():
    """A registered speech base model (staging never opens it; the request must name one)."""
    folder = settings.DATA_ROOT / "base-models" / "tiny-speech"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "whisper"}')
    (folder / "model.safetensors").write_bytes(b"placeholder weights")
    return training_services.base_model_register(by=None, path=folder, name="tiny-speech", family="whisper",
                                                 modality="speech", licence="Apache-2.0")


def approved_speech_request(speech):
    officer, steward = factories.officer(), factories.steward()
    factories.small_policy(by=officer)
    dataset = governance_services.dataset_register(by=steward, name="speech-staging", title="Synthetic speech",
                                                   modality="speech", location="synthetic")
    governance_services.dataset_import_records(dataset=dataset, patients=speech.patients, records=speech.records,
                                               by=steward, source="synthetic speech")
    model = _speech_model()
    project = factories.project()
    today = timezone.localdate()
    ethics = governance_services.ethics_submit(
        by=project.principal_investigator, project=project, committee="North Research Ethics Committee",
        reference="REC/24/0099", approved_on=today - timedelta(days=30), expires_on=today + timedelta(days=365),
        scope="Transcription of clinic dictations.", letter=factories.PDF_LETTER,
    )
    governance_services.ethics_verify(approval=ethics, by=officer)
    request = governance_services.request_create(
        by=project.principal_investigator, project=project, datasets=[dataset], title="Transcribe dictations",
        purpose="A transcription aid.", modality="speech", cohort_definition={}, base_model_name=model.name,
        recipe={"canaries": False}, ethics_approval=ethics,
    )
    governance_services.request_submit(request=request, by=project.principal_investigator)
    return governance_services.request_approve(request=request, by=officer, conditions="Tests."), dataset


def _lines(data_dir: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "holdout")
            for line in (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.django_db
def test_stage_speech_writes_16k_wavs_and_redacted_transcripts(speech, tmp_path):
    request, dataset = approved_speech_request(speech)
    data_dir = tmp_path / "data"

    counts = stage_cohort(cohort=request.cohort, data_dir=data_dir, seed=11)

    lines = _lines(data_dir)
    assert counts == {"train": counts["train"], "holdout": counts["holdout"], "declined": 0}
    assert counts["train"] + counts["holdout"] == len(speech.records) == len(lines)
    stored = {r.attributes["attachment_sha256"] for r in Record.objects.filter(dataset=dataset)}
    for line in lines:
        assert set(line) == {"record", "patient", "audio", "text"}
        assert line["audio"] == f"audio/{line['record']}.wav"
        path = data_dir / line["audio"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() in stored  # the imported bytes, unchanged
        with wave.open(str(path), "rb") as handle:
            assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (1, 2, 16_000)
            assert handle.getnframes() > 16_000  # a spoken sentence lasts more than a second
    staged_text = "\n".join(line["text"] for line in lines)
    for person in speech.patients:
        assert person.given not in staged_text and person.family not in staged_text
    named = sum(u.says_name for u in synthetic_utterances(N_PATIENTS, SEED)[1])
    assert named >= 1
    assert sum("[NAME]" in line["text"] for line in lines) == named


@pytest.mark.django_db
def test_stage_speech_refuses_a_recording_changed_since_import(speech, tmp_path):
    request, dataset = approved_speech_request(speech)
    record = Record.objects.filter(dataset=dataset).order_by("pk").first()
    path = dataset.storage_dir / record.attributes["attachment_path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match=rf"Record {record.pk}: its recording does not match the sha256"):
        stage_cohort(cohort=request.cohort, data_dir=tmp_path / "data", seed=11)


@pytest.mark.django_db
def test_stage_speech_declines_a_record_without_recording(speech, tmp_path):
    request, dataset = approved_speech_request(speech)
    record = Record.objects.filter(dataset=dataset).order_by("pk").first()
    Record.objects.filter(pk=record.pk).update(attributes={})

    counts = stage_cohort(cohort=request.cohort, data_dir=tmp_path / "data", seed=11)

    assert counts["declined"] == 1
    assert counts["train"] + counts["holdout"] == len(speech.records) - 1
    assert len(list((tmp_path / "data" / "audio").iterdir())) == len(speech.records) - 1
