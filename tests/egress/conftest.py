"""Fixtures: small base models built from transformers configs (random init) and stock-peft adapters.

Everything is session-scoped and built once: a Llama-style model with grouped-query attention, a
GPT-2-style model (Conv1D), and a Whisper-style model (generality of the expected-tensor rule).
No Django anywhere in tests/egress.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IDENTIFIERS = [
    ("mrn", "MRN0012345"),
    ("name", "Jane Doe"),
    ("name", "Jürgen Müller"),
    ("birth_date", "1970-01-31"),
    ("phone", "+44 20 7946 0958"),
    ("national_id", "943 476 5919"),
    ("mrn", "1234"),  # too short: counted, not scanned
]

LLAMA_RECIPE = {
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "rank": 8,
    "alpha": 16,
    "dropout": 0.05,
}
GPT2_RECIPE = {"target_modules": ["c_attn", "c_proj", "c_fc"], "rank": 8, "alpha": 16, "dropout": 0.05}


def pytest_ignore_collect(collection_path, config):
    """Under ``-p no:django`` this folder's portal tests (pages, API) cannot even be imported:
    leave them out, and run the Django-free validator, signing and verifier tests."""
    if config.pluginmanager.hasplugin("django"):
        return None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        text = collection_path.read_text(encoding="utf-8", errors="ignore")
        if "django_db" in text or "from django" in text or "import django" in text:
            return True
    return None


@dataclass
class Base:
    name: str
    dir: Path
    config: Any

    def model(self, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(self.config).eval()


def _quiet():
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory) -> Base:
    _quiet()
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: k/v out = 64
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    directory = tmp_path_factory.mktemp("llama_base")
    base = Base("llama", directory, config)
    base.model().save_pretrained(directory)  # as the registry does: config.json names the architecture
    return base


@pytest.fixture(scope="session")
def gpt2_base(tmp_path_factory) -> Base:
    _quiet()
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    directory = tmp_path_factory.mktemp("gpt2_base")
    base = Base("gpt2", directory, config)
    base.model().save_pretrained(directory)
    return base


def peft_recipe_kwargs(recipe: dict) -> dict:
    return {
        "r": recipe["rank"],
        "lora_alpha": recipe["alpha"],
        "lora_dropout": recipe["dropout"],
        "target_modules": recipe["target_modules"],
        "use_dora": recipe.get("use_dora", False),
        "lora_bias": recipe.get("lora_bias", False),
    }


def train_adapter(base: Base, recipe: dict, out_dir: Path, *, steps: int = 2, seed: int = 0):
    """Stock peft: wrap the base model, take a few SGD steps (so lora_B moves), save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = base.model(seed)
    peft_model = get_peft_model(model, LoraConfig(**peft_recipe_kwargs(recipe)))
    peft_model.train()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(3, base.config.vocab_size, (2, 16), generator=generator)
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    return peft_model


@pytest.fixture(scope="session")
def llama_adapter(tmp_path_factory, llama_base):
    out = tmp_path_factory.mktemp("llama_out")
    model = train_adapter(llama_base, LLAMA_RECIPE, out)
    return out, model


@pytest.fixture(scope="session")
def gpt2_adapter(tmp_path_factory, gpt2_base):
    out = tmp_path_factory.mktemp("gpt2_out")
    model = train_adapter(gpt2_base, GPT2_RECIPE, out)
    return out, model


@pytest.fixture
def identifiers():
    return list(IDENTIFIERS)
