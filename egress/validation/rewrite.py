"""Rewrite a validated adapter with the pinned safetensors writer, and write the portal's own
adapter_config.json and model card.

``rewrite_adapter`` validates the source, reads its tensors through the strict parser's offsets,
optionally rounds them to BF16 (policy), writes a new file with ``safetensors.torch.save_file`` and
``{"format": "pt"}`` as the only metadata, validates the new file with the same rules, and only then
moves it into place. No byte of the source header is copied: the writer builds a new one.
The rewrite holds the adapter's tensors in memory (about the file size; half with BF16 rounding).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .expected import ExpectedAdapter, LoraRecipe, expected_adapter, normalize_recipe
from .identifiers import IdentifierSet
from .policy import ValidationPolicy
from .report import ValidationReport
from .safetensors_strict import read_header_fd
from .validator import open_regular_file, validate_file

_TORCH_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


class RewriteError(Exception):
    """The adapter was not rewritten. ``report`` is the validation report that refused it, if any."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class RewriteResult:
    path: Path
    sha256: str
    size: int
    tensors: int
    source_dtypes: list[str]
    dtypes: list[str]
    rounded_to_bf16: bool
    source_report: ValidationReport
    report: ValidationReport  # validation of the rewritten file
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "tensors": self.tensors,
            "source_dtypes": self.source_dtypes,
            "dtypes": self.dtypes,
            "rounded_to_bf16": self.rounded_to_bf16,
            "source_report": self.source_report.to_dict(),
            "report": self.report.to_dict(),
        }


def rewrite_adapter(
    src: Path | str,
    dst: Path | str,
    *,
    base_model_dir: Path | str | None = None,
    recipe: Mapping[str, Any] | LoraRecipe | None = None,
    expected: ExpectedAdapter | None = None,
    identifiers: Iterable[Any] | IdentifierSet | None,
    policy: ValidationPolicy | None = None,
) -> RewriteResult:
    """Validate ``src`` (a safetensors file), rewrite it to ``dst``, validate ``dst``.

    Give either ``expected`` or both ``base_model_dir`` and ``recipe``. Raises RewriteError (with
    the refusing report when there is one) on any failure; ``dst`` is then left untouched.
    """
    import torch  # noqa: PLC0415 - heavy, only here
    from safetensors.torch import save_file  # noqa: PLC0415

    policy = policy or ValidationPolicy()
    src, dst = Path(src), Path(dst)
    try:
        if expected is None:
            if base_model_dir is None or recipe is None:
                raise RewriteError("give expected, or base_model_dir and recipe")
            expected = expected_adapter(base_model_dir, recipe)
        needles = identifiers
        if identifiers is not None and not isinstance(identifiers, IdentifierSet):
            needles = IdentifierSet.build(identifiers, min_length=policy.min_identifier_length)
    except RewriteError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed
        raise RewriteError(f"rewrite refused: {type(exc).__name__}: {exc}") from None

    source_report = validate_file(src, expected=expected, identifiers=needles, policy=policy)
    if not source_report.accepted:
        raise RewriteError("the source adapter was rejected: " + "; ".join(source_report.reasons()), source_report)

    tmp_path: Path | None = None
    try:
        fd = open_regular_file(src)
        try:
            header = read_header_fd(fd, os.fstat(fd).st_size, policy)
            tensors: dict[str, Any] = {}
            source_dtypes = sorted({t.dtype for t in header.tensors})
            for entry in header.tensors:
                raw = bytearray(os.pread(fd, entry.nbytes, header.data_start + entry.start))
                if len(raw) != entry.nbytes:
                    raise RewriteError("the source adapter changed while it was rewritten")
                tensor = torch.frombuffer(raw, dtype=getattr(torch, _TORCH_DTYPES[entry.dtype])).reshape(entry.shape)
                if policy.round_to_bf16:
                    tensor = tensor.to(torch.bfloat16)
                tensors[entry.name] = tensor
        finally:
            os.close(fd)
        if set(tensors) != set(expected.tensors):
            raise RewriteError("the source adapter changed while it was rewritten")
        dst.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".rewrite-", suffix=".safetensors", dir=dst.parent)
        os.close(handle)
        tmp_path = Path(name)
        save_file(tensors, str(tmp_path), metadata={"format": "pt"})
        del tensors
        report = validate_file(tmp_path, expected=expected, identifiers=needles, policy=policy)
        if not report.accepted:
            raise RewriteError("the rewritten adapter was rejected: " + "; ".join(report.reasons()), report)
        check = open_regular_file(tmp_path)
        try:
            out_header = read_header_fd(check, os.fstat(check).st_size, policy)
        finally:
            os.close(check)
        dtypes = sorted({t.dtype for t in out_header.tensors})
        if policy.round_to_bf16 and dtypes != ["BF16"]:
            raise RewriteError("the rewritten adapter is not BF16 as the policy requires", report)
        digest, size = _sha256_file(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dst)
        tmp_path = None
    except RewriteError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed
        raise RewriteError(f"rewrite failed: {type(exc).__name__}") from None
    finally:
        if tmp_path is not None:
            try:
                tmp_path.unlink()
            except OSError:
                pass
    return RewriteResult(
        path=dst,
        sha256=digest,
        size=size,
        tensors=len(out_header.tensors),
        source_dtypes=source_dtypes,
        dtypes=dtypes,
        rounded_to_bf16=policy.round_to_bf16,
        source_report=source_report,
        report=report,
    )


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


# ---------------------------------------------------------------------------------------------
# adapter_config.json and README.md, written by the portal


def _task_type(architecture: str) -> str | None:
    if architecture.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def build_adapter_config(
    recipe: Mapping[str, Any] | LoraRecipe,
    *,
    base_model_name: str,
    expected: ExpectedAdapter,
    task_type: str | None = None,
) -> dict[str, Any]:
    """The adapter_config.json peft needs to load the released adapter, from the approved recipe
    and the registry's public base-model name (never the sandbox's file)."""
    if not isinstance(recipe, LoraRecipe):
        recipe = normalize_recipe(recipe)
    if not isinstance(base_model_name, str) or not base_model_name or len(base_model_name) > 200:
        raise ValueError("base_model_name must be a non-empty string of at most 200 characters")
    targets: Any = recipe.target_modules if isinstance(recipe.target_modules, str) else sorted(recipe.target_modules)
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model_name,
        "r": recipe.rank,
        "lora_alpha": recipe.alpha,
        "lora_dropout": recipe.dropout,
        "target_modules": targets,
        "bias": "none",
        "use_dora": recipe.use_dora,
        "lora_bias": recipe.lora_bias,
        "use_rslora": recipe.use_rslora,
        "fan_in_fan_out": expected.fan_in_fan_out,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    task = task_type if task_type is not None else _task_type(expected.architecture)
    if task is not None:
        config["task_type"] = task
    return config


def _cell(value: Any) -> str:
    text = str(value)
    return " ".join(text.replace("|", "/").split())[:200]


def build_model_card(
    recipe: Mapping[str, Any] | LoraRecipe,
    *,
    base_model_name: str,
    expected: ExpectedAdapter,
    adapter_sha256: str | None = None,
    rounded_to_bf16: bool = False,
    facts: Mapping[str, Any] | None = None,
) -> str:
    """README.md for a release: the recipe, the base model, the checks; ``facts`` are extra
    portal-provided key/value lines (release id, organisation, DP epsilon, ...)."""
    if not isinstance(recipe, LoraRecipe):
        recipe = normalize_recipe(recipe)
    targets = recipe.target_modules if isinstance(recipe.target_modules, str) else ", ".join(sorted(recipe.target_modules))
    rows = [
        ("Base model", base_model_name),
        ("Architecture", expected.architecture),
        ("Method", "DoRA" if recipe.use_dora else "LoRA"),
        ("Rank", recipe.rank),
        ("Alpha", f"{recipe.alpha:g}"),
        ("Dropout", f"{recipe.dropout:g}"),
        ("Target modules", targets),
        ("Embedding LoRA", "yes" if recipe.embedding_lora else "no"),
        ("LoRA bias", "yes" if recipe.lora_bias else "no"),
        ("Tensors", len(expected.tensors)),
        ("Parameters", expected.total_elements),
        ("Stored as", "bfloat16 (rounded at release)" if rounded_to_bf16 else "as trained"),
    ]
    if adapter_sha256:
        rows.append(("adapter_model.safetensors sha256", adapter_sha256))
    for key, value in (facts or {}).items():
        rows.append((key, value))
    lines = [
        f"# LoRA adapter for {_cell(base_model_name)}",
        "",
        "Trained inside the hospital's compute-to-data sandbox on an approved cohort. The adapter file was",
        "validated byte by byte (strict safetensors parsing, exact tensor set, finite bounded values, no",
        "patient identifiers, no text) and rewritten by the portal; this card and adapter_config.json were",
        "generated by the portal from the approved recipe.",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, \"path/to/this/folder\")",
        "```",
        "",
        "Verify the release signature first: `python -m egress.verify RELEASE.zip --public-key KEY.pem`.",
        "",
    ]
    return "\n".join(lines)
