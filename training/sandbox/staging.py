"""The code a sandbox sees: a per-job copy of training/runtime, never the repository."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RUNTIME_SOURCE = Path(__file__).resolve().parents[1] / "runtime"

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")


def stage_runtime_code(job_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> str:
    """Copy training/runtime into job_dir/code/training/runtime with an empty
    training/__init__.py, world-readable (the sandbox user is not the worker's user).

    Returns the host path of job_dir/code, to be mounted read-only at /code (the sandbox's
    PYTHONPATH has /code, so `python -m training.runtime` works). Re-staging replaces the copy.
    """
    src = Path(source) if source is not None else RUNTIME_SOURCE
    if not (src / "__init__.py").is_file():
        raise FileNotFoundError(f"{src} is not the training runtime package")
    code = Path(job_dir) / "code"
    if code.exists():
        shutil.rmtree(code)
    pkg = code / "training"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_bytes(b"")
    shutil.copytree(src, pkg / "runtime", ignore=_IGNORE, symlinks=False)
    for dirpath, dirnames, filenames in os.walk(code):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return str(code)
