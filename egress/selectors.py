"""Reads shared by the egress pages and the API. Each list is a constant number of queries."""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from egress.models import Adapter, Release, SignOff
from portal.models import Role, User

A = Adapter.Status


def _hospital_staff(user: User) -> bool:
    return bool(user.role_names - {Role.RESEARCHER, Role.SPONSOR})


def adapters_for(user: User, *, status: str | None = None) -> QuerySet[Adapter]:
    """Adapters the user may see: hospital staff all of them, researchers their projects' only."""
    queryset = Adapter.objects.select_related("job__request__project", "job__base_model").annotate(
        approvals=Count("signoffs", filter=Q(signoffs__decision=SignOff.Decision.APPROVE), distinct=True),
    )
    if not _hospital_staff(user):
        if not user.has_role(Role.RESEARCHER):
            return queryset.none()
        queryset = queryset.filter(
            Q(job__request__project__members=user) | Q(job__request__project__principal_investigator=user)
        ).distinct()
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by("-created_at")


def review_queue(user: User) -> QuerySet[Adapter]:
    """Adapters awaiting review that this reviewer may still sign off: not from a project they are
    on, nor already signed by them; the longest waiting first."""
    signed = SignOff.objects.filter(adapter=OuterRef("pk"), reviewer=user)
    return (
        adapters_for(user, status=A.IN_REVIEW)
        .exclude(job__request__project__members=user)
        .exclude(job__request__project__principal_investigator=user)
        .exclude(job__request__created_by=user)
        .exclude(Exists(signed))
        .order_by("created_at")
    )


def releases_for(user: User) -> QuerySet[Release]:
    """Releases the user may see: sponsors their organisation's only, hospital staff all."""
    queryset = Release.objects.select_related(
        "organisation", "created_by", "revoked_by", "adapter__job__request__project", "adapter__job__base_model",
    ).annotate(download_count=Count("downloads", distinct=True))
    if not _hospital_staff(user):
        if not user.has_role(Role.SPONSOR) or user.organisation_id is None:
            return queryset.none()
        queryset = queryset.filter(organisation_id=user.organisation_id)
    return queryset.order_by("-created_at")


# What the adapter and release pages and the API show, worked out from the stored reports ----------

ATTACK_LABELS = {"loss": "Loss threshold", "reference": "Reference model", "zlib": "zlib ratio", "min_k": "Min-k% probability"}
GATE_LABELS = {"membership_auc": "Membership inference (AUC)", "tpr_at_1pct_fpr": "TPR at 1% FPR (lower bound)",
               "canary_exposure": "Canary exposure (bits)", "extraction": "Training-data extraction (p)",
               "membership": "Membership inference"}

GATE_SHORT = {"membership_auc": "membership inference", "tpr_at_1pct_fpr": "low-FPR attack rate",
              "canary_exposure": "canaries", "extraction": "extraction"}


def is_hospital_staff(user: User) -> bool:
    """Officers, stewards and reviewers read full reports; researchers and sponsors summaries."""
    return _hospital_staff(user)


def validation_summary(adapter: Adapter) -> str:
    """One line on the egress validator's verdict (what researchers see instead of the verdicts)."""
    verdicts = adapter.validation_report.get("verdicts", [])
    if not verdicts:
        return "Not validated yet." if adapter.status == A.QUARANTINED else "No validation report was kept."
    failed = [v["rule"].replace("_", " ") for v in verdicts if v["status"] == "failed"]
    passed = sum(1 for v in verdicts if v["status"] == "passed")
    if failed:
        return f"Rejected: {len(failed)} of {len(verdicts)} rules failed ({', '.join(failed)})."
    skipped = len(verdicts) - passed
    tail = f", {skipped} not applicable" if skipped else ""
    return f"Accepted: {passed} of {len(verdicts)} rules passed{tail}."


def rejection_text(adapter: Adapter, *, staff: bool) -> str:
    """Why the adapter was rejected, as this reader may see it ("" when it was not)."""
    if adapter.status != A.REJECTED:
        return ""
    reason = adapter.rejected_reason or "No reason was recorded."
    if staff or not reason.startswith("Validation failed"):
        return reason  # audit numbers and reviewers' reasons are for everyone who sees the adapter
    return "The egress validator refused the file. " + validation_summary(adapter)


def attack_rows(report: dict) -> list[dict]:
    """Each membership-inference attack's numbers, the strongest first."""
    attacks = (report.get("metrics") or {}).get("membership") or {}
    rows = [{"name": name, "label": ATTACK_LABELS.get(name, name), **numbers} for name, numbers in attacks.items()]
    return sorted(rows, key=lambda row: -row["auc"])


def gate_rows(report: dict) -> list[dict]:
    return [{**gate, "label": GATE_LABELS.get(gate["gate"], gate["gate"].replace("_", " "))} for gate in report.get("gates", [])]


def canary_rows(report: dict) -> list[dict]:
    canaries = (report.get("metrics") or {}).get("canaries")
    if not canaries:
        return []
    return [{"repeats": g["repeats"], "n": g["n_canaries"], "mean": g["exposure_mean"], "max": g["exposure_max"],
             "space": canaries["log2_space"]} for g in canaries["groups"]]


def cohort_display(adapter: Adapter) -> str:
    """The cohort's distinct patients, rounded and suppressed as the disclosure policy says."""
    from governance.cohorts import disclosed_count
    from governance.services import policy_current

    cohort = getattr(adapter.job.request, "cohort", None)
    if cohort is None:
        return "—"
    return disclosed_count(cohort.patient_count, policy_current())["display"]


def dp_facts(adapter: Adapter) -> dict | None:
    """The DP-SGD guarantee the adapter's job reached, when its recipe asked for one: what the review
    page and the signed manifest both show (ε from the accountant, δ, noise, clipping, sampling, steps)."""
    job = adapter.job
    dp = job.recipe.get("dp")
    if not dp:
        return None
    metrics = job.final_metrics or {}
    return {"target_epsilon": dp.get("target_epsilon"), "epsilon": metrics.get("epsilon"), "delta": dp.get("delta"),
            "noise_multiplier": metrics.get("noise_multiplier"), "max_grad_norm": dp.get("max_grad_norm"),
            "sample_rate": metrics.get("sample_rate"), "steps": job.total_steps,
            "epochs": job.recipe.get("epochs"), "accountant": "prv", "unit": "patient"}


def manifest_summary(manifest: dict) -> list[tuple[str, str]]:
    """The signed manifest's main facts as (label, value) rows."""
    base = manifest.get("base_model") or {}
    job = manifest.get("job") or {}
    recipe = manifest.get("recipe") or {}
    dp = manifest.get("differential_privacy")
    rows = [
        ("Base model", base.get("name", "—")),
        ("Method", {"nf4": "QLoRA (4-bit NF4)", "none": "LoRA (full precision)"}.get(job.get("quantization"), "LoRA")),
        ("LoRA rank / alpha", f"{recipe.get('rank', '—')} / {recipe.get('alpha', '—')}"),
        ("Target modules", ", ".join(recipe.get("target_modules") or []) or "—"),
        ("Cohort", f"{(manifest.get('cohort') or {}).get('patients', '—')} patients"),
    ]
    if job.get("eval_loss_base") is not None and job.get("eval_loss_adapted") is not None:
        rows.append(("Held-out loss", f"{job['eval_loss_base']:.3f} → {job['eval_loss_adapted']:.3f}"))
    if dp:
        rows.append(("Differential privacy", f"ε = {dp.get('epsilon')}, δ = {dp.get('delta')} per patient "
                     f"(noise {dp.get('noise_multiplier')}, clipping {dp.get('max_grad_norm')}, sample rate "
                     f"{dp.get('sample_rate')}, {dp.get('epochs')} epochs, {dp.get('accountant', 'prv').upper()} accountant)"))
    for budget in manifest.get("privacy_budget") or []:
        rows.append((f"Privacy budget ({budget['dataset']})",
                     f"spent ε {budget['epsilon_spent']:.4g}; {budget['remaining_epsilon']:.4g} of {budget['budget_epsilon']:g} "
                     f"remains per {budget['period_days']} days ({budget['composition']} composition)"))
    gates = (manifest.get("audit") or {}).get("gates") or []
    if gates:
        by_status: dict[str, list[str]] = {}
        for gate in gates:
            by_status.setdefault(gate["status"], []).append(GATE_SHORT.get(gate["gate"], gate["gate"].replace("_", " ")))
        verdicts = {"pass": "passed", "warn": "warned", "fail": "failed"}
        rows.append(("Privacy audit", "; ".join(f"{verdicts.get(s, s)}: {', '.join(names)}" for s, names in by_status.items())))
    approvals = manifest.get("approvals") or []
    if approvals:
        rows.append(("Signed off by", ", ".join(a["reviewer"] for a in approvals)))
    rows += [("Released by", manifest.get("released_by", "—")), ("Code version", str(manifest.get("code_version", "—"))[:12])]
    return rows


def public_key_pem() -> bytes | None:
    """The release-signing public key that sponsors verify with, or None before one exists."""
    from django.conf import settings

    path = settings.SIGNING_KEY_PATH.with_suffix(".pub.pem")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def public_key_fingerprint() -> str | None:
    from egress.signing import load_public_key
    from egress.signing import public_key_fingerprint as fingerprint

    pem = public_key_pem()
    return fingerprint(load_public_key(pem)) if pem else None
