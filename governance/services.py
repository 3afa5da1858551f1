"""Every governance write. Each runs in a transaction with its audit event; status changes go
through `request_transition` / `ethics_transition`, driven by the tables in workflow.py."""

from __future__ import annotations

import hashlib
import random
import secrets
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Iterable

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from governance import hooks, privacy_budget
from governance.cohorts import (
    CohortDefinitionError,
    cohort_counts,
    cohort_records,
    definition_hash,
    disclosed_count,
    validate_definition,
)
from governance.models import (
    Cohort,
    CohortRecord,
    DataAccessRequest,
    Dataset,
    DirectIdentifier,
    DisclosurePolicy,
    EthicsApproval,
    Modality,
    Patient,
    Project,
    Record,
    RecordCondition,
)
from governance.records import ClinicalRecord, PatientIdentity
from governance.workflow import (
    ETHICS_MOVE_PERMISSION,
    ETHICS_TRANSITIONS,
    REQUEST_MOVE_PERMISSION,
    REQUEST_TRANSITIONS,
)
from portal import permissions as p
from portal.audit import record_event
from portal.models import Organisation, User

R = DataAccessRequest.Status
E = EthicsApproval.Status


class TransitionError(ValidationError):
    """A move the state machine does not allow from the current status."""


# Disclosure policy --------------------------------------------------------------------------

POLICY_FIELDS = ("min_patients", "rounding_base", "suppression_limit", "differencing_minimum", "holdout_fraction")


def policy_current() -> DisclosurePolicy:
    policy = DisclosurePolicy.objects.order_by("-version").first()
    if policy is None:  # a fresh database: version 1 holds the documented defaults
        with transaction.atomic():
            policy, created = DisclosurePolicy.objects.get_or_create(version=1, defaults={"note": "defaults"})
            if created:
                record_event(actor=None, verb="policy.created", target=policy, payload={"version": 1})
    return policy


def policy_update(*, by: User, note: str, **changes: Any) -> DisclosurePolicy:
    """Write a new version of the policy; earlier decisions keep pointing at theirs."""
    p.check_permission(by, p.POLICY_EDIT)
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise ValidationError({field: "Not a policy setting." for field in unknown})
    current = policy_current()
    values = {field: changes.get(field, getattr(current, field)) for field in POLICY_FIELDS}
    errors = {}
    if not 1 <= values["rounding_base"] <= 100:
        errors["rounding_base"] = "Between 1 and 100."
    if not 0.05 <= values["holdout_fraction"] <= 0.45:
        errors["holdout_fraction"] = "Between 0.05 and 0.45."
    if values["min_patients"] < 1 or values["suppression_limit"] < 1 or values["differencing_minimum"] < 1:
        errors["min_patients"] = "Minimums are at least 1."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        latest = DisclosurePolicy.objects.select_for_update().order_by("-version").first()
        policy = DisclosurePolicy.objects.create(version=latest.version + 1, note=note, created_by=by, **values)
        record_event(actor=by, verb="policy.updated", target=policy, payload={"version": policy.version, **values, "note": note})
    return policy


def required_patients(datasets: Iterable[Dataset], policy: DisclosurePolicy) -> int:
    """The policy's minimum, raised (never lowered) by any dataset's own threshold."""
    return max([policy.min_patients] + [d.min_patients for d in datasets if d.min_patients])


# Projects -------------------------------------------------------------------------------------

def project_create(
    *, by: User, title: str, lay_summary: str, members: Iterable[User] = (), sponsor: Organisation | None = None
) -> Project:
    p.check_permission(by, p.PROJECT_CREATE)
    if not title.strip() or not lay_summary.strip():
        raise ValidationError("A project needs a title and a lay summary.")
    if sponsor is not None and sponsor.kind != Organisation.Kind.SPONSOR:
        raise ValidationError({"sponsor": "The sponsor must be an external sponsor organisation."})
    with transaction.atomic():
        project = Project.objects.create(
            title=title.strip(), lay_summary=lay_summary.strip(), principal_investigator=by, created_by=by, sponsor=sponsor
        )
        member_list = [m for m in members if m.pk != by.pk]
        project.members.set([by, *member_list])
        record_event(
            actor=by, verb="project.created", target=project,
            payload={"title": project.title, "members": sorted(m.email for m in [by, *member_list]),
                     "sponsor": sponsor.name if sponsor else None},
        )
    return project


def project_add_member(*, project: Project, user: User, by: User) -> None:
    if by.pk != project.principal_investigator_id:
        raise PermissionDenied("Only the principal investigator adds members.")
    with transaction.atomic():
        project.members.add(user)
        record_event(actor=by, verb="project.member_added", target=project, payload={"member": user.email})


# Datasets and their record index ---------------------------------------------------------------

def dataset_register(
    *, by: User, name: str, title: str, modality: str, location: str, description: str = "",
    min_patients: int | None = None,
) -> Dataset:
    p.check_permission(by, p.DATASET_MANAGE)
    if modality not in Modality.values:
        raise ValidationError({"modality": f"Unknown modality {modality!r}."})
    policy = policy_current()
    if min_patients is not None and min_patients < policy.min_patients:
        raise ValidationError({"min_patients": f"A dataset may only raise the policy's minimum of {policy.min_patients}."})
    with transaction.atomic():
        if Dataset.objects.filter(name=name).exists():
            raise ValidationError({"name": f"A dataset named {name!r} already exists."})
        dataset = Dataset.objects.create(
            name=name, title=title, modality=modality, location=location, description=description,
            min_patients=min_patients, steward=by, pseudonym_salt=secrets.token_hex(16),
        )
        record_event(actor=by, verb="dataset.registered", target=dataset, payload={"name": name, "modality": modality})
    return dataset


def pseudonymous_key(dataset: Dataset, source_key: str) -> str:
    return "p" + hashlib.sha256(f"{dataset.pseudonym_salt}:{source_key}".encode()).hexdigest()[:20]


@dataclass
class ImportSummary:
    patients_added: int = 0
    records_added: int = 0
    records_unchanged: int = 0

    def as_dict(self) -> dict:
        return {"patients_added": self.patients_added, "records_added": self.records_added,
                "records_unchanged": self.records_unchanged}


def _identifier_rows(identity: PatientIdentity) -> list[tuple[str, str]]:
    K = DirectIdentifier.Kind
    rows = [(K.SOURCE_ID, identity.key), (K.BIRTH_DATE, identity.birth_date.isoformat())]
    if identity.given or identity.family:
        rows.append((K.NAME, f"{identity.given} {identity.family}".strip()))
    rows += [(kind, value) for kind, value in ((K.MRN, identity.mrn), (K.PHONE, identity.phone),
                                                 (K.NATIONAL_ID, identity.national_id)) if value]
    return rows


def dataset_import_records(
    *, dataset: Dataset, patients: Iterable[PatientIdentity], records: Iterable[ClinicalRecord], by: User | None,
    source: str,
) -> ImportSummary:
    """Add patients and records to the index, idempotently and all-or-nothing.

    The text of each record is written under the dataset's storage folder (inside the hospital);
    files are written before the transaction commits and removed again if it does not.
    """
    if by is not None:
        p.check_permission(by, p.DATASET_MANAGE)
    patients = list(patients)
    records = list(records)
    by_key = {identity.key: identity for identity in patients}
    for record in records:
        if record.patient_key not in by_key:
            raise ValidationError(f"Record {record.record_id}: its patient {record.patient_key!r} is not in the import.")
    summary = ImportSummary()
    written: list[Path] = []
    folder = dataset.storage_dir / "records"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with transaction.atomic():
            known = {pt.key: pt for pt in Patient.objects.filter(dataset=dataset)}
            new_patients = []
            for identity in patients:
                key = pseudonymous_key(dataset, identity.key)
                if key not in known:
                    new_patients.append(Patient(dataset=dataset, key=key, sex=identity.sex, birth_year=identity.birth_date.year))
            Patient.objects.bulk_create(new_patients, batch_size=2000)
            summary.patients_added = len(new_patients)
            if new_patients:
                known = {pt.key: pt for pt in Patient.objects.filter(dataset=dataset)}
                added = {pt.key for pt in new_patients}
                DirectIdentifier.objects.bulk_create(
                    [DirectIdentifier(patient=known[key], kind=kind, value=value)
                     for identity in patients if (key := pseudonymous_key(dataset, identity.key)) in added
                     for kind, value in _identifier_rows(identity)],
                    batch_size=2000, ignore_conflicts=True,
                )
            existing = set(Record.objects.filter(dataset=dataset).values_list("source_id", flat=True))
            new_records, conditions = [], []
            for record in records:
                if record.record_id in existing:
                    summary.records_unchanged += 1
                    continue
                existing.add(record.record_id)
                data = record.text.encode("utf-8")
                digest = hashlib.sha256(data).hexdigest()
                relative = f"records/{digest[:2]}/{digest}.txt"
                target = dataset.storage_dir / relative
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    written.append(target)
                attributes = dict(record.attributes)
                if record.attachment is not None:
                    attachment_digest = hashlib.sha256(record.attachment).hexdigest()
                    attachment_path = f"attachments/{attachment_digest[:2]}/{attachment_digest}{record.attachment_suffix}"
                    attachment_target = dataset.storage_dir / attachment_path
                    if not attachment_target.exists():
                        attachment_target.parent.mkdir(parents=True, exist_ok=True)
                        attachment_target.write_bytes(record.attachment)
                        written.append(attachment_target)
                    attributes.update(attachment_path=attachment_path, attachment_sha256=attachment_digest)
                patient = known[pseudonymous_key(dataset, record.patient_key)]
                row = Record(
                    dataset=dataset, patient=patient, source_id=record.record_id, record_date=record.record_date,
                    age=record.age_at_record, sex=patient.sex, document_type=record.document_type,
                    file_path=relative, sha256=digest, attributes=attributes,
                )
                new_records.append(row)
                conditions.append(record.conditions)
            Record.objects.bulk_create(new_records, batch_size=2000)
            if new_records and new_records[0].pk is None:  # backends that do not return ids
                ids = dict(Record.objects.filter(dataset=dataset, source_id__in=[r.source_id for r in new_records]).values_list("source_id", "pk"))
                for row in new_records:
                    row.pk = ids[row.source_id]
            RecordCondition.objects.bulk_create(
                [RecordCondition(dataset=dataset, record_id=row.pk, system=system, code=code)
                 for row, codes in zip(new_records, conditions) for system, code in sorted(set(codes))],
                batch_size=5000,
            )
            summary.records_added = len(new_records)
            record_event(actor=by, verb="dataset.imported", target=dataset, payload={"source": source, **summary.as_dict()})
        if connection.vendor == "sqlite" and summary.records_added:
            with connection.cursor() as cursor:  # keep the planner's statistics fresh for cohort counts
                cursor.execute("PRAGMA optimize")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return summary


def dataset_identifiers(dataset_ids: Iterable[int], patient_ids: Iterable[int] | None = None) -> list[tuple[str, str]]:
    """The direct identifiers of the given patients, for the egress scan only."""
    queryset = DirectIdentifier.objects.filter(patient__dataset_id__in=list(dataset_ids))
    if patient_ids is not None:
        queryset = queryset.filter(patient_id__in=list(patient_ids))
    return list(queryset.exclude(kind=DirectIdentifier.Kind.SOURCE_ID).values_list("kind", "value"))


# Ethics approvals -----------------------------------------------------------------------------

PDF_MAGIC = b"%PDF-"


def _store_letter(content: bytes) -> tuple[str, str]:
    if len(content) > settings.ETHICS_LETTER_MAX_BYTES:
        raise ValidationError({"letter": f"The letter is larger than {settings.ETHICS_LETTER_MAX_BYTES // (1024 * 1024)} MB."})
    head = content[:1024]
    if PDF_MAGIC not in head or b"%%EOF" not in content[-2048:]:
        raise ValidationError({"letter": "The letter is not a PDF file (its content does not start with %PDF- and end with %%EOF)."})
    digest = hashlib.sha256(content).hexdigest()
    folder = settings.UPLOADS_ROOT / "ethics"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.pdf"
    path.write_bytes(content)
    return str(path.relative_to(settings.UPLOADS_ROOT)), digest


def ethics_submit(
    *, by: User, project: Project, committee: str, reference: str, approved_on: date, expires_on: date,
    scope: str, letter: bytes,
) -> EthicsApproval:
    p.check_permission(by, p.ETHICS_SUBMIT, project=project)
    errors = {}
    if expires_on <= approved_on:
        errors["expires_on"] = "The expiry date must be after the approval date."
    if expires_on < timezone.localdate():
        errors["expires_on"] = "This approval has already expired."
    if not committee.strip() or not reference.strip():
        errors["reference"] = "Give the committee and its reference."
    if errors:
        raise ValidationError(errors)
    letter_path, digest = _store_letter(letter)
    with transaction.atomic():
        approval = EthicsApproval.objects.create(
            project=project, committee=committee.strip(), reference=reference.strip(), approved_on=approved_on,
            expires_on=expires_on, scope=scope, letter_path=letter_path, letter_sha256=digest, submitted_by=by,
        )
        record_event(actor=by, verb="ethics.submitted", target=approval,
                     payload={"project": project.pk, "reference": approval.reference, "letter_sha256": digest})
    return approval


def ethics_transition(*, approval: EthicsApproval, to: str, by: User | None, reason: str = "") -> EthicsApproval:
    """The one function that changes an ethics approval's status.

    Side effects: an audit event; on expiry or revocation, every approved request that relies on
    the approval is suspended (each with its own event).
    """
    permission = ETHICS_MOVE_PERMISSION[to]
    if by is None:
        if to != E.EXPIRED:
            raise PermissionDenied("Only expiry happens without a person.")
    elif to == E.EXPIRED:
        raise PermissionDenied("An ethics approval expires by its date, not by a person.")
    elif permission is not None:
        p.check_permission(by, permission, approval=approval)
    with transaction.atomic():
        approval = EthicsApproval.objects.select_for_update().get(pk=approval.pk)
        if approval.status == to:
            return approval
        if to not in ETHICS_TRANSITIONS[approval.status]:
            raise TransitionError(f"An ethics approval that is {approval.get_status_display().lower()} cannot become {E(to).label.lower()}.")
        if to in (E.REJECTED, E.REVOKED) and not reason.strip():
            raise ValidationError({"reason": "Give a reason."})
        if to == E.VERIFIED and approval.expires_on < timezone.localdate():
            raise ValidationError("This approval has already expired; it cannot be verified.")
        previous = approval.status
        approval.status = to
        if to in (E.VERIFIED, E.REJECTED):
            approval.decided_at, approval.decided_by = timezone.now(), by
        approval.decision_reason = reason or approval.decision_reason
        approval.save()
        record_event(actor=by, verb=f"ethics.{to}", target=approval, payload={"from": previous, "reason": reason})
        if to in (E.EXPIRED, E.REVOKED):
            for request in DataAccessRequest.objects.filter(ethics_approval=approval, status=R.APPROVED):
                request_transition(request=request, to=R.SUSPENDED, by=None,
                                   reason=f"Ethics approval {approval.reference} {E(to).label.lower()}.")
    return approval


def ethics_verify(*, approval: EthicsApproval, by: User) -> EthicsApproval:
    return ethics_transition(approval=approval, to=E.VERIFIED, by=by)


def ethics_reject(*, approval: EthicsApproval, by: User, reason: str) -> EthicsApproval:
    return ethics_transition(approval=approval, to=E.REJECTED, by=by, reason=reason)


def ethics_revoke(*, approval: EthicsApproval, by: User, reason: str) -> EthicsApproval:
    return ethics_transition(approval=approval, to=E.REVOKED, by=by, reason=reason)


def ethics_expire_due(*, today: date | None = None) -> int:
    """Mark verified approvals past their expiry date expired (the periodic task calls this)."""
    today = today or timezone.localdate()
    due = EthicsApproval.objects.filter(status=E.VERIFIED, expires_on__lt=today)
    count = 0
    for approval in due:
        ethics_transition(approval=approval, to=E.EXPIRED, by=None, reason=f"Expired on {approval.expires_on}.")
        count += 1
    return count


# Data-access requests -------------------------------------------------------------------------

REQUEST_EDITABLE = (R.DRAFT, R.CHANGES_REQUESTED)


def _validate_request_fields(*, project: Project, datasets: list[Dataset], modality: str, cohort_definition: Any,
                             base_model_name: str, recipe: dict, requested_epsilon: float | None,
                             ethics_approval: EthicsApproval | None) -> dict:
    errors: dict[str, str] = {}
    if not datasets:
        errors["datasets"] = "Choose at least one dataset."
    if modality not in Modality.values:
        errors["modality"] = f"Unknown modality {modality!r}."
    elif any(d.modality != modality for d in datasets):
        errors["datasets"] = f"Every dataset must hold {Modality(modality).label.lower()} data."
    if ethics_approval is not None and ethics_approval.project_id != project.pk:
        errors["ethics_approval"] = "That ethics approval belongs to another project."
    if requested_epsilon is not None and not 0 < requested_epsilon <= 100:
        errors["requested_epsilon"] = "ε must be above 0 and at most 100."
    target = privacy_budget.dp_target(recipe)
    if requested_epsilon is not None and "requested_epsilon" not in errors and target != requested_epsilon:
        errors["requested_epsilon"] = ("ε is what differentially private training targets: set recipe.dp.target_epsilon "
                                       "to the same value (or leave ε empty to take it from the recipe).")
    normalised = {}
    if datasets:
        try:
            normalised = validate_definition(cohort_definition, datasets)
        except CohortDefinitionError as exc:
            errors["cohort_definition"] = str(exc)
    for validator in hooks.request_validators:
        errors.update(validator(modality=modality, base_model_name=base_model_name, recipe=recipe,
                                requested_epsilon=requested_epsilon))
    if errors:
        raise ValidationError(errors)
    return normalised


def request_create(
    *, by: User, project: Project, datasets: Iterable[Dataset], title: str, purpose: str, modality: str,
    cohort_definition: Any, base_model_name: str, recipe: dict | None = None,
    ethics_approval: EthicsApproval | None = None, requested_epsilon: float | None = None,
) -> DataAccessRequest:
    p.check_permission(by, p.REQUEST_CREATE, project=project)
    datasets = list(datasets)
    recipe = recipe or {}
    if requested_epsilon is None:
        requested_epsilon = privacy_budget.dp_target(recipe)
    if not title.strip() or not purpose.strip():
        raise ValidationError("A request needs a title and a purpose.")
    definition = _validate_request_fields(
        project=project, datasets=datasets, modality=modality, cohort_definition=cohort_definition,
        base_model_name=base_model_name, recipe=recipe, requested_epsilon=requested_epsilon,
        ethics_approval=ethics_approval,
    )
    with transaction.atomic():
        request = DataAccessRequest.objects.create(
            project=project, title=title.strip(), purpose=purpose.strip(), modality=modality,
            cohort_definition=definition, base_model_name=base_model_name, recipe=recipe,
            ethics_approval=ethics_approval, requested_epsilon=requested_epsilon, created_by=by,
        )
        request.datasets.set(datasets)
        record_event(actor=by, verb="request.created", target=request,
                     payload={"project": project.pk, "datasets": sorted(d.name for d in datasets),
                              "base_model": base_model_name, "recipe": recipe})
    return request


def request_update(*, request: DataAccessRequest, by: User, **fields: Any) -> DataAccessRequest:
    """Edit a draft, or a request sent back with changes requested."""
    p.check_permission(by, p.REQUEST_EDIT, request=request)
    allowed = {"title", "purpose", "cohort_definition", "base_model_name", "recipe", "ethics_approval",
               "requested_epsilon", "datasets"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError({field: "This field cannot be changed." for field in unknown})
    with transaction.atomic():
        request = DataAccessRequest.objects.select_for_update().get(pk=request.pk)
        if request.status not in REQUEST_EDITABLE:
            raise TransitionError(f"A request that is {request.get_status_display().lower()} cannot be edited.")
        datasets = list(fields.pop("datasets", request.datasets.all()))
        merged = {name: fields.get(name, getattr(request, name)) for name in allowed - {"datasets"}}
        if "recipe" in fields and "requested_epsilon" not in fields:
            merged["requested_epsilon"] = privacy_budget.dp_target(merged["recipe"])  # ε follows the recipe's DP target
        merged["cohort_definition"] = _validate_request_fields(
            project=request.project, datasets=datasets, modality=request.modality,
            cohort_definition=merged["cohort_definition"], base_model_name=merged["base_model_name"],
            recipe=merged["recipe"], requested_epsilon=merged["requested_epsilon"],
            ethics_approval=merged["ethics_approval"],
        )
        for name, value in merged.items():
            setattr(request, name, value)
        request.save()
        request.datasets.set(datasets)
        record_event(actor=by, verb="request.updated", target=request, payload={"fields": sorted(set(fields) | {"datasets"})})
    return request


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def approval_checks(request: DataAccessRequest, *, today: date | None = None) -> list[Check]:
    """What must hold for approval, each with a sentence an officer can act on."""
    today = today or timezone.localdate()
    policy = policy_current()
    datasets = list(request.datasets.all())
    checks = []
    approval = request.ethics_approval
    if approval is None:
        checks.append(Check("ethics", False, "No ethics approval is attached."))
    elif approval.status != E.VERIFIED:
        checks.append(Check("ethics", False, f"Ethics approval {approval.reference} is {approval.get_status_display().lower()}."))
    elif not approval.is_valid_on(today):
        checks.append(Check("ethics", False, f"Ethics approval {approval.reference} is not valid today (valid {approval.approved_on} to {approval.expires_on})."))
    else:
        checks.append(Check("ethics", True, f"{approval.committee} {approval.reference}, valid until {approval.expires_on}."))
    needed = required_patients(datasets, policy)
    patients = None
    try:
        definition = validate_definition(request.cohort_definition, datasets)
        records, patients = cohort_counts(datasets, definition)
        checks.append(Check("threshold", patients >= needed,
                            f"{patients} distinct patients in {records} records; at least {needed} are needed."))
        if patients >= needed:
            clash = _differencing_clash(request, cohort_records(datasets, definition), policy)
            checks.append(Check("differencing", clash is None, clash or "Clear of every earlier cohort of this project."))
    except CohortDefinitionError as exc:
        checks.append(Check("threshold", False, f"The cohort definition is invalid: {exc}"))
    checks.extend(Check(*row) for row in privacy_budget.budget_checks(request, datasets, patients=patients))
    for validator in hooks.approval_checks:
        checks.extend(Check(*row) for row in validator(request=request, datasets=datasets))
    return checks


def _differencing_clash(request: DataAccessRequest, records, policy: DisclosurePolicy) -> str | None:
    patients = set(records.values_list("patient_id", flat=True).distinct())
    earlier = Cohort.objects.filter(request__project=request.project).exclude(request=request)
    for cohort in earlier:
        other = set(CohortRecord.objects.filter(cohort=cohort).values_list("patient_id", flat=True).distinct())
        difference = len(patients ^ other)
        if 0 < difference < policy.differencing_minimum:
            return (f"This cohort differs from an earlier cohort of the same project by fewer than "
                    f"{policy.differencing_minimum} patients; together they could single someone out.")
    return None


def cohort_preview(*, by: User, datasets: Iterable[Dataset], definition: Any) -> dict:
    """The researcher's live preview: rounded counts, small ones suppressed, never exact."""
    p.check_permission(by, p.REQUEST_VIEW)
    datasets = list(datasets)
    if not datasets:
        raise ValidationError({"datasets": "Choose at least one dataset."})
    try:
        normalised = validate_definition(definition, datasets)
    except CohortDefinitionError as exc:
        raise ValidationError({"definition": str(exc)}) from None
    policy = policy_current()
    records, patients = cohort_counts(datasets, normalised)
    needed = required_patients(datasets, policy)
    return {
        "patients": disclosed_count(patients, policy),
        "records": disclosed_count(records, policy),
        "threshold": needed,
        "meets_threshold": patients >= needed,
        "policy_version": policy.version,
    }


def _freeze_cohort(request: DataAccessRequest, policy: DisclosurePolicy) -> Cohort:
    datasets = list(request.datasets.all())
    definition = validate_definition(request.cohort_definition, datasets)
    rows = list(cohort_records(datasets, definition).order_by("pk").values_list("pk", "patient_id"))
    patients = sorted({patient for _, patient in rows})
    seed = secrets.randbits(48)
    shuffled = patients[:]
    random.Random(seed).shuffle(shuffled)
    holdout_size = max(1, round(len(shuffled) * policy.holdout_fraction))
    holdout = set(shuffled[:holdout_size])
    cohort = Cohort.objects.create(
        request=request, definition=definition, definition_hash=definition_hash(definition, datasets),
        record_count=len(rows), patient_count=len(patients), holdout_fraction=policy.holdout_fraction,
        split_seed=seed, policy=policy,
    )
    CohortRecord.objects.bulk_create(
        [CohortRecord(cohort=cohort, record_id=record, patient_id=patient,
                      split=CohortRecord.Split.HOLDOUT if patient in holdout else CohortRecord.Split.TRAIN)
         for record, patient in rows],
        batch_size=5000,
    )
    return cohort


def request_transition(
    *, request: DataAccessRequest, to: str, by: User | None, reason: str = "", conditions: str = ""
) -> DataAccessRequest:
    """The one function that changes a request's status.

    Locks the row, checks the transition table and the mover's permission (with separation of
    duties), records the decision pair, writes the audit event; approval also re-checks ethics,
    threshold and differencing and freezes the cohort. Moving to the current status is a no-op.
    """
    with transaction.atomic():
        # of=("self",): PostgreSQL cannot lock the nullable side of the outer join to ethics_approval.
        request = (DataAccessRequest.objects.select_for_update(of=("self",))
                   .select_related("project", "ethics_approval").get(pk=request.pk))
        permission = REQUEST_MOVE_PERMISSION[to]
        if by is None:
            if to != R.SUSPENDED:
                raise PermissionDenied("Only suspension happens without a person.")
        elif permission is not None:
            p.check_permission(by, permission, request=request)
        if request.status == to:  # after the permission check: a repeat is a no-op for those who may move
            return request
        if to not in REQUEST_TRANSITIONS[request.status]:
            raise TransitionError(
                f"A request that is {request.get_status_display().lower()} cannot be moved to {R(to).label.lower()}."
            )
        if to in (R.REJECTED, R.CHANGES_REQUESTED, R.SUSPENDED) and not reason.strip():
            raise ValidationError({"reason": "Give a reason; the researcher will see it."})
        now = timezone.now()
        previous = request.status
        payload: dict[str, Any] = {"from": previous, "to": to}
        if to == R.SUBMITTED:
            _validate_request_fields(
                project=request.project, datasets=list(request.datasets.all()), modality=request.modality,
                cohort_definition=request.cohort_definition, base_model_name=request.base_model_name,
                recipe=request.recipe, requested_epsilon=request.requested_epsilon,
                ethics_approval=request.ethics_approval,
            )
            request.submitted_at, request.submitted_by = now, by
        elif to == R.IN_REVIEW:
            request.reviewed_at, request.reviewed_by = now, by
        elif to in (R.APPROVED, R.REJECTED, R.CHANGES_REQUESTED):
            policy = policy_current()
            if to == R.APPROVED:
                # Lock the datasets first: two approvals must not both see the same budget remaining.
                list(Dataset.objects.select_for_update().filter(pk__in=request.datasets.values("pk")).order_by("pk"))
                failed = [c for c in approval_checks(request) if not c.passed]
                if failed:
                    raise ValidationError([f"{c.name}: {c.detail}" for c in failed])
                if previous == R.IN_REVIEW:
                    cohort = _freeze_cohort(request, policy)
                    payload.update(cohort_patients=cohort.patient_count, cohort_records=cohort.record_count,
                                   definition_hash=cohort.definition_hash, split_seed=cohort.split_seed)
                reserved = privacy_budget.budget_reserve(request=request, by=by)
                if reserved:
                    payload["privacy_budget_reserved"] = {e.dataset.name: e.epsilon for e in reserved}
            request.decided_at, request.decided_by = now, by
            request.decision_policy = policy
            request.decision_conditions = conditions
            request.decision_reason = reason
            payload.update(policy_version=policy.version, conditions=conditions)
        elif to == R.SUSPENDED:
            request.suspended_reason = reason
        elif to in (R.CLOSED, R.WITHDRAWN):
            request.closed_at = now
            privacy_budget.budget_free(request=request, by=by, reason=f"Request {R(to).label.lower()}.")
        if reason:
            payload["reason"] = reason
        request.status = to
        request.save()
        record_event(actor=by, verb=f"request.{to}", target=request, payload=payload)
    return request


def _decide(request: DataAccessRequest, *, to: str, by: User, reason: str = "", conditions: str = "") -> DataAccessRequest:
    """An officer's decision; a submitted request is taken into review first (two events, one transaction).

    The status is read under the row lock, so a racing decision waits for this one and then sees it.
    """
    with transaction.atomic():
        request = DataAccessRequest.objects.select_for_update().get(pk=request.pk)
        if request.status == R.SUBMITTED:
            request = request_transition(request=request, to=R.IN_REVIEW, by=by)
        return request_transition(request=request, to=to, by=by, reason=reason, conditions=conditions)


def request_submit(*, request: DataAccessRequest, by: User) -> DataAccessRequest:
    return request_transition(request=request, to=R.SUBMITTED, by=by)


def request_approve(*, request: DataAccessRequest, by: User, conditions: str = "") -> DataAccessRequest:
    return _decide(request, to=R.APPROVED, by=by, conditions=conditions)


def request_reject(*, request: DataAccessRequest, by: User, reason: str) -> DataAccessRequest:
    return _decide(request, to=R.REJECTED, by=by, reason=reason)


def request_changes(*, request: DataAccessRequest, by: User, reason: str) -> DataAccessRequest:
    return _decide(request, to=R.CHANGES_REQUESTED, by=by, reason=reason)


def request_withdraw(*, request: DataAccessRequest, by: User, reason: str = "") -> DataAccessRequest:
    return request_transition(request=request, to=R.WITHDRAWN, by=by, reason=reason)
