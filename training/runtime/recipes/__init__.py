"""Recipe registry, keyed by modality.

A new modality registers its :class:`Recipe` subclass here with ``@register``; the shared loop
finds it through :func:`recipe_class`. Recipes import torch/transformers lazily inside methods,
so looking one up (to check a spec) stays cheap.
"""

from __future__ import annotations

from ..spec import SpecError
from .base import Record, Recipe

_REGISTRY: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    if cls.modality in _REGISTRY:
        raise ValueError(f"modality {cls.modality!r} registered twice")
    _REGISTRY[cls.modality] = cls
    return cls


def recipe_class(modality: str) -> type[Recipe]:
    try:
        return _REGISTRY[modality]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise SpecError(f"unknown modality {modality!r} (this runtime has: {known})") from None


def modalities() -> list[str]:
    return sorted(_REGISTRY)


# Importing a recipe module registers it.
from . import text  # noqa: E402,F401
from . import diffusion  # noqa: E402,F401
from . import vision_language  # noqa: E402,F401
from . import speech  # noqa: E402,F401
from . import molecules  # noqa: E402,F401

__all__ = ["Record", "Recipe", "modalities", "recipe_class", "register"]
