"""Build small base models locally, from a config and a corpus (no downloads).

The portal's ``build_demo_models`` command calls these helpers; the runtime tests use them too.
They save with ``save_pretrained`` (safetensors), so that ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained(dir, local_files_only=True)`` loads them the same way it loads
real weights a hospital registers. No Django here: only torch, transformers and tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]


def train_byte_level_tokenizer(corpus: Iterable[str], *, vocab_size: int, max_length: int):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers.

    Byte-level means every string can be encoded (no unknown characters), which matters for
    clinical text full of codes, units and odd punctuation. The tokenizer prepends BOS itself, so
    a plain ``tokenizer(text)`` gives the sequence the model was meant to see.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
    )


def make_readable(folder: Path) -> Path:
    """save_pretrained may create files 0600; the sandbox reads /models as a non-root user."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    return folder


def _save(model, tokenizer, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return make_readable(out_dir)


def build_text_lm(
    out_dir: Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 256,
    seed: int = 0,
    pretrain_epochs: int = 0,
) -> Path:
    """A small Llama-style causal LM (grouped-query attention) with a tokenizer trained on ``corpus``.

    Random initialisation from a config; returns ``out_dir``. Builds in seconds, a few MB.
    ``pretrain_epochs`` > 0 first trains all weights on ``corpus`` for that many epochs, so the
    base model already writes corpus-like text (as a real base model would) and a LoRA run on top
    of it learns the specifics of its data, not the language from scratch.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    corpus = list(corpus)  # read twice: tokenizer, then pretraining
    tokenizer = train_byte_level_tokenizer(corpus, vocab_size=vocab_size, max_length=max_positions)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if pretrain_epochs > 0:
        _pretrain(model, tokenizer, corpus, epochs=pretrain_epochs, max_length=max_positions, seed=seed)
    return _save(model, tokenizer, Path(out_dir))


def _pretrain(model, tokenizer, corpus: list[str], *, epochs: int, max_length: int, seed: int,
              batch_size: int = 16, learning_rate: float = 3e-3) -> None:
    """Plain next-token training of every weight on ``corpus`` (seeded, CPU-friendly)."""
    import torch

    ids = [tokenizer(text, truncation=True, max_length=max_length - 1)["input_ids"] + [tokenizer.eos_token_id]
           for text in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            batch = [ids[i] for i in order[start:start + batch_size]]
            width = max(len(seq) for seq in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            labels = input_ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()


def build_gpt2_lm(
    out_dir: Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 1000,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    seed: int = 0,
) -> Path:
    """A tiny GPT-2 style causal LM (Conv1D projections, fused ``c_attn``) with its tokenizer.

    Its LoRA targets (``c_attn``, ``c_proj``) and tensor shapes differ from Llama's, which is what
    the egress validator's tests need.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_byte_level_tokenizer(corpus, vocab_size=vocab_size, max_length=max_positions)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden_size,
        n_layer=layers,
        n_head=heads,
        n_positions=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    return _save(model, tokenizer, Path(out_dir))
