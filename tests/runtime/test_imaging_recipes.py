"""The imaging recipes' own parts: the DICOM reader, staged lines, fixed per-record diffusion scores,
the memorisation numbers, per-patient grouping, and bad data failing by file name.

Training, audit, validation and stock-peft loading of both recipes in real sandboxes are in
tests/training/test_imaging_sandbox.py; the validator's expected tensors in
tests/egress/test_expected_imaging.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.runtime.dicom import read_dicom_image
from training.runtime.recipes import recipe_class
from training.runtime.recipes.base import Record
from training.runtime.recipes.diffusion import memorisation_summary
from training.runtime.schema import MEMORISATION, _validate
from training.runtime.spec import SpecError, parse_spec

from .conftest import run_runtime
from .imaging import job_spec, stage_cohort, write_dicom, write_spec


# --- the DICOM reader --------------------------------------------------------------------------

def _gradient(rows: int = 32, cols: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, cols, dtype=np.float32), (rows, 1))


def test_read_dicom_applies_rescale_and_window(tmp_path):
    image = _gradient()
    path = write_dicom(tmp_path / "r-000001.dcm", image)

    read = read_dicom_image(path, size=32).numpy()

    assert read.shape == (32, 32) and read.dtype == np.float32
    assert np.abs(read - image).max() < 1e-3  # stored as integers of 1/2000 of the window


def test_read_dicom_narrower_window_raises_contrast(tmp_path):
    image = _gradient()
    read = read_dicom_image(write_dicom(tmp_path / "r-000001.dcm", image, window_width=1000.0), size=32).numpy()

    # window 1000 around 0 HU: intensity 0.25 (-500 HU) -> 0, 0.5 -> 0.5, 0.75 (+500 HU) -> 1
    assert read[0, 0] == 0.0 and read[0, -1] == 1.0
    middle = np.abs(image[0] - 0.5).argmin()
    assert abs(read[0, middle] - (image[0, middle] - 0.25) * 2) < 2e-3


def test_read_dicom_monochrome1_is_inverted(tmp_path):
    image = _gradient()
    path = write_dicom(tmp_path / "r-000001.dcm", image, photometric="MONOCHROME1")

    assert np.abs(read_dicom_image(path, size=32).numpy() - image).max() < 1e-3


def test_read_dicom_without_window_uses_min_max(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "r-000001.dcm", _gradient() * 0.5 + 0.2)
    ds = pydicom.dcmread(path)
    del ds.WindowCenter
    del ds.WindowWidth
    ds.save_as(path)

    read = read_dicom_image(path, size=32).numpy()

    assert read.min() == 0.0 and read.max() == 1.0


def test_read_dicom_non_square_is_padded_then_resized(tmp_path):
    path = write_dicom(tmp_path / "r-000001.dcm", np.ones((32, 64), dtype=np.float32))

    read = read_dicom_image(path, size=32).numpy()

    assert read.shape == (32, 32)
    assert read[:7].max() == 0.0 and read[-7:].max() == 0.0  # 16 padded rows each side, halved
    assert read[9:23].min() > 0.99


def test_read_dicom_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "r-000009.dcm"
    path.write_bytes(b"Patient Jane Doe, chest pain" * 10)

    with pytest.raises(SpecError) as error:
        read_dicom_image(path, size=32)

    assert "r-000009.dcm is not a readable DICOM image" in str(error.value)
    assert "Jane" not in str(error.value)


def test_read_dicom_multiframe_refused(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "r-000002.dcm", np.zeros((16, 16), dtype=np.float32))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.Rows = 8  # two frames of 8 x 16 in the same pixel data
    ds.save_as(path)

    with pytest.raises(SpecError, match="r-000002.dcm is a multi-frame"):
        read_dicom_image(path, size=16)


# --- recipes in this process (tiny, untrained models) ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from training.runtime.build_imaging import build_demo_diffusion, build_demo_vlm, phantom_studies

    root = tmp_path_factory.mktemp("imaging-models")
    reports = [report for _, report in phantom_studies(40, seed=9)]
    return {
        "vision_language": build_demo_vlm(root / "vlm", reports, seed=0, pretrain_epochs=0),
        "diffusion": build_demo_diffusion(root / "unet", seed=0, pretrain_steps=0),
    }


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imaging-data")
    return {modality: stage_cohort(root / modality, modality, n_train=8, n_holdout=4, studies_per_patient=2)
            for modality in ("vision_language", "diffusion")}


def _recipe(modality: str, model: Path, data: Path, out: Path):
    import torch

    spec = parse_spec(job_spec(task="train", modality=modality, base_model=str(model), data_dir=str(data), out_dir=str(out)))
    recipe = recipe_class(modality)(spec, torch.device("cpu"))
    recipe.load_processor()
    return recipe


def test_imaging_recipes_registered_with_their_capabilities():
    vlm, diffusion = recipe_class("vision_language"), recipe_class("diffusion")
    assert vlm.payload_fields == {"image": str, "text": str} and diffusion.payload_fields == {"image": str}
    assert (vlm.peft_task_type, diffusion.peft_task_type) == (None, None)
    assert (vlm.has_text, vlm.has_token_scores, vlm.can_sample, vlm.membership_by_patient) == (True, True, False, True)
    assert (diffusion.has_text, diffusion.can_sample, diffusion.membership_by_patient) == (False, True, True)


def test_vision_language_line_without_report_refused(tiny_models, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"record": "r-1", "patient": "p-1", "image": "images/r-1.dcm"}) + "\n")

    recipe = recipe_class("vision_language")(parse_spec(job_spec(
        task="train", modality="vision_language", base_model=str(tiny_models["vision_language"]),
        data_dir=str(data), out_dir=str(tmp_path / "out"))), None)

    with pytest.raises(SpecError, match="train.jsonl line 1 is missing text"):
        recipe.read_split("train")


@pytest.mark.parametrize("modality", ["vision_language", "diffusion"])
def test_imaging_record_naming_a_file_outside_the_data_refused(modality, tiny_models, cohorts, tmp_path):
    recipe = _recipe(modality, tiny_models[modality], cohorts[modality], tmp_path / "out")
    payload = {"image": "../train.jsonl", **({"text": "x"} if modality == "vision_language" else {})}

    with pytest.raises(SpecError, match="outside the data directory"):
        recipe.encode(Record("r-1", "p-1", payload))


def test_vision_language_encodes_image_and_report_tokens(tiny_models, cohorts, tmp_path):
    recipe = _recipe("vision_language", tiny_models["vision_language"], cohorts["vision_language"], tmp_path / "out")
    records = recipe.read_split("train")

    batch = recipe.collate([recipe.encode(r) for r in records[:3]])

    assert batch["pixel_values"].shape == (3, 1, 32, 32)
    assert -1.0 <= float(batch["pixel_values"].min()) and float(batch["pixel_values"].max()) <= 1.0
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert ids[0] == recipe.tokenizer.bos_token_id and ids[-1] == recipe.tokenizer.eos_token_id
    assert recipe.tokenizer.decode(ids, skip_special_tokens=True) == recipe.text_of(records[0])


def test_imaging_encode_group_takes_one_study_per_patient(tiny_models, cohorts, tmp_path):
    import torch

    recipe = _recipe("diffusion", tiny_models["diffusion"], cohorts["diffusion"], tmp_path / "out")
    first, second = recipe.read_split("train")[:2]
    assert first.patient == second.patient

    grouped = recipe.encode_group([second, first])

    assert torch.equal(grouped["pixel_values"], recipe.encode(first)["pixel_values"])
    assert grouped["seed"] == recipe.encode(first)["seed"] != recipe.encode(second)["seed"]


def test_diffusion_scores_are_fixed_per_record(tiny_models, cohorts, tmp_path):
    """Evaluation noise and timesteps depend on the record only: not on the batch, the order or
    the global random state, so members and non-members (and adapted and base) are scored alike."""
    import torch

    recipe = _recipe("diffusion", tiny_models["diffusion"], cohorts["diffusion"], tmp_path / "out")
    model = recipe.load_base_model(quantization_config=None, dtype=torch.float32)
    records = recipe.read_split("holdout")

    together = recipe.record_losses(model, records, batch_size=4)
    torch.manual_seed(99)
    alone = [recipe.record_losses(model, [r], batch_size=1)[0] for r in reversed(records)][::-1]

    assert together == pytest.approx(alone, rel=1e-5)
    assert len(set(together)) == len(records)
    model.train()
    losses, weights = recipe.example_losses(model, recipe.collate([recipe.encode(r) for r in records]))
    assert weights.tolist() == [1.0] * len(records)
    assert losses.tolist() != pytest.approx(together, rel=1e-3)  # training draws fresh noise


def test_diffusion_refuses_quantized_base(tiny_models, cohorts, tmp_path):
    recipe = _recipe("diffusion", tiny_models["diffusion"], cohorts["diffusion"], tmp_path / "out")

    with pytest.raises(SpecError, match="quantization"):
        recipe.load_base_model(quantization_config=object(), dtype=None)


def test_diffusion_samples_are_images_in_range(tiny_models, cohorts, tmp_path):
    import torch

    recipe = _recipe("diffusion", tiny_models["diffusion"], cohorts["diffusion"], tmp_path / "out")
    model = recipe.load_base_model(quantization_config=None, dtype=torch.float32)

    samples = recipe.sample(model, 3, seed=5)

    assert samples.shape == (3, 1, 32, 32)
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    assert torch.equal(samples, recipe.sample(model, 3, seed=5))


# --- memorisation numbers ----------------------------------------------------------------------

def _phantoms(count: int, seed: int):
    import torch

    from training.runtime.build_imaging import phantom_studies

    return torch.stack([torch.from_numpy(image)[None] for image, _ in phantom_studies(count, seed=seed, size=32)])


def test_memorisation_summary_flags_copies_of_members():
    import torch

    members, nonmembers = _phantoms(24, seed=1), _phantoms(24, seed=2)
    generator = torch.Generator().manual_seed(0)
    samples = (members[:16] + torch.randn(members[:16].shape, generator=generator) * 0.002).clamp(0, 1)

    result = memorisation_summary(samples, members, nonmembers)

    assert _validate(result, MEMORISATION, "memorisation") == result
    assert (result["n_samples"], result["n_members"], result["n_nonmembers"]) == (16, 24, 24)
    assert (result["member_match_rate"], result["nonmember_match_rate"]) == (1.0, 0.0)
    assert result["p_value"] < 1e-6
    assert result["member_distance_median"] < result["match_threshold"] < result["nonmember_distance_median"]


def test_memorisation_summary_new_images_match_neither():
    members, nonmembers, samples = _phantoms(24, seed=1), _phantoms(24, seed=2), _phantoms(16, seed=3)

    result = memorisation_summary(samples, members, nonmembers)

    assert result["member_match_rate"] == result["nonmember_match_rate"]
    assert result["p_value"] == 1.0


def test_memorisation_summary_needs_equal_groups():
    with pytest.raises(ValueError, match="equally many"):
        memorisation_summary(_phantoms(4, seed=3), _phantoms(6, seed=1), _phantoms(5, seed=2))


# --- the runtime process -----------------------------------------------------------------------

@pytest.mark.slow
def test_imaging_train_with_a_missing_image_fails_naming_the_file(tiny_models, tmp_path):
    data = stage_cohort(tmp_path / "data", "vision_language", n_train=6, n_holdout=4)
    (data / "images" / "r-000003.dcm").unlink()
    spec = write_spec(tmp_path / "spec.json", job_spec(
        task="train", modality="vision_language", base_model=str(tiny_models["vision_language"]),
        data_dir=str(data), out_dir=str(tmp_path / "out")))

    result = run_runtime("train", spec)

    assert result.returncode == 2
    assert "a staged record names a missing file (r-000003.dcm)" in result.stderr
    assert "Chest radiograph" not in result.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_vision_language_dp_accounts_per_patient(tiny_models, tmp_path):
    data = stage_cohort(tmp_path / "data", "vision_language", n_train=32, n_holdout=8, studies_per_patient=2)
    spec = write_spec(tmp_path / "spec.json", job_spec(
        task="train", modality="vision_language", base_model=str(tiny_models["vision_language"]),
        data_dir=str(data), out_dir=str(tmp_path / "out"), epochs=2, learning_rate=0.01,
        dp={"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}))

    result = run_runtime("train", spec)

    assert result.returncode == 0, result.stderr
    final = [json.loads(line) for line in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()][-1]
    assert 0 < final["epsilon"] <= 8.0 * 1.02
    assert final["sample_rate"] == pytest.approx(8 / 16)  # 16 patients (one study each), batches of 8
    assert final["lora_moved"] == 1
