"""Benchmark of the egress validator against `sha256sum` on the same file.

    .venv/bin/python bench/bench_validate.py [--size-mb 512] [--patients 2000] [--workdir DIR] [--keep]

1. Derives the expected tensor set of a Llama-7B-shaped base model (hidden 4096, 32 layers,
   grouped-query attention with 8 kv heads, all seven projections) on the meta device, with the
   rank chosen so the F32 adapter is about --size-mb MB, and writes a trained-looking adapter with
   the safetensors writer (lora_A ~ U(+-1/sqrt(in)), lora_B ~ N(0, 2e-3)). A second, 1/8-size
   adapter shows that memory does not grow with the file.
2. Times `sha256sum FILE` (page cache warm) in the same run, interleaved with the validation runs
   so both see the same machine load; records wall and CPU (user+sys) time, best of --repeat.
3. Validates each file in a fresh child process that imports no torch (only numpy,
   pyahocorasick and egress.validation): the file rules against the expected set and the
   identifiers of a synthetic cohort (--patients patients x MRN, name, birth date, phone,
   national id). Reports the best wall and CPU times of the file pass, the identifier-set build
   time, the child's RSS after its imports and after building the identifier set, and its peak RSS
   while validating (VmHWM, reset before validating).

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

MARKER = "----- markdown -----"  # bench/__main__.py (make bench) takes what follows into BENCHMARKS.md
ENUMERATION_S: float | None = None
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
    policy = ValidationPolicy(chunk_bytes=args.chunk_kib * 1024)
    rss_imports = _status_mb("VmRSS")
    t0 = time.perf_counter()
    needles = IdentifierSet.build(cohort(args.patients), min_length=policy.min_identifier_length)
    build_s = time.perf_counter() - t0
    rss_before = _status_mb("VmRSS")
    _reset_hwm()
    times = []
    report = None
    cpu = []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        report = validate_file(args.file, expected=expected, identifiers=needles, policy=policy)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = _status_mb("VmHWM")
    print(json.dumps({
        "accepted": report.accepted,
        "reasons": report.reasons(),
        "seconds": times,
        "cpu_seconds": cpu,
        "needle_build_s": build_s,
        "needles": needles.needles,
        "windows": report.verdict("identifiers").figures.get("windows_checked"),
        "rss_imports_mb": rss_imports,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "hwm_reset": _HWM_RESET,
        "torch_imported": "torch" in sys.modules,
    }))


_HWM_RESET = False


def _reset_hwm() -> None:
    """Reset the peak-RSS watermark (Linux: write 5 to /proc/self/clear_refs) so that VmHWM
    measures the validation alone; without it VmHWM also covers building the identifier set."""
    global _HWM_RESET
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _HWM_RESET = True
    except OSError:
        _HWM_RESET = False


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process (a fresh exec, so nothing is inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


# --------------------------------------------------------------------------------------------- parent


def make_adapter(workdir: Path, size_mb: int, name: str) -> tuple[Path, Path, int]:
    import numpy as np
    import torch  # noqa: F401 - imported before the enumeration is timed
    import transformers  # noqa: F401
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
    global ENUMERATION_S
    t0 = time.perf_counter()
    per_rank = sum(s[0] * s[1] for s in _shapes(base, 1).values()) * 4
    if ENUMERATION_S is None:
        ENUMERATION_S = time.perf_counter() - t0
        print(f"# meta-device enumeration of the base model: {ENUMERATION_S:.2f} s (first call; cached after)", flush=True)
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


def time_sha256sum(path: Path) -> tuple[float, float]:
    """Wall and CPU (user+sys) seconds of one `sha256sum FILE`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_child(path: Path, shapes: Path, patients: int, repeat: int, chunk_kib: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--file", str(path), "--shapes", str(shapes), "--patients", str(patients),
         "--repeat", str(repeat), "--chunk-kib", str(chunk_kib)],
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
    parser.add_argument("--memory-patients", type=int, default=500, help="a second, smaller cohort for the memory figure")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--file")
    parser.add_argument("--shapes")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    memory: dict = {}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-validate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for label, size in (("large", args.size_mb), ("small", max(8, args.size_mb // 8))):
            path, shapes, rank = make_adapter(workdir, size, label)
            size_bytes = path.stat().st_size
            subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)  # warm the page cache
            sha_wall, sha_cpu, val_wall, val_cpu, result = [], [], [], [], None
            for _ in range(args.repeat):  # interleaved, so both see the same machine load
                wall, cpu = time_sha256sum(path)
                sha_wall.append(wall)
                sha_cpu.append(cpu)
                result = run_child(path, shapes, args.patients, 1, args.chunk_kib)
                val_wall.append(result["seconds"][0])
                val_cpu.append(result["cpu_seconds"][0])
            rows.append({
                "file": label, "bytes": size_bytes, "rank": rank,
                "sha256sum_s": min(sha_wall), "validate_s": min(val_wall),
                "sha256sum_cpu_s": min(sha_cpu), "validate_cpu_s": min(val_cpu),
                "sha256sum_MBps": size_bytes / min(sha_wall) / 1e6, "validate_MBps": size_bytes / min(val_wall) / 1e6,
                "ratio": min(sha_wall) / min(val_wall), "ratio_cpu": min(sha_cpu) / min(val_cpu),
                **{k: result[k] for k in ("accepted", "reasons", "needle_build_s", "needles", "windows", "rss_imports_mb", "rss_before_mb", "peak_rss_mb", "hwm_reset", "torch_imported")},
            })
            print(json.dumps(rows[-1]), flush=True)
            if label == "large" and args.memory_patients:
                small_cohort = run_child(path, shapes, args.memory_patients, 1, args.chunk_kib)
                memory = {k: small_cohort[k] for k in ("rss_imports_mb", "rss_before_mb", "peak_rss_mb", "needles", "needle_build_s")}
                memory["patients"] = args.memory_patients
            if not args.keep:
                path.unlink()
        summary = {
            "date": datetime.date.today().isoformat(), "machine": machine(), "patients": args.patients,
            "chunk_kib": args.chunk_kib, "repeat": args.repeat, "rows": rows, "memory_small_cohort": memory,
            "enumeration_s": ENUMERATION_S, "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1/5/15 min)",
        }
        print(json.dumps(summary, indent=1))
        print(MARKER)
        print(markdown(summary))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    large = rows[0]
    needles = large["needles"]
    lines = [
        "`validate_file` (strict header parse, exact tensor set and shapes, finite and bounded values, identifier "
        "scan of every byte in UTF-8/UTF-16-LE/UTF-16-BE, printable-run scan of the tensor data) on a LoRA adapter "
        "of a Llama-7B-shaped model (hidden 4096, 32 layers, grouped-query attention with 8 kv heads, q/k/v/o/gate/up/down, "
        "F32, values like a trained adapter), in a fresh process without torch, against `sha256sum` of the same file. "
        f"Both run interleaved in the same benchmark (page cache warm), best of {summary['repeat']}; wall time and CPU time "
        "(user+sys, steadier on a shared machine). Identifiers: a synthetic cohort of "
        f"{summary['patients']} patients (MRN, name, birth date, phone, national id: {needles:,} needles after expansion "
        f"into formats, cases and encodings). Read size {summary['chunk_kib']} KiB. "
        "Command: `.venv/bin/python bench/bench_validate.py` (or `make bench`).",
        "",
        "| file | size | sha256sum wall / CPU | validation wall / CPU | ratio wall | ratio CPU | peak RSS while validating | RSS: interpreter + numpy / + identifier set |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} (rank {r['rank']}) | {r['bytes'] / 2**20:.0f} MiB "
            f"| {r['sha256sum_s']:.2f} s / {r['sha256sum_cpu_s']:.2f} s ({r['sha256sum_MBps']:.0f} MB/s) "
            f"| {r['validate_s']:.2f} s / {r['validate_cpu_s']:.2f} s ({r['validate_MBps']:.0f} MB/s) "
            f"| **{r['ratio']:.2f}** | **{r['ratio_cpu']:.2f}** | {r['peak_rss_mb']:.0f} MB (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB) "
            f"| {r['rss_imports_mb']:.0f} MB / {r['rss_before_mb']:.0f} MB |"
        )
    def verdict(ratio: float) -> str:
        return "met" if ratio >= 0.8 else "NOT met"

    increments = [r["peak_rss_mb"] - r["rss_before_mb"] for r in rows]
    per_patient_kb = (large["rss_before_mb"] - large["rss_imports_mb"]) * 1024 / summary["patients"]
    lines += [
        "",
        f"- Throughput ({large['bytes'] / 2**20:.0f} MiB): validation runs at **{large['ratio']:.2f}** of `sha256sum`'s "
        f"throughput by wall time (goal >= 0.8 {verdict(large['ratio'])}) and **{large['ratio_cpu']:.2f}** by CPU time "
        f"(goal {verdict(large['ratio_cpu'])}). Load average during the run: {summary['load']}."
        + (" The smaller file carries the same fixed costs (parsing a 448-entry header, setup) over fewer bytes."
           if rows[-1]["ratio_cpu"] < large["ratio_cpu"] else ""),
        f"- Memory: the validation pass adds **{max(increments):.0f} MB at most, whatever the file size** (one read buffer, "
        "its byte-class copies, a scratch array). The process total is the interpreter with numpy "
        f"({large['rss_imports_mb']:.0f} MB) plus the cohort's Aho-Corasick automaton, which grows with the cohort, not the "
        f"file (about {per_patient_kb:.0f} KB per patient; built once per cohort in {large['needle_build_s']:.1f} s and reusable).",
    ]
    mem = summary.get("memory_small_cohort") or {}
    if mem:
        goal = "within" if mem["peak_rss_mb"] <= 64 else "over"
        lines.append(
            f"- With {mem['patients']} patients ({mem['needles']:,} needles) the whole process peaks at **{mem['peak_rss_mb']:.0f} MB** "
            f"validating the {large['bytes'] / 2**20:.0f} MiB file ({goal} the 64 MB goal); with {summary['patients']} patients "
            f"at {large['peak_rss_mb']:.0f} MB."
        )
    if summary.get("enumeration_s") is not None:
        lines.append(
            f"- Not in these figures: deriving the expected tensor set instantiates the base model on the meta device "
            f"({summary['enumeration_s']:.1f} s the first time for this model, after importing torch and transformers; cached per "
            "model directory and config.json hash). The release rewrite holds the adapter's tensors in memory (about the "
            "file size), as the pinned safetensors writer takes a whole dict."
        )
    lines.append(
        "- How: a pure Aho-Corasick pass (pyahocorasick) runs at about 50 MB/s here. Instead one `bytes.translate` maps "
        "needle bytes to a class, `bytes.find` looks for runs of six needle-class bytes (plus anchors for the rare needles "
        f"without such a run), and only windows around those go through the automaton ({large['windows']:,} windows here); zero runs are "
        "skipped. Printable runs: one more translate and two finds. Values: one numpy `max(bits & 0x7fff...)` per tensor "
        "piece decides NaN/Inf and the magnitude bound."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
