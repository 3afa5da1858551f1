"""Speech recipe: a Whisper-style encoder-decoder learns a recording's transcript from its audio.

Staged lines are ``{"record", "patient", "audio": "audio/r-000017.wav", "text": transcript}``; the
WAV is 16 kHz mono PCM16 (what the importer stores and staging copies) and is read here with the
standard library's ``wave`` and numpy. Features are the base model's own ``WhisperFeatureExtractor``
log-mel spectrogram, padded or cut to its window (Whisper's encoder takes exactly that many
frames); the loss is the transcript's next-token NLL given the audio, summed per example, with the
number of predicted tokens as the weight. Decoder input starts with the model's
``decoder_start_token_id`` and the target ends with EOS.

Choices:
- ``peft_task_type`` is None (a plain ``PeftModel``): peft's SEQ_2_SEQ_LM wrapper always calls
  the base model with ``input_ids=`` and ``inputs_embeds=``, which Whisper does not take (its
  encoder input is ``input_features``). The adapter's tensor names are the same either way
  (``base_model.model.model.{encoder,decoder}.layers.N....lora_A.weight``), and a stock
  ``PeftModel.from_pretrained(whisper, dir)`` loads them.
- Per-patient DP (``encode_group``): one example per patient made of that patient's recordings in
  staged order, as many whole ones as fit in the feature extractor's window (separated by a short
  silence; the first is cut to the window if it alone is longer), with their transcripts joined.
  Recordings that do not fit are left out of that patient's DP example: the clipping bound still
  covers everything the patient contributes, they only contribute less.
- Membership is judged per patient (one patient often has several recordings in one voice).
- Transcripts give the audit its zlib calibration (``has_text``); there is no greedy extraction
  or canary planting for speech (canaries would have to be spoken to be meaningful).
"""

from __future__ import annotations

import wave
from typing import Any

from ..spec import SpecError
from . import register
from .base import Record, Recipe

WHISPER_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
GAP_SECONDS = 0.3  # silence between a patient's recordings in a grouped (DP) example


@register
class SpeechRecipe(Recipe):
    modality = "speech"
    payload_fields = {"audio": str, "text": str}
    default_target_modules = {"whisper": WHISPER_ATTENTION}
    peft_task_type = None
    has_text = True
    membership_by_patient = True

    feature_extractor: Any = None
    tokenizer: Any = None
    max_length: int = 0  # decoder tokens per example, start token and EOS included
    sampling_rate: int = 0
    window: int = 0  # samples the encoder sees
    start_id: int = 0
    eos_id: int = 0
    pad_id: int = 0
    model_dtype: Any = None

    # --- data -------------------------------------------------------------------------------

    def text_of(self, record: Record) -> str:
        return record.payload["text"]

    def read_audio(self, record: Record) -> Any:
        """The staged recording as float32 samples in [-1, 1); errors name only the staged file."""
        import numpy as np

        path = self.data_file(record.payload["audio"])
        try:
            with wave.open(str(path), "rb") as handle:
                shape = (handle.getnchannels(), handle.getsampwidth(), handle.getframerate(), handle.getcomptype())
                if shape != (1, 2, self.sampling_rate, "NONE"):
                    raise SpecError(f"staged recording {path.name} is not {self.sampling_rate} Hz mono PCM16")
                frames = handle.readframes(handle.getnframes())
        except (wave.Error, EOFError):
            raise SpecError(f"staged recording {path.name} is not a readable WAV file") from None
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
        if samples.size == 0:
            raise SpecError(f"staged recording {path.name} holds no audio")
        return samples

    # --- model ------------------------------------------------------------------------------

    def load_processor(self) -> None:
        from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor

        path = str(self.spec.base_model_path)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        start = config.decoder_start_token_id
        eos = config.eos_token_id if config.eos_token_id is not None else self.tokenizer.eos_token_id
        if start is None or eos is None:
            raise SpecError("the base model's config names no decoder_start_token_id or eos_token_id")
        pad = self.tokenizer.pad_token_id
        self.start_id, self.eos_id = int(start), int(eos)
        self.pad_id = int(pad if pad is not None else config.pad_token_id if config.pad_token_id is not None else eos)
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        self.window = int(self.feature_extractor.n_samples)
        # Learned decoder positions fail outright past max_target_positions.
        self.max_length = min(self.recipe.max_seq_length, int(config.max_target_positions))

    def load_base_model(self, *, quantization_config: Any, dtype: Any) -> Any:
        from transformers import WhisperForConditionalGeneration

        extra = {"quantization_config": quantization_config} if quantization_config is not None else {}
        if quantization_config is not None and self.device.type == "cuda":
            extra["device_map"] = {"": self.device.index or 0}
        self.model_dtype = dtype
        return WhisperForConditionalGeneration.from_pretrained(
            str(self.spec.base_model_path), local_files_only=True, dtype=dtype, **extra
        )

    # --- tensors ----------------------------------------------------------------------------

    def features(self, samples: Any) -> Any:
        """Log-mel features [mel bins, frames], padded or cut to the encoder's window."""
        out = self.feature_extractor(samples, sampling_rate=self.sampling_rate, return_tensors="np",
                                     return_attention_mask=False)
        return out["input_features"][0]

    def label_ids(self, text: str) -> list[int]:
        """Decoder sequence: start token, transcript tokens, EOS; at most ``max_length`` long."""
        ids = list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])
        if not ids or ids[0] != self.start_id:
            ids = [self.start_id, *ids]
        ids = ids[: self.max_length - 1]
        if ids[-1] != self.eos_id or len(ids) == 1:
            ids.append(self.eos_id)
        return ids

    def encode(self, record: Record) -> dict[str, Any]:
        return {"input_features": self.features(self.read_audio(record)), "ids": self.label_ids(self.text_of(record))}

    def encode_group(self, records: list[Record]) -> dict[str, Any]:
        import numpy as np

        gap = np.zeros(int(GAP_SECONDS * self.sampling_rate), dtype=np.float32)
        pieces: list[Any] = []
        texts: list[str] = []
        used = 0
        for record in records:
            samples = self.read_audio(record)
            extra = len(samples) + (len(gap) if pieces else 0)
            if pieces and used + extra > self.window:
                break
            if pieces:
                pieces.append(gap)
            pieces.append(samples)
            texts.append(self.text_of(record))
            used += extra
        return {"input_features": self.features(np.concatenate(pieces)), "ids": self.label_ids(" ".join(texts))}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        width = max(len(f["ids"]) for f in features) - 1
        decoder = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            ids = torch.tensor(feature["ids"], dtype=torch.long)
            n = len(ids) - 1
            decoder[row, :n] = ids[:-1]
            labels[row, :n] = ids[1:]
            mask[row, :n] = 1
        audio = torch.from_numpy(np.stack([f["input_features"] for f in features]).astype(np.float32))
        return {"input_features": audio, "decoder_input_ids": decoder, "labels": labels, "decoder_attention_mask": mask}

    def example_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch.nn.functional as F

        audio = batch["input_features"]
        if self.model_dtype is not None:
            audio = audio.to(self.model_dtype)
        logits = model(
            input_features=audio,
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
            use_cache=False,
        ).logits
        labels = batch["labels"]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none")
        mask = batch["decoder_attention_mask"].to(nll.dtype)
        nll = nll.view(labels.shape) * mask
        return nll.sum(dim=1), mask.sum(dim=1)
