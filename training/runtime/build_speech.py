"""Build a small Whisper-style speech model locally (no download): config, weights, feature extractor, tokenizer.

The folder loads the way a real Whisper checkpoint does (``WhisperForConditionalGeneration``,
``WhisperFeatureExtractor`` and ``AutoTokenizer`` ``from_pretrained(dir, local_files_only=True)``),
so the speech recipe and the egress validator treat it like weights a hospital registers. The
tokenizer is a byte-level BPE trained on transcripts (as :mod:`training.runtime.build` does for
text); its BOS is Whisper's decoder start token. Optional pre-training on (audio, transcript)
pairs of other synthetic patients gives the base model a working decoder and an encoder that has
heard speech, so a LoRA run on top of it then learns what is particular to its data.
No Django here: only numpy, torch, transformers and tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .build import _save, train_byte_level_tokenizer

SAMPLING_RATE = 16_000


def build_demo_speech(
    folder: Path,
    transcripts: Iterable[str],
    audio: Sequence[tuple[Any, str]] | None = None,
    *,
    seed: int = 0,
    vocab_size: int = 800,
    window_seconds: int = 8,
    mel_bins: int = 32,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_target_positions: int = 128,
    pretrain_epochs: int = 8,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
) -> Path:
    """A tiny Whisper (``layers`` encoder and decoder layers, ``d_model`` wide) saved into ``folder``.

    ``transcripts`` train the tokenizer; ``audio`` is a list of (16 kHz float samples, transcript)
    for ``pretrain_epochs`` of plain training of every weight (none: random initialisation).
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    tokenizer = train_byte_level_tokenizer(list(transcripts), vocab_size=vocab_size, max_length=max_target_positions)
    extractor = WhisperFeatureExtractor(
        feature_size=mel_bins, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=window_seconds, n_fft=400,
    )
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=d_model * 4,
        decoder_ffn_dim=d_model * 4,
        max_source_positions=extractor.nb_max_frames // 2,  # the encoder's two convolutions halve the frames
        max_target_positions=max_target_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        # Whisper's defaults name ids of its own 51865-token vocabulary; none apply here.
        begin_suppress_tokens=None,
        suppress_tokens=None,
        forced_decoder_ids=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    if audio and pretrain_epochs > 0:
        _pretrain(model, tokenizer, extractor, audio, epochs=pretrain_epochs, seed=seed, batch_size=batch_size,
                  learning_rate=learning_rate, max_length=max_target_positions)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extractor.save_pretrained(folder)
    return _save(model, tokenizer, folder)


def _pretrain(model, tokenizer, extractor, audio, *, epochs: int, seed: int, batch_size: int, learning_rate: float,
              max_length: int) -> None:
    """Transcript NLL given the audio, every weight, seeded; the same loss the speech recipe trains."""
    import numpy as np
    import torch

    features = [extractor(samples, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"][0]
                for samples, _ in audio]
    ids = [tokenizer(text, truncation=True, max_length=max_length - 1)["input_ids"] + [tokenizer.eos_token_id]
           for _, text in audio]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chosen) - 1
            decoder = torch.full((len(chosen), width), tokenizer.pad_token_id)
            labels = torch.full((len(chosen), width), -100)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, i in enumerate(chosen):
                seq = torch.tensor(ids[i])
                decoder[row, : len(seq) - 1] = seq[:-1]
                labels[row, : len(seq) - 1] = seq[1:]
                mask[row, : len(seq) - 1] = 1
            batch = torch.from_numpy(np.stack([features[i] for i in chosen]))
            logits = model(input_features=batch, decoder_input_ids=decoder, decoder_attention_mask=mask,
                           use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()
