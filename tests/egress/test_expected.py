"""The expected tensor set equals what stock peft writes, for every recipe option and family."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from egress.validation import RecipeError, expected_adapter, normalize_recipe

from .conftest import GPT2_RECIPE, LLAMA_RECIPE, Base, peft_recipe_kwargs


def _peft_written(base: Base, recipe: dict, tmp_path, model=None) -> dict[str, tuple[int, ...]]:
    from peft import LoraConfig, get_peft_model

    model = model if model is not None else base.model()
    peft_model = get_peft_model(model, LoraConfig(**peft_recipe_kwargs(recipe)))
    peft_model.save_pretrained(tmp_path, save_embedding_layers=False)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _expected(base_dir, recipe) -> dict[str, tuple[int, ...]]:
    return {name: t.shape for name, t in expected_adapter(base_dir, recipe).tensors.items()}


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"use_dora": True},
        {"lora_bias": True},
        {"target_modules": ["q_proj", "v_proj", "embed_tokens"], "embedding_lora": True},
        {"target_modules": ["q_proj", "embed_tokens"], "embedding_lora": True, "use_dora": True},
        {"target_modules": "all-linear"},
        {"target_modules": r"model\.layers\.1\.self_attn\.(q|k)_proj"},
    ],
    ids=["plain", "dora", "lora_bias", "embedding", "embedding_dora", "all_linear", "regex"],
)
def test_expected_llama_gqa_matches_peft(llama_base, tmp_path, variant):
    recipe = {**LLAMA_RECIPE, **variant}
    written = _peft_written(llama_base, recipe, tmp_path)
    assert _expected(llama_base.dir, recipe) == written


def test_expected_llama_gqa_kv_width(llama_base):
    tensors = expected_adapter(llama_base.dir, LLAMA_RECIPE).tensors
    k_b = tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape
    q_b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape
    assert k_b == (64, 8)  # 2 kv heads x head_dim 32
    assert q_b == (128, 8)
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 128)


@pytest.mark.parametrize(
    "variant",
    [{}, {"use_dora": True}, {"lora_bias": True}, {"target_modules": ["c_attn", "wte"], "embedding_lora": True}, {"target_modules": "all-linear"}],
    ids=["plain", "dora", "lora_bias", "embedding", "all_linear"],
)
def test_expected_gpt2_conv1d_matches_peft(gpt2_base, tmp_path, variant):
    recipe = {**GPT2_RECIPE, **variant}
    written = _peft_written(gpt2_base, recipe, tmp_path)
    assert _expected(gpt2_base.dir, recipe) == written


def test_expected_gpt2_conv1d_in_out_order(gpt2_base):
    adapter = expected_adapter(gpt2_base.dir, GPT2_RECIPE)
    tensors = adapter.tensors
    # c_attn: Conv1D weight (in=64, out=192); c_fc (64, 256); mlp.c_proj (256, 64)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (8, 64)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (192, 8)
    assert tensors["base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight"].shape == (8, 256)
    assert tensors["base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight"].shape == (64, 8)
    assert adapter.fan_in_fan_out is True


def test_expected_whisper_without_special_case(tmp_path_factory, tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=16,
        max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    directory = tmp_path_factory.mktemp("whisper_base")
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(directory)
    recipe = {"target_modules": ["q_proj", "v_proj", "fc1"], "rank": 4, "alpha": 8, "dropout": 0.0}
    base = Base("whisper", directory, config)
    written = _peft_written(base, recipe, tmp_path, model=model)
    assert _expected(directory, recipe) == written
    assert any(".encoder." in name for name in written) and any(".decoder." in name for name in written)


def test_expected_embedding_without_flag_refused(llama_base):
    with pytest.raises(RecipeError, match="embedding"):
        expected_adapter(llama_base.dir, {**LLAMA_RECIPE, "target_modules": ["q_proj", "embed_tokens"]})


def test_expected_container_target_refused(llama_base):
    with pytest.raises(RecipeError, match="LlamaMLP"):
        expected_adapter(llama_base.dir, {**LLAMA_RECIPE, "target_modules": ["mlp"]})


def test_expected_unmatched_target_refused(llama_base):
    with pytest.raises(RecipeError, match="no module"):
        expected_adapter(llama_base.dir, {**LLAMA_RECIPE, "target_modules": ["c_attn"]})


def test_expected_missing_config_refused(tmp_path):
    with pytest.raises(RecipeError, match="config.json"):
        expected_adapter(tmp_path, LLAMA_RECIPE)


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": 0},
        {"rank": True},
        {"rank": "8"},
        {"target_modules": []},
        {"target_modules": ["q_proj", "../x"]},
        {"use_dora": "yes"},
        {"bias": "all"},
        {"modules_to_save": ["lm_head"]},
        {"dropout": 1.5},
    ],
)
def test_normalize_recipe_bad_values_refused(bad):
    with pytest.raises(RecipeError):
        normalize_recipe({**LLAMA_RECIPE, **bad})


def test_normalize_recipe_defaults_flags_false():
    recipe = normalize_recipe(LLAMA_RECIPE)
    assert (recipe.use_dora, recipe.lora_bias, recipe.embedding_lora) == (False, False, False)
    assert recipe.target_modules == tuple(LLAMA_RECIPE["target_modules"])
