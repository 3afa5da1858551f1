"""Diffusion recipe: an unconditional image diffusion model (UNet + DDPM) on DICOM images.

Staged line: ``{"record", "patient", "image": "images/r-000001.dcm"}``. The image is read with
pydicom (``training.runtime.dicom``), scaled to [-1, 1] and sized to the UNet's ``sample_size``.

Loss: the standard denoising objective, the mean squared error of the UNet's prediction
(noise for ``epsilon``, velocity for ``v_prediction``, the clean image for ``sample``) for a
noised image, one value per image (weight 1), so the loop's ratio is the mean over images.
- Training (model in train mode): a random timestep and fresh noise per image, from the seeded
  generator.
- Evaluation and audit (model in eval mode): the loss averaged over ``SCORE_TIMESTEPS`` fixed
  timesteps spread over the schedule, with noise drawn from a generator seeded by the record's
  pseudonym. Every record is scored at the same timesteps with its own fixed noise, with and
  without the adapter, so members and non-members (and adapted and base) are scored alike and the
  membership scores carry no sampling noise of their own.

Memorisation (``can_sample``): ``SAMPLES`` images generated inside the sandbox with a
deterministic DDIM sampler (``SAMPLE_STEPS`` steps, seeded), each compared with equally many
members and non-members (at most ``MAX_COMPARED`` each) by RMS distance on [0, 1] pixels
(L2 / sqrt(pixels)). A sample *matches* a set when its nearest image there lies closer than the
match threshold, defined as ``MATCH_FRACTION`` (one half) of the median distance from a held-out
image to its nearest training image: a match is twice as close as distinct patients' images
typically are. Reported: the two match rates, the one-sided two-proportion p-value that the
member rate is higher, the threshold and the median nearest distances; aggregate numbers only,
never an image.

LoRA targets by default (family ``unet2d``): the attention projections ``to_q``, ``to_k``,
``to_v``, ``to_out.0`` and the ResNet convolutions ``conv1``, ``conv2`` (peft LoRA for Conv2d:
``lora_A`` [r, in, kh, kw], ``lora_B`` [out, r, 1, 1]). ``peft_task_type`` None: a plain
``PeftModel`` around the diffusers UNet.

Per-patient DP: one image per patient (the one with the smallest record pseudonym); images do not
concatenate into one example. The base weights are never quantized here (recipe.quantization must
resolve to full precision); diffusers quantizes through its own configuration, not transformers'.
"""

from __future__ import annotations

import math
import random
import statistics
import zlib
from typing import Any

from .. import stats
from ..dicom import ImageCache
from ..spec import SpecError
from . import register
from .base import Record, Recipe

FAMILY = "unet2d"
SCORE_TIMESTEPS = 8  # fixed timesteps of the evaluation / audit loss
SAMPLES = 64  # generated for the memorisation probe
SAMPLE_STEPS = 20  # DDIM steps per sample
SAMPLE_BATCH = 32
MAX_COMPARED = 256  # members (and as many non-members) the samples are compared with
MATCH_FRACTION = 0.5
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@register
class DiffusionRecipe(Recipe):
    modality = "diffusion"
    payload_fields = {"image": str}
    default_target_modules = {FAMILY: ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")}
    peft_task_type = None
    supports_quantization = False  # diffusers quantizes through its own configuration
    can_sample = True
    membership_by_patient = True

    scheduler: Any = None
    images: ImageCache | None = None
    size: int = 0
    channels: int = 1

    # --- model ------------------------------------------------------------------------------

    def load_processor(self) -> None:
        from diffusers import DDPMScheduler, UNet2DModel

        path = self.spec.base_model_path
        try:
            config = UNet2DModel.load_config(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"the base model's config.json is not readable ({exc.__class__.__name__})") from None
        if config.get("_class_name") != "UNet2DModel":
            raise SpecError("the diffusion recipe needs a diffusers UNet2DModel (config.json _class_name)")
        size = config.get("sample_size")
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise SpecError("the UNet's sample_size must be square")
            size = size[0]
        if not isinstance(size, int) or size < 8:
            raise SpecError("the UNet's config.json has no usable sample_size")
        if not (path / "scheduler_config.json").is_file():
            raise SpecError("the base model folder has no scheduler_config.json (the noise schedule it was trained with)")
        scheduler = DDPMScheduler.from_pretrained(str(path), local_files_only=True)
        if scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise SpecError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
        self.scheduler = scheduler
        self.size = size
        self.channels = int(config.get("in_channels", 1))
        self.images = ImageCache(size)

    def load_base_model(self, *, quantization_config: Any, dtype: Any) -> Any:
        from diffusers import UNet2DModel

        if quantization_config is not None:
            raise SpecError("the diffusion recipe trains full-precision LoRA; set recipe.quantization to 'none'")
        return UNet2DModel.from_pretrained(str(self.spec.base_model_path), local_files_only=True, torch_dtype=dtype)

    # --- tensors ----------------------------------------------------------------------------

    def image(self, record: Record) -> Any:
        """[channels, size, size] in [0, 1]."""
        return self.images.get(self.data_file(record.payload["image"])).expand(self.channels, -1, -1)

    def encode(self, record: Record) -> dict[str, Any]:
        # crc32 of the per-job pseudonym: a fixed noise seed per record, the same in every pass.
        return {"pixel_values": self.image(record) * 2 - 1, "seed": zlib.crc32(record.record.encode("utf-8"))}

    def encode_group(self, records: list[Record]) -> dict[str, Any]:
        # One image per patient (see the module docstring): the first by record pseudonym.
        return self.encode(min(records, key=lambda r: r.record))

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        return {
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
            "seed": torch.tensor([f["seed"] for f in features], dtype=torch.long),
        }

    def example_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        clean = batch["pixel_values"].to(_dtype(model))
        count = clean.shape[0]
        total = self.scheduler.config.num_train_timesteps
        if model.training:
            timesteps = torch.randint(0, total, (count,), device=clean.device)
            noise = torch.randn_like(clean)
            losses = self._mse(model, clean, noise, timesteps)
        else:
            fixed = ((torch.arange(SCORE_TIMESTEPS, dtype=torch.float64) + 0.5) * total / SCORE_TIMESTEPS).long()
            noise = torch.stack([
                torch.randn((SCORE_TIMESTEPS, *clean.shape[1:]), generator=torch.Generator().manual_seed(int(seed)))
                for seed in batch["seed"].tolist()
            ]).flatten(0, 1).to(device=clean.device, dtype=clean.dtype)
            losses = self._mse(model, clean.repeat_interleave(SCORE_TIMESTEPS, dim=0), noise,
                               fixed.repeat(count).to(clean.device)).view(count, SCORE_TIMESTEPS).mean(dim=1)
        return losses, torch.ones(count, dtype=losses.dtype, device=losses.device)

    def _mse(self, model: Any, clean: Any, noise: Any, timesteps: Any) -> Any:
        """Per-image mean squared error of the model's prediction for ``clean`` noised at ``timesteps``."""
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        predicted = model(noisy, timesteps).sample
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        return (predicted.float() - target.float()).pow(2).flatten(1).mean(dim=1)

    # --- sampling and memorisation --------------------------------------------------------------

    def sample(self, model: Any, count: int, *, seed: int) -> Any:
        """``count`` images [count, channels, size, size] in [0, 1], DDIM (deterministic given ``seed``)."""
        import torch
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(SAMPLE_STEPS)
        generator = torch.Generator().manual_seed(seed)
        dtype = _dtype(model)
        out = []
        model.eval()
        with torch.no_grad():
            for start in range(0, count, SAMPLE_BATCH):
                n = min(SAMPLE_BATCH, count - start)
                x = torch.randn((n, self.channels, self.size, self.size), generator=generator)
                x = x.to(device=self.device, dtype=dtype)
                for t in scheduler.timesteps:
                    predicted = model(x, t.expand(n).to(self.device)).sample
                    x = scheduler.step(predicted, t, x).prev_sample
                out.append(((x.float().clamp(-1, 1) + 1) / 2).cpu())
        return torch.cat(out)

    def memorisation(self, model: Any, members: list[Record], nonmembers: list[Record], *, seed: int) -> dict:
        import torch

        n = min(len(members), len(nonmembers), MAX_COMPARED)
        chosen_members = random.Random(f"memorisation-members:{seed}").sample(members, n)
        chosen_nonmembers = random.Random(f"memorisation-nonmembers:{seed}").sample(nonmembers, n)
        member_images = torch.stack([self.image(r) for r in chosen_members])
        nonmember_images = torch.stack([self.image(r) for r in chosen_nonmembers])
        samples = self.sample(model, SAMPLES, seed=seed)
        return memorisation_summary(samples, member_images, nonmember_images)


def memorisation_summary(samples: Any, members: Any, nonmembers: Any) -> dict:
    """The audit's ``memorisation`` numbers for generated ``samples`` against equally many
    ``members`` and ``nonmembers`` (tensors [N, ...] in [0, 1]); see the module docstring."""
    import torch

    if len(members) != len(nonmembers) or not len(members) or not len(samples):
        raise ValueError("memorisation needs samples and equally many (at least one) members and non-members")
    flat = samples.flatten(1).double()
    pixels = flat.shape[1]
    member_flat, nonmember_flat = members.flatten(1).double(), nonmembers.flatten(1).double()

    def nearest(a: Any, b: Any) -> list[float]:
        return (torch.cdist(a, b).min(dim=1).values / math.sqrt(pixels)).tolist()

    to_member, to_nonmember = nearest(flat, member_flat), nearest(flat, nonmember_flat)
    threshold = MATCH_FRACTION * statistics.median(nearest(nonmember_flat, member_flat))
    member_hits = sum(d < threshold for d in to_member)
    nonmember_hits = sum(d < threshold for d in to_nonmember)
    count = len(to_member)
    return {
        "n_samples": count,
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "match_threshold": round(threshold, 6),
        "member_match_rate": round(member_hits / count, 6),
        "nonmember_match_rate": round(nonmember_hits / count, 6),
        "p_value": round(min(max(stats.two_proportion_p_value(member_hits, count, nonmember_hits, count), 0.0), 1.0), 6),
        "member_distance_median": round(statistics.median(to_member), 6),
        "nonmember_distance_median": round(statistics.median(to_nonmember), 6),
    }


def _dtype(model: Any) -> Any:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
