"""Build the small imaging base models locally (no downloads): a vision-language model and a UNet.

Like ``build.py`` for text, these write complete model folders through ``save_pretrained``
(safetensors), loadable by the same calls that load real weights a hospital registers:

- ``build_demo_vlm``: ``VisionEncoderDecoderModel`` = a ViT encoder (one grey channel) and a
  GPT-2 decoder with cross-attention; a byte-level BPE tokenizer trained on the reports; a
  ``ViTImageProcessor`` (size, mean, std) beside it. Family ``vision-encoder-decoder``.
- ``build_demo_diffusion``: an unconditional ``UNet2DModel`` (one grey channel, attention in the
  lower-resolution blocks) and a ``DDPMScheduler`` config (``scheduler_config.json``) beside it.
  Family ``unet2d``.

Both take a short pre-training on synthetic images (and reports) of other patients, so that the
base model already knows what such images look like and a LoRA adapter trained on a cohort learns
the cohort's specifics (its held-out loss falls measurably). ``phantom_study`` makes such
synthetic studies when the caller has none: a body outline, two lung fields, a heart and
sometimes a nodule, with a report that names what the image shows. No Django here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .build import make_readable, train_byte_level_tokenizer

VLM_FAMILY = "vision-encoder-decoder"
DIFFUSION_FAMILY = "unet2d"
IMAGE_SIZE = 32
PHANTOM_SIZE = 64

ZONES = ("upper", "middle", "lower")
SIDES = ("right", "left")


# --- synthetic studies ---------------------------------------------------------------------------

def phantom_study(rng: random.Random, *, size: int = PHANTOM_SIZE) -> tuple[Any, str]:
    """One synthetic chest study: a float32 array [size, size] in [0, 1] and its report.

    What the report says is drawn on the image (heart width, a nodule's side, zone and size), so
    a vision-language model can learn to read it; the rest of the report is template text with
    random specifics, as real reports are.
    """
    import numpy as np

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1  # [-1, 1]

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> Any:
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0

    image = np.full((size, size), 0.05, dtype=np.float32)
    body_rx, body_ry = rng.uniform(0.78, 0.92), rng.uniform(0.72, 0.9)
    image[ellipse(0, 0.05, body_rx, body_ry)] = rng.uniform(0.45, 0.55)
    lung_y = rng.uniform(-0.1, 0.05)
    for cx in (-0.38, 0.38):
        image[ellipse(cx, lung_y, rng.uniform(0.24, 0.3), rng.uniform(0.45, 0.55))] = rng.uniform(0.12, 0.2)
    ctr = rng.uniform(0.38, 0.62)  # cardiothoracic ratio
    image[ellipse(0.08, 0.22, ctr * body_rx * 0.9, 0.26)] = rng.uniform(0.6, 0.7)
    image[ellipse(0, 0.1, 0.07, 0.8)] = 0.85  # spine

    findings = []
    nodule = rng.random() < 0.5
    if nodule:
        side, zone = rng.randrange(2), rng.randrange(3)
        millimetres = rng.randint(6, 30)
        radius = 0.04 + millimetres / 30 * 0.1
        # Radiological convention: the patient's right is on the image's left.
        cx = (-0.38 if side == 0 else 0.38) + rng.uniform(-0.06, 0.06)
        cy = lung_y + (zone - 1) * 0.3 + rng.uniform(-0.05, 0.05)
        image[ellipse(cx, cy, radius, radius)] = rng.uniform(0.75, 0.9)
        findings.append(f"There is a {millimetres} mm nodular opacity in the {SIDES[side]} {ZONES[zone]} zone.")
    else:
        findings.append("The lungs are clear.")
    heart = "enlarged" if ctr > 0.52 else "normal"
    findings.append(f"Heart size is {heart} (cardiothoracic ratio {ctr:.2f}).")
    findings.append(rng.choice(["No pleural effusion.", "Small right pleural effusion.", "Small left pleural effusion.",
                                "Costophrenic angles are clear."]))
    view = rng.choice(["PA", "AP erect", "AP supine"])
    impression = "Pulmonary nodule; CT chest recommended." if nodule else "No acute cardiopulmonary abnormality."
    report = f"Chest radiograph, {view} view. " + " ".join(findings) + f" Impression: {impression}"

    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 0.02, size=(size, size)).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0), report


def phantom_studies(count: int, *, seed: int, size: int = PHANTOM_SIZE) -> list[tuple[Any, str]]:
    rng = random.Random(seed)
    return [phantom_study(rng, size=size) for _ in range(count)]


def _image_tensor(images: Sequence[Any], size: int) -> Any:
    """[N, 1, size, size] float32 in [0, 1] from 2-D arrays (any square-ish size)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    out = []
    for image in images:
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
        if tensor.shape[-2:] != (size, size):
            big = max(tensor.shape[-2:]) > size
            tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=big)
        out.append(tensor.clamp(0, 1))
    return torch.cat(out)


# --- vision-language ---------------------------------------------------------------------------

def build_demo_vlm(
    folder: Path,
    reports: Iterable[str],
    images: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 800,
    max_positions: int = 128,
    pretrain_epochs: int = 2,
) -> Path:
    """A ViT + GPT-2 image-to-text model with its tokenizer and image processor, in ``folder``.

    ``images`` (2-D arrays in [0, 1], one per report) pair with ``reports`` for pre-training;
    without them, phantom images drawn from ``seed`` stand in (unpaired: the decoder then learns
    the reports' language, not yet to read images).
    """
    import torch
    from transformers import (
        GPT2Config,
        ViTConfig,
        ViTImageProcessor,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    folder = Path(folder)
    reports = list(reports)
    if not reports:
        raise ValueError("build_demo_vlm needs at least one report")
    if images is None:
        images = [image for image, _ in phantom_studies(len(reports), seed=seed + 1)]
    if len(images) != len(reports):
        raise ValueError(f"{len(images)} images for {len(reports)} reports: give one image per report")
    tokenizer = train_byte_level_tokenizer(reports, vocab_size=vocab_size, max_length=max_positions)
    encoder = ViTConfig(
        image_size=image_size, patch_size=patch_size, num_channels=1, hidden_size=hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden_size * 2,
    )
    decoder = GPT2Config(
        vocab_size=len(tokenizer), n_embd=hidden_size, n_layer=layers, n_head=heads, n_positions=max_positions,
        add_cross_attention=True, is_decoder=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config)
    if pretrain_epochs > 0:
        _pretrain_vlm(model, tokenizer, _image_tensor(images, image_size), reports, epochs=pretrain_epochs,
                      max_length=max_positions, seed=seed)
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # Grey images in [0, 1] (the runtime derives them from DICOM windowing), to [-1, 1].
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5], image_std=[0.5],
                      do_rescale=False).save_pretrained(folder)
    return make_readable(folder)


def _pretrain_vlm(model, tokenizer, pixels, reports: list[str], *, epochs: int, max_length: int, seed: int,
                  batch_size: int = 16, learning_rate: float = 3e-3) -> None:
    """Every weight, report tokens given the image (seeded, CPU-friendly)."""
    import torch
    import torch.nn.functional as F

    ids = [tokenizer(text, truncation=True, max_length=max_length - 1)["input_ids"] + [tokenizer.eos_token_id]
           for text in reports]
    pixels = (pixels - 0.5) / 0.5
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chosen)
            batch = torch.full((len(chosen), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(chosen), width))
            for row, i in enumerate(chosen):
                batch[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            logits = model(pixel_values=pixels[chosen], decoder_input_ids=batch[:, :-1],
                           decoder_attention_mask=mask[:, :-1].long()).logits
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none")
            loss = (nll * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()


# --- diffusion -----------------------------------------------------------------------------------

def build_demo_diffusion(
    folder: Path,
    images: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    channels: tuple[int, int] = (16, 32),
    pretrain_steps: int = 120,
    train_timesteps: int = 1000,
) -> Path:
    """An unconditional UNet2DModel (grey, ``image_size`` square) and its DDPM scheduler, in ``folder``.

    Pre-trained for ``pretrain_steps`` denoising steps on ``images`` (2-D arrays in [0, 1]) or,
    without them, on phantom images drawn from ``seed``.
    """
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    if images is None:
        images = [image for image, _ in phantom_studies(256, seed=seed + 1)]
    if not len(images):
        raise ValueError("build_demo_diffusion needs at least one image")
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=image_size, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=tuple(channels), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8,
    )
    # A cosine schedule suits small images (the linear one destroys them within a few steps).
    scheduler = DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2",
                              prediction_type="epsilon", clip_sample=True)
    if pretrain_steps > 0:
        _pretrain_unet(unet, scheduler, _image_tensor(images, image_size) * 2 - 1, steps=pretrain_steps, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    return make_readable(folder)


def _pretrain_unet(unet, scheduler, samples, *, steps: int, seed: int, batch_size: int = 8,
                   learning_rate: float = 2e-3) -> None:
    """Plain denoising training of every weight (epsilon prediction, seeded)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    total = scheduler.config.num_train_timesteps
    unet.train()
    for step in range(steps):
        chosen = torch.randint(0, samples.shape[0], (batch_size,), generator=generator)
        clean = samples[chosen]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, total, (batch_size,), generator=generator)
        predicted = unet(scheduler.add_noise(clean, noise, timesteps), timesteps).sample
        loss = F.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for group in optimizer.param_groups:  # cosine decay: a short run still ends settled
            group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.step()
    unet.eval()
