"""Text recipe: causal language modelling on clinical notes (discharge summaries, letters, reports)."""

from __future__ import annotations

from typing import Any

from ..canaries import Canary, plant
from ..spec import SpecError
from . import register
from .base import Record, Recipe

LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj")


@register
class TextRecipe(Recipe):
    modality = "text"
    payload_fields = {"text": str}
    default_target_modules = {
        "llama": LLAMA_LIKE,
        "mistral": LLAMA_LIKE,
        "qwen2": LLAMA_LIKE,
        "gemma": LLAMA_LIKE,
        "phi3": ("qkv_proj", "o_proj"),
        "gpt2": ("c_attn", "c_proj"),
        "gpt_neox": ("query_key_value", "dense"),
    }
    peft_task_type = "CAUSAL_LM"
    has_text = True
    has_token_scores = True
    can_generate = True
    can_plant_canaries = True

    tokenizer: Any = None
    max_length: int = 0  # tokens per sequence, set by load_processor

    # --- data -------------------------------------------------------------------------------

    def text_of(self, record: Record) -> str:
        return record.payload["text"]

    def plant_canaries(self, records: list[Record], canaries: list[Canary]) -> list[Record]:
        texts = plant([self.text_of(r) for r in records], canaries, seed=self.recipe.seed)
        return [Record(r.record, r.patient, {"text": t}) for r, t in zip(records, texts)]

    # --- model ------------------------------------------------------------------------------

    def load_processor(self) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.spec.base_model_path), local_files_only=True)
        if tokenizer.pad_token_id is None:
            # Padding is masked out everywhere, so any id will do; EOS is the usual choice.
            if tokenizer.eos_token_id is None:
                raise SpecError("the base model's tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        # Never beyond what the model was built for: learned position embeddings (GPT-2) fail
        # outright past it. Tokenizers without a limit report a huge sentinel, hence min().
        self.max_length = min(self.recipe.max_seq_length, int(tokenizer.model_max_length))

    def load_base_model(self, *, quantization_config: Any, dtype: Any) -> Any:
        from transformers import AutoModelForCausalLM

        extra = {"quantization_config": quantization_config} if quantization_config is not None else {}
        if quantization_config is not None and self.device.type == "cuda":
            extra["device_map"] = {"": self.device.index or 0}
        return AutoModelForCausalLM.from_pretrained(
            str(self.spec.base_model_path), local_files_only=True, dtype=dtype, **extra
        )

    # --- tensors ----------------------------------------------------------------------------

    def token_ids(self, text: str, *, max_length: int, add_eos: bool) -> list[int]:
        """Token ids with the tokenizer's own specials (BOS), truncated, optionally ending in EOS."""
        room = max_length - 1 if add_eos else max_length
        ids = self.tokenizer(text, truncation=True, max_length=room)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if add_eos and eos is not None:
            ids = [*ids, eos]
        return ids

    def encode(self, record: Record) -> dict[str, Any]:
        return {"input_ids": self.token_ids(self.text_of(record), max_length=self.max_length, add_eos=True)}

    def encode_group(self, records: list[Record]) -> dict[str, Any]:
        text = "\n\n".join(self.text_of(r) for r in records)
        return {"input_ids": self.token_ids(text, max_length=self.max_length, add_eos=True)}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pad([f["input_ids"] for f in features], side="right")

    def pad(self, sequences: list[list[int]], *, side: str) -> dict[str, Any]:
        import torch

        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def token_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Next-token NLL [B, T-1] and the mask of positions that count (real tokens only)."""
        import torch.nn.functional as F

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["input_ids"][:, 1:]
        nll = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        mask = batch["attention_mask"][:, 1:].to(nll.dtype)
        return nll * mask, mask

    def example_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        nll, mask = self.token_losses(model, batch)
        return nll.sum(dim=1), mask.sum(dim=1)

    # --- audit helpers ------------------------------------------------------------------------

    def sequence_nll(self, model: Any, texts: list[str], *, batch_size: int) -> list[float]:
        """Summed NLL of each text (no EOS): the log-perplexity used to rank canary candidates."""
        import torch

        out: list[float] = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                # One tokenizer call per batch: the canary audit scores 2^14 short texts.
                ids = self.tokenizer(
                    texts[start:start + batch_size], truncation=True, max_length=self.max_length
                )["input_ids"]
                nll, _ = self.token_losses(model, self.to_device(self.pad(ids, side="right")))
                out.extend(nll.sum(dim=1).tolist())
        return out

    def continuation_nll(self, model: Any, prefix: str, continuations: list[str], *, batch_size: int) -> list[float]:
        """Summed NLL of each continuation given one shared prefix.

        The prefix runs once per batch (batch size 1, then its KV cache is repeated), so scoring
        2^14 canary candidates costs only their few secret tokens each. Ranks equal those of
        :meth:`sequence_nll` (they differ by the prefix's NLL, the same for every candidate). If
        the tokenizer merges across the prefix boundary for any text, every text is scored
        whole instead, so all scores stay comparable.
        """
        import torch
        import torch.nn.functional as F

        prefix_ids = self.tokenizer(prefix)["input_ids"]
        full = self.tokenizer([prefix + c for c in continuations], truncation=True,
                              max_length=self.max_length)["input_ids"]
        cut = len(prefix_ids)
        if any(ids[:cut] != prefix_ids or len(ids) == cut for ids in full):
            return self.sequence_nll(model, [prefix + c for c in continuations], batch_size=batch_size)

        out: list[float] = []
        model.eval()
        with torch.no_grad():
            prefix_tensor = torch.tensor([prefix_ids], device=self.device)
            for start in range(0, len(full), batch_size):
                suffixes = [ids[cut:] for ids in full[start:start + batch_size]]
                prefix_out = model(input_ids=prefix_tensor, use_cache=True)
                cache = prefix_out.past_key_values
                cache.batch_repeat_interleave(len(suffixes))
                batch = self.to_device(self.pad(suffixes, side="right"))
                attention = torch.cat(
                    [torch.ones((len(suffixes), cut), dtype=batch["attention_mask"].dtype, device=self.device),
                     batch["attention_mask"]], dim=1)
                logits = model(input_ids=batch["input_ids"], attention_mask=attention,
                               past_key_values=cache, use_cache=True).logits
                # The prefix's last position predicts the first suffix token.
                first = prefix_out.logits[:, -1:].expand(len(suffixes), 1, -1)
                predictions = torch.cat([first, logits[:, :-1]], dim=1).float()
                nll = F.cross_entropy(
                    predictions.reshape(-1, predictions.size(-1)), batch["input_ids"].reshape(-1), reduction="none"
                ).view(batch["input_ids"].shape)
                out.extend((nll * batch["attention_mask"]).sum(dim=1).tolist())
        return out

    def greedy_continue(self, model: Any, prompts: list[list[int]], *, new_tokens: int, batch_size: int) -> list[list[int]]:
        """Greedy continuation of each prompt, exactly ``new_tokens`` long (EOS does not stop it)."""
        import torch

        out: list[list[int]] = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                batch = self.to_device(self.pad(chunk, side="left"))
                generated = model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                width = batch["input_ids"].shape[1]
                out.extend(generated[:, width:width + new_tokens].tolist())
        return out
