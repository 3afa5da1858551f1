"""Write ``progress.jsonl``: numbers only, one flushed line at a time.

Every line is checked against the same schema the portal applies, so a bug here fails loudly in
the sandbox instead of being silently dropped on the other side.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO

from .schema import validate_progress_line

PROGRESS_FILE = "progress.jsonl"
# The DP accounting facts are written whole: anyone can recompute ε from them with Opacus'
# accountant and must get exactly the recorded figure.
EXACT_KEYS = frozenset({"epsilon", "noise_multiplier", "sample_rate"})
MAX_LINES = 200  # enough to draw a curve; keeps the file small for long jobs


class ProgressWriter:
    def __init__(self, out_dir: Path, *, total_steps: int) -> None:
        self._file: IO[str] = open(out_dir / PROGRESS_FILE, "w", encoding="utf-8")
        self.total_steps = total_steps
        self.every = max(1, math.ceil(total_steps / MAX_LINES))
        self._started = time.monotonic()
        self._tokens = 0

    def step(self, *, step: int, epoch: float, loss: float, tokens: int, **extra: float) -> None:
        """Count ``tokens`` for this step and write a line every ``self.every`` steps (and the last)."""
        self._tokens += tokens
        if step % self.every and step != self.total_steps:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        remaining = max(self.total_steps - step, 0)
        self.write(
            step=step,
            total_steps=self.total_steps,
            epoch=epoch,
            loss=loss,
            tokens_per_second=self._tokens / elapsed,
            eta_seconds=elapsed / max(step, 1) * remaining,
            **extra,
        )

    def write(self, **values: float) -> None:
        line = {key: _plain_number(value, exact=key in EXACT_KEYS) for key, value in values.items()}
        if validate_progress_line(line) is None:
            raise ValueError(f"progress line fails the schema (keys: {sorted(line)})")
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _plain_number(value: float, *, exact: bool = False) -> int | float:
    """Round floats to 6 significant digits (exact: keep them whole); keep ints (step counts, flags) as ints."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    if exact or not math.isfinite(value):
        return value
    return float(f"{value:.6g}")
