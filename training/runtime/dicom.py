"""Read a staged DICOM image into a square float image in [0, 1], inside the sandbox.

Shared by the imaging recipes (vision-language, diffusion). Steps, in order:
1. ``pydicom.dcmread`` (a real DICOM file with its preamble; staging wrote it de-identified);
2. the stored values through the modality LUT: ``value * RescaleSlope + RescaleIntercept``;
3. intensities to [0, 1]: the first WindowCenter/WindowWidth pair when the file has one
   (``(value - (center - width / 2)) / width``, clipped), otherwise the image's own min/max;
   MONOCHROME1 (white = low values) is inverted so that bright means dense everywhere;
4. colour images (SamplesPerPixel 3) become their channel mean; multi-frame images are refused;
5. padded to a square with zeros, centred (the aspect ratio is kept), and resized with
   antialiased bilinear interpolation to ``size`` x ``size``.
Errors name the file (a per-job pseudonym such as ``r-000001.dcm``), never its content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

from .spec import SpecError


def _first(value: Any) -> float | None:
    """A DICOM number that may be multi-valued (WindowCenter often is): its first value."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def read_dicom_image(source: Path | BinaryIO, *, size: int) -> Any:
    """A float32 torch tensor [size, size] with values in [0, 1], from a file path or an open binary file."""
    import numpy as np
    import pydicom
    import torch
    import torch.nn.functional as F

    name = Path(source).name if isinstance(source, (str, Path)) else "DICOM data"
    try:
        dataset = pydicom.dcmread(str(source) if isinstance(source, (str, Path)) else source)
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad staged file
        raise SpecError(f"{name} is not a readable DICOM image ({exc.__class__.__name__})") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        raise SpecError(f"{name} is a multi-frame DICOM image; staging must give one frame per file")
    if samples == 3 and pixels.ndim == 3:
        pixels = pixels.mean(axis=-1)
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise SpecError(f"{name} does not hold a two-dimensional image")

    slope = _first(dataset.get("RescaleSlope")) or 1.0
    intercept = _first(dataset.get("RescaleIntercept")) or 0.0
    values = pixels * slope + intercept
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        values = (values - (center - width / 2)) / width
    else:
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    values = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = 1.0 - values

    image = torch.from_numpy(values.astype(np.float32))
    rows, cols = image.shape
    side = max(rows, cols)
    if rows != cols:
        top, left = (side - rows) // 2, (side - cols) // 2
        image = F.pad(image, (left, side - cols - left, top, side - rows - top))
    if side != size:
        image = F.interpolate(image[None, None], size=(size, size), mode="bilinear", align_corners=False,
                              antialias=side > size)[0, 0]
    return image.clamp(0.0, 1.0).contiguous()


class ImageCache:
    """Decoded images by staged path: each DICOM file is read once per process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._images: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        image = self._images.get(path)
        if image is None:
            image = self._images[path] = read_dicom_image(path, size=self.size)
        return image
