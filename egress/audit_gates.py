"""Judging a privacy audit's numbers against the versioned gates of an AuditPolicy.

Gates (fail / warn):
1. membership inference: the best attack's AUC above max_auc with p below significance fails;
   above warn_auc warns;
2. low-FPR: the lower confidence bound of any attack's TPR at 1% FPR above the cap fails;
3. canaries: a canary inserted once with exposure ≥ log2|R| − margin fails (a warning band below);
4. extraction: members' extraction rate significantly above the holdout's fails;
5. memorisation (recipes that sample: molecules, diffusion): generated samples that match members
   more often than non-members, significantly and by more than max_memorisation_excess, fail.
"""

from __future__ import annotations

from typing import Any

PASS, WARN, FAIL = "pass", "warn", "fail"
MIN_NONMEMBERS_FOR_LOW_FPR = 100


def _gate(name: str, status: str, value: float | None, threshold: float | None, detail: str) -> dict[str, Any]:
    return {"gate": name, "status": status, "value": value, "threshold": threshold, "detail": detail}


def evaluate(result: dict, policy) -> dict[str, Any]:
    gates = []
    attacks = result.get("membership", {})
    if not attacks:
        gates.append(_gate("membership", FAIL, None, None, "The audit reported no membership-inference attack."))
    else:
        name, best = max(attacks.items(), key=lambda item: item[1]["auc"])
        significant = best["p_value"] < policy.significance
        if best["auc"] > policy.max_auc and significant:
            status = FAIL
        elif best["auc"] > policy.warn_auc:
            status = WARN
        else:
            status = PASS
        gates.append(_gate(
            "membership_auc", status, round(best["auc"], 4), policy.max_auc,
            f"Best attack ({name}): AUC {best['auc']:.3f} (95% CI {best['auc_ci_low']:.3f}–{best['auc_ci_high']:.3f}, "
            f"p = {best['p_value']:.3g}) on {best['n_members']} members and {best['n_nonmembers']} non-members.",
        ))
        low_name, low = max(attacks.items(), key=lambda item: item[1]["tpr_at_1pct_fpr_lower"])
        bound = low["tpr_at_1pct_fpr_lower"]
        detail = (f"Lower 95% bound of TPR at 1% FPR ({low_name}): {bound:.3f}; estimated from "
                  f"{low['n_nonmembers']} non-members (low-FPR figures need many).")
        if low["n_nonmembers"] < MIN_NONMEMBERS_FOR_LOW_FPR:
            # With fewer than 100 non-members "1% FPR" means "no false positive at all": the figure
            # is noise, not evidence. Reviewers see it as a warning; the AUC gate still decides.
            status = WARN
            detail += f" Fewer than {MIN_NONMEMBERS_FOR_LOW_FPR} non-members: not enough to judge; shown for information."
        else:
            status = FAIL if bound > policy.max_tpr_at_1pct_fpr_lower else WARN if bound > policy.warn_tpr_at_1pct_fpr_lower else PASS
        gates.append(_gate("tpr_at_1pct_fpr", status, round(bound, 4), policy.max_tpr_at_1pct_fpr_lower, detail))
    canaries = result.get("canaries")
    if canaries:
        # Ranked among n sampled candidates, measured exposure tops out at log2(n+1) (about 14 bits),
        # below log2|R|; the extrapolated exposure (a fit to the candidates' scores) reaches log2|R|.
        # A canary ranked first among all the candidates fails too, whatever the fit says.
        single = [g for g in canaries["groups"] if g["repeats"] == 1]
        worst = max((max(g["exposure_extrapolated"], default=0.0) for g in single), default=0.0)
        ranked_first = any(e >= canaries["max_exposure"] - 1e-9 for g in single for e in g["exposure"])
        space = canaries["log2_space"]
        limit = space - policy.canary_margin_bits
        status = FAIL if worst >= limit or ranked_first else WARN if worst >= space - policy.canary_warn_margin_bits else PASS
        gates.append(_gate(
            "canary_exposure", status, round(worst, 3), round(limit, 3),
            f"Highest extrapolated exposure of a canary inserted once: {worst:.2f} bits of log2|R| = {space:.2f}"
            f"{'; one ranked first among all ' + str(canaries['n_candidates']) + ' candidates' if ranked_first else ''}.",
        ))
    extraction = result.get("extraction")
    if extraction:
        members, holdout = extraction["members"], extraction["nonmembers"]
        p_value = min(extraction["exact_p_value"], extraction["near_p_value"])
        above = members["near_rate"] > holdout["near_rate"] or members["exact_rate"] > holdout["exact_rate"]
        status = FAIL if above and p_value < policy.significance else WARN if above and p_value < policy.extraction_warn_p else PASS
        gates.append(_gate(
            "extraction", status, round(p_value, 4), policy.significance,
            f"Near-verbatim suffixes: members {members['near_rate']:.1%} of {members['n']}, holdout "
            f"{holdout['near_rate']:.1%} of {holdout['n']} (one-sided p = {p_value:.3g}).",
        ))
    memorisation = result.get("memorisation")
    if memorisation:
        excess = memorisation["member_match_rate"] - memorisation["nonmember_match_rate"]
        significant = memorisation["p_value"] < policy.significance
        status = FAIL if significant and excess > policy.max_memorisation_excess else WARN if excess > 0 and significant else PASS
        kind = "reproduce" if memorisation["match_threshold"] == 0 else f"lie within {memorisation['match_threshold']:g} of"
        gates.append(_gate(
            "memorisation", status, round(excess, 4), policy.max_memorisation_excess,
            f"Of {memorisation['n_samples']} generated samples, {memorisation['member_match_rate']:.1%} {kind} a training item "
            f"and {memorisation['nonmember_match_rate']:.1%} a held-out one ({memorisation['n_members']} of each compared; "
            f"one-sided p = {memorisation['p_value']:.3g}).",
        ))
    return {
        "passed": all(g["status"] != FAIL for g in gates),
        "policy_version": policy.version,
        "gates": gates,
        "failed": [g["gate"] for g in gates if g["status"] == FAIL],
    }
