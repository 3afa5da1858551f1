"""The runtime crosses into the sandbox: it must not import the portal side (Django, Celery, apps)."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "training" / "runtime"
FORBIDDEN_ROOTS = {"django", "celery", "kombu", "rest_framework", "portal", "governance", "egress"}


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(RUNTIME.parents[1]).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module)
    return names


def test_runtime_imports_nothing_from_the_portal_side():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for name in _imported_modules(path):
            root = name.split(".")[0]
            assert root not in FORBIDDEN_ROOTS, f"{path.name} imports {name}"
            if root == "training":
                assert name.startswith("training.runtime"), f"{path.name} imports {name}"


def test_training_package_init_stays_empty():
    assert (RUNTIME.parent / "__init__.py").read_text() == ""
