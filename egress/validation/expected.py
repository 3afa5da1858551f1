"""The exact set of tensors a LoRA adapter may hold, derived from the base model and the recipe.

Nothing here is a per-family table. The base model's class (``config.json`` ``architectures`` for
transformers models, ``_class_name`` for diffusers models such as ``UNet2DModel``) is instantiated
on the ``meta`` device (no weights, no memory), its modules are enumerated, and the
recipe's ``target_modules`` are matched with peft's own rule (a list entry matches a module whose
dotted name equals it or ends with ``.<entry>``; a string is ``re.fullmatch``-ed, ``"all-linear"``
means every Linear/Conv1D but the output embedding). Each matched module gives the keys peft's
``save_pretrained`` writes (``base_model.model.<module>...``):

=================  ===========================================  =========================
module             key suffix                                   shape
=================  ===========================================  =========================
nn.Linear          ``.lora_A.weight`` / ``.lora_B.weight``      ``[r, in]`` / ``[out, r]``
Conv1D (GPT-2)     same; its weight is stored ``(in, out)``     ``[r, in]`` / ``[out, r]``
nn.Embedding       ``.lora_embedding_A`` / ``.lora_embedding_B``  ``[r, num]`` / ``[dim, r]``
nn.Conv2d          ``.lora_A.weight`` / ``.lora_B.weight``      ``[r, in, kh, kw]`` / ``[out, r, 1, 1]``
use_dora           ``.lora_magnitude_vector``                   ``[out]`` (``[dim]`` for embeddings,
                                                                ``[1, out, 1, 1]`` for Conv2d)
lora_bias          ``.lora_B.bias``                             ``[out]`` (not for embeddings)
=================  ===========================================  =========================

Grouped-query attention needs no special case: k/v projections simply have a smaller ``out``.
Embedding targets are refused unless the recipe sets ``embedding_lora``; a grouped Conv2d (peft
shapes its lora_B by the groups and cannot merge it) and any other matched module type (a
container, a Conv1d/Conv3d, attention) are refused, as peft would refuse them or as we cannot
vouch for their keys. Base weights (``base_layer``, ``modules_to_save``, embeddings, ``lm_head``) are
never in the set.

The module enumeration is cached by (resolved model dir, sha256 of config.json). torch and
transformers are imported lazily, so the rest of the validator runs without them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

PEFT_PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"

KIND_LINEAR = "linear"
KIND_CONV1D = "conv1d"
KIND_EMBEDDING = "embedding"
KIND_CONV2D = "conv2d"
KIND_OTHER = "other"

# tensor roles
ROLE_A = "lora_A"
ROLE_B = "lora_B"
ROLE_B_BIAS = "lora_B_bias"
ROLE_MAGNITUDE = "dora_magnitude"
ROLE_EMB_A = "lora_embedding_A"
ROLE_EMB_B = "lora_embedding_B"


class RecipeError(ValueError):
    """The recipe cannot be applied to the base model (or the base model cannot be read)."""


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    kind: str  # linear | conv1d | embedding | conv2d | other
    type_name: str
    in_features: int = 0  # num_embeddings for embeddings; in_channels for Conv2d
    out_features: int = 0  # embedding_dim for embeddings; out_channels for Conv2d
    is_output_embedding: bool = False
    kernel_size: tuple[int, ...] = ()  # Conv2d only
    groups: int = 1  # Conv2d only


@dataclass(frozen=True)
class BaseModelModules:
    architecture: str
    config_sha256: str
    modules: tuple[ModuleInfo, ...]


@dataclass(frozen=True)
class LoraRecipe:
    target_modules: tuple[str, ...] | str
    rank: int
    alpha: float
    dropout: float
    use_dora: bool = False
    lora_bias: bool = False
    embedding_lora: bool = False
    use_rslora: bool = False

    def to_dict(self) -> dict[str, Any]:
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return {
            "target_modules": targets,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "use_dora": self.use_dora,
            "lora_bias": self.lora_bias,
            "embedding_lora": self.embedding_lora,
            "use_rslora": self.use_rslora,
        }


@dataclass(frozen=True)
class ExpectedTensor:
    name: str
    shape: tuple[int, ...]
    role: str
    module: str


@dataclass(frozen=True)
class ExpectedAdapter:
    architecture: str
    recipe: LoraRecipe
    tensors: Mapping[str, ExpectedTensor]
    target_modules: tuple[str, ...]  # the matched module names
    fan_in_fan_out: bool  # True when the targets are Conv1D (GPT-2 style)

    @property
    def total_elements(self) -> int:
        total = 0
        for t in self.tensors.values():
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total

    def summary(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "tensors": len(self.tensors),
            "target_modules": len(self.target_modules),
            "elements": self.total_elements,
            "fan_in_fan_out": self.fan_in_fan_out,
        }


# ---------------------------------------------------------------------------------------------
# recipe


_RECIPE_BOOLS = ("use_dora", "lora_bias", "embedding_lora", "use_rslora")


def normalize_recipe(recipe: Mapping[str, Any]) -> LoraRecipe:
    """Strictly read the LoRA part of an approved recipe (other keys, e.g. learning_rate, are ignored)."""
    if not isinstance(recipe, Mapping):
        raise RecipeError("recipe must be a mapping")
    targets = recipe.get("target_modules")
    if isinstance(targets, str):
        if not targets:
            raise RecipeError("target_modules is empty")
        if targets.lower() == ALL_LINEAR:
            targets = ALL_LINEAR
        else:
            try:
                re.compile(targets)
            except re.error:
                raise RecipeError("target_modules is neither a list nor a valid regular expression") from None
    elif isinstance(targets, (list, tuple)) and targets:
        if not all(isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9_.]+", t) for t in targets):
            raise RecipeError("every target module must be a module name of [A-Za-z0-9_.]")
        targets = tuple(dict.fromkeys(targets))
    else:
        raise RecipeError("target_modules must be a non-empty list of module names or a string")
    rank = recipe.get("rank", recipe.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or not (1 <= rank <= 4096):
        raise RecipeError("rank must be an integer between 1 and 4096")
    alpha = recipe.get("alpha", recipe.get("lora_alpha", rank))
    dropout = recipe.get("dropout", recipe.get("lora_dropout", 0.0))
    for label, value in (("alpha", alpha), ("dropout", dropout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{label} must be a number")
    if not 0.0 <= float(dropout) < 1.0:
        raise RecipeError("dropout must be in [0, 1)")
    flags = {}
    for key in _RECIPE_BOOLS:
        value = recipe.get(key, False)
        if value is None:
            value = False
        if not isinstance(value, bool):
            raise RecipeError(f"{key} must be a boolean")
        flags[key] = value
    # peft options that would put base weights or per-layer shapes into the file: refused.
    if recipe.get("bias", "none") not in ("none", None):
        raise RecipeError("bias other than 'none' would release base-model biases")
    for key in ("modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform", "target_parameters", "trainable_token_indices"):
        if recipe.get(key):
            raise RecipeError(f"recipe option {key} is not supported by the egress validator")
    return LoraRecipe(target_modules=targets, rank=rank, alpha=float(alpha), dropout=float(dropout), **flags)


# ---------------------------------------------------------------------------------------------
# base model enumeration (meta device, cached)


_CACHE: dict[tuple[str, str], BaseModelModules] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def base_model_modules(base_model_dir: Path | str) -> BaseModelModules:
    directory = Path(base_model_dir).resolve()
    config_path = directory / "config.json"
    try:
        config_bytes = config_path.read_bytes()
    except OSError:
        raise RecipeError("base model directory has no readable config.json") from None
    digest = hashlib.sha256(config_bytes).hexdigest()
    key = (str(directory), digest)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    result = _enumerate(directory, digest)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = result
    return result


def _enumerate(directory: Path, digest: str) -> BaseModelModules:
    import torch  # noqa: PLC0415 - heavy, only here
    from transformers.pytorch_utils import Conv1D  # noqa: PLC0415

    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise RecipeError("base model config.json is not readable JSON") from None
    if not isinstance(raw, dict):
        raise RecipeError("base model config.json is not a JSON object")
    # diffusers writes "_class_name" and no "architectures"; transformers writes "architectures".
    if "_class_name" in raw and "architectures" not in raw:
        architecture, model = _instantiate_diffusers(directory, raw)
    else:
        architecture, model = _instantiate_transformers(directory)

    output_embedding = None
    try:
        output_embedding = model.get_output_embeddings()
    except Exception:  # noqa: BLE001 - models without an LM head
        output_embedding = None

    modules: list[ModuleInfo] = []
    for name, module in model.named_modules():
        if not name:
            continue
        type_name = type(module).__name__
        is_out = module is output_embedding
        if isinstance(module, Conv1D):
            n_in, n_out = (int(d) for d in module.weight.shape)  # Conv1D stores (in, out)
            modules.append(ModuleInfo(name, KIND_CONV1D, type_name, n_in, n_out, is_out))
        elif isinstance(module, torch.nn.Linear):
            modules.append(ModuleInfo(name, KIND_LINEAR, type_name, int(module.in_features), int(module.out_features), is_out))
        elif isinstance(module, torch.nn.Embedding):
            modules.append(ModuleInfo(name, KIND_EMBEDDING, type_name, int(module.num_embeddings), int(module.embedding_dim), is_out))
        elif type(module) is torch.nn.Conv2d:  # exactly Conv2d: peft shapes other convolutions differently
            modules.append(ModuleInfo(name, KIND_CONV2D, type_name, int(module.in_channels), int(module.out_channels), is_out,
                                      kernel_size=tuple(int(k) for k in module.kernel_size), groups=int(module.groups)))
        else:
            modules.append(ModuleInfo(name, KIND_OTHER, type_name))
    del model
    return BaseModelModules(architecture=architecture, config_sha256=digest, modules=tuple(modules))


def _instantiate_transformers(directory: Path) -> tuple[str, Any]:
    """The transformers model class named by ``architectures``, built from the config on ``meta``."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415
    from transformers import AutoConfig  # noqa: PLC0415

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read the config is a refusal
        raise RecipeError(f"base model config could not be read ({type(exc).__name__})") from None
    architectures = getattr(config, "architectures", None) or []
    if len(architectures) != 1 or not isinstance(architectures[0], str):
        raise RecipeError("base model config.json must name exactly one architecture")
    architecture = architectures[0]
    model_class = getattr(transformers, architecture, None)
    if model_class is None or not isinstance(model_class, type) or not hasattr(model_class, "_from_config"):
        raise RecipeError(f"architecture {architecture} is not a transformers model class")
    try:
        with torch.device("meta"):
            model = model_class._from_config(config)
    except Exception as exc:  # noqa: BLE001
        raise RecipeError(f"architecture {architecture} could not be instantiated ({type(exc).__name__})") from None
    return architecture, model


def _instantiate_diffusers(directory: Path, raw: dict) -> tuple[str, Any]:
    """The diffusers model class named by ``_class_name`` (a ModelMixin: a UNet, a VAE, a
    transformer; never a pipeline or a scheduler), built from the config on ``meta``."""
    import torch  # noqa: PLC0415

    class_name = raw.get("_class_name")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise RecipeError("base model config.json _class_name must name a diffusers model class")
    try:
        import diffusers  # noqa: PLC0415
        from diffusers import ModelMixin  # noqa: PLC0415
    except ImportError:
        raise RecipeError("base model is a diffusers model and diffusers is not installed") from None
    model_class = getattr(diffusers, class_name, None)
    if not isinstance(model_class, type) or not issubclass(model_class, ModelMixin):
        raise RecipeError(f"{class_name} is not a diffusers model class")
    try:
        config = model_class.load_config(str(directory), local_files_only=True)
        with torch.device("meta"):
            model = model_class.from_config(config)
    except Exception as exc:  # noqa: BLE001
        raise RecipeError(f"{class_name} could not be instantiated ({type(exc).__name__})") from None
    return class_name, model


# ---------------------------------------------------------------------------------------------
# matching


def _matches(recipe: LoraRecipe, name: str) -> bool:
    targets = recipe.target_modules
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith("." + t) for t in targets)


def expected_from_modules(base: BaseModelModules, recipe: LoraRecipe | Mapping[str, Any]) -> ExpectedAdapter:
    if not isinstance(recipe, LoraRecipe):
        recipe = normalize_recipe(recipe)
    r = recipe.rank
    if recipe.target_modules == ALL_LINEAR:
        matched = [m for m in base.modules if m.kind in (KIND_LINEAR, KIND_CONV1D) and not m.is_output_embedding]
    else:
        matched = [m for m in base.modules if _matches(recipe, m.name)]
    if not matched:
        raise RecipeError("no module of the base model matches target_modules")
    tensors: dict[str, ExpectedTensor] = {}

    def add(module: ModuleInfo, suffix: str, shape: tuple[int, ...], role: str) -> None:
        key = f"{PEFT_PREFIX}{module.name}.{suffix}"
        tensors[key] = ExpectedTensor(name=key, shape=shape, role=role, module=module.name)

    conv1d = False
    for m in matched:
        if m.kind in (KIND_LINEAR, KIND_CONV1D):
            conv1d |= m.kind == KIND_CONV1D
            add(m, "lora_A.weight", (r, m.in_features), ROLE_A)
            add(m, "lora_B.weight", (m.out_features, r), ROLE_B)
            if recipe.lora_bias:
                add(m, "lora_B.bias", (m.out_features,), ROLE_B_BIAS)
            if recipe.use_dora:
                add(m, "lora_magnitude_vector", (m.out_features,), ROLE_MAGNITUDE)
        elif m.kind == KIND_EMBEDDING:
            if not recipe.embedding_lora:
                raise RecipeError(f"target {m.name} is an embedding and the recipe does not enable embedding LoRA")
            if recipe.lora_bias:
                raise RecipeError(f"lora_bias is not supported for the embedding target {m.name}")
            add(m, "lora_embedding_A", (r, m.in_features), ROLE_EMB_A)
            add(m, "lora_embedding_B", (m.out_features, r), ROLE_EMB_B)
            if recipe.use_dora:
                add(m, "lora_magnitude_vector", (m.out_features,), ROLE_MAGNITUDE)
        elif m.kind == KIND_CONV2D:
            if m.groups != 1:
                raise RecipeError(f"target {m.name} is a grouped Conv2d (groups={m.groups}), which the validator does not support")
            add(m, "lora_A.weight", (r, m.in_features, *m.kernel_size), ROLE_A)
            add(m, "lora_B.weight", (m.out_features, r, 1, 1), ROLE_B)
            if recipe.lora_bias:
                add(m, "lora_B.bias", (m.out_features,), ROLE_B_BIAS)
            if recipe.use_dora:
                add(m, "lora_magnitude_vector", (1, m.out_features, 1, 1), ROLE_MAGNITUDE)
        else:
            raise RecipeError(f"target {m.name} is a {m.type_name}, which the validator does not support")
    return ExpectedAdapter(
        architecture=base.architecture,
        recipe=recipe,
        tensors=dict(sorted(tensors.items())),
        target_modules=tuple(m.name for m in matched),
        fan_in_fan_out=conv1d,
    )


def expected_adapter(base_model_dir: Path | str, recipe: LoraRecipe | Mapping[str, Any]) -> ExpectedAdapter:
    """The tensors (name -> shape) that peft writes for ``recipe`` on the model in ``base_model_dir``."""
    if not isinstance(recipe, LoraRecipe):
        recipe = normalize_recipe(recipe)
    return expected_from_modules(base_model_modules(base_model_dir), recipe)


def expected_from_shapes(shapes: Mapping[str, Iterable[int]], *, architecture: str = "custom") -> ExpectedAdapter:
    """An expected set given directly as name -> shape (benchmarks, and tests of the file rules)."""
    tensors = {
        name: ExpectedTensor(name=name, shape=tuple(int(d) for d in shape), role="given", module="")
        for name, shape in shapes.items()
    }
    recipe = LoraRecipe(target_modules=(), rank=0, alpha=0.0, dropout=0.0)
    return ExpectedAdapter(architecture=architecture, recipe=recipe, tensors=tensors, target_modules=(), fan_in_fan_out=False)


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
