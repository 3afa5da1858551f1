"""Extension points for later stages, so that governance never imports them.

`training` registers a validator for the base model and recipe of a request, and may add
approval checks (a privacy budget); governance calls whatever is registered.
"""

from __future__ import annotations

from typing import Callable

# (modality, base_model_name, recipe, requested_epsilon) -> {field: error}
request_validators: list[Callable[..., dict[str, str]]] = []
# (request, datasets) -> [(name, passed, detail)]
approval_checks: list[Callable[..., list[tuple[str, bool, str]]]] = []
