"""Canary generation and planting, and the local base-model builders."""

from __future__ import annotations

import re

from training.runtime.canaries import (
    CANARY_PREFIX, CANDIDATE_SPACE, candidate_secrets, canary_continuation, canary_text, make_canaries, plant,
)
from training.runtime.spec import CanarySpec

from .corpus import notes


def test_make_canaries_is_seeded_distinct_and_shaped():
    spec = CanarySpec(seed=99, repeats=(1, 10), per_repeat=4)
    canaries = make_canaries(spec)
    assert canaries == make_canaries(spec)
    assert canaries != make_canaries(CanarySpec(seed=100, repeats=(1, 10), per_repeat=4))
    assert [c.repeats for c in canaries] == [1] * 4 + [10] * 4
    assert len({c.secret for c in canaries}) == 8
    assert all(re.fullmatch(r"\d{7}", c.secret) for c in canaries)
    assert canary_text("0012345") == CANARY_PREFIX + canary_continuation("0012345") == "Medical record number: 0012345."
    assert CANDIDATE_SPACE == 10**7


def test_plant_puts_each_canary_in_repeats_texts():
    texts = notes(20, seed=5)
    canaries = make_canaries(CanarySpec(seed=1, repeats=(1, 10), per_repeat=2))
    planted = plant(texts, canaries, seed=3)
    assert len(planted) == len(texts)
    for canary in canaries:
        assert sum(canary.text in t for t in planted) == canary.repeats
    # The original text survives after the canary lines.
    assert all(p.endswith(t) for p, t in zip(planted, texts))
    assert planted == plant(texts, canaries, seed=3)


def test_plant_wraps_when_repeats_exceed_texts():
    canaries = make_canaries(CanarySpec(seed=1, repeats=(5,), per_repeat=1))
    planted = plant(["a", "b"], canaries, seed=0)
    assert sum(t.count(canaries[0].text) for t in planted) == 5


def test_candidate_secrets_exclude_planted():
    canaries = make_canaries(CanarySpec(seed=99, repeats=(1,), per_repeat=3))
    planted = {c.secret for c in canaries}
    candidates = candidate_secrets(99, 5000, exclude=planted)
    assert len(candidates) == len(set(candidates)) == 5000
    assert not planted & set(candidates)


def test_build_text_lm_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.runtime.build import build_text_lm

    out = build_text_lm(tmp_path / "llama", notes(50, seed=0), vocab_size=400, hidden_size=32,
                        layers=1, heads=4, kv_heads=2, max_positions=64)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert sum(p.stat().st_size for p in out.iterdir()) < 5_000_000
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # readable by the sandbox user
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = tokenizer("Discharge summary. BP 120/80.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Discharge summary. BP 120/80."
    assert {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id} == {0, 1, 2}


def test_build_gpt2_lm_has_conv1d_projections(tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from training.runtime.build import build_gpt2_lm

    out = build_gpt2_lm(tmp_path / "gpt2", notes(50, seed=0), vocab_size=400)
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert model.config.model_type == "gpt2"
    assert isinstance(model.transformer.h[0].attn.c_attn, Conv1D)
