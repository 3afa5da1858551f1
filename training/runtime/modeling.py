"""Base model + LoRA plumbing shared by every recipe: device, quantization, peft wrapping, adapter I/O."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .recipes import Recipe
from .spec import SpecError

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class Placement:
    device: Any  # torch.device
    dtype: Any  # torch dtype the base weights are kept in
    qlora: bool  # 4-bit NF4 base weights through bitsandbytes


def choose_placement(quantization: str) -> Placement:
    """Pick device, dtype and whether to use QLoRA, from the recipe's ``quantization`` setting.

    ``auto`` quantizes only where it pays off and is well trodden: CUDA with bitsandbytes.
    ``nf4`` insists (bitsandbytes also runs 4-bit on CPU, slowly); ``none`` never quantizes.
    """
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    # bf16 halves GPU memory; on CPU fp32 is both faster and exact.
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    # Import bitsandbytes only when it could be used: importing it on a CPU host probes for
    # optional kernels and logs about them, which is noise in a run that will not quantize.
    wants_bnb = quantization == "nf4" or (quantization == "auto" and cuda)
    has_bnb = wants_bnb and _bitsandbytes_available()
    if quantization == "nf4" and not has_bnb:
        raise SpecError("recipe.quantization is 'nf4' but bitsandbytes is not installed in this runtime")
    qlora = has_bnb
    return Placement(device=device, dtype=dtype, qlora=qlora)


def _bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def quantization_config(placement: Placement) -> Any:
    if not placement.qlora:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=placement.dtype,
    )


def lora_config(recipe: Recipe, *, inference: bool) -> Any:
    """The LoraConfig built from the approved recipe (never from a file out of a sandbox)."""
    from peft import LoraConfig

    spec = recipe.recipe
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=recipe.target_modules(),
        bias="none",
        task_type=recipe.peft_task_type,
        inference_mode=inference,
    )


def load_lora_model(recipe: Recipe, placement: Placement, *, inference: bool) -> Any:
    """Base model on its device, wrapped with a fresh LoRA adapter (trainable unless ``inference``)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = recipe.load_base_model(quantization_config=quantization_config(placement), dtype=placement.dtype)
    if not placement.qlora:
        # Move before wrapping: LoRA weights are created on the base layer's device, and Opacus
        # needs the parameters it hooks to already sit where they train (opacus issue 820).
        model.to(placement.device)
    elif not inference:
        # Casts norms to fp32 and freezes the quantized base; checkpointing only where memory is tight.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=placement.device.type == "cuda")
    try:
        model = get_peft_model(model, lora_config(recipe, inference=inference))
    except ValueError as exc:
        # peft's message names the missing module names; that is model structure, not data.
        raise SpecError(f"LoRA target modules do not fit the base model: {exc}") from None
    return model


def save_adapter(model: Any, out_dir: Path) -> Path:
    """Write only ``adapter_model.safetensors`` into ``out_dir``.

    peft's save_pretrained also writes adapter_config.json and a README with free text; the
    portal writes its own config from the approved recipe, so those stay in a scratch directory
    outside ``out_dir`` and are deleted.
    """
    out_dir = out_dir.resolve()
    scratch = Path(tempfile.mkdtemp(prefix="rapha-adapter-")).resolve()
    try:
        if scratch == out_dir or out_dir in scratch.parents:
            raise RuntimeError("the scratch directory must lie outside out_dir (check TMPDIR)")
        model.save_pretrained(str(scratch), safe_serialization=True)
        source = scratch / ADAPTER_FILE
        if not source.is_file():
            raise RuntimeError(f"peft did not write {ADAPTER_FILE}")
        target = out_dir / ADAPTER_FILE
        partial = out_dir / f".{ADAPTER_FILE}.partial"
        shutil.copyfile(source, partial)
        os.replace(partial, target)  # atomic: egress never sees a half-written adapter
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_adapter_weights(model: Any, adapter_path: Path) -> None:
    """Load LoRA tensors from a bare safetensors file into a model built by :func:`load_lora_model`.

    Every tensor in the file must find its place: an adapter for another rank, other target
    modules or another base model is refused rather than half-loaded.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not Path(adapter_path).is_file():
        raise SpecError(f"adapter file not found: {adapter_path}")
    try:
        state = load_file(str(adapter_path), device=str(_model_device(model)))
    except Exception as exc:
        raise SpecError(f"adapter file is not readable safetensors: {exc.__class__.__name__}") from None
    if not state:
        raise SpecError("adapter file holds no tensors")
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:  # shape mismatch
        raise SpecError(f"adapter does not fit the recipe and base model: {str(exc)[:300]}") from None
    if result.unexpected_keys:
        raise SpecError(f"adapter has {len(result.unexpected_keys)} tensor(s) the recipe's LoRA layout lacks")
    expected = {k for k, _ in model.named_parameters() if "lora_" in k}
    missing = [k for k in result.missing_keys if k in expected]
    if missing:
        raise SpecError(f"adapter lacks {len(missing)} LoRA tensor(s) the recipe's layout needs")


def _model_device(model: Any) -> Any:
    return next(model.parameters()).device
