"""The egress firewall: only a verified LoRA adapter leaves.

Django-free. ``validate_adapter`` checks a job's output directory; ``rewrite_adapter`` produces the
file that is released; ``build_adapter_config`` / ``build_model_card`` write the files the portal
generates. torch and transformers are imported only where needed (expected tensors, rewrite).
"""

from .expected import (
    ExpectedAdapter,
    ExpectedTensor,
    LoraRecipe,
    RecipeError,
    expected_adapter,
    expected_from_shapes,
    normalize_recipe,
)
from .identifiers import IdentifierError, IdentifierHit, IdentifierSet, expand_identifier
from .policy import ValidationPolicy
from .report import RuleVerdict, ValidationReport
from .rewrite import RewriteError, RewriteResult, build_adapter_config, build_model_card, rewrite_adapter
from .safetensors_strict import FormatError, ParsedHeader, TensorEntry, parse_bytes
from .validator import ADAPTER_FILE, validate_adapter, validate_file

__all__ = [
    "ADAPTER_FILE",
    "ExpectedAdapter",
    "ExpectedTensor",
    "FormatError",
    "IdentifierError",
    "IdentifierHit",
    "IdentifierSet",
    "LoraRecipe",
    "ParsedHeader",
    "RecipeError",
    "RewriteError",
    "RewriteResult",
    "RuleVerdict",
    "TensorEntry",
    "ValidationPolicy",
    "ValidationReport",
    "build_adapter_config",
    "build_model_card",
    "expand_identifier",
    "expected_adapter",
    "expected_from_shapes",
    "normalize_recipe",
    "parse_bytes",
    "rewrite_adapter",
    "validate_adapter",
    "validate_file",
]
