"""The recipe interface: everything that differs between modalities, behind one shape.

The shared training loop (``training.runtime.train``) and audit (``training.runtime.audit``) only
talk to a recipe through this class. A modality plugs in by subclassing :class:`Recipe` and
registering it (see ``recipes/__init__.py``): it says how to read its staged split, how to turn
a record into tensors and batch them, which base model class to load, which modules LoRA targets
per model family, and what the per-example loss is. Optional capabilities (text for zlib
calibration, token-level scores, generation for extraction, canary planting) are advertised by
flags, so the audit runs whatever applies and the schema marks the rest optional.

Planned recipes and what they fill in:
- vision-language (DICOM + report): reader decodes pixels with pydicom, processor = the model's
  image processor + tokenizer, loss = report tokens given the image; text capabilities apply to
  the report.
- diffusion (DICOM): loss = noise-prediction MSE per image; no text capabilities.
- speech (audio -> transcript): loss = transcript tokens given audio features.
- molecules (SMILES / sequences): a text-like recipe over a chemistry tokenizer.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..spec import JobSpec, SpecError

SPLITS = ("train", "holdout")
MAX_RECORDS = 1_000_000


@dataclass(frozen=True)
class Record:
    """One staged record: per-job pseudonyms plus the modality's payload."""

    record: str
    patient: str
    payload: dict[str, Any] = field(repr=False)  # repr=False: never print data in a traceback


class Recipe(ABC):
    modality: ClassVar[str]
    # The fields a staged JSONL line carries besides "record" and "patient".
    payload_fields: ClassVar[dict[str, type]] = {}
    # LoRA targets when the approved recipe names none, keyed by base_model.family.
    default_target_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    # peft TaskType name; decides the PeftModel subclass and so the adapter's key names.
    peft_task_type: ClassVar[str | None] = None

    # Capabilities the audit checks for.
    has_text: ClassVar[bool] = False  # text_of() returns the record's text (zlib calibration)
    has_token_scores: ClassVar[bool] = False  # token_losses() exists (min-k% probability)
    can_generate: ClassVar[bool] = False  # greedy continuations (extraction)
    can_plant_canaries: ClassVar[bool] = False
    # memorisation() exists: the recipe generates samples inside the sandbox and reports how many
    # reproduce (or lie close to) training items versus held-out items -- aggregate numbers only.
    can_sample: ClassVar[bool] = False
    # Membership inference per patient (scores averaged over a patient's records) rather than per
    # record: the right unit when one patient has several recordings, images or notes, since the
    # question a reviewer asks is "can an attacker tell this PERSON was in training".
    membership_by_patient: ClassVar[bool] = False
    # The base model can be loaded 4-bit through bitsandbytes (QLoRA). When False the portal
    # resolves quantization "auto" to "none" for this modality, and "nf4" is refused by the recipe.
    supports_quantization: ClassVar[bool] = True

    def __init__(self, spec: JobSpec, device: Any) -> None:
        self.spec = spec
        self.recipe = spec.recipe
        self.device = device

    # --- data -------------------------------------------------------------------------------

    def read_split(self, split: str) -> list[Record]:
        """Read ``data_dir/<split>.jsonl``; errors name the file and line, never the content."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        path = Path(self.spec.data_dir) / f"{split}.jsonl"
        if not path.is_file():
            raise SpecError(f"data file not found: {path}")
        records = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    records.append(self._parse_line(line, path.name, number))
                if len(records) > MAX_RECORDS:
                    raise SpecError(f"{path.name} has more than {MAX_RECORDS} records")
        if not records:
            raise SpecError(f"{path.name} has no records")
        return records

    def _parse_line(self, line: str, name: str, number: int) -> Record:
        where = f"{name} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise SpecError(f"{where} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise SpecError(f"{where} is not a JSON object")
        expected = {"record": str, "patient": str, **self.payload_fields}
        missing = [k for k in expected if k not in obj]
        if missing:
            raise SpecError(f"{where} is missing {', '.join(missing)}")
        if len(obj) != len(expected):
            raise SpecError(f"{where} has {len(obj) - len(expected)} unexpected field(s)")
        wrong = [k for k, kind in expected.items() if not isinstance(obj[k], kind)]
        if wrong:
            raise SpecError(f"{where}: wrong type for {', '.join(wrong)}")
        return Record(obj["record"], obj["patient"], {k: obj[k] for k in self.payload_fields})

    def data_file(self, relative: str) -> Path:
        """A staged file named by a payload field (``images/r-000001.npy``), inside ``data_dir``.

        Staged JSONL names files relative to the data directory; anything absolute or climbing out
        of it is refused, so a payload can only ever point at what staging wrote.
        """
        base = Path(self.spec.data_dir).resolve()
        path = (base / relative).resolve()
        if Path(relative).is_absolute() or base not in path.parents:
            raise SpecError("a staged record names a file outside the data directory")
        if not path.is_file():
            raise SpecError(f"a staged record names a missing file ({Path(relative).name})")
        return path

    def memorisation(self, model: Any, members: list[Record], nonmembers: list[Record], *, seed: int) -> dict:
        """Generate samples and compare them with members and non-members (``can_sample`` recipes).

        Returns the audit schema's ``memorisation`` object (see ``schema.MEMORISATION``): how many
        samples were drawn, what share of them match a member versus a non-member (exact
        reproduction for sequences; nearest-neighbour distance under a threshold for images),
        the one-sided p-value of the difference, and optionally median nearest distances.
        Compare against equally many members and non-members so the two rates are comparable.
        """
        raise SpecError(f"sampling is not supported for modality {self.modality!r}")

    def plant_canaries(self, records: list[Record], canaries: list) -> list[Record]:
        raise SpecError(f"canaries are not supported for modality {self.modality!r}")

    def text_of(self, record: Record) -> str:
        raise NotImplementedError

    # --- model ------------------------------------------------------------------------------

    @abstractmethod
    def load_processor(self) -> None:
        """Load the tokenizer / processor from the base model directory (local files only)."""

    @abstractmethod
    def load_base_model(self, *, quantization_config: Any, dtype: Any) -> Any:
        """Load the base model from ``spec.base_model_path`` (local files only)."""

    def target_modules(self) -> list[str]:
        if self.recipe.target_modules:
            return list(self.recipe.target_modules)
        family = self.spec.family
        if family not in self.default_target_modules:
            known = ", ".join(sorted(self.default_target_modules))
            raise SpecError(
                f"no default LoRA target modules for family {family!r} (known: {known}); "
                "set recipe.target_modules"
            )
        return list(self.default_target_modules[family])

    # --- tensors ----------------------------------------------------------------------------

    @abstractmethod
    def encode(self, record: Record) -> dict[str, Any]:
        """Turn one record into model features (unbatched)."""

    def encode_group(self, records: list[Record]) -> dict[str, Any]:
        """Features for several records of one patient, as ONE example (per-patient DP)."""
        raise SpecError(f"per-patient grouping is not supported for modality {self.modality!r}")

    @abstractmethod
    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch features into tensors (on CPU; the loop moves them)."""

    @abstractmethod
    def example_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Per-example summed loss and per-example weight (e.g. predicted tokens), both shape [B].

        Training minimises sum(loss) / sum(weight); evaluation reports the same ratio over the
        held-out set; the audit uses loss / weight per record.
        """

    def batch_loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """Mean loss over the batch's weight, and that weight (tokens, for throughput)."""
        losses, weights = self.example_losses(model, batch)
        total = weights.sum()
        return losses.sum() / total.clamp(min=1), int(total.item())

    def eval_loss(self, model: Any, records: list[Record], *, batch_size: int) -> float:
        """Weight-averaged loss over ``records`` with the model in eval mode."""
        import torch

        was_training = model.training
        model.eval()
        loss_sum, weight_sum = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(records), batch_size):
                batch = self.to_device(self.collate([self.encode(r) for r in records[start:start + batch_size]]))
                losses, weights = self.example_losses(model, batch)
                loss_sum += float(losses.sum())
                weight_sum += float(weights.sum())
        model.train(was_training)
        return loss_sum / max(weight_sum, 1.0)

    def record_losses(self, model: Any, records: list[Record], *, batch_size: int) -> list[float]:
        """Mean loss of each record (membership-inference score before sign flip)."""
        import torch

        out: list[float] = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(records), batch_size):
                batch = self.to_device(self.collate([self.encode(r) for r in records[start:start + batch_size]]))
                losses, weights = self.example_losses(model, batch)
                out.extend((losses / weights.clamp(min=1)).tolist())
        return out

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
