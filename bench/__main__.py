"""`make bench`: run every benchmark and write its figures into BENCHMARKS.md.

Each bench/bench_*.py is run as its own process; everything it prints after the line
`----- markdown -----` becomes its section, headed with the machine and the date. Figures are
ratios against a baseline measured in the same run, because these machines are shared and noisy.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {
    "bench_cohort.py": "Cohort counting over a million-record index",
    "bench_validate.py": "Egress validation of a 512 MB adapter",
    "bench_training.py": "Training in the sandbox versus on the host",
    "bench_dp.py": "DP-SGD versus plain LoRA training",
}
MARKER = "----- markdown -----"


def machine() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu or platform.machine()}), {memory:.0f} GiB, Python {platform.python_version()}"


def section_of(output: str) -> str:
    return output.split(MARKER, 1)[1].strip() if MARKER in output else ""


def update(path: Path, title: str, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench`. Every figure is a ratio against a baseline measured in the same run.\n"
    heading = f"## {title}"
    block = f"{heading}\n\n{body}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text)


def main(argv: list[str]) -> int:
    selected = [name for name in BENCHES if not argv or any(arg in name for arg in argv)]
    failures = 0
    for name in selected:
        print(f"== {name}", flush=True)
        result = subprocess.run([sys.executable, str(ROOT / "bench" / name)], cwd=ROOT, capture_output=True, text=True)
        sys.stderr.write(result.stderr[-3000:])
        body = section_of(result.stdout)
        if result.returncode != 0 or not body:
            print(f"{name} failed (exit {result.returncode}); BENCHMARKS.md keeps its previous figures.")
            failures += 1
            continue
        stamp = f"*{datetime.date.today().isoformat()}, {machine()}.*"
        update(ROOT / "BENCHMARKS.md", BENCHES[name], f"{stamp}\n\n{body}")
        print(body)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
