"""Vision-language recipe: a report given its DICOM image (image-to-text, encoder-decoder).

Staged line: ``{"record", "patient", "image": "images/r-000001.dcm", "text": "<redacted report>"}``.
The image is read with pydicom (``training.runtime.dicom``: rescale, window, [0, 1], square) and
normalised with the base model's image processor settings (size, mean, std); the report is
tokenised with the model's tokenizer (BOS ... EOS). The loss is the report tokens' negative
log-likelihood given the image (teacher forcing), summed per example, weighted by token count.

Choices:
- Base model: ``VisionEncoderDecoderModel`` (family ``vision-encoder-decoder``; ViT encoder, GPT-2
  decoder with cross-attention). LoRA targets by default: the decoder's self-attention
  (``c_attn``) and cross-attention (``c_attn`` = keys/values of the image, ``q_attn``), and the
  encoder's query/value projections (``q_proj``, ``v_proj``), so the adapter can learn both the
  cohort's reporting and its images.
- ``peft_task_type`` None: peft has no task type for encoder-decoder image-to-text models, and
  the plain ``PeftModel`` passes every keyword (``pixel_values``, ``decoder_input_ids``) through.
  The released adapter_config.json carries no task_type either, so a sponsor's
  ``PeftModel.from_pretrained`` builds the same class and finds the same key names.
- Per-patient DP: one study per patient (the one with the smallest record pseudonym). An image
  and its report cannot be concatenated with another study's into one example, and one study per
  patient keeps the clipping bound a per-patient bound; the patient's other studies do not take
  part in a DP run.
- Membership is judged per patient (a patient may have several studies); the report supplies
  zlib calibration and per-token scores (min-k%).
"""

from __future__ import annotations

from typing import Any

from ..dicom import ImageCache
from ..spec import SpecError
from . import register
from .base import Record, Recipe

FAMILY = "vision-encoder-decoder"


@register
class VisionLanguageRecipe(Recipe):
    modality = "vision_language"
    payload_fields = {"image": str, "text": str}
    default_target_modules = {FAMILY: ("c_attn", "q_attn", "q_proj", "v_proj")}
    peft_task_type = None
    has_text = True
    has_token_scores = True
    membership_by_patient = True

    tokenizer: Any = None
    max_length: int = 0
    images: ImageCache | None = None
    channels: int = 1
    mean: Any = None
    std: Any = None

    # --- data -------------------------------------------------------------------------------

    def text_of(self, record: Record) -> str:
        return record.payload["text"]

    # --- model ------------------------------------------------------------------------------

    def load_processor(self) -> None:
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        path = str(self.spec.base_model_path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise SpecError("the base model's tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.bos_token_id is None:
            raise SpecError("the base model's tokenizer has no bos token to start the report with")
        self.tokenizer = tokenizer
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        decoder_positions = getattr(config.decoder, "n_positions", None) or getattr(
            config.decoder, "max_position_embeddings", None) or tokenizer.model_max_length
        self.max_length = min(self.recipe.max_seq_length, int(tokenizer.model_max_length), int(decoder_positions))
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        size = processor.size
        height, width = size.get("height"), size.get("width")
        if not height or height != width:
            raise SpecError("the base model's image processor must name a square size (height = width)")
        self.channels = int(getattr(config.encoder, "num_channels", 1))
        mean = list(processor.image_mean) if processor.do_normalize else [0.0]
        std = list(processor.image_std) if processor.do_normalize else [1.0]
        if len(mean) == 1:
            mean, std = mean * self.channels, std * self.channels
        if len(mean) != self.channels or len(std) != self.channels:
            raise SpecError("the image processor's mean/std do not match the encoder's channels")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.images = ImageCache(int(height))

    def load_base_model(self, *, quantization_config: Any, dtype: Any) -> Any:
        from transformers import VisionEncoderDecoderModel

        extra = {"quantization_config": quantization_config} if quantization_config is not None else {}
        if quantization_config is not None and self.device.type == "cuda":
            extra["device_map"] = {"": self.device.index or 0}
        return VisionEncoderDecoderModel.from_pretrained(
            str(self.spec.base_model_path), local_files_only=True, dtype=dtype, **extra
        )

    # --- tensors ----------------------------------------------------------------------------

    def pixel_values(self, record: Record) -> Any:
        grey = self.images.get(self.data_file(record.payload["image"]))
        return (grey.expand(self.channels, -1, -1) - self.mean) / self.std

    def token_ids(self, text: str) -> list[int]:
        """BOS (the tokenizer's own), the report, EOS; at most ``max_length`` tokens."""
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length - 1)["input_ids"]
        if not ids or ids[0] != self.tokenizer.bos_token_id:
            ids = [self.tokenizer.bos_token_id, *ids][: self.max_length - 1]
        return [*ids, self.tokenizer.eos_token_id]

    def encode(self, record: Record) -> dict[str, Any]:
        return {"pixel_values": self.pixel_values(record), "input_ids": self.token_ids(self.text_of(record))}

    def encode_group(self, records: list[Record]) -> dict[str, Any]:
        # One study per patient (see the module docstring): the first by record pseudonym.
        return self.encode(min(records, key=lambda r: r.record))

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = [f["input_ids"] for f in features]
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        pixels = torch.stack([f["pixel_values"] for f in features])
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}

    def token_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """NLL of each report token given the image and the tokens before it [B, T-1], and its mask."""
        import torch.nn.functional as F

        ids, mask = batch["input_ids"], batch["attention_mask"]
        # The encoder's own dtype (bf16 on a GPU); its first floating parameter is an embedding.
        pixels = batch["pixel_values"].to(next(p.dtype for p in model.parameters() if p.is_floating_point()))
        logits = model(pixel_values=pixels, decoder_input_ids=ids[:, :-1],
                       decoder_attention_mask=mask[:, :-1]).logits
        targets = ids[:, 1:]
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        weights = mask[:, 1:].to(nll.dtype)
        return nll * weights, weights

    def example_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        nll, mask = self.token_losses(model, batch)
        return nll.sum(dim=1), mask.sum(dim=1)
