"""Recipe policy on the portal side: defaults and bounds, checked before a request or job exists.

The recipes themselves (reader, collator, loss…) live in training/runtime/recipes, inside the
sandbox; this module only decides which parameters a hospital allows.
"""

from __future__ import annotations

import re
from typing import Any

from governance.models import Modality
from governance.privacy_budget import default_delta
from training.runtime.recipes import modalities as runtime_modalities, recipe_class

DEFAULT_TARGET_MODULES = {
    "llama": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}
RECIPE_DEFAULTS: dict[str, Any] = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.05,
    "learning_rate": 2e-3,
    "epochs": 2,
    "batch_size": 8,
    "max_seq_length": 128,
    "seed": 1234,
    "quantization": "auto",
    "canaries": True,
    "dp": None,
}
# (low, high) inclusive, per numeric parameter.
RECIPE_BOUNDS: dict[str, tuple[float, float]] = {
    "rank": (1, 64),
    "alpha": (1, 256),
    "dropout": (0.0, 0.5),
    "learning_rate": (1e-6, 1e-2),
    "epochs": (1, 20),
    "batch_size": (1, 64),
    "max_seq_length": (16, 4096),
    "seed": (0, 2**31 - 1),
}
INTEGER_PARAMETERS = {"rank", "epochs", "batch_size", "max_seq_length", "seed"}
QUANTIZATIONS = ("auto", "nf4", "none")
# What this portal can train: exactly the modalities the sandbox runtime has a recipe for.
SUPPORTED_MODALITIES = frozenset(Modality(m) for m in runtime_modalities())
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Per-patient gradients of a mean token loss are small (norms well below 1 on LoRA weights): with
# clipping at 1.0 the noise, which scales with the clipping norm, drowned them (held-out loss did not
# move at ε 8 on a hundred patients); at 0.1 nearly every gradient is clipped and the signal survives.
DP_DEFAULT_MAX_GRAD_NORM = 0.1
DP_BOUNDS = {"target_epsilon": (0.1, 50.0), "delta": (1e-12, 1e-3), "max_grad_norm": (0.01, 100.0)}


def recipe_errors(recipe: dict, *, family: str | None) -> dict[str, str]:
    """Every problem with a requested recipe, keyed by parameter."""
    errors: dict[str, str] = {}
    allowed = set(RECIPE_DEFAULTS) | {"target_modules"}
    for key in set(recipe) - allowed:
        errors[f"recipe.{key}"] = f"Unknown recipe parameter; allowed: {', '.join(sorted(allowed))}."
    for key, (low, high) in RECIPE_BOUNDS.items():
        if key not in recipe:
            continue
        value = recipe[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors[f"recipe.{key}"] = "Must be a number."
        elif key in INTEGER_PARAMETERS and int(value) != value:
            errors[f"recipe.{key}"] = "Must be a whole number."
        elif not low <= value <= high:
            errors[f"recipe.{key}"] = f"Must be between {low:g} and {high:g} (hospital policy)."
    if "quantization" in recipe and recipe["quantization"] not in QUANTIZATIONS:
        errors["recipe.quantization"] = f"One of {', '.join(QUANTIZATIONS)}."
    if "canaries" in recipe and not isinstance(recipe["canaries"], bool):
        errors["recipe.canaries"] = "true or false."
    modules = recipe.get("target_modules")
    if modules is not None:
        if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and _MODULE_NAME.match(m) for m in modules):
            errors["recipe.target_modules"] = "A non-empty list of module names such as q_proj."
        elif any(m in {"lm_head", "embed_tokens", "wte", "wpe"} for m in modules):
            errors["recipe.target_modules"] = "Embeddings and the output head are never trained or released."
    dp = recipe.get("dp")
    if dp is not None:
        if not isinstance(dp, dict) or set(dp) - set(DP_BOUNDS):
            errors["recipe.dp"] = f"An object with {', '.join(DP_BOUNDS)}."
        else:
            for key, (low, high) in DP_BOUNDS.items():
                value = dp.get(key)
                if value is None and key == "target_epsilon":
                    errors["recipe.dp"] = "target_epsilon is required."
                elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high):
                    errors[f"recipe.dp.{key}"] = f"Must be between {low:g} and {high:g}."
    return errors


def resolve_recipe(recipe: dict, *, family: str, modality: str = Modality.TEXT, patients: int | None = None) -> dict:
    """The full recipe a job runs: the request's values over the defaults.

    A DP block gets its defaults too: δ well below 1/patients of the frozen cohort, clipping 1.0.

    LoRA targets, when the request names none: this portal's (smaller) choice for the text
    families above, else the runtime recipe's default for the model family.
    """
    runtime = recipe_class(modality)
    resolved = {**RECIPE_DEFAULTS, **recipe}
    resolved.setdefault("target_modules", None)
    if not resolved["target_modules"]:
        targets = DEFAULT_TARGET_MODULES.get(family) if modality == Modality.TEXT else None
        targets = targets or runtime.default_target_modules.get(family) or ("q_proj", "v_proj")
        resolved["target_modules"] = list(targets)
    if resolved["quantization"] == "auto" and not runtime.supports_quantization:
        resolved["quantization"] = "none"  # e.g. the diffusion UNet: full-precision LoRA even on a GPU worker
    if resolved["canaries"] and not runtime.can_plant_canaries:
        resolved["canaries"] = False  # canaries are planted text; this modality's audit probes otherwise
    if resolved.get("dp"):
        resolved["dp"] = {"delta": default_delta(patients or 1), "max_grad_norm": DP_DEFAULT_MAX_GRAD_NORM, **resolved["dp"]}
    return resolved
