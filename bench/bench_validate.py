"""Benchmark of the egress validator against `sha256sum` on the same file.

    .venv/bin/python bench/bench_validate.py [--size-mb 512] [--patients 2000] [--workdir DIR] [--keep]

1. Derives the expected tensor set of a Llama-7B-shaped base model (hidden 4096, 32 layers,
   grouped-query attention with 8 kv heads, all seven projections) on the meta device, with the
   rank chosen so the F32 adapter is about --size-mb MB, and writes a trained-looking adapter with
   the safetensors writer (lora_A ~ U(+-1/sqrt(in)), lora_B ~ N(0, 2e-3)). A second, 1/8-size
   adapter shows that memory does not grow with the file.
2. Times `sha256sum FILE` (best of 3, page cache warm) in the same run.
3. Validates each file in a fresh child process that imports no torch (only numpy,
   pyahocorasick and egress.validation): the file rules against the expected set and the
   identifiers of a synthetic cohort (--patients patients x MRN, name, birth date, phone,
   national id). Reports the best of 3 wall times of the file pass, the identifier-set build time,
   the child's peak RSS (ru_maxrss) and its RSS just before validating.

Prints a JSON summary and a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FIRST = ["James", "Mary", "Oliver", "Amelia", "Mohammed", "Fatima", "Jürgen", "Chloé", "Wei", "Aiko", "Nia", "Lars"]
LAST = ["Smith", "Jones", "Müller", "Dubois", "Okafor", "Nakamura", "Kowalski", "Haddad", "Ivanova", "Garcia"]


def cohort(patients: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(patients):
        out.append(("mrn", f"MRN{rng.randrange(10**7):07d}"))
        out.append(("name", f"{rng.choice(FIRST)} {rng.choice(LAST)}{i}"))
        out.append(("birth_date", datetime.date(1930, 1, 1).fromordinal(datetime.date(1930, 1, 1).toordinal() + rng.randrange(30000)).isoformat()))
        out.append(("phone", f"+44 7{rng.randrange(10**3):03d} {rng.randrange(10**6):06d}"))
        out.append(("national_id", f"{rng.randrange(10**3):03d} {rng.randrange(10**3):03d} {rng.randrange(10**4):04d}"))
    return out


# --------------------------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> None:
    import numpy  # noqa: F401 - counted in the baseline

    from egress.validation import IdentifierSet, ValidationPolicy, expected_from_shapes, validate_file

    shapes = json.loads(Path(args.shapes).read_text())
    expected = expected_from_shapes(shapes)
    policy = ValidationPolicy()
    t0 = time.perf_counter()
    needles = IdentifierSet.build(cohort(args.patients), min_length=policy.min_identifier_length)
    build_s = time.perf_counter() - t0
    rss_before = _rss_now_mb()
    times = []
    report = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        report = validate_file(args.file, expected=expected, identifiers=needles, policy=policy)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "accepted": report.accepted,
        "reasons": report.reasons(),
        "seconds": times,
        "needle_build_s": build_s,
        "needles": needles.needles,
        "windows": report.verdict("identifiers").figures.get("windows_checked"),
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "torch_imported": "torch" in sys.modules,
    }))


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------------------------- parent


def make_adapter(workdir: Path, size_mb: int, name: str) -> tuple[Path, Path, int]:
    import numpy as np
    from safetensors.numpy import save_file
    from transformers import LlamaConfig

    from egress.validation import expected_adapter

    base = workdir / "base"
    if not (base / "config.json").exists():
        config = LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096,
        )
        config.architectures = ["LlamaForCausalLM"]
        config.save_pretrained(base)
    per_rank = sum(s[0] * s[1] for s in _shapes(base, 1).values()) * 4
    rank = max(1, round(size_mb * 2**20 / per_rank))
    t0 = time.perf_counter()
    expected = expected_adapter(base, {"target_modules": TARGETS, "rank": rank, "alpha": 2 * rank, "dropout": 0.0})
    derive_s = time.perf_counter() - t0
    shapes = {n: list(t.shape) for n, t in expected.tensors.items()}
    rng = np.random.default_rng(0)
    tensors = {}
    for n, shape in shapes.items():
        if ".lora_A." in n:
            bound = 1 / np.sqrt(shape[1])
            tensors[n] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        else:
            tensors[n] = (rng.standard_normal(size=shape, dtype=np.float32) * 2e-3)
    path = workdir / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    del tensors
    shapes_path = workdir / f"{name}.shapes.json"
    shapes_path.write_text(json.dumps(shapes))
    print(f"# {path.name}: rank {rank}, {len(shapes)} tensors, {path.stat().st_size / 2**20:.1f} MiB; expected set derived in {derive_s:.2f} s", flush=True)
    return path, shapes_path, rank


def _shapes(base: Path, rank: int) -> dict:
    from egress.validation import expected_adapter

    return {n: t.shape for n, t in expected_adapter(base, {"target_modules": TARGETS, "rank": rank, "alpha": 1, "dropout": 0.0}).tensors.items()}


def time_sha256sum(path: Path, repeat: int = 3) -> float:
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)  # warm the page cache
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def run_child(path: Path, shapes: Path, patients: int, repeat: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--file", str(path), "--shapes", str(shapes), "--patients", str(patients), "--repeat", str(repeat)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--file")
    parser.add_argument("--shapes")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-validate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for label, size in (("large", args.size_mb), ("small", max(8, args.size_mb // 8))):
            path, shapes, rank = make_adapter(workdir, size, label)
            size_bytes = path.stat().st_size
            sha_s = time_sha256sum(path)
            result = run_child(path, shapes, args.patients, args.repeat)
            best = min(result["seconds"])
            rows.append({
                "file": label, "bytes": size_bytes, "rank": rank, "sha256sum_s": sha_s, "validate_s": best,
                "sha256sum_MBps": size_bytes / sha_s / 1e6, "validate_MBps": size_bytes / best / 1e6,
                "ratio": sha_s / best, **{k: result[k] for k in ("accepted", "reasons", "needle_build_s", "needles", "windows", "rss_before_mb", "peak_rss_mb", "torch_imported")},
            })
            print(json.dumps(rows[-1]), flush=True)
            if not args.keep:
                path.unlink()
        summary = {"date": datetime.date.today().isoformat(), "machine": machine(), "patients": args.patients, "rows": rows}
        print(json.dumps(summary, indent=1))
        print()
        print(markdown(summary))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def markdown(summary: dict) -> str:
    lines = [
        "| file | size | sha256sum | validation | ratio (validation / sha256sum throughput) | peak RSS | RSS before validating |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['file']} (rank {r['rank']}) | {r['bytes'] / 2**20:.0f} MiB | {r['sha256sum_s']:.2f} s ({r['sha256sum_MBps']:.0f} MB/s) "
            f"| {r['validate_s']:.2f} s ({r['validate_MBps']:.0f} MB/s) | **{r['ratio']:.2f}** | {r['peak_rss_mb']:.0f} MB | {r['rss_before_mb']:.0f} MB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
