"""``python -m training.runtime {train,audit} SPEC.json`` — the sandbox entry point.

Exit status: 0 done; 2 the spec or the staged data is unusable (the message names the key or
file); 1 anything else. stderr is read by hospital staff only, and even so carries no record
text: errors name keys, files and line numbers, never content.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_SPEC = 0, 1, 2


def configure_environment() -> None:
    """Offline, quiet and reproducible, before transformers or torch are imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Deterministic cuBLAS; must be set before CUDA initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # The sandbox home is read-only; any cache the libraries insist on goes to the tmpfs.
    os.environ.setdefault("HF_HOME", str(Path(tempfile.gettempdir()) / "rapha-hf-home"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("train", "audit"))
    parser.add_argument("spec", type=Path, help="path of the job spec (JSON)")
    args = parser.parse_args(argv)
    configure_environment()

    from .spec import SpecError

    started = time.monotonic()
    try:
        spec = _checked_spec(args.spec, args.task)
        _quiet_libraries()
        import torch

        torch.set_num_threads(spec.threads)
        if spec.task == "train":
            from .train import run_train

            run_train(spec)
        else:
            from .audit import run_audit

            run_audit(spec)
    except SpecError as exc:
        print(f"rapha runtime: bad job: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    except Exception as exc:  # noqa: BLE001 - the process boundary: report, never hang or dump data
        print(f"rapha runtime: {args.task} failed: {exc.__class__.__name__}: {str(exc)[:300]}", file=sys.stderr)
        # Where it failed (files, lines, functions), without local variables or data.
        for frame in traceback.extract_tb(exc.__traceback__)[-6:]:
            print(f"  at {frame.filename}:{frame.lineno} in {frame.name}", file=sys.stderr)
        return EXIT_FAILED
    print(f"rapha runtime: {args.task} done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return EXIT_OK


def _checked_spec(path: Path, task: str):
    """Everything checkable without torch: the spec, the modality, the files it points to."""
    from .recipes import recipe_class
    from .recipes.base import SPLITS
    from .spec import SpecError, load_spec

    spec = load_spec(path, expected_task=task)
    recipe = recipe_class(spec.modality)(spec, device=None)
    for split in SPLITS:
        recipe.read_split(split)  # parses every staged line: bad data fails here, in a second
    if not (spec.base_model_path / "config.json").is_file():
        raise SpecError(f"base model not found: no config.json in {spec.base_model_path}")
    if spec.task == "audit" and not spec.adapter_path.is_file():
        raise SpecError(f"adapter file not found: {spec.adapter_path}")
    return spec


def _quiet_libraries() -> None:
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # bitsandbytes (imported by peft) looks for optional CPU kernels on the Hub and warns when
    # offline mode stops it; that is expected in a sandbox without network.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)
    # Library deprecation chatter is noise in a log that staff read for real failures.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Opacus' RDP bound search says this on nearly every call; it is advice, not a fault.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


if __name__ == "__main__":
    sys.exit(main())
