"""Every egress write: receiving, validating and judging adapters, sign-off, release, download.

`adapter_transition` is the one function that changes an adapter's status. Training calls in
through the hooks registered in apps.py; egress calls training's services (never the reverse).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from egress import audit_gates, selectors
from egress.models import Adapter, AuditPolicy, Download, Release, SignOff, TermsAcceptance
from governance.models import CohortRecord
from governance.services import dataset_identifiers
from portal import permissions as p
from portal.audit import record_event, record_event_now
from portal.models import ApiToken, Organisation, Role, User
from training import services as training_services
from training.models import TrainingJob

A = Adapter.Status
ADAPTER_FILE = "adapter_model.safetensors"
REJECTED_RETENTION = timedelta(days=30)
REQUIRED_APPROVALS = 2

ADAPTER_TRANSITIONS: dict[str, frozenset[str]] = {
    A.QUARANTINED: frozenset({A.VALIDATED, A.REJECTED}),
    A.VALIDATED: frozenset({A.IN_REVIEW, A.REJECTED}),
    A.IN_REVIEW: frozenset({A.APPROVED, A.REJECTED}),
    A.APPROVED: frozenset({A.RELEASED, A.REJECTED}),
    A.RELEASED: frozenset({A.REVOKED}),
    A.REJECTED: frozenset(),
    A.REVOKED: frozenset(),
}
# Who moves an adapter into each status; None: the system (validator, audit), never a person.
ADAPTER_MOVE_PERMISSION: dict[str, str | None] = {
    A.QUARANTINED: None, A.VALIDATED: None, A.IN_REVIEW: None,
    A.APPROVED: p.ADAPTER_REVIEW, A.REJECTED: p.ADAPTER_REVIEW,
    A.RELEASED: p.RELEASE_CREATE, A.REVOKED: p.RELEASE_REVOKE,
}

DEFAULT_TERMS = (
    "You receive LoRA adapter weights trained inside {hospital} on patient data you will never see. "
    "You will use them only for the purpose approved in the data-access request, will not attempt to "
    "re-identify any person or to extract training data from the weights, will not pass them on outside "
    "your organisation, and will delete them when the hospital revokes this release."
)


class EgressError(ValidationError):
    pass


def audit_policy_current() -> AuditPolicy:
    policy = AuditPolicy.objects.order_by("-version").first()
    if policy is None:
        with transaction.atomic():
            policy, created = AuditPolicy.objects.get_or_create(version=1, defaults={"note": "defaults"})
            if created:
                record_event(actor=None, verb="audit_policy.created", target=policy, payload={"version": 1})
    return policy


def adapter_transition(*, adapter: Adapter, to: str, by: User | None, reason: str = "", payload: dict | None = None,
                       **fields: Any) -> Adapter:
    """Lock, check the table and the mover, set fields, write the event. Same-status is a no-op.

    Side effects: a rejected adapter gets a deletion date for its files (never downloadable).
    """
    permission = ADAPTER_MOVE_PERMISSION[to]
    if by is not None and permission is None:
        raise PermissionDenied("Only the validator and the audit move an adapter to this status.")
    if by is not None:
        p.check_permission(by, permission)
    with transaction.atomic():
        adapter = Adapter.objects.select_for_update().get(pk=adapter.pk)
        if adapter.status == to:
            return adapter
        if to not in ADAPTER_TRANSITIONS[adapter.status]:
            raise EgressError(f"An adapter that is {adapter.get_status_display().lower()} cannot become {A(to).label.lower()}.")
        previous = adapter.status
        adapter.status = to
        for name, value in fields.items():
            setattr(adapter, name, value)
        if to == A.REJECTED:
            adapter.rejected_reason = reason
            adapter.delete_after = timezone.now() + REJECTED_RETENTION
        adapter.save()
        record_event(actor=by, verb=f"adapter.{to}", target=adapter,
                     payload={"from": previous, "reason": reason, **(payload or {})})
    return adapter


# From training: receive, validate, audit ----------------------------------------------------------

def adapter_receive(*, job: TrainingJob, quarantine_dir: Path) -> Adapter:
    """Hook: a training job put its output in quarantine. Validation is queued after commit."""
    with transaction.atomic():
        adapter, created = Adapter.objects.get_or_create(job=job, defaults={"quarantine_dir": str(quarantine_dir)})
        if created:
            record_event(actor=None, verb="adapter.quarantined", target=adapter, payload={"job": str(job.pk)})
            from egress.tasks import task_validate_adapter

            adapter_id = str(adapter.pk)
            transaction.on_commit(lambda: task_validate_adapter.apply_async(kwargs={"adapter_id": adapter_id}))
    return adapter


def _validation_recipe(job: TrainingJob) -> dict:
    recipe = job.recipe
    return {"target_modules": recipe["target_modules"], "rank": recipe["rank"], "alpha": recipe["alpha"],
            "dropout": recipe.get("dropout", 0.0)}


def cohort_identifiers(job: TrainingJob) -> list[tuple[str, str]]:
    cohort = job.request.cohort
    patient_ids = set(CohortRecord.objects.filter(cohort=cohort).values_list("patient_id", flat=True))
    dataset_ids = list(job.request.datasets.values_list("pk", flat=True))
    return dataset_identifiers(dataset_ids, patient_ids)


def adapter_validate(*, adapter: Adapter) -> Adapter:
    """Run the firewall on the quarantined output, outside any sandbox (egress queue).

    Accepted: the rewritten file is kept beside the quarantine and the audit is queued.
    Rejected (any rule, or any exception): the adapter is rejected with every reason.
    Whatever else the job wrote is deleted either way; it is named in the report only.
    """
    from egress.validation import IdentifierSet, RewriteError, ValidationPolicy, rewrite_adapter, validate_adapter

    adapter = Adapter.objects.select_related("job__base_model", "job__request").get(pk=adapter.pk)
    if adapter.status != A.QUARANTINED:
        return adapter
    job = adapter.job
    quarantine = Path(adapter.quarantine_dir)
    policy = ValidationPolicy()
    try:
        identifiers = IdentifierSet.build(cohort_identifiers(job), min_length=policy.min_identifier_length)
        report = validate_adapter(quarantine, base_model_dir=job.base_model.local_path,
                                  recipe=_validation_recipe(job), identifiers=identifiers, policy=policy)
        rewrite: dict = {}
        if report.accepted:
            released_dir = quarantine.parent / f"{quarantine.name}-release"
            released_dir.mkdir(exist_ok=True)
            result = rewrite_adapter(quarantine / ADAPTER_FILE, released_dir / ADAPTER_FILE,
                                     base_model_dir=job.base_model.local_path, recipe=_validation_recipe(job),
                                     identifiers=identifiers, policy=policy)
            rewrite = {k: v for k, v in result.to_dict().items() if k not in ("source_report",)}
    except RewriteError as exc:
        report_dict = exc.report.to_dict() if exc.report else {"accepted": False, "reasons": [str(exc)]}
        return _reject_validation(adapter, report_dict, [f"rewrite: {exc}"])
    except Exception as exc:  # fail closed: anything unexpected is a rejection with its reason
        return _reject_validation(adapter, {"accepted": False}, [f"validator error: {exc.__class__.__name__}: {exc}"])
    finally:
        _delete_everything_but_adapter(quarantine)
    report_dict = report.to_dict()
    if not report.accepted:
        return _reject_validation(adapter, report_dict, report.reasons())
    with transaction.atomic():
        adapter = adapter_transition(
            adapter=adapter, to=A.VALIDATED, by=None,
            payload={"sha256": rewrite["sha256"], "size": rewrite["size"]},
            validation_report=report_dict, rewrite=rewrite, rewritten_path=rewrite["path"],
            sha256=rewrite["sha256"], size=rewrite["size"], validated_at=timezone.now(),
        )
        audit_job = training_services.audit_start(parent=job, adapter_path=Path(rewrite["path"]))
        Adapter.objects.filter(pk=adapter.pk).update(audit_job=audit_job)
        adapter.audit_job = audit_job  # the caller gets the adapter as stored, audit job included
    return adapter


def _reject_validation(adapter: Adapter, report: dict, reasons: list[str]) -> Adapter:
    return adapter_transition(adapter=adapter, to=A.REJECTED, by=None, reason="Validation failed: " + "; ".join(reasons)[:2000],
                              payload={"rules_failed": reasons[:20]}, validation_report=report)


def _delete_everything_but_adapter(quarantine: Path) -> None:
    if not quarantine.is_dir():
        return
    for entry in quarantine.iterdir():
        if entry.name == ADAPTER_FILE and entry.is_file() and not entry.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def audit_receive(*, job: TrainingJob) -> Adapter | None:
    """Hook: an audit job ended. Passing every gate sends the adapter to review; else it is rejected."""
    adapter = Adapter.objects.filter(audit_job=job).first()
    if adapter is None:
        return None
    if job.status != TrainingJob.Status.SUCCEEDED:
        return adapter_transition(adapter=adapter, to=A.REJECTED, by=None,
                                  reason=f"The privacy audit did not complete ({job.get_status_display().lower()}); "
                                         "an unaudited adapter never leaves.")
    policy = audit_policy_current()
    verdict = audit_gates.evaluate(job.result, policy)
    report = {**verdict, "metrics": job.result}
    if verdict["passed"]:
        return adapter_transition(adapter=adapter, to=A.IN_REVIEW, by=None, payload={"gates": verdict["gates"]},
                                  audit_report=report, audit_policy=policy)
    failed = [g for g in verdict["gates"] if g["status"] == audit_gates.FAIL]
    reason = "Privacy audit failed: " + "; ".join(f"{g['gate']} = {g['value']} (limit {g['threshold']})" for g in failed)
    return adapter_transition(adapter=adapter, to=A.REJECTED, by=None, reason=reason,
                              payload={"gates": verdict["gates"]}, audit_report=report, audit_policy=policy)


def audit_job_finished(*, job: TrainingJob) -> None:
    audit_receive(job=job)


# Review ---------------------------------------------------------------------------------------------

def signoff_refusal(adapter: Adapter, reviewer: User) -> str | None:
    request = adapter.job.request
    if not reviewer.has_role(Role.PRIVACY_REVIEWER):
        return "Only privacy reviewers sign adapters off."
    if request.project.is_member(reviewer) or reviewer.pk in {request.created_by_id, request.submitted_by_id, adapter.job.created_by_id}:
        return "Nobody signs off an adapter from their own project or request."
    if adapter.signoffs.filter(reviewer=reviewer).exists():
        return "You have already signed this adapter off; a second reviewer must decide."
    return None


def signoff_record(*, adapter: Adapter, by: User, decision: str, reason: str) -> SignOff:
    """One reviewer's decision. Two distinct approvals approve; one rejection rejects."""
    p.check_permission(by, p.ADAPTER_REVIEW)
    if decision not in SignOff.Decision.values:
        raise ValidationError({"decision": "approve or reject."})
    if not reason.strip():
        raise ValidationError({"reason": "Give a reason either way; it is part of the release record."})
    refusal = signoff_refusal(Adapter.objects.select_related("job__request__project").get(pk=adapter.pk), by)
    if refusal:  # refused attempts are audited too
        record_event_now(actor=by, verb="adapter.signoff_refused", target=adapter, payload={"reason": refusal})
        raise PermissionDenied(refusal)
    with transaction.atomic():
        adapter = Adapter.objects.select_for_update().select_related("job__request__project").get(pk=adapter.pk)
        if adapter.status != A.IN_REVIEW:
            raise EgressError(f"This adapter is {adapter.get_status_display().lower()}, not awaiting review.")
        refusal = signoff_refusal(adapter, by)  # again under the lock: a double click never signs twice
        if refusal:
            raise PermissionDenied(refusal)
        signoff = SignOff.objects.create(adapter=adapter, reviewer=by, decision=decision, reason=reason.strip())
        record_event(actor=by, verb=f"adapter.signoff_{decision}", target=adapter, payload={"reason": reason.strip()})
        if decision == SignOff.Decision.REJECT:
            adapter_transition(adapter=adapter, to=A.REJECTED, by=by, reason=f"Rejected in review: {reason.strip()}")
        elif adapter.signoffs.filter(decision=SignOff.Decision.APPROVE).values("reviewer").distinct().count() >= REQUIRED_APPROVALS:
            adapter_transition(adapter=adapter, to=A.APPROVED, by=by, payload={"signoffs": REQUIRED_APPROVALS})
    return signoff


# Release -------------------------------------------------------------------------------------------

def signing_key():
    from egress.signing import load_private_key

    path = settings.SIGNING_KEY_PATH
    if not path.exists():
        raise EgressError(f"No release-signing key at {path}: create one with `python manage.py create_signing_key`.")
    return load_private_key(path)


def signing_key_create(*, by: User | None = None, force: bool = False) -> Path:
    from egress.signing import generate_keypair, public_key_fingerprint

    path = settings.SIGNING_KEY_PATH
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_keypair(path, path.with_suffix(".pub.pem"))
    with transaction.atomic():
        record_event(actor=by, verb="signing_key.created", payload={"fingerprint": public_key_fingerprint(key)})
    return path


def _release_preconditions(adapter: Adapter) -> list[str]:
    problems = training_services.training_preconditions(adapter.job.request)
    return [problem.replace("A job", "A release") for problem in problems]


def release_create(*, adapter: Adapter, organisation: Organisation, by: User, terms: str = "") -> Release:
    """Build, sign and record a release of an approved adapter to one sponsor organisation."""
    from egress.signing import build_release_zip
    from egress.validation import build_adapter_config, build_model_card, expected_adapter

    p.check_permission(by, p.RELEASE_CREATE)
    if organisation.kind != Organisation.Kind.SPONSOR:
        raise ValidationError({"organisation": "Releases go to external sponsor organisations."})
    adapter = Adapter.objects.select_related("job__base_model", "job__request__project", "audit_job").get(pk=adapter.pk)
    # An approved adapter may go to several sponsor organisations, one signed release each.
    if adapter.status not in (A.APPROVED, A.RELEASED):
        record_event_now(actor=by, verb="release.refused", target=adapter, payload={"reason": f"adapter is {adapter.status}"})
        raise EgressError(f"Only an approved adapter can be released; this one is {adapter.get_status_display().lower()}.")
    problems = _release_preconditions(adapter)
    if problems:
        record_event_now(actor=by, verb="release.refused", target=adapter, payload={"reason": problems})
        raise EgressError(problems)
    key = signing_key()
    job, request = adapter.job, adapter.job.request
    model = job.base_model
    recipe = _validation_recipe(job)
    expected = expected_adapter(model.local_path, recipe)
    adapter_bytes = Path(adapter.rewritten_path).read_bytes()
    if hashlib.sha256(adapter_bytes).hexdigest() != adapter.sha256:
        raise EgressError("The validated adapter file changed since validation; it will not be released.")
    facts = _release_facts(adapter)
    files = {
        ADAPTER_FILE: adapter_bytes,
        "adapter_config.json": (json.dumps(build_adapter_config(recipe, base_model_name=model.public_name, expected=expected,
                                                                task_type=_peft_task_type(model.modality)),
                                           indent=2, sort_keys=True) + "\n").encode(),
        "README.md": build_model_card(recipe, base_model_name=model.public_name, expected=expected,
                                      adapter_sha256=adapter.sha256, rounded_to_bf16=adapter.rewrite.get("rounded_to_bf16", False),
                                      facts={k: str(v) for k, v in facts["card"].items()}).encode(),
    }
    terms = terms.strip() or DEFAULT_TERMS.format(hospital="the hospital")
    signoffs = list(adapter.signoffs.select_related("reviewer").filter(decision=SignOff.Decision.APPROVE))
    manifest = {
        "format": "rapha-release/1",
        "release_to": organisation.name,
        "base_model": {"name": model.public_name, "registry_name": model.name, "manifest_sha256": model.manifest_sha256},
        "recipe": {k: v for k, v in job.recipe.items() if k not in ("canaries",)},
        "job": {"id": str(job.pk), "backend": job.backend, "image_id": job.image_id, "quantization": job.quantization,
                "eval_loss_base": job.eval_loss_base, "eval_loss_adapted": job.eval_loss_adapted},
        "code_version": code_version(),
        "cohort": facts["cohort"],
        "differential_privacy": facts["dp"],
        "audit": {"policy_version": adapter.audit_report.get("policy_version"),
                  "gates": [{k: g[k] for k in ("gate", "status", "value", "threshold")} for g in adapter.audit_report.get("gates", [])]},
        "validation": {"accepted": True, "rules_passed": sorted(
            v["rule"] for v in adapter.validation_report.get("verdicts", []) if v["status"] == "passed")},
        "approvals": [{"reviewer": s.reviewer.full_name, "at": s.created_at.isoformat()} for s in signoffs],
        "released_by": by.full_name,
        "released_at": timezone.now().isoformat(),
        "terms_sha256": hashlib.sha256(terms.encode()).hexdigest(),
    }
    try:
        with transaction.atomic():
            adapter_locked = Adapter.objects.select_for_update().get(pk=adapter.pk)
            if adapter_locked.status not in (A.APPROVED, A.RELEASED):
                raise EgressError(f"The adapter became {adapter_locked.get_status_display().lower()} meanwhile; not released.")
            if Release.objects.filter(adapter=adapter_locked, organisation=organisation).exists():
                raise EgressError(f"This adapter has already been released to {organisation.name}.")
            manifest["privacy_budget"] = _spend_privacy_budget(adapter_locked, request, facts["dp"], by=by)
            release = Release(adapter=adapter_locked, organisation=organisation, terms=terms,
                              terms_sha256=manifest["terms_sha256"], created_by=by)
            manifest["release_id"] = str(release.pk)
            folder = settings.RELEASES_ROOT / str(release.pk)
            folder.mkdir(parents=True, exist_ok=True)
            zip_path = folder / "release.zip"
            digest = build_release_zip(zip_path, files, manifest, key)
            full_manifest = json.loads(_read_member(zip_path, "manifest.json"))
            release.zip_path = str(zip_path)
            release.zip_sha256 = training_services.sha256_file(zip_path)
            release.manifest = full_manifest
            release.manifest_sha256 = digest
            release.signature = _read_member(zip_path, "manifest.sig").decode().strip()
            release.save()
            if adapter_locked.status != A.RELEASED:
                release.adapter = adapter_transition(adapter=adapter_locked, to=A.RELEASED, by=by, payload={
                    "release": str(release.pk), "organisation": organisation.name, "manifest_sha256": digest})
            record_event(actor=by, verb="release.created", target=release,
                         payload={"adapter": str(adapter.pk), "organisation": organisation.name, "manifest_sha256": digest,
                                  "zip_sha256": release.zip_sha256})
    except BudgetRefused as exc:
        # Audited outside the rolled-back transaction, so the refusal stays on record.
        record_event_now(actor=by, verb="release.refused", target=adapter, payload={"reason": str(exc)})
        raise
    return release


def code_version() -> str:
    """RAPHA_CODE_VERSION, else the checked-out git commit, else "unknown"."""
    if settings.CODE_VERSION != "dev":
        return settings.CODE_VERSION
    git = settings.BASE_DIR / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                return ref_file.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        return head
    except OSError:
        return "unknown"


def _read_member(zip_path: Path, name: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(zip_path) as archive:
        return archive.read(name)


class BudgetRefused(EgressError):
    """The release would pass a dataset's privacy budget, or spends ε an adapter did not report."""


def _spend_privacy_budget(adapter: Adapter, request, dp: dict | None, *, by: User) -> list[dict]:
    """Spend the adapter's ε on each budgeted dataset (once per adapter); the manifest's ledger facts.

    Runs inside the release's transaction: a refusal is audited on its own and releases nothing.
    """
    from governance import privacy_budget

    try:
        entries = privacy_budget.budget_spend(
            request=request, epsilon=(dp or {}).get("epsilon"), delta=(dp or {}).get("delta"), reference=str(adapter.pk), by=by)
    except ValidationError as exc:
        raise BudgetRefused(exc.messages[0]) from None
    facts = []
    for entry in entries:
        status = privacy_budget.budget_status(entry.dataset)
        facts.append({"dataset": entry.dataset.name, "epsilon_spent": entry.epsilon, "budget_epsilon": status.budget,
                      "remaining_epsilon": round(status.remaining, 6), "period_days": status.period_days,
                      "composition": privacy_budget.COMPOSITION})
    return facts


def _peft_task_type(modality: str) -> str | None:
    """The peft task type the sandbox trained with (it decides the PeftModel class a sponsor loads)."""
    from training.runtime.recipes import recipe_class

    return recipe_class(modality).peft_task_type


def _release_facts(adapter: Adapter) -> dict:
    from governance.cohorts import disclosed_count
    from governance.services import policy_current

    cohort = adapter.job.request.cohort
    disclosed = disclosed_count(cohort.patient_count, policy_current())
    dp_facts = selectors.dp_facts(adapter)
    card = {"Cohort size (patients, rounded)": disclosed["display"], "Validation": "passed",
            "Privacy audit": "passed", "Reviewers": "two independent privacy reviewers"}
    if dp_facts:
        card["Differential privacy"] = f"ε = {dp_facts['epsilon']}, δ = {dp_facts['delta']} per patient"
    return {"cohort": {"patients": disclosed["display"], "definition_sha256": cohort.definition_hash}, "dp": dp_facts, "card": card}


def release_revoke(*, release: Release, by: User, reason: str) -> Release:
    p.check_permission(by, p.RELEASE_REVOKE)
    if not reason.strip():
        raise ValidationError({"reason": "Give a reason; the sponsor sees it."})
    with transaction.atomic():
        release = Release.objects.select_for_update().get(pk=release.pk)
        if release.is_revoked:
            return release
        release.revoked_at, release.revoked_by, release.revoked_reason = timezone.now(), by, reason.strip()
        release.save()
        record_event(actor=by, verb="release.revoked", target=release, payload={"reason": reason.strip()})
        if not Release.objects.filter(adapter=release.adapter, revoked_at__isnull=True).exists():
            adapter_transition(adapter=release.adapter, to=A.REVOKED, by=by, reason=reason.strip())
    return release


# Sponsors --------------------------------------------------------------------------------------------

def _sponsor_refusal(release: Release, user: User, token: ApiToken | None, scope: str) -> str | None:
    if not user.has_role(Role.SPONSOR) or user.organisation_id != release.organisation_id:
        return "not-visible"
    if token is not None:
        if not token.is_usable():
            return "This token has expired or been revoked."
        if token.organisation_id != release.organisation_id:
            return "not-visible"
        if scope not in token.scopes:
            return f"This token lacks the {scope} scope."
    if release.is_revoked:
        return f"This release was revoked on {release.revoked_at:%Y-%m-%d}: {release.revoked_reason}"
    return None


def terms_accept(*, release: Release, by: User, token: ApiToken | None = None) -> TermsAcceptance:
    refusal = _sponsor_refusal(release, by, token, ApiToken.Scope.RELEASES_DOWNLOAD)
    if refusal == "not-visible":
        raise Release.DoesNotExist()
    if refusal:
        raise PermissionDenied(refusal)
    with transaction.atomic():
        acceptance, created = TermsAcceptance.objects.get_or_create(
            release=release, user=by, defaults={"terms_sha256": release.terms_sha256})
        if created:
            record_event(actor=by, verb="release.terms_accepted", target=release,
                         payload={"terms_sha256": release.terms_sha256, "token": token.prefix if token else None})
    return acceptance


def release_download(*, release: Release, by: User, token: ApiToken | None, address: str | None) -> Path:
    """Check and record one download; returns the zip's path. Refusals are audited too."""
    refusal = _sponsor_refusal(release, by, token, ApiToken.Scope.RELEASES_DOWNLOAD)
    if refusal is None and not TermsAcceptance.objects.filter(release=release, user=by, terms_sha256=release.terms_sha256).exists():
        refusal = "Accept the data-use terms of this release before the first download."
    payload = {"token": token.prefix if token else None, "address": address}
    if refusal:
        record_event_now(actor=by, verb="release.download_refused", target=release,
                         payload={**payload, "reason": "not visible" if refusal == "not-visible" else refusal})
        if refusal == "not-visible":
            raise Release.DoesNotExist()
        raise PermissionDenied(refusal)
    with transaction.atomic():
        Download.objects.create(release=release, user=by, token=token, address=address or None)
        record_event(actor=by, verb="release.downloaded", target=release, payload={**payload, "zip_sha256": release.zip_sha256})
    return Path(release.zip_path)


def delete_expired_rejections(*, now=None) -> int:
    """Delete the files of adapters rejected longer ago than the retention period."""
    now = now or timezone.now()
    count = 0
    for adapter in Adapter.objects.filter(status=A.REJECTED, delete_after__lt=now, files_deleted_at__isnull=True):
        for folder in (Path(adapter.quarantine_dir), Path(adapter.quarantine_dir + "-release")):
            shutil.rmtree(folder, ignore_errors=True)
        with transaction.atomic():
            Adapter.objects.filter(pk=adapter.pk).update(files_deleted_at=now)
            record_event(actor=None, verb="adapter.files_deleted", target=adapter)
        count += 1
    return count
