"""Training throughput in the sandbox versus a plain peft loop on the host, and a job's fixed cost.

    .venv/bin/python bench/bench_training.py [--steps 40] [--records 400]

Same model (demo-text-lm from var/models, built by `manage.py build_demo_models`), same data
(synthetic notes), same recipe, same thread count (2). Tokens per second are averaged over the
steps after the first five (warm-up). The fixed cost of a sandboxed run is measured with a
one-step job: sandbox start, imports, model load, one step, save.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = 2
RECIPE = {"target_modules": ["q_proj", "v_proj"], "rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 2e-3,
          "epochs": 1, "batch_size": 8, "max_seq_length": 128, "seed": 1, "quantization": "none", "canaries": None, "dp": None}


def stage(folder: Path, records: int) -> None:
    from governance.synthetic import generate_hospital

    hospital = generate_hospital(max(10, records // 3), seed=99)
    rows = [{"record": f"r-{i:06d}", "patient": f"p-{i:06d}", "text": r.text} for i, r in enumerate(hospital.records[:records])]
    folder.mkdir(parents=True)
    cut = int(len(rows) * 0.8)
    for name, part in (("train", rows[:cut]), ("holdout", rows[cut:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def demo_model_dir() -> Path:
    """demo-text-lm as `build_demo_models` leaves it; exits with how to build it when missing."""
    model_dir = ROOT / "var" / "models" / "demo-text-lm"
    if not (model_dir / "config.json").exists():
        sys.exit("Build the demo model first: make demo (or manage.py build_demo_models).")
    return model_dir


def plain_loop(model_dir: Path, data: Path, steps: int) -> float:
    """The baseline: the simplest correct peft loop, no framework of ours."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    texts = [json.loads(line)["text"] for line in (data / "train.jsonl").read_text().splitlines()]
    rates = []
    for step in range(steps):
        batch_texts = [texts[(step * 8 + i) % len(texts)] for i in range(8)]
        started = time.perf_counter()
        batch = tokenizer(batch_texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - started
        if step >= 5:
            rates.append(int(batch["attention_mask"].sum()) / elapsed)
    return statistics.mean(rates)


def sandboxed(backend_name: str, model_dir: Path, data: Path, work: Path, steps: int) -> dict:
    from training.sandbox import SandboxSpec, get_backend, grant_sandbox_access, stage_runtime_code

    job_dir = Path(tempfile.mkdtemp(prefix=f"job-{backend_name}-{steps}-", dir=work))
    job_dir.chmod(0o711)
    (job_dir / "job").mkdir(parents=True)
    (job_dir / "out").mkdir()
    spec = {"schema_version": 1, "task": "train", "job_id": f"bench-{backend_name}", "modality": "text",
            "base_model": {"path": "/models", "family": "llama"}, "data_dir": "/data", "out_dir": "/out",
            "recipe": RECIPE, "threads": THREADS, "max_steps": steps}
    (job_dir / "job" / "spec.json").write_text(json.dumps(spec))
    code = stage_runtime_code(job_dir)
    grant_sandbox_access(job_dir)
    backend = get_backend(backend_name)
    sandbox_spec = SandboxSpec(job_id=f"bench-{job_dir.name}",
                               command=["python", "-m", "training.runtime", "train", "/job/spec.json"],
                               out_dir=str(job_dir / "out"),
                               mounts=[(str(data), "/data", True), (str(model_dir), "/models", True),
                                       (str(job_dir / "job"), "/job", True), (code, "/code", True)],
                               wall_clock_seconds=1800, memory_bytes=8 << 30, pids_limit=256, cpus=THREADS,
                               log_path=str(job_dir / "log.txt"))
    started = time.perf_counter()
    result = backend.run(sandbox_spec)
    wall = time.perf_counter() - started
    if result.status != "succeeded":
        raise RuntimeError(f"{backend_name}: {result.reason}\n" + (job_dir / "log.txt").read_text()[-2000:])
    lines = [json.loads(l) for l in (job_dir / "out" / "progress.jsonl").read_text().splitlines()]
    rates = [l["tokens_per_second"] for l in lines if "tokens_per_second" in l and l.get("step", 0) > 5]
    return {"wall": wall, "tokens_per_second": statistics.mean(rates) if rates else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_dir = demo_model_dir()
    work = Path(tempfile.mkdtemp(prefix="rapha-bench-"))
    work.chmod(0o711)
    try:
        data = work / "data"
        stage(data, args.records)
        from training.sandbox import SandboxUnavailable, get_backend

        backends = []
        for name in ("bubblewrap", "docker"):
            try:
                get_backend(name)
                backends.append(name)
            except SandboxUnavailable as exc:
                print(f"{name}: unavailable ({exc})", file=sys.stderr)
        # Interleaved rounds, best of each: the machine is shared, so whichever ran during a burst of
        # someone else's work would otherwise lose; the best of a few rounds is each one's own speed.
        best = {"host": 0.0, **{name: 0.0 for name in backends}}
        for _ in range(args.rounds):
            best["host"] = max(best["host"], plain_loop(model_dir, data, args.steps))
            for name in backends:
                best[name] = max(best[name], sandboxed(name, model_dir, data, work, args.steps)["tokens_per_second"])
        baseline = best["host"]
        rows = []
        for name in backends:
            fixed = min(sandboxed(name, model_dir, data, work, 1)["wall"] for _ in range(2))
            rows.append((name, best[name], best[name] / baseline, fixed))
        lines = [
            f"Model demo-text-lm (Llama-style, 2 layers), {THREADS} threads, batch 8 × 128 tokens, LoRA r=8 on q/v, "
            f"{args.steps} steps; tokens/s averaged after 5 warm-up steps; best of {args.rounds} interleaved rounds.",
            f"Baseline: a plain peft loop on the host in the same run, {baseline:,.0f} tokens/s. "
            "Sandboxes run with OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads under docker's CPU quota ran at 0.14×).",
            "",
            "| backend | tokens/s | ratio to host loop (goal ≥ 0.95) | fixed cost of a 1-step job (s) |",
            "| --- | --- | --- | --- |",
        ] + [f"| {n} | {tps:,.0f} | {ratio:.2f} | {fixed:.1f} |" for n, tps, ratio, fixed in rows]
        print(json.dumps({"baseline": baseline, "rows": rows}))
        print("----- markdown -----")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
