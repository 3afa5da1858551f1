"""The speech recipe end to end: a tiny Whisper trained with LoRA on espeak-ng speech inside a real
sandbox (bubblewrap; Docker when the engine and image answer), audited there, and its adapter
checked by the egress validator and loaded with stock peft.

Staged data is what ``training/staging_speech.py`` writes (16 kHz mono PCM16 WAVs named by
pseudonym, transcripts with the patient's name replaced); the base model is the demo builder's,
pre-trained on speech of other synthetic patients. Django-free (runs with ``-p no:django`` too).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.runtime.schema import PROGRESS_KEYS, validate_audit
from training.runtime.spec import SpecError, parse_spec

pytestmark = [pytest.mark.slow]

RECIPE = {"target_modules": None, "rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 0.01, "epochs": 3,
          "batch_size": 8, "max_seq_length": 128, "seed": 1234, "quantization": "none", "canaries": None, "dp": None}
WHISPER_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
BACKENDS = [
    pytest.param("bubblewrap", marks=pytest.mark.bubblewrap, id="bubblewrap"),
    pytest.param("docker", marks=pytest.mark.docker, id="docker"),
]
MiB = 1024 * 1024
ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(autouse=True)
def _isolated_storage():  # Django-free: the root conftest's storage fixture is not needed here
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    yield


@pytest.fixture(scope="module")
def workspace():
    """World-traversable (the sandbox's unprivileged user reads the model and data under it)."""
    root = Path(tempfile.mkdtemp(prefix="rapha-speech-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def speech_model(workspace) -> Path:
    from governance.synthetic_speech import pretraining_audio, synthetic_transcripts
    from training.runtime.build_speech import build_demo_speech

    return build_demo_speech(workspace / "model", synthetic_transcripts(80, seed=1001),
                             pretraining_audio(30, seed=1001), seed=0, pretrain_epochs=6)


@dataclass
class Staged:
    data: Path
    names: list[tuple[str, str]]  # ("name", "Given Family") of every patient, for the identifier scan
    train_patients: int
    holdout_patients: int
    train_records: int


@pytest.fixture(scope="module")
def staged(workspace) -> Staged:
    """30 synthetic patients' recordings staged as staging_speech.py stages them; a third held out."""
    from governance.synthetic_speech import generate_speech_hospital

    speech = generate_speech_hospital(30, seed=7)
    data = workspace / "data"
    (data / "audio").mkdir(parents=True)
    people = {p.key: p for p in speech.patients}
    keys = sorted(people)
    holdout = set(keys[: len(keys) // 3])
    lines: dict[str, list[str]] = {"train": [], "holdout": []}
    for number, record in enumerate(speech.records, 1):
        person = people[record.patient_key]
        alias = f"r-{number:06d}"
        (data / "audio" / f"{alias}.wav").write_bytes(record.attachment)
        text = re.sub(rf"\b({re.escape(person.given)}|{re.escape(person.family)})\b", "[NAME]", record.text)
        split = "holdout" if record.patient_key in holdout else "train"
        lines[split].append(json.dumps({"record": alias, "patient": f"p-{keys.index(record.patient_key) + 1:06d}",
                                        "audio": f"audio/{alias}.wav", "text": text}))
    for split, rows in lines.items():
        (data / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return Staged(data=data, names=[("name", f"{p.given} {p.family}") for p in speech.patients],
                  train_patients=len(keys) - len(holdout), holdout_patients=len(holdout),
                  train_records=len(lines["train"]))


def _spec(task: str, **extra) -> dict:
    return {"schema_version": 1, "task": task, "job_id": f"speech-{task}", "modality": "speech",
            "base_model": {"path": "/models", "family": "whisper"}, "data_dir": "/data", "out_dir": "/out",
            "recipe": RECIPE, "threads": 1, "max_steps": None, **extra}


@dataclass
class SandboxRun:
    backend: str
    out: Path
    audit_out: Path
    train_status: str
    audit_status: str
    log: str

    def progress(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / "progress.jsonl").read_text(encoding="utf-8").splitlines()]

    def audit_report(self) -> dict:
        return json.loads((self.audit_out / "audit.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=BACKENDS)
def speech_run(request, workspace, speech_model, staged) -> SandboxRun:
    """Train, then audit, each as its own sandbox job, the way the worker runs them."""
    from training.sandbox import (SandboxSpec, SandboxUnavailable, get_backend, grant_sandbox_access,
                                  stage_runtime_code)

    try:
        backend = get_backend(request.param)
    except SandboxUnavailable as exc:
        pytest.skip(f"{request.param} sandbox unavailable here: {exc}")
    job = workspace / f"job-{request.param}"
    spec_dir, out, audit_out, adapter_dir = job / "job", job / "out", job / "audit", job / "adapter"
    for folder in (spec_dir, out, audit_out, adapter_dir):
        folder.mkdir(parents=True)
    (spec_dir / "train.json").write_text(json.dumps(_spec("train")))
    (spec_dir / "audit.json").write_text(json.dumps(_spec("audit", adapter_path=f"/adapter/{ADAPTER_FILE}")))
    code = stage_runtime_code(job)
    job.chmod(0o755)
    grant_sandbox_access(job)
    grant_sandbox_access(workspace / "model")
    grant_sandbox_access(staged.data)
    mounts = [(str(staged.data), "/data", True), (str(speech_model), "/models", True), (str(spec_dir), "/job", True),
              (code, "/code", True)]

    def run(task: str, out_dir: Path, extra: list) -> str:
        spec = SandboxSpec(job_id=f"speech-test-{uuid.uuid4().hex[:10]}",
                           command=["python", "-m", "training.runtime", task, f"/job/{task}.json"],
                           out_dir=str(out_dir), mounts=mounts + extra, wall_clock_seconds=900,
                           memory_bytes=3072 * MiB, pids_limit=128, cpus=1, log_path=str(job / f"{task}.log"))
        return backend.run(spec).status

    train_status = run("train", out, [])
    if train_status == "succeeded":
        shutil.copyfile(out / ADAPTER_FILE, adapter_dir / ADAPTER_FILE)
        grant_sandbox_access(adapter_dir)
        audit_status = run("audit", audit_out, [(str(adapter_dir), "/adapter", True)])
    else:
        audit_status = "not run"
    log = "".join(p.read_text(errors="replace") for p in sorted(job.glob("*.log")))
    return SandboxRun(request.param, out, audit_out, train_status, audit_status, log)


# --- the sandbox run --------------------------------------------------------------------------------

def test_speech_sandbox_train_and_audit_succeed(speech_run):
    assert (speech_run.train_status, speech_run.audit_status) == ("succeeded", "succeeded"), speech_run.log[-3000:]
    assert sorted(p.name for p in speech_run.out.iterdir()) == [ADAPTER_FILE, "progress.jsonl"]
    assert sorted(p.name for p in speech_run.audit_out.iterdir()) == ["audit.json"]


def test_speech_lora_lowers_heldout_loss(speech_run):
    lines = speech_run.progress()
    assert all(set(line) <= PROGRESS_KEYS for line in lines)
    final = lines[-1]
    assert final["qlora"] == 0
    # A measurable drop, not noise: the held-out transcripts are other patients' recordings.
    assert final["eval_loss_adapted"] < final["eval_loss_base"] - 0.1, final


def test_speech_logs_carry_no_transcript_or_name(speech_run, staged):
    for _, name in staged.names:
        assert name not in speech_run.log
    assert "Dictation for" not in speech_run.log and "[NAME]" not in speech_run.log


def test_speech_audit_schema_valid_and_per_patient(speech_run, staged):
    report = speech_run.audit_report()
    assert validate_audit(report) == report
    assert set(report["membership"]) == {"loss", "reference", "zlib"}  # text of transcripts: zlib applies
    assert "extraction" not in report and "canaries" not in report and "memorisation" not in report
    assert staged.train_records > staged.train_patients  # some patients have several recordings...
    for attack in report["membership"].values():  # ...and membership counts people, not recordings
        assert (attack["n_members"], attack["n_nonmembers"]) == (staged.train_patients, staged.holdout_patients)


def test_speech_adapter_accepted_by_egress_validator(speech_run, speech_model, staged):
    from egress.validation import validate_adapter

    recipe = {"target_modules": WHISPER_ATTENTION, "rank": 8, "alpha": 16, "dropout": 0.0}
    report = validate_adapter(speech_run.out, base_model_dir=speech_model, recipe=recipe, identifiers=staged.names)
    assert report.accepted, report.reasons()
    # 2 encoder layers x self-attention (4) + 2 decoder layers x (self + cross attention) (8) = 24 modules.
    assert report.verdict("tensor_set").figures["expected"] == 48
    assert report.verdict("recipe").figures["architecture"] == "WhisperForConditionalGeneration"


def test_speech_adapter_loads_with_stock_peft(speech_run, speech_model, staged, tmp_path):
    import numpy as np
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    shutil.copyfile(speech_run.out / ADAPTER_FILE, adapter / ADAPTER_FILE)
    LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=WHISPER_ATTENTION, task_type=None,
               base_model_name_or_path=str(speech_model)).save_pretrained(str(adapter))
    base = WhisperForConditionalGeneration.from_pretrained(str(speech_model), local_files_only=True)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()

    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 24 and all(float(p.abs().sum()) > 0 for p in lora_b)
    extractor = WhisperFeatureExtractor.from_pretrained(str(speech_model))
    audio = np.frombuffer((staged.data / "audio" / "r-000001.wav").read_bytes()[44:], dtype="<i2") / 32768.0
    features = extractor(audio, sampling_rate=16_000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        adapted = model(input_features=features, decoder_input_ids=torch.tensor([[1, 40, 50]])).logits
        with model.disable_adapter():
            plain = model(input_features=features, decoder_input_ids=torch.tensor([[1, 40, 50]])).logits
    assert torch.isfinite(adapted).all()
    assert not torch.allclose(adapted, plain)


# --- the recipe in-process: grouping, and refusals ----------------------------------------------------

def _recipe(data: Path, model: Path):
    import torch

    from training.runtime.recipes import recipe_class

    spec = parse_spec({**_spec("train"), "base_model": {"path": str(model), "family": "whisper"},
                       "data_dir": str(data), "out_dir": str(data.parent / "unused-out")})
    recipe = recipe_class("speech")(spec, torch.device("cpu"))
    recipe.load_processor()
    return recipe


def _seconds(data: Path, record) -> float:
    return ((data / record.payload["audio"]).stat().st_size - 44) / 2 / 16_000


def _groups(recipe, staged: Staged) -> tuple[list, list]:
    """A patient whose first two recordings fit one window together, and one whose do not."""
    window = recipe.window / 16_000
    by_patient: dict[str, list] = {}
    for record in recipe.read_split("train"):
        by_patient.setdefault(record.patient, []).append(record)
    several = [g for g in by_patient.values() if len(g) >= 2]
    fits = next(g for g in several if sum(_seconds(staged.data, r) for r in g[:2]) + 0.3 <= window)
    too_long = next(g for g in several if sum(_seconds(staged.data, r) for r in g[:2]) + 0.3 > window)
    return fits, too_long


def test_speech_encode_group_joins_a_patients_recordings(staged, speech_model):
    recipe = _recipe(staged.data, speech_model)
    group, _ = _groups(recipe, staged)

    grouped = recipe.encode_group(group)
    single = recipe.encode(group[0])

    assert grouped["input_features"].shape == single["input_features"].shape  # one window of frames
    joined = recipe.tokenizer.decode(grouped["ids"], skip_special_tokens=True)
    assert joined.startswith(f"{recipe.text_of(group[0])} {recipe.text_of(group[1])}")
    assert grouped["ids"][0] == recipe.start_id and grouped["ids"][-1] == recipe.eos_id
    batch = recipe.collate([grouped, single])
    assert batch["decoder_input_ids"].shape == batch["labels"].shape == batch["decoder_attention_mask"].shape
    assert int(batch["decoder_attention_mask"][1].sum()) == len(single["ids"]) - 1


def test_speech_encode_group_keeps_only_whole_recordings_that_fit(staged, speech_model):
    recipe = _recipe(staged.data, speech_model)
    _, group = _groups(recipe, staged)

    grouped = recipe.encode_group(group)

    assert recipe.tokenizer.decode(grouped["ids"], skip_special_tokens=True) == recipe.text_of(group[0])


def test_speech_recipe_refuses_audio_not_16k_mono(staged, speech_model, tmp_path):
    import numpy as np

    from governance.importers.audio import pcm16_wav_bytes

    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    (data / "audio" / "r-000001.wav").write_bytes(pcm16_wav_bytes(np.zeros(8000), sample_rate=8000))
    (data / "train.jsonl").write_text(json.dumps({"record": "r-000001", "patient": "p-000001",
                                                  "audio": "audio/r-000001.wav", "text": "hello"}) + "\n")
    recipe = _recipe(data, speech_model)
    record = recipe.read_split("train")[0]

    with pytest.raises(SpecError, match=r"staged recording r-000001.wav is not 16000 Hz mono PCM16"):
        recipe.encode(record)


def test_speech_recipe_refuses_a_path_outside_the_data(staged, speech_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"record": "r-000001", "patient": "p-000001",
                                                  "audio": "../model/model.safetensors", "text": "x"}) + "\n")
    recipe = _recipe(data, speech_model)

    with pytest.raises(SpecError, match="outside the data directory"):
        recipe.encode(recipe.read_split("train")[0])
