"""Build the demo molecule LM locally: a small Llama-style causal LM over SMILES and protein sequences.

Nothing specific to chemistry is needed from ``build.py``: its byte-level BPE tokenizer encodes any
string (SMILES brackets, ring digits, ``@``, ``/``, ``\\``, ``#``) and learns merges such as ``cc``,
``C(=O)`` pieces and frequent residue pairs from the corpus, and decoding is lossless, which the
memorisation probe relies on when it compares samples with records. Pre-training on the corpus
teaches the base model the grammar of the structures, so a LoRA run on top learns its patients'
structures, not SMILES syntax.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .build import build_text_lm

MOLECULE_LM = {"vocab_size": 512, "hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "max_positions": 256}


def build_demo_molecule_lm(folder: Path | str, corpus: Iterable[str], seed: int = 0, *, pretrain_epochs: int = 10) -> Path:
    """Tokenizer trained on ``corpus``, then the model pre-trained on it; returns ``folder``.

    One thread: a model this small gains nothing from more, and on a busy machine OpenMP threads
    spinning against other processes made the same build ten times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_text_lm(Path(folder), corpus, seed=seed, pretrain_epochs=pretrain_epochs, **MOLECULE_LM)
    finally:
        torch.set_num_threads(threads)
