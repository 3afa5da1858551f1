"""Imaging fixtures for the runtime tests: DICOM files written with pydicom, staged like a cohort.

The staged format is the stagers' contract: ``train.jsonl`` / ``holdout.jsonl`` lines
``{"record", "patient", "image": "images/<record>.dcm"[, "text": report]}`` with the images under
``images/``. Pixels come from ``training.runtime.build_imaging.phantom_study`` (synthetic
phantoms with matching reports), stored as 16-bit CT-like values with a rescale and a window,
so the runtime's reader has to apply both to get them back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from training.runtime.build_imaging import phantom_study

# Stored value = (intensity * 2000 + 24) ; Hounsfield-like value = stored - 1024.
SLOPE, INTERCEPT = 1.0, -1024.0
WINDOW_CENTER, WINDOW_WIDTH = 0.0, 2000.0


def write_dicom(path: Path, image: Any, *, modality: str = "CR", body_part: str = "CHEST",
                photometric: str = "MONOCHROME2", window_width: float = WINDOW_WIDTH) -> Path:
    """A de-identified single-frame DICOM file (Explicit VR Little Endian) of ``image`` in [0, 1].

    The pixels are stored for the default window; another ``window_width`` in the header changes
    the contrast the reader derives (as a different scanner protocol would).
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    values = np.asarray(image, dtype=np.float64)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    # intensity 0 -> window bottom (-1000 HU), 1 -> window top (+1000 HU)
    hounsfield = WINDOW_CENTER - WINDOW_WIDTH / 2 + values * WINDOW_WIDTH
    stored = np.round((hounsfield - INTERCEPT) / SLOPE).astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = SLOPE
    ds.RescaleIntercept = INTERCEPT
    ds.WindowCenter = WINDOW_CENTER
    ds.WindowWidth = window_width
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def stage_studies(data_dir: Path, split: str, count: int, *, seed: int, first_patient: int,
                  studies_per_patient: int = 1, text: bool = True, size: int = 48,
                  window_width: float = WINDOW_WIDTH) -> Path:
    """Write ``count`` phantom studies as ``<split>.jsonl`` + DICOM files under ``data_dir/images``."""
    rng = random.Random(seed)
    path = data_dir / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            image, report = phantom_study(rng, size=size)
            record = f"r-{first_patient * 10 + i:06d}"
            relative = f"images/{record}.dcm"
            write_dicom(data_dir / relative, image, window_width=window_width)
            line = {"record": record, "patient": f"p-{first_patient + i // studies_per_patient:06d}", "image": relative}
            if text:
                line["text"] = report
            handle.write(json.dumps(line) + "\n")
    return path


FAMILIES = {"vision_language": "vision-encoder-decoder", "diffusion": "unet2d"}


def stage_cohort(data_dir: Path, modality: str, *, n_train: int, n_holdout: int, studies_per_patient: int = 1,
                 window_width: float = WINDOW_WIDTH) -> Path:
    """Training studies (``studies_per_patient`` each) and held-out studies of other patients."""
    data_dir.mkdir(parents=True, exist_ok=True)
    text = modality == "vision_language"
    stage_studies(data_dir, "train", n_train, seed=2, first_patient=0, studies_per_patient=studies_per_patient,
                  text=text, window_width=window_width)
    stage_studies(data_dir, "holdout", n_holdout, seed=3, first_patient=100_000, text=text, window_width=window_width)
    for path in [data_dir, *data_dir.rglob("*")]:  # the sandbox's unprivileged user reads them
        path.chmod(0o755 if path.is_dir() else 0o644)
    return data_dir


def job_spec(*, task: str, modality: str, base_model: str, data_dir: str, out_dir: str,
             adapter_path: str | None = None, job_id: str = "imaging-test", **recipe: object) -> dict:
    """A job spec (docs/job-spec.md) for an imaging job; paths are host or container paths as given."""
    spec = {
        "schema_version": 1,
        "task": task,
        "job_id": job_id,
        "modality": modality,
        "base_model": {"path": base_model, "family": FAMILIES[modality]},
        "data_dir": data_dir,
        "out_dir": out_dir,
        "recipe": {
            "target_modules": None, "rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 0.005,
            "epochs": 2, "batch_size": 8, "max_seq_length": 96, "seed": 1234, "quantization": "none",
            "canaries": None, "dp": None, **recipe,
        },
        "threads": 1,
        "max_steps": None,
    }
    if adapter_path is not None:
        spec["adapter_path"] = adapter_path
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec), encoding="utf-8")
    path.chmod(0o644)
    return path
