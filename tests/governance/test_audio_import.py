"""Importing recordings with transcripts (governance/importers/audio.py, manage.py import_audio), and the
synthetic speech generator (governance/synthetic_speech.py, manage.py generate_synthetic_speech).

Audio is made here with numpy + soundfile (tones whose frequency and level can be checked after
down-mixing and resampling) or spoken by espeak-ng; FHIR resources are written as a hospital
export would write them.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
from django.core.management import CommandError, call_command

from governance.importers.audio import AudioImportError, decode_audio, parse_audio_folder
from governance.models import Dataset, DirectIdentifier, Record
from governance.synthetic_speech import (
    EspeakMissing,
    generate_speech_hospital,
    speak,
    synthetic_transcripts,
    synthetic_utterances,
)
from tests import factories

DOC_TYPE_SYSTEM = "https://rapha.example.org/fhir/CodeSystem/document-type"
TRANSCRIPT = "Dictation for Ada Lovelace. Chest clear, continue ramipril."


# --- building a folder -----------------------------------------------------------------------------

def tone(seconds: float, rate: int, *, channels: int = 1, freq: float = 440.0, levels=(0.5, 0.5)) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave_ = np.sin(2 * np.pi * freq * t)
    return np.stack([levels[c] * wave_ for c in range(channels)], axis=1)


def write_audio(path: Path, samples: np.ndarray, rate: int, fmt: str = "WAV") -> Path:
    soundfile.write(str(path), samples, rate, format=fmt, subtype="PCM_16")
    return path


def patient(pid: str, given: str, family: str, birth: str = "1960-05-04") -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"use": "official", "given": [given], "family": family}],
            "birthDate": birth, "gender": "female",
            "identifier": [{"system": "https://rapha.example.org/fhir/sid/mrn", "value": f"MRN{pid[-4:]}000"}]}


def media(rid: str, audio: str, subject: str = "Patient/p-0001", when: str = "2024-03-02T10:00:00Z",
          content_type: str = "audio/wav", doc_type: str | None = None) -> dict:
    resource = {"resourceType": "Media", "id": rid, "status": "completed", "subject": {"reference": subject},
                "createdDateTime": when, "content": {"contentType": content_type, "url": audio}}
    if doc_type:
        resource["type"] = {"coding": [{"system": DOC_TYPE_SYSTEM, "code": doc_type}]}
    return resource


def document_reference(rid: str, audio: str, transcript: str, subject: str = "Patient/p-0002") -> dict:
    return {"resourceType": "DocumentReference", "id": rid, "status": "current", "subject": {"reference": subject},
            "date": "2024-04-05T09:30:00Z",
            "type": {"coding": [{"system": DOC_TYPE_SYSTEM, "code": "dictation"}]},
            "content": [{"attachment": {"contentType": "audio/flac", "url": audio}},
                        {"attachment": {"contentType": "text/plain; charset=utf-8",
                                        "data": base64.b64encode(transcript.encode()).decode()}}]}


def write_json(path: Path, resource: dict) -> None:
    path.write_text(json.dumps(resource), encoding="utf-8")


def good_folder(root: Path) -> Path:
    """Two patients: a 44.1 kHz stereo WAV with a paired .txt (Media), a FLAC with an inline transcript
    (DocumentReference), both described in one Bundle with the Patients."""
    root.mkdir(parents=True, exist_ok=True)
    write_audio(root / "visit-1.wav", tone(2.0, 44_100, channels=2, levels=(0.6, 0.2)), 44_100)
    (root / "visit-1.txt").write_text(TRANSCRIPT + "\n", encoding="utf-8")
    write_audio(root / "dictation-2.flac", tone(1.5, 22_050, freq=300.0), 22_050, fmt="FLAC")
    write_json(root / "export.json", {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": patient("p-0001", "Ada", "Lovelace")},
        {"resource": patient("p-0002", "Grace", "Hopper", birth="1950-12-09")},
        {"resource": media("rec-1", "visit-1.wav", doc_type="consultation_recording")},
        {"resource": document_reference("rec-2", "dictation-2.flac", "Dictation for Grace Hopper. Review in three months.")},
    ]})
    return root


# Each bad entry: (file to write, how to write it, expected reason).
def _truncated(path: Path) -> None:
    write_audio(path, tone(1.0, 16_000), 16_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_header(path: Path) -> None:
    write_audio(path, tone(1.0, 16_000), 16_000)
    path.write_bytes(b"RIFX" + path.read_bytes()[4:])


def _zero_length(path: Path) -> None:
    path.write_bytes(b"")


def _bad_flac(path: Path) -> None:
    write_audio(path, tone(1.0, 16_000), 16_000, fmt="FLAC")
    path.write_bytes(path.read_bytes()[:100])


def _too_long(path: Path) -> None:
    write_audio(path, tone(4.0, 8_000), 8_000)


def _no_transcript(path: Path) -> None:
    write_audio(path, tone(1.0, 16_000), 16_000)


BAD = {
    "truncated.wav": (_truncated, "truncated: the header declares 32000 bytes of audio, the file holds 15978"),
    "wrong-header.wav": (_wrong_header, "not a WAV file (no RIFF/WAVE header)"),
    "zero.wav": (_zero_length, "the file is empty (0 bytes)"),
    "broken.flac": (_bad_flac, "not a readable FLAC file"),
    "long.wav": (_too_long, "the recording is 4.0 s long; the limit is 3 s"),
    "untranscribed.wav": (_no_transcript, "missing transcript: no text/plain attachment and no untranscribed.txt"),
}


def bad_folder(root: Path) -> Path:
    """The good folder plus one recording of each bad kind (each with a Media and, but one, a transcript)."""
    good_folder(root)
    for number, (name, (write, _)) in enumerate(BAD.items(), 10):
        write(root / name)
        if name != "untranscribed.wav":
            (root / name).with_suffix(".txt").write_text("Some words.", encoding="utf-8")
        write_json(root / f"{Path(name).stem}.json", media(f"rec-{number}", name))
    write_audio(root / "orphan.wav", tone(1.0, 16_000), 16_000)  # no resource names it
    return root


def stored_wav(data: bytes) -> tuple[tuple, np.ndarray]:
    with wave.open(io.BytesIO(data), "rb") as handle:
        params = (handle.getnchannels(), handle.getsampwidth(), handle.getframerate(), handle.getcomptype())
        frames = handle.readframes(handle.getnframes())
    return params, np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32767.0


def peak_hz(samples: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


# --- parsing -------------------------------------------------------------------------------------------

def test_parse_audio_44k_stereo_wav_becomes_16k_mono(tmp_path):
    parsed = parse_audio_folder(good_folder(tmp_path / "in"), max_seconds=30)

    record = next(r for r in parsed.records if r.record_id == "rec-1")
    params, samples = stored_wav(record.attachment)
    assert params == (1, 2, 16_000, "NONE")
    assert len(samples) == 32_000  # 2.0 s at 16 kHz
    assert dict(record.attributes) == {"duration_seconds": 2.0, "original_sample_rate": 44_100, "channels": 2}
    assert peak_hz(samples) == pytest.approx(440.0, abs=1.0)
    # Channels at 0.6 and 0.2 average to a 0.4 sine: RMS 0.4 / sqrt(2).
    assert np.sqrt(np.mean(samples[1000:-1000] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)
    assert (record.text, record.document_type, record.patient_key) == (TRANSCRIPT, "consultation_recording", "p-0001")
    assert record.attachment_suffix == ".wav" and record.age_at_record == 63


def test_parse_audio_flac_with_inline_transcript(tmp_path):
    parsed = parse_audio_folder(good_folder(tmp_path / "in"), max_seconds=30)

    record = next(r for r in parsed.records if r.record_id == "rec-2")
    params, samples = stored_wav(record.attachment)
    assert params == (1, 2, 16_000, "NONE") and len(samples) == 24_000
    assert peak_hz(samples) == pytest.approx(300.0, abs=1.0)
    assert dict(record.attributes) == {"duration_seconds": 1.5, "original_sample_rate": 22_050, "channels": 1}
    assert (record.text, record.document_type) == ("Dictation for Grace Hopper. Review in three months.", "dictation")
    assert {p.key: (p.given, p.family, p.mrn) for p in parsed.patients} == {
        "p-0001": ("Ada", "Lovelace", "MRN0001000"), "p-0002": ("Grace", "Hopper", "MRN0002000")}
    assert [(e.entry, e.imported) for e in parsed.entries] == [("dictation-2.flac", True), ("visit-1.wav", True)]


def test_parse_audio_reports_each_bad_entry_and_keeps_the_good(tmp_path):
    parsed = parse_audio_folder(bad_folder(tmp_path / "in"), max_seconds=3)

    reasons = {e.entry: e.reason for e in parsed.refused}
    assert set(reasons) == {*BAD, "orphan.wav"}
    for name, (_, expected) in BAD.items():
        assert reasons[name].startswith(expected), (name, reasons[name])
    assert reasons["orphan.wav"] == "no FHIR Media or DocumentReference in the folder names this file"
    assert sorted(r.record_id for r in parsed.records) == ["rec-1", "rec-2"]


def test_parse_audio_subject_outside_the_folder_refuses_that_recording(tmp_path):
    root = good_folder(tmp_path / "in")
    write_audio(root / "stranger.wav", tone(1.0, 16_000), 16_000)
    (root / "stranger.txt").write_text("Hello.", encoding="utf-8")
    write_json(root / "stranger.json", media("rec-9", "stranger.wav", subject="Patient/nobody"))

    parsed = parse_audio_folder(root, max_seconds=30)

    assert [(e.entry, e.reason) for e in parsed.refused] == [
        ("stranger.wav", "subject 'Patient/nobody' is not a Patient resource in the folder")]


def test_parse_audio_resource_without_usable_audio_refused(tmp_path):
    root = good_folder(tmp_path / "in")
    write_audio(tmp_path / "outside.wav", tone(1.0, 16_000), 16_000)
    write_json(root / "escape.json", media("rec-8", "../outside.wav"))
    note = document_reference("rec-9", "ignored.flac", "A typed note.")
    note["content"] = note["content"][1:]  # the text only, no recording
    write_json(root / "note.json", note)

    parsed = parse_audio_folder(root, max_seconds=30)

    assert [(e.entry, e.reason) for e in parsed.refused] == [
        ("escape.json (Media/rec-8)", "the audio url '../outside.wav' points outside the folder"),
        ("note.json (DocumentReference/rec-9)", "no audio attachment (an audio/* contentType or a .wav/.flac url)"),
    ]


@pytest.mark.parametrize("mutate, message", [
    (lambda root: (root / "export.json").write_text("{not json"), "export.json: not valid JSON"),
    (lambda root: write_json(root / "extra.json", {"resourceType": "Patient", "id": "p-0009", "birthDate": "soon"}),
     "extra.json: invalid FHIR R4 Patient: birthDate"),
    (lambda root: write_json(root / "extra.json", patient("p-0001", "Ada", "Again")),
     "extra.json (Patient/p-0001) duplicates export.json entry 0 (Patient/p-0001)"),
    (lambda root: write_json(root / "extra.json", media("rec-7", "visit-1.wav")),
     "is also described by export.json entry 2 (Media/rec-1)"),
])
def test_parse_audio_unreadable_folder_refused_whole(tmp_path, mutate, message):
    root = good_folder(tmp_path / "in")
    mutate(root)

    with pytest.raises(AudioImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_audio_folder(root, max_seconds=30)


def test_decode_audio_header_with_no_samples_is_truncated():
    data = io.BytesIO()
    write_audio_bytes = tone(1.0, 16_000)
    soundfile.write(data, write_audio_bytes, 16_000, format="WAV", subtype="PCM_16")
    header_only = data.getvalue()[:44]

    with pytest.raises(ValueError, match="truncated: the header declares 32000 bytes of audio, the file holds 0"):
        decode_audio(header_only, suffix=".wav")


# --- the command ---------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_import_audio_imports_the_good_and_reports_the_bad(tmp_path, settings, capsys):
    settings.AUDIO_MAX_SECONDS = 3
    steward = factories.steward()
    root = bad_folder(tmp_path / "in")

    call_command("import_audio", str(root), dataset="clinic-audio", steward=steward.email)

    out = capsys.readouterr().out
    for name, (_, reason) in BAD.items():
        assert f"refused {name}: {reason}" in out
    assert "clinic-audio: 2 patients and 2 recordings added, 0 already present, 7 refused." in out
    dataset = Dataset.objects.get(name="clinic-audio")
    assert dataset.modality == "speech"
    records = {r.source_id: r for r in Record.objects.filter(dataset=dataset)}
    assert set(records) == {"rec-1", "rec-2"}
    rec = records["rec-1"]
    assert (rec.document_type, rec.attributes["duration_seconds"], rec.attributes["channels"]) == (
        "consultation_recording", 2.0, 2)
    params, samples = stored_wav((dataset.storage_dir / rec.attributes["attachment_path"]).read_bytes())
    assert params == (1, 2, 16_000, "NONE") and len(samples) == 32_000
    assert (dataset.storage_dir / rec.file_path).read_text(encoding="utf-8") == TRANSCRIPT
    assert DirectIdentifier.objects.filter(patient__dataset=dataset, kind="name", value="Ada Lovelace").exists()

    call_command("import_audio", str(root), dataset="clinic-audio", steward=steward.email)  # idempotent

    assert "0 patients and 0 recordings added, 2 already present, 7 refused." in capsys.readouterr().out
    assert Record.objects.filter(dataset=dataset).count() == 2


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.django_db
def test_import_audio_strict_refuses_everything_and_changes_nothing(tmp_path, settings):
    settings.AUDIO_MAX_SECONDS = 3
    steward = factories.steward()
    root = bad_folder(tmp_path / "in")

    with pytest.raises(CommandError, match=r"Nothing imported: 7 recording\(s\) refused \(--strict\)."):
        call_command("import_audio", str(root), dataset="clinic-audio", steward=steward.email, strict=True)

    assert not Dataset.objects.filter(name="clinic-audio").exists()
    assert Record.objects.count() == 0
    assert _files_under(settings.DATA_ROOT) == []


@pytest.mark.django_db
def test_import_audio_unreadable_folder_changes_nothing(tmp_path, settings):
    steward = factories.steward()
    root = good_folder(tmp_path / "in")
    write_json(root / "extra.json", {"resourceType": "Patient", "id": "p-0009", "birthDate": "soon"})

    with pytest.raises(CommandError, match=r"Nothing imported. extra.json: invalid FHIR R4 Patient"):
        call_command("import_audio", str(root), dataset="clinic-audio", steward=steward.email)

    assert not Dataset.objects.filter(name="clinic-audio").exists()
    assert _files_under(settings.DATA_ROOT) == []


@pytest.mark.django_db
def test_import_audio_into_a_text_dataset_refused_and_nothing_written(tmp_path, settings):
    steward = factories.steward()
    factories.dataset(by=steward, name="clinic-audio", modality="text")
    root = good_folder(tmp_path / "in")

    with pytest.raises(CommandError, match="Dataset 'clinic-audio' holds text data, not speech."):
        call_command("import_audio", str(root), dataset="clinic-audio", steward=steward.email)

    assert Record.objects.count() == 0
    assert _files_under(settings.DATA_ROOT) == []


@pytest.mark.django_db
def test_import_audio_nothing_usable_refused(tmp_path):
    steward = factories.steward()
    root = tmp_path / "in"
    root.mkdir()
    _zero_length(root / "zero.wav")

    with pytest.raises(CommandError, match=r"Nothing imported: no usable recording in .* \(1 refused\)."):
        call_command("import_audio", str(root), dataset="clinic-audio", steward=steward.email)
    assert not Dataset.objects.filter(name="clinic-audio").exists()


# --- synthetic speech ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic():
    return generate_speech_hospital(6, seed=21)


def test_synthetic_speech_audio_is_spoken_16k(synthetic):
    utterances = synthetic_utterances(6, seed=21)[1]
    assert [u.text for u in utterances] == [r.text for r in synthetic.records]
    for record, utterance in zip(synthetic.records, utterances):
        params, samples = stored_wav(record.attachment)
        assert params == (1, 2, 16_000, "NONE")
        duration = len(samples) / 16_000
        assert duration == pytest.approx(dict(record.attributes)["duration_seconds"], abs=0.01)
        assert dict(record.attributes)["original_sample_rate"] == 22_050  # espeak-ng's own rate
        assert np.sqrt(np.mean(samples ** 2)) > 0.02  # not silence
        # The words at the voice's speed (words a minute), give or take pauses at punctuation.
        spoken = len(record.text.split()) / (utterance.voice.speed / 60)
        assert 0.6 * spoken < duration < 2.0 * spoken, (record.text, duration, spoken)


def test_synthetic_speech_longer_text_longer_audio():
    short, long = speak("Chest clear."), speak("Chest clear, heart sounds normal, continue ramipril and review in three months.")

    assert len(long) > 2.5 * len(short)


def test_synthetic_speech_text_deterministic_per_seed():
    assert synthetic_transcripts(12, 5) == synthetic_transcripts(12, 5)
    assert synthetic_transcripts(12, 5) != synthetic_transcripts(12, 6)


def test_synthetic_speech_names_voices_and_repeat_speakers():
    patients, utterances = synthetic_utterances(30, 5)
    people = {p.key: p for p in patients}
    per_patient: dict[str, list] = {}
    for u in utterances:
        per_patient.setdefault(u.patient_key, []).append(u)
    assert any(len(group) >= 2 for group in per_patient.values())
    assert all(len({u.voice for u in group}) == 1 for group in per_patient.values())  # one voice per patient
    assert len({u.voice for u in utterances}) > 10
    named = [u for u in utterances if u.says_name]
    assert named and all(people[u.patient_key].family in u.text for u in named)
    assert all(people[u.patient_key].family not in u.text for u in utterances if not u.says_name)
    assert {u.document_type for u in utterances} == {"dictation", "consultation_recording"}


def test_synthetic_speech_without_espeak_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng on the PATH

    with pytest.raises(EspeakMissing, match=r"espeak-ng is not installed.*apt-get install espeak-ng"):
        generate_speech_hospital(1, seed=1)


@pytest.mark.django_db
def test_generate_synthetic_speech_command_imports_idempotently(capsys):
    steward = factories.steward()

    call_command("generate_synthetic_speech", patients=4, seed=3, steward=steward.email)
    call_command("generate_synthetic_speech", patients=4, seed=3, steward=steward.email)

    out = capsys.readouterr().out.splitlines()
    records = len(synthetic_utterances(4, 3)[1])
    assert out == [f"synthetic-speech: 4 patients and {records} recordings added, 0 already present.",
                   f"synthetic-speech: 0 patients and 0 recordings added, {records} already present."]
    dataset = Dataset.objects.get(name="synthetic-speech")
    assert dataset.modality == "speech" and dataset.records.count() == records
    assert set(dataset.records.values_list("document_type", flat=True)) <= {"dictation", "consultation_recording"}


def test_espeak_is_installed_here():
    assert shutil.which("espeak-ng"), "apt-get install espeak-ng"
