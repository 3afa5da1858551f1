"""The validator on imaging models: a diffusers UNet (config.json ``_class_name``, Conv2d LoRA) and a
vision-encoder-decoder (ViT + GPT-2 with cross-attention). The expected tensor set equals what
stock peft writes; stock adapters are accepted; an extra full weight is refused; the portal's
adapter_config.json loads with stock peft. Django-free."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from egress.validation import RecipeError, build_adapter_config, expected_adapter, validate_adapter
from egress.validation.expected import KIND_CONV2D, BaseModelModules, ModuleInfo, expected_from_modules

from . import helpers as h

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
UNET_RECIPE = {"target_modules": UNET_TARGETS, "rank": 4, "alpha": 8, "dropout": 0.0}
VLM_TARGETS = ["c_attn", "q_attn", "q_proj", "v_proj"]
VLM_RECIPE = {"target_modules": VLM_TARGETS, "rank": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    from training.runtime.build_imaging import build_demo_diffusion

    return build_demo_diffusion(tmp_path_factory.mktemp("unet") / "model", seed=0, pretrain_steps=0)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from training.runtime.build_imaging import build_demo_vlm, phantom_studies

    reports = [report for _, report in phantom_studies(60, seed=5)]
    return build_demo_vlm(tmp_path_factory.mktemp("vlm") / "model", reports, seed=0, pretrain_epochs=0)


def _load_unet(directory):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(str(directory)).eval()


def _load_vlm(directory):
    from transformers import VisionEncoderDecoderModel

    return VisionEncoderDecoderModel.from_pretrained(str(directory)).eval()


LOADERS = {"unet": _load_unet, "vlm": _load_vlm}


def _stock_adapter(kind: str, directory, recipe: dict, out_dir, *, seed: int = 0):
    """Stock peft on the base model; lora_B given small random values (as after training); saved."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(LOADERS[kind](directory), LoraConfig(
        r=recipe["rank"], lora_alpha=recipe["alpha"], lora_dropout=recipe["dropout"],
        target_modules=recipe["target_modules"], use_dora=recipe.get("use_dora", False),
        lora_bias=recipe.get("lora_bias", False)))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    model.save_pretrained(str(out_dir))
    return out_dir


def _written(out_dir) -> dict[str, tuple[int, ...]]:
    with safe_open(str(out_dir / "adapter_model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _expected(directory, recipe) -> dict[str, tuple[int, ...]]:
    return {name: t.shape for name, t in expected_adapter(directory, recipe).tensors.items()}


@pytest.mark.parametrize(
    "variant",
    [{}, {"use_dora": True}, {"lora_bias": True}, {"target_modules": ["conv1", "conv2"]},
     {"target_modules": r"mid_block\.attentions\.0\.to_(q|v)"}],
    ids=["plain", "dora", "lora_bias", "conv_only", "regex"],
)
def test_expected_unet_matches_peft(unet_dir, tmp_path, variant):
    recipe = {**UNET_RECIPE, **variant}
    written = _written(_stock_adapter("unet", unet_dir, recipe, tmp_path))
    assert _expected(unet_dir, recipe) == written


def test_expected_unet_conv2d_shapes(unet_dir):
    adapter = expected_adapter(unet_dir, UNET_RECIPE)
    tensors = adapter.tensors
    prefix = "base_model.model.down_blocks.0.resnets.0.conv1"
    assert tensors[f"{prefix}.lora_A.weight"].shape == (4, 16, 3, 3)  # [r, in, kh, kw]
    assert tensors[f"{prefix}.lora_B.weight"].shape == (16, 4, 1, 1)  # [out, r, 1, 1]
    assert tensors["base_model.model.mid_block.attentions.0.to_out.0.lora_B.weight"].shape == (32, 4)
    assert adapter.architecture == "UNet2DModel" and adapter.fan_in_fan_out is False


def test_expected_unet_container_target_refused(unet_dir):
    with pytest.raises(RecipeError, match="TimestepEmbedding"):
        expected_adapter(unet_dir, {**UNET_RECIPE, "target_modules": ["time_embedding"]})


def test_expected_grouped_conv2d_refused():
    modules = BaseModelModules("UNet2DModel", "0" * 64, (
        ModuleInfo("block.conv", KIND_CONV2D, "Conv2d", 8, 8, kernel_size=(3, 3), groups=2),
    ))
    with pytest.raises(RecipeError, match="grouped Conv2d"):
        expected_from_modules(modules, {"target_modules": ["conv"], "rank": 4, "alpha": 8, "dropout": 0.0})


def test_expected_diffusers_non_model_class_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": 10}))
    with pytest.raises(RecipeError, match="not a diffusers model class"):
        expected_adapter(tmp_path, UNET_RECIPE)


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"lora_bias": True}], ids=["plain", "dora", "lora_bias"])
def test_expected_vision_encoder_decoder_matches_peft(vlm_dir, tmp_path, variant):
    recipe = {**VLM_RECIPE, **variant}
    written = _written(_stock_adapter("vlm", vlm_dir, recipe, tmp_path))
    expected = _expected(vlm_dir, recipe)
    assert expected == written
    assert any(".encoder." in name for name in written) and any(".crossattention." in name for name in written)


def test_expected_vision_encoder_decoder_shapes(vlm_dir):
    adapter = expected_adapter(vlm_dir, VLM_RECIPE)
    tensors = adapter.tensors
    # GPT-2 Conv1D: cross-attention c_attn projects the image to keys and values (2 x 64).
    assert tensors["base_model.model.decoder.transformer.h.0.crossattention.c_attn.lora_B.weight"].shape == (128, 4)
    assert tensors["base_model.model.decoder.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (192, 4)
    assert tensors["base_model.model.encoder.layers.0.attention.q_proj.lora_A.weight"].shape == (4, 64)
    assert adapter.architecture == "VisionEncoderDecoderModel" and adapter.fan_in_fan_out is True


# --- the validator ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["unet", "vlm"])
def test_validate_stock_imaging_adapter_accepted(kind, unet_dir, vlm_dir, tmp_path):
    directory, recipe = (unet_dir, UNET_RECIPE) if kind == "unet" else (vlm_dir, VLM_RECIPE)
    out = _stock_adapter(kind, directory, recipe, tmp_path / "out")
    report = validate_adapter(out, base_model_dir=directory, recipe=recipe, identifiers=[("mrn", "MRN0012345")])
    assert report.accepted, report.reasons()
    assert report.verdict("tensor_set").figures["expected"] == len(_written(out))


EXTRA_FULL_WEIGHTS = [
    pytest.param("unet", "base_model.model.down_blocks.1.attentions.0.to_q.base_layer.weight", [32, 32], id="unet-base_layer"),
    pytest.param("unet", "base_model.model.down_blocks.0.resnets.0.conv1.weight", [16, 16, 3, 3], id="unet-conv_weight"),
    pytest.param("vlm", "base_model.model.decoder.transformer.h.0.attn.c_attn.base_layer.weight", [64, 192],
                 id="vlm-base_layer"),
    pytest.param("vlm", "base_model.model.encoder.layers.0.attention.q_proj.weight", [64, 64], id="vlm-attention_weight"),
]


@pytest.mark.parametrize("kind,name,shape", EXTRA_FULL_WEIGHTS)
def test_validate_imaging_adapter_with_full_weight_rejected(kind, name, shape, unet_dir, vlm_dir, tmp_path):
    directory, recipe = (unet_dir, UNET_RECIPE) if kind == "unet" else (vlm_dir, VLM_RECIPE)
    stock = _stock_adapter(kind, directory, recipe, tmp_path / "stock")
    tensors = h.read_tensors(stock / "adapter_model.safetensors") + [h.f32(name, shape, seed=3)]
    out = tmp_path / "crafted"
    h.write_adapter(out, h.build(tensors))

    report = validate_adapter(out, base_model_dir=directory, recipe=recipe, identifiers=[])

    assert not report.accepted
    assert report.verdict("tensor_set").status == "failed"
    assert "1 unexpected" in report.verdict("tensor_set").detail


# --- the released adapter_config.json loads with stock peft ------------------------------------------

@pytest.mark.parametrize("kind", ["unet", "vlm"])
def test_portal_adapter_config_loads_with_stock_peft(kind, unet_dir, vlm_dir, tmp_path):
    import torch
    from peft import PeftModel

    from training.runtime.recipes import recipe_class

    directory, recipe = (unet_dir, UNET_RECIPE) if kind == "unet" else (vlm_dir, VLM_RECIPE)
    modality = "diffusion" if kind == "unet" else "vision_language"
    stock = _stock_adapter(kind, directory, recipe, tmp_path / "stock")
    release = tmp_path / "release"
    release.mkdir()
    shutil.copyfile(stock / "adapter_model.safetensors", release / "adapter_model.safetensors")
    config = build_adapter_config(recipe, base_model_name="Demo model", expected=expected_adapter(directory, recipe),
                                  task_type=recipe_class(modality).peft_task_type)
    (release / "adapter_config.json").write_text(json.dumps(config))
    assert "task_type" not in config

    base_outputs = _outputs(kind, LOADERS[kind](directory))
    model = PeftModel.from_pretrained(LOADERS[kind](directory), str(release)).eval()
    adapted_outputs = _outputs(kind, model)

    loaded = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(_written(stock))
    assert torch.isfinite(adapted_outputs).all()
    assert not torch.allclose(base_outputs, adapted_outputs)


def _outputs(kind: str, model):
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if kind == "unet":
            sample = torch.randn((2, 1, 32, 32), generator=generator)
            return model(sample, torch.tensor([10, 500])).sample
        pixels = torch.randn((2, 1, 32, 32), generator=generator)
        return model(pixel_values=pixels, decoder_input_ids=torch.tensor([[1, 40, 50], [1, 60, 70]])).logits
