"""Read and check the job spec (docs/job-spec.md) with the standard library only.

The spec is checked before torch is imported, so a bad spec fails in well under a second with a
message that names the offending key. Unknown keys are refused too: a key the runtime does not
know means the portal and the runtime disagree about the contract, and silently ignoring it
(say, a ``dp`` block spelled differently) could train without the protection the request
approved.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
TASKS = ("train", "audit")
QUANTIZATIONS = ("auto", "nf4", "none")


class SpecError(ValueError):
    """The spec (or the data it points to) is unusable; the message says which key and why."""


@dataclass(frozen=True)
class CanarySpec:
    seed: int
    repeats: tuple[int, ...]
    per_repeat: int


@dataclass(frozen=True)
class DPSpec:
    target_epsilon: float
    delta: float
    max_grad_norm: float


@dataclass(frozen=True)
class RecipeSpec:
    target_modules: tuple[str, ...] | None  # None: the model family's default
    rank: int
    alpha: float
    dropout: float
    learning_rate: float
    epochs: int
    batch_size: int
    max_seq_length: int
    seed: int
    quantization: str
    canaries: CanarySpec | None
    dp: DPSpec | None


@dataclass(frozen=True)
class JobSpec:
    task: str
    job_id: str
    modality: str
    base_model_path: Path
    family: str
    data_dir: Path
    out_dir: Path
    adapter_path: Path | None
    recipe: RecipeSpec
    threads: int
    max_steps: int | None


_TOP_REQUIRED = ("schema_version", "task", "modality", "base_model", "data_dir", "out_dir", "recipe")
_TOP_OPTIONAL = ("job_id", "adapter_path", "threads", "max_steps")
_RECIPE_REQUIRED = (
    "rank", "alpha", "learning_rate", "epochs", "batch_size", "max_seq_length", "seed",
)
_RECIPE_OPTIONAL = ("target_modules", "dropout", "quantization", "canaries", "dp")


def load_spec(path: Path | str, *, expected_task: str | None = None) -> JobSpec:
    """Parse ``path`` into a :class:`JobSpec`; raise :class:`SpecError` on any problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"spec file {path} is not readable JSON: {exc.__class__.__name__}") from None
    spec = parse_spec(raw)
    if expected_task is not None and spec.task != expected_task:
        raise SpecError(f"spec.task is {spec.task!r} but the command is {expected_task!r}")
    return spec


def parse_spec(raw: Any) -> JobSpec:
    """Check a decoded spec object and build a :class:`JobSpec` from it."""
    obj = _object(raw, "spec")
    _check_keys(obj, "spec", _TOP_REQUIRED, _TOP_OPTIONAL)
    if obj["schema_version"] != SCHEMA_VERSION or isinstance(obj["schema_version"], bool):
        raise SpecError(f"spec.schema_version must be {SCHEMA_VERSION}")
    task = _choice(obj["task"], "spec.task", TASKS)
    # Which modalities exist is the recipe registry's business; here it only has to be a name.
    modality = _string(obj["modality"], "spec.modality")

    base = _object(obj["base_model"], "spec.base_model")
    _check_keys(base, "spec.base_model", ("path",), ("family",))
    adapter_path = None
    if task == "audit":
        if obj.get("adapter_path") is None:
            raise SpecError("spec.adapter_path is required for the audit task")
        adapter_path = _abs_path(obj["adapter_path"], "spec.adapter_path")
    elif obj.get("adapter_path") is not None:
        adapter_path = _abs_path(obj["adapter_path"], "spec.adapter_path")

    max_steps = obj.get("max_steps")
    return JobSpec(
        task=task,
        job_id=_string(obj.get("job_id", "local"), "spec.job_id"),
        modality=modality,
        base_model_path=_abs_path(base["path"], "spec.base_model.path"),
        family=_string(base.get("family", "llama"), "spec.base_model.family"),
        data_dir=_abs_path(obj["data_dir"], "spec.data_dir"),
        out_dir=_abs_path(obj["out_dir"], "spec.out_dir"),
        adapter_path=adapter_path,
        recipe=_parse_recipe(obj["recipe"]),
        threads=_int(obj.get("threads", 1), "spec.threads", low=1, high=256),
        max_steps=None if max_steps is None else _int(max_steps, "spec.max_steps", low=1),
    )


def _parse_recipe(raw: Any) -> RecipeSpec:
    obj = _object(raw, "spec.recipe")
    _check_keys(obj, "spec.recipe", _RECIPE_REQUIRED, _RECIPE_OPTIONAL)
    targets = obj.get("target_modules")
    if targets is not None:
        if not isinstance(targets, list) or not targets:
            raise SpecError("spec.recipe.target_modules must be a non-empty list of module names or null")
        targets = tuple(_module_name(t, "spec.recipe.target_modules") for t in targets)
    return RecipeSpec(
        target_modules=targets,
        rank=_int(obj["rank"], "spec.recipe.rank", low=1, high=1024),
        alpha=_number(obj["alpha"], "spec.recipe.alpha", low=0.0),
        dropout=_number(obj.get("dropout", 0.0), "spec.recipe.dropout", low=0.0, high=0.9),
        learning_rate=_number(obj["learning_rate"], "spec.recipe.learning_rate", low=1e-9, high=1.0),
        epochs=_int(obj["epochs"], "spec.recipe.epochs", low=1, high=10_000),
        batch_size=_int(obj["batch_size"], "spec.recipe.batch_size", low=1, high=4096),
        max_seq_length=_int(obj["max_seq_length"], "spec.recipe.max_seq_length", low=8, high=131_072),
        seed=_int(obj["seed"], "spec.recipe.seed", low=0, high=2**32 - 1),
        quantization=_choice(obj.get("quantization", "auto"), "spec.recipe.quantization", QUANTIZATIONS),
        canaries=_parse_canaries(obj.get("canaries")),
        dp=_parse_dp(obj.get("dp")),
    )


def _parse_canaries(raw: Any) -> CanarySpec | None:
    if raw is None:
        return None
    obj = _object(raw, "spec.recipe.canaries")
    _check_keys(obj, "spec.recipe.canaries", ("seed", "repeats", "per_repeat"), ())
    repeats = obj["repeats"]
    if not isinstance(repeats, list) or not repeats:
        raise SpecError("spec.recipe.canaries.repeats must be a non-empty list of integers")
    parsed = tuple(_int(r, "spec.recipe.canaries.repeats[]", low=1, high=10_000) for r in repeats)
    if len(set(parsed)) != len(parsed):
        raise SpecError("spec.recipe.canaries.repeats must not repeat a value")
    return CanarySpec(
        seed=_int(obj["seed"], "spec.recipe.canaries.seed", low=0, high=2**32 - 1),
        repeats=parsed,
        per_repeat=_int(obj["per_repeat"], "spec.recipe.canaries.per_repeat", low=1, high=1000),
    )


def _parse_dp(raw: Any) -> DPSpec | None:
    if raw is None:
        return None
    obj = _object(raw, "spec.recipe.dp")
    _check_keys(obj, "spec.recipe.dp", ("target_epsilon", "delta"), ("max_grad_norm",))
    return DPSpec(
        target_epsilon=_number(obj["target_epsilon"], "spec.recipe.dp.target_epsilon", low=1e-3, high=1e3),
        delta=_number(obj["delta"], "spec.recipe.dp.delta", low=1e-12, high=0.1),
        max_grad_norm=_number(obj.get("max_grad_norm", 0.1), "spec.recipe.dp.max_grad_norm", low=1e-6),
    )


# --- small typed checks; each names the key it failed on ---------------------------------------

def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a JSON object")
    return value


def _check_keys(obj: dict, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise SpecError(f"{where} is missing required key(s): {', '.join(missing)}")
    unknown = sorted(k for k in obj if k not in required and k not in optional)
    if unknown:
        # Key names come from the portal, not from patient data, so naming them is safe.
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise SpecError(f"{where} has unknown key(s): {shown}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise SpecError(f"{where} must be a non-empty string of at most 200 characters")
    return value


def _module_name(value: Any, where: str) -> str:
    name = _string(value, where)
    if not all(c.isalnum() or c in "._-" for c in name):
        raise SpecError(f"{where} entries must be module names (letters, digits, '.', '_', '-')")
    return name


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(f"{where} must be one of {', '.join(choices)}")
    return value


def _abs_path(value: Any, where: str) -> Path:
    text = _string_path(value, where)
    path = Path(text)
    if not path.is_absolute():
        raise SpecError(f"{where} must be an absolute path")
    return path


def _string_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        raise SpecError(f"{where} must be a path string")
    return value


def _int(value: Any, where: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer")
    _check_range(value, where, low, high)
    return value


def _number(value: Any, where: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number")
    _check_range(value, where, low, high)
    return float(value)


def _check_range(value: float, where: str, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise SpecError(f"{where} must be >= {low}")
    if high is not None and value > high:
        raise SpecError(f"{where} must be <= {high}")
