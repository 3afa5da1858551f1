"""The privacy audit of a trained adapter: aggregate numbers only, into ``out_dir/audit.json``.

Members are the records the adapter was trained on (``train.jsonl``), non-members the held-out
patients (``holdout.jsonl``). Three probes:
- membership inference with four per-record scores (loss; loss minus the base model's loss, i.e.
  a reference-model attack; loss over zlib entropy; min-k% token probability), each summarised
  by AUC with a p-value and bootstrap interval, TPR at low FPR with an exact lower bound, and a
  coarse ROC curve;
- discoverable extraction: greedy continuation of a record's first half, compared with the true
  continuation, for members and non-members;
- canary exposure for the synthetic secrets the training run planted (regenerated from the seed).
Costs are capped (records per group, sequence lengths, extraction sample) so the audit stays
quick on a CPU for a few hundred short records.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import statistics
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import stats
from .canaries import CANARY_PREFIX, LOG2_SPACE, canary_continuation, candidate_secrets, make_canaries
from .modeling import choose_placement, load_adapter_weights, load_lora_model
from .recipes import Record, Recipe, recipe_class
from .schema import AUDIT_SCHEMA_VERSION, validate_audit
from .spec import CanarySpec, JobSpec
from .train import seed_everything

AUDIT_FILE = "audit.json"
MAX_RECORDS_PER_GROUP = 2000
SCORE_BATCH = 32
MIN_K_FRACTION = 0.2
BOOTSTRAP_RESAMPLES = 200
LOW_FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}

EXTRACTION_SAMPLE = 64  # records per group
EXTRACTION_PROMPT_FRACTION = 0.5
EXTRACTION_MAX_PROMPT = 64  # tokens
EXTRACTION_SUFFIX = 32  # tokens
EXTRACTION_MIN_TOKENS = 8
NEAR_VERBATIM = 0.9  # normalised edit similarity
GENERATE_BATCH = 32

CANARY_CANDIDATES = 2**14
CANDIDATE_BATCH = 512


def run_audit(spec: JobSpec) -> None:
    started = time.monotonic()
    seed = spec.recipe.seed
    seed_everything(seed)
    placement = choose_placement(spec.recipe.quantization)
    recipe = recipe_class(spec.modality)(spec, placement.device)
    members = _capped(recipe.read_split("train"), seed, "members")
    nonmembers = _capped(recipe.read_split("holdout"), seed, "nonmembers")

    recipe.load_processor()
    model = load_lora_model(recipe, placement, inference=True)
    load_adapter_weights(model, spec.adapter_path)
    model.eval()

    report: dict[str, Any] = {"schema_version": AUDIT_SCHEMA_VERSION}
    with _phase("membership"):
        report["membership"] = membership(recipe, model, members, nonmembers, seed=seed)
    if recipe.can_generate:
        with _phase("extraction"):
            report["extraction"] = extraction(recipe, model, members, nonmembers, seed=seed)
    if spec.recipe.canaries is not None and recipe.can_plant_canaries:
        with _phase("canaries"):
            report["canaries"] = canary_exposure(recipe, model, spec.recipe.canaries)
    if recipe.can_sample:
        with _phase("memorisation"):
            report["memorisation"] = recipe.memorisation(model, members, nonmembers, seed=seed)
    report["elapsed_seconds"] = round(time.monotonic() - started, 3)

    clean = validate_audit(report)  # the portal applies the same check; fail here first
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / AUDIT_FILE).write_text(json.dumps(clean, separators=(",", ":")), encoding="utf-8")


@contextmanager
def _phase(name: str) -> Iterator[None]:
    """Log how long a phase took (to stderr, for staff; numbers only)."""
    started = time.monotonic()
    yield
    print(f"rapha runtime: audit {name} {time.monotonic() - started:.1f}s", file=sys.stderr)


def _capped(records: list[Record], seed: int, label: str) -> list[Record]:
    if len(records) <= MAX_RECORDS_PER_GROUP:
        return records
    return random.Random(f"{label}:{seed}").sample(records, MAX_RECORDS_PER_GROUP)


# --- membership inference ----------------------------------------------------------------------

def membership(recipe: Recipe, model: Any, members: list[Record], nonmembers: list[Record], *, seed: int) -> dict:
    member_scores = _attack_scores(recipe, model, members)
    nonmember_scores = _attack_scores(recipe, model, nonmembers)
    if recipe.membership_by_patient:
        member_scores = per_patient(member_scores, members)
        nonmember_scores = per_patient(nonmember_scores, nonmembers)
    return {
        name: attack_summary(member_scores[name], nonmember_scores[name], seed=seed)
        for name in member_scores
    }


def _attack_scores(recipe: Recipe, model: Any, records: list[Record]) -> dict[str, list[float]]:
    """Per-record scores for each attack; higher means 'more likely a member'."""
    if recipe.has_token_scores:
        losses, min_k = _token_scores(recipe, model, records)
    else:
        losses, min_k = recipe.record_losses(model, records, batch_size=SCORE_BATCH), None
    with model.disable_adapter():
        base_losses = recipe.record_losses(model, records, batch_size=SCORE_BATCH)
    scores = {
        "loss": [-x for x in losses],
        "reference": [-(x - b) for x, b in zip(losses, base_losses)],
    }
    if recipe.has_text:
        entropies = [len(zlib.compress(recipe.text_of(r).encode("utf-8"))) for r in records]
        scores["zlib"] = [-x / e for x, e in zip(losses, entropies)]
    if min_k is not None:
        scores["min_k"] = min_k
    return scores


def per_patient(scores: dict[str, list[float]], records: list[Record]) -> dict[str, list[float]]:
    """Each attack's score averaged over a patient's records: one score per patient."""
    order = sorted({r.patient for r in records})
    out: dict[str, list[float]] = {}
    for name, values in scores.items():
        by_patient: dict[str, list[float]] = {}
        for record, value in zip(records, values):
            by_patient.setdefault(record.patient, []).append(value)
        out[name] = [statistics.fmean(by_patient[p]) for p in order]
    return out


def _token_scores(recipe: Any, model: Any, records: list[Record]) -> tuple[list[float], list[float]]:
    """Mean token loss and min-k% mean log-probability of each record, in one pass."""
    import torch

    losses: list[float] = []
    min_k: list[float] = []
    with torch.no_grad():
        for start in range(0, len(records), SCORE_BATCH):
            batch = recipe.to_device(recipe.collate([recipe.encode(r) for r in records[start:start + SCORE_BATCH]]))
            nll, mask = recipe.token_losses(model, batch)
            for row_nll, row_mask in zip(nll, mask):
                values = row_nll[row_mask.bool()]
                count = int(values.numel())
                losses.append(float(values.mean()) if count else 0.0)
                k = max(1, math.ceil(MIN_K_FRACTION * count))
                # Lowest-probability tokens = highest NLL; score is their mean log-probability.
                min_k.append(float(-values.topk(k).values.mean()) if count else 0.0)
    return losses, min_k


def attack_summary(members: list[float], nonmembers: list[float], *, seed: int) -> dict:
    ci_low, ci_high = stats.bootstrap_auc_ci(members, nonmembers, seed=seed, resamples=BOOTSTRAP_RESAMPLES)
    summary: dict[str, Any] = {
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "auc": _prob(stats.auc(members, nonmembers)),
        "auc_ci_low": _prob(ci_low),
        "auc_ci_high": _prob(ci_high),
        "p_value": _prob(stats.auc_p_value(members, nonmembers)),
    }
    for key, fpr in LOW_FPRS.items():
        tpr, hits = stats.tpr_at_fpr(members, nonmembers, fpr)
        summary[key] = _prob(tpr)
        if key == "tpr_at_1pct_fpr":
            summary["tpr_at_1pct_fpr_lower"] = _prob(stats.clopper_pearson_lower(hits, len(members)))
    summary["roc"] = stats.roc_points(members, nonmembers, max_points=50)
    return summary


def _prob(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 6)


# --- discoverable extraction -------------------------------------------------------------------

def extraction(recipe: Any, model: Any, members: list[Record], nonmembers: list[Record], *, seed: int) -> dict:
    groups = {
        "members": _extraction_group(recipe, model, _sample(members, seed, "extract-members")),
        "nonmembers": _extraction_group(recipe, model, _sample(nonmembers, seed, "extract-nonmembers")),
    }
    m, n = groups["members"], groups["nonmembers"]
    return {
        "prompt_fraction": EXTRACTION_PROMPT_FRACTION,
        "suffix_tokens": EXTRACTION_SUFFIX,
        "near_threshold": NEAR_VERBATIM,
        **groups,
        "exact_p_value": _prob(stats.two_proportion_p_value(m["exact"], m["n"], n["exact"], n["n"])),
        "near_p_value": _prob(stats.two_proportion_p_value(m["near"], m["n"], n["near"], n["n"])),
    }


def _sample(records: list[Record], seed: int, label: str) -> list[Record]:
    if len(records) <= EXTRACTION_SAMPLE:
        return records
    return random.Random(f"{label}:{seed}").sample(records, EXTRACTION_SAMPLE)


def _extraction_group(recipe: Any, model: Any, records: list[Record]) -> dict:
    prompts: list[list[int]] = []
    targets: list[list[int]] = []
    for record in records:
        ids = recipe.token_ids(recipe.text_of(record), max_length=recipe.max_length, add_eos=False)
        if len(ids) < EXTRACTION_MIN_TOKENS:
            continue  # too short to split into a meaningful prompt and continuation
        cut = min(int(len(ids) * EXTRACTION_PROMPT_FRACTION), EXTRACTION_MAX_PROMPT)
        prompts.append(ids[:cut])
        targets.append(ids[cut:cut + EXTRACTION_SUFFIX])
    generated = recipe.greedy_continue(model, prompts, new_tokens=EXTRACTION_SUFFIX, batch_size=GENERATE_BATCH) if prompts else []
    exact = near = 0
    for target, output in zip(targets, generated):
        output = output[: len(target)]
        exact += output == target
        similarity = stats.edit_similarity(
            recipe.tokenizer.decode(target, skip_special_tokens=True),
            recipe.tokenizer.decode(output, skip_special_tokens=True),
        )
        near += similarity >= NEAR_VERBATIM
    n = len(targets)
    return {
        "n": n,
        "exact": exact,
        "near": near,
        "exact_rate": _prob(exact / n) if n else 0.0,
        "near_rate": _prob(near / n) if n else 0.0,
    }


# --- canary exposure ---------------------------------------------------------------------------

def canary_exposure(recipe: Any, model: Any, spec: CanarySpec) -> dict:
    """Exposure of each planted canary against 2^14 random candidates of the same format.

    exposure = log2|R| - log2(estimated rank of the canary in R), with the rank estimated from
    where the canary's loss falls among the sampled candidates: -log2((rank + 1/2 ties) / (n + 1)).
    It tops out at log2(n + 1) ~ 14 bits. The extrapolated variant fits a normal to the candidate
    losses (Carlini et al. 2019, section 4) and reaches up to log2|R| ~ 23.3 bits.
    """
    canaries = make_canaries(spec)
    candidates = candidate_secrets(spec.seed, CANARY_CANDIDATES, exclude={c.secret for c in canaries})
    # Canaries and candidates in one call, so that they are scored the same way.
    secrets = [c.secret for c in canaries] + candidates
    losses = recipe.continuation_nll(
        model, CANARY_PREFIX, [canary_continuation(s) for s in secrets], batch_size=CANDIDATE_BATCH
    )
    canary_losses = losses[: len(canaries)]
    candidate_losses = sorted(losses[len(canaries):])
    mean = statistics.fmean(candidate_losses)
    spread = statistics.pstdev(candidate_losses) or 1e-12
    n = len(candidate_losses)

    groups = []
    for repeats in spec.repeats:
        losses = [loss for c, loss in zip(canaries, canary_losses) if c.repeats == repeats]
        exposure = [_rank_exposure(loss, candidate_losses) for loss in losses]
        extrapolated = [_extrapolated_exposure(loss, mean, spread) for loss in losses]
        groups.append({
            "repeats": repeats,
            "n_canaries": len(losses),
            "exposure": exposure,
            "exposure_mean": round(statistics.fmean(exposure), 4),
            "exposure_max": max(exposure),
            "exposure_extrapolated": extrapolated,
            "exposure_extrapolated_mean": round(statistics.fmean(extrapolated), 4),
        })
    return {
        "log2_space": round(LOG2_SPACE, 4),
        "n_candidates": n,
        "max_exposure": round(math.log2(n + 1), 4),
        "groups": groups,
    }


def _rank_exposure(loss: float, sorted_candidates: list[float]) -> float:
    below = bisect.bisect_left(sorted_candidates, loss)
    ties = bisect.bisect_right(sorted_candidates, loss) - below
    rank = 1 + below + ties / 2
    return round(max(0.0, math.log2(len(sorted_candidates) + 1) - math.log2(rank)), 4)


def _extrapolated_exposure(loss: float, mean: float, spread: float) -> float:
    fraction = stats.normal_cdf((loss - mean) / spread)
    if fraction <= 0:
        return round(LOG2_SPACE, 4)
    return round(min(LOG2_SPACE, max(0.0, -math.log2(fraction))), 4)
