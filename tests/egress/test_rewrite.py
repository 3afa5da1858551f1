"""rewrite_adapter + the portal-written adapter_config.json: what is released loads in stock peft
and computes what the trained model computed; nothing of the source header survives."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from egress.validation import (
    RewriteError,
    ValidationPolicy,
    build_adapter_config,
    build_model_card,
    expected_adapter,
    rewrite_adapter,
)

from . import helpers as h
from .conftest import GPT2_RECIPE, LLAMA_RECIPE


def _release_dir(tmp_path, base, recipe, src_dir, policy=None, identifiers=()):
    release = tmp_path / "release"
    result = rewrite_adapter(
        src_dir / "adapter_model.safetensors",
        release / "adapter_model.safetensors",
        base_model_dir=base.dir,
        recipe=recipe,
        identifiers=list(identifiers),
        policy=policy,
    )
    expected = expected_adapter(base.dir, recipe)
    config = build_adapter_config(recipe, base_model_name=f"rapha/{base.name}-tiny", expected=expected)
    (release / "adapter_config.json").write_text(json.dumps(config))
    return release, result


def _logits(model, vocab):
    ids = torch.arange(3, 3 + 12).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_rewrite_loads_in_peft_with_same_outputs(family, tmp_path, request, identifiers):
    from peft import PeftModel

    base = request.getfixturevalue(f"{family}_base")
    src, trained = request.getfixturevalue(f"{family}_adapter")
    recipe = LLAMA_RECIPE if family == "llama" else GPT2_RECIPE
    release, result = _release_dir(tmp_path, base, recipe, src, identifiers=identifiers)
    assert result.report.accepted and result.source_report.accepted
    assert result.rounded_to_bf16 is False and result.dtypes == ["F32"]
    loaded = PeftModel.from_pretrained(base.model(), release).eval()
    torch.testing.assert_close(_logits(loaded, base.config.vocab_size), _logits(trained, base.config.vocab_size), rtol=0, atol=0)
    config = json.loads((release / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == f"rapha/{family}-tiny"
    assert config["fan_in_fan_out"] is (family == "gpt2")


def test_rewrite_bf16_rounding_recorded(tmp_path, llama_base, llama_adapter, identifiers):
    from peft import PeftModel

    src, trained = llama_adapter
    policy = ValidationPolicy(round_to_bf16=True)
    release, result = _release_dir(tmp_path, llama_base, LLAMA_RECIPE, src, policy=policy, identifiers=identifiers)
    assert result.rounded_to_bf16 is True and result.dtypes == ["BF16"] and result.source_dtypes == ["F32"]
    assert result.to_dict()["rounded_to_bf16"] is True
    loaded = PeftModel.from_pretrained(llama_base.model(), release).eval()
    got = _logits(loaded, llama_base.config.vocab_size)
    torch.testing.assert_close(got.float(), _logits(trained, llama_base.config.vocab_size), rtol=0.05, atol=0.05)


def test_rewrite_header_regenerated(tmp_path, llama_base, llama_adapter, identifiers):
    from safetensors.torch import save_file

    src, _ = llama_adapter
    tensors = h.read_tensors(src / "adapter_model.safetensors")
    # A valid source with its own header layout: reverse entry order, fields in another order.
    lay = h.layout(list(reversed(tensors)), {"format": "pt"})
    header = {"__metadata__": {"format": "pt"}}
    for name in reversed(list(lay.header)):
        if name != "__metadata__":
            info = lay.header[name]
            header[name] = {"data_offsets": info["data_offsets"], "shape": info["shape"], "dtype": info["dtype"]}
    source = h.assemble(header, lay.data)
    h.write_adapter(tmp_path / "src", source)
    result = rewrite_adapter(
        tmp_path / "src" / "adapter_model.safetensors",
        tmp_path / "out" / "adapter_model.safetensors",
        base_model_dir=llama_base.dir,
        recipe=LLAMA_RECIPE,
        identifiers=identifiers,
    )
    written = result.path.read_bytes()
    (n,) = struct.unpack("<Q", written[:8])
    source_n = struct.unpack("<Q", source[:8])[0]
    assert written[8 : 8 + n] != source[8 : 8 + source_n]
    canonical = tmp_path / "canonical.safetensors"
    save_file(
        {t.name: torch.from_numpy(np.frombuffer(t.data, dtype=np.float32).reshape(t.shape).copy()) for t in tensors},
        str(canonical),
        metadata={"format": "pt"},
    )
    assert written == canonical.read_bytes()


def test_rewrite_rejected_source_refused(tmp_path, llama_base, llama_adapter, identifiers):
    src, _ = llama_adapter
    tensors = h.read_tensors(src / "adapter_model.safetensors")
    bad = [h.Tensor(t.name, t.dtype, t.shape, np.full(len(t.data) // 4, np.nan, np.float32).tobytes()) if i == 0 else t for i, t in enumerate(tensors)]
    h.write_adapter(tmp_path / "src", h.build(bad))
    dst = tmp_path / "out" / "adapter_model.safetensors"
    with pytest.raises(RewriteError) as info:
        rewrite_adapter(tmp_path / "src" / "adapter_model.safetensors", dst, base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=identifiers)
    assert info.value.report is not None and info.value.report.verdict("values_finite").code == "nan"
    assert not dst.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_rewrite_missing_identifiers_refused(tmp_path, llama_base, llama_adapter):
    src, _ = llama_adapter
    with pytest.raises(RewriteError):
        rewrite_adapter(src / "adapter_model.safetensors", tmp_path / "a.safetensors", base_model_dir=llama_base.dir, recipe=LLAMA_RECIPE, identifiers=None)


def test_build_adapter_config_from_recipe_only(llama_base):
    expected = expected_adapter(llama_base.dir, LLAMA_RECIPE)
    config = build_adapter_config({**LLAMA_RECIPE, "learning_rate": 1e-3}, base_model_name="rapha/llama-tiny", expected=expected)
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == sorted(LLAMA_RECIPE["target_modules"])
    assert "learning_rate" not in config and config["bias"] == "none" and config["modules_to_save"] is None
    from peft import LoraConfig

    assert LoraConfig(**{k: v for k, v in config.items() if k != "peft_type"}).r == 8


def test_build_model_card_has_recipe_and_no_sandbox_text(llama_base):
    expected = expected_adapter(llama_base.dir, LLAMA_RECIPE)
    card = build_model_card(
        LLAMA_RECIPE, base_model_name="rapha/llama-tiny", expected=expected, adapter_sha256="ab" * 32, facts={"Release": "r-1\n| injected"}
    )
    assert "rapha/llama-tiny" in card and "| Rank | 8 |" in card and "abab" in card
    assert "\n| injected" not in card
