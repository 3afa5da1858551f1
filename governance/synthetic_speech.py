"""Synthetic clinical speech: short dictations and consultation lines, spoken by espeak-ng.

Patients (names, birth dates, identifiers, coded conditions, visit dates) come from
:func:`governance.synthetic.generate_hospital` for the same seed, so the speech hospital has the
same kind of people as the notes. Each patient gets 1-3 recordings of a few seconds; some say the
patient's name, so that staging's redaction of transcripts and the egress identifier scan have
something to do. Each patient has one voice (espeak-ng accent, male/female variant, speed and
pitch), so speaker identity carries through a patient's recordings, as it would in a clinic.

Text is deterministic for a seed (only ``random.Random``). The audio really says the words: it is
synthesised by Debian's ``espeak-ng`` and stored as the importer stores real audio (16 kHz mono
PCM16 WAV with duration, original rate and channels). espeak-ng must be installed
(``apt-get install espeak-ng``); without it :class:`EspeakMissing` says so.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from governance.importers.audio import decode_audio, recording_attachment
from governance.records import ClinicalRecord, PatientIdentity, age_on
from governance.synthetic import CONDITIONS, generate_hospital

__all__ = [
    "ESPEAK",
    "EspeakMissing",
    "SyntheticSpeech",
    "Utterance",
    "generate_speech_hospital",
    "pretraining_audio",
    "speak",
    "synthetic_transcripts",
    "synthetic_utterances",
]

ESPEAK = "espeak-ng"
ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
SPEED_RANGE = (150, 185)  # words per minute
PITCH_RANGE = (25, 75)  # espeak-ng's 0-99 scale
NAME_SHARE = 0.4  # share of recordings that say the patient's name

_BY_ICD10 = {c.icd10: c for c in CONDITIONS}
_NUMBERS = ("two", "three", "four", "six", "eight", "twelve")

# Dictations: a clinician speaking a short note. {name}, {title}, {family}: the patient.
_DICTATIONS = (
    "Dictation for {name}. {condition} review, stable, continue {drug}.",
    "Clinic note for {name}. No new symptoms, review in {n} months.",
    "{condition} follow up. Chest clear, heart sounds normal, repeat bloods.",
    "Dictation. {condition}. Tolerating {drug} well, no side effects reported.",
    "Ward round note for {title} {family}. Observations stable, plan discharge tomorrow.",
    "Review of {condition}. Blood pressure improved, continue the same dose.",
)
# Lines of a consultation.
_CONSULTATIONS = (
    "Good morning {title} {family}, how has your {symptom} been this week?",
    "Any problems with the {drug} since we started it, {title} {family}?",
    "Your blood tests look better, so we will keep the same dose.",
    "I would like to listen to your chest now, please breathe in deeply.",
    "Has the {symptom} been worse at night or during the day?",
    "We will check your {condition} again in {n} months at the clinic.",
)
_SYMPTOMS = ("breathing", "chest pain", "cough", "tiredness", "sleep", "appetite", "swelling", "headache")
_GENERIC_DRUGS = ("paracetamol", "ramipril", "amlodipine", "atorvastatin", "metformin", "omeprazole")


class EspeakMissing(RuntimeError):
    """espeak-ng is not installed; the message names the Debian package."""


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice with variant, e.g. "en-gb-scotland+f3"
    speed: int
    pitch: int


@dataclass(frozen=True)
class Utterance:
    """One recording's text and who says it (no audio yet)."""

    record_id: str
    patient_key: str
    record_date: date
    document_type: str  # dictation | consultation_recording
    conditions: tuple[tuple[str, str], ...]
    text: str
    voice: Voice
    says_name: bool


@dataclass(frozen=True)
class SyntheticSpeech:
    seed: int
    patients: tuple[PatientIdentity, ...]
    records: tuple[ClinicalRecord, ...]  # text = transcript, attachment = 16 kHz mono PCM16 WAV


def synthetic_utterances(patients: int, seed: int) -> tuple[tuple[PatientIdentity, ...], tuple[Utterance, ...]]:
    """The patients and what each of their recordings says. Deterministic for (patients, seed)."""
    hospital = generate_hospital(patients, seed)
    rng = random.Random(f"speech:{seed}")
    utterances: list[Utterance] = []
    counter = 0
    for identity in hospital.patients:
        notes = hospital.records_for(identity.key)
        voice = _voice(rng, identity.sex)
        count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
        for index in range(count):
            note = notes[index % len(notes)]
            when = note.record_date + timedelta(days=index // len(notes))
            kind = rng.choice(("dictation", "consultation_recording"))
            says_name = rng.random() < NAME_SHARE
            text = _line(rng, identity, note.conditions, kind, says_name)
            counter += 1
            utterances.append(Utterance(
                record_id=f"rec-{counter:07d}", patient_key=identity.key, record_date=when, document_type=kind,
                conditions=note.conditions, text=text, voice=voice, says_name=says_name,
            ))
    return hospital.patients, tuple(utterances)


def synthetic_transcripts(n: int, seed: int) -> list[str]:
    """Transcripts of ``n`` synthetic patients' recordings (for training a tokenizer)."""
    return [u.text for u in synthetic_utterances(n, seed)[1]]


def generate_speech_hospital(patients: int, seed: int) -> SyntheticSpeech:
    """Patients and their recordings with real (espeak-ng) audio, stored as the importer stores audio."""
    identities, utterances = synthetic_utterances(patients, seed)
    records = []
    by_key = {p.key: p for p in identities}
    with tempfile.TemporaryDirectory(prefix="rapha-speech-") as scratch:
        for utterance in utterances:
            wav = _espeak_wav(utterance.text, utterance.voice, Path(scratch))
            attachment, attributes = recording_attachment(wav, suffix=".wav", max_seconds=None)
            records.append(ClinicalRecord(
                record_id=utterance.record_id, patient_key=utterance.patient_key, record_date=utterance.record_date,
                document_type=utterance.document_type, conditions=utterance.conditions, text=utterance.text,
                age_at_record=age_on(by_key[utterance.patient_key].birth_date, utterance.record_date),
                attachment=attachment, attachment_suffix=".wav", attributes=attributes,
            ))
    used = {u.patient_key for u in utterances}
    return SyntheticSpeech(seed=seed, patients=tuple(p for p in identities if p.key in used), records=tuple(records))


def pretraining_audio(patients: int, seed: int) -> list[tuple[Any, str]]:
    """(16 kHz float32 samples, transcript) pairs for pre-training a base model.

    Use a seed other than the dataset's, so the base model has not heard those recordings.
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="rapha-speech-") as scratch:
        for utterance in synthetic_utterances(patients, seed)[1]:
            wav = _espeak_wav(utterance.text, utterance.voice, Path(scratch))
            out.append((decode_audio(wav, suffix=".wav").samples, utterance.text))
    return out


def speak(text: str, *, voice: str = "en-gb", speed: int = 160, pitch: int = 50) -> Any:
    """``text`` spoken by espeak-ng, as 16 kHz mono float32 samples."""
    with tempfile.TemporaryDirectory(prefix="rapha-speech-") as scratch:
        wav = _espeak_wav(text, Voice(voice, speed, pitch), Path(scratch))
    return decode_audio(wav, suffix=".wav").samples


def _espeak_wav(text: str, voice: Voice, scratch: Path) -> bytes:
    binary = shutil.which(ESPEAK)
    if binary is None:
        raise EspeakMissing(f"{ESPEAK} is not installed; synthetic speech needs it (Debian: apt-get install espeak-ng).")
    out = scratch / "utterance.wav"
    # The text goes in on stdin: it can never be read as an option.
    subprocess.run(
        [binary, "-w", str(out), "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdin"],
        input=text.encode("utf-8"), check=True, capture_output=True, timeout=60,
    )
    return out.read_bytes()


def _voice(rng: random.Random, sex: str) -> Voice:
    variant = rng.choice(FEMALE_VARIANTS if sex == "female" else MALE_VARIANTS)
    return Voice(f"{rng.choice(ACCENTS)}+{variant}", rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE))


def _line(rng: random.Random, identity: PatientIdentity, conditions, kind: str, says_name: bool) -> str:
    info = next((_BY_ICD10[code] for system, code in conditions if system == "icd10" and code in _BY_ICD10), None)
    condition = _lower_first(info.name) if info else "general medical"
    drug = (rng.choice(info.meds)[0] if info and info.meds else rng.choice(_GENERIC_DRUGS)).lower()
    title = "Mr" if identity.sex == "male" else rng.choice(("Mrs", "Ms"))
    templates = _DICTATIONS if kind == "dictation" else _CONSULTATIONS
    named = [t for t in templates if ("{name}" in t or "{family}" in t) == says_name]
    text = rng.choice(named).format(
        name=f"{identity.given} {identity.family}", title=title, family=identity.family, condition=condition,
        drug=drug, symptom=rng.choice(_SYMPTOMS), n=rng.choice(_NUMBERS),
    )
    return text[0].upper() + text[1:]


def _lower_first(name: str) -> str:
    """Mid-sentence form of a condition name; acronyms and eponyms ("COPD", "Crohn's") keep their capital."""
    first = name.split(" ", 1)[0]
    if (len(first) > 1 and first[1].isupper()) or first.endswith("'s"):
        return name
    return name[0].lower() + name[1:]
