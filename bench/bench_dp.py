"""DP-SGD's cost: tokens per second and peak memory with DP-SGD versus without, same recipe.

    .venv/bin/python bench/bench_dp.py [--steps 30] [--records 400] [--rounds 2]

The runtime itself (`python -m training.runtime train`, as the sandbox runs it, here on the host
so that the sandbox's fixed cost does not blur the comparison) trains demo-text-lm on synthetic
notes with the same LoRA recipe, once plainly (the baseline) and once with DP-SGD (Opacus,
per-sample gradients by hooks, Poisson sampling of patients, PRV accountant). Tokens per second
are averaged over the steps after the first five; peak memory is the child process's maximum
resident set (wait4's rusage), so each configuration is measured in its own process.
Interleaved rounds, best of each, because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = 2
RECIPE = {"target_modules": ["q_proj", "v_proj"], "rank": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 2e-3,
          "epochs": 1, "batch_size": 8, "max_seq_length": 128, "seed": 1, "quantization": "none", "canaries": None,
          "dp": None}
DP = {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}


def run(model_dir: Path, data: Path, work: Path, *, steps: int, dp: dict | None) -> dict:
    job = Path(tempfile.mkdtemp(prefix="dp-" if dp else "plain-", dir=work))
    spec = {"schema_version": 1, "task": "train", "job_id": job.name, "modality": "text",
            "base_model": {"path": str(model_dir), "family": "llama"}, "data_dir": str(data), "out_dir": str(job / "out"),
            "recipe": {**RECIPE, "dp": dp}, "threads": THREADS, "max_steps": steps}
    (job / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(THREADS)}
    process = subprocess.Popen([sys.executable, "-m", "training.runtime", "train", str(job / "spec.json")], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"runtime failed ({'dp' if dp else 'plain'}):\n{stderr[-2000:]}")
    lines = [json.loads(line) for line in (job / "out" / "progress.jsonl").read_text().splitlines()]
    rates = [line["tokens_per_second"] for line in lines if "tokens_per_second" in line and line.get("step", 0) > 5]
    final = lines[-1]
    return {"tokens_per_second": statistics.mean(rates), "peak_mib": usage.ru_maxrss / 1024,
            "epsilon": final.get("epsilon"), "noise_multiplier": final.get("noise_multiplier")}


def main() -> None:
    from bench.bench_training import demo_model_dir, stage

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model_dir = demo_model_dir()
    work = Path(tempfile.mkdtemp(prefix="rapha-bench-dp-"))
    try:
        data = work / "data"
        stage(data, args.records)
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, dp in (("plain", None), ("dp", DP)):
                result = run(model_dir, data, work, steps=args.steps, dp=dp)
                if name not in best or result["tokens_per_second"] > best[name]["tokens_per_second"]:
                    best[name] = {**result, "peak_mib": min(result["peak_mib"], best.get(name, result)["peak_mib"])}
        plain, private = best["plain"], best["dp"]
        lines = [
            f"demo-text-lm (Llama-style, 2 layers), {THREADS} threads, LoRA r=8 on q/v, batch 8 × 128 tokens "
            f"({args.steps} steps; DP samples patients with rate 8/patients, expected batch 8). "
            f"DP-SGD: Opacus per-sample gradients by hooks, clipping 1.0, target ε 8 (reached {private['epsilon']:.2f}, "
            f"noise multiplier {private['noise_multiplier']:.3f}), PRV accountant. Best of {args.rounds} interleaved rounds, "
            "runtime on the host (no sandbox).",
            f"Baseline: the same recipe without DP in the same run, {plain['tokens_per_second']:,.0f} tokens/s, "
            f"peak {plain['peak_mib']:,.0f} MiB.",
            "",
            "| training | tokens/s | ratio to plain | peak memory (MiB) | ratio to plain |",
            "| --- | --- | --- | --- | --- |",
            f"| plain LoRA | {plain['tokens_per_second']:,.0f} | 1.00 | {plain['peak_mib']:,.0f} | 1.00 |",
            f"| DP-SGD LoRA | {private['tokens_per_second']:,.0f} | {private['tokens_per_second'] / plain['tokens_per_second']:.2f} | "
            f"{private['peak_mib']:,.0f} | {private['peak_mib'] / plain['peak_mib']:.2f} |",
            "",
            "Ghost clipping (Opacus `grad_sample_mode=\"ghost\"`) is not measured: it needs the loss computed by Opacus' "
            "criterion wrapper, while recipes compute per-example losses themselves (per-patient grouping); see the DP "
            "section of README.md.",
        ]
        print(json.dumps(best))
        print("----- markdown -----")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
