"""Factories and named personas: an officer, a researcher, a steward, two reviewers, a sponsor, an outsider."""

from __future__ import annotations

import itertools
from functools import cached_property

import pyotp

from portal import services
from portal.models import Organisation, Role, User

PASSWORD = "correct-horse-battery-staple"
_counter = itertools.count(1)


def organisation(name: str | None = None, kind: str = Organisation.Kind.HOSPITAL) -> Organisation:
    return services.organisation_create(name=name or f"Org {next(_counter)}", kind=kind)


def user(*roles: str, email: str | None = None, org: Organisation | None = None, totp: bool | None = None) -> User:
    n = next(_counter)
    created = services.user_create(
        email=email or f"person{n}@example.org",
        full_name=f"Person {n}",
        password=PASSWORD,
        organisation=org,
        roles=list(roles),
    )
    if totp if totp is not None else created.requires_two_factor:
        services.totp_set_secret(user=created, secret=pyotp.random_base32(), by=None)
    return created


def totp_code(user: User) -> str:
    return pyotp.TOTP(user.totp_secret).now()


def researcher(**kw) -> User:
    return user(Role.RESEARCHER, **kw)


def officer(**kw) -> User:
    return user(Role.GOVERNANCE_OFFICER, **kw)


def steward(**kw) -> User:
    return user(Role.DATA_STEWARD, **kw)


def reviewer(**kw) -> User:
    return user(Role.PRIVACY_REVIEWER, **kw)


def sponsor(org: Organisation | None = None, **kw) -> User:
    return user(Role.SPONSOR, org=org or organisation(kind=Organisation.Kind.SPONSOR), **kw)


def outsider(**kw) -> User:
    return user(**kw)


# Governance -------------------------------------------------------------------------------------
# Added for the governance services and API tests: small datasets with exact patient counts,
# projects, ethics approvals and requests, all made through the services.

from datetime import date, timedelta  # noqa: E402

from django.utils import timezone  # noqa: E402

from governance import services as governance_services  # noqa: E402
from governance.records import ClinicalRecord, PatientIdentity  # noqa: E402

PDF_LETTER = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
_CREATE = object()


def small_policy(*, by: User | None = None, **changes):
    """A disclosure policy small enough for hand-counted datasets (minimum 3, suppression 3, differencing 2)."""
    values = {"min_patients": 3, "suppression_limit": 3, "differencing_minimum": 2, **changes}
    return governance_services.policy_update(by=by or officer(), note="small test policy", **values)


def patient_identity(key: str, *, sex: str = "female", birth_date: date = date(1970, 1, 1)):
    n = next(_counter)
    return PatientIdentity(key=key, mrn=f"MRN{n:07d}", given="Test", family=f"Patient{n}", birth_date=birth_date,
                           sex=sex, phone="", national_id="")


def clinical_record(record_id: str, patient_key: str, *, age: int = 50, record_date: date = date(2020, 6, 1),
                    document_type: str = "discharge_summary", conditions: tuple = (), text: str | None = None):
    return ClinicalRecord(record_id=record_id, patient_key=patient_key, record_date=record_date,
                          document_type=document_type, conditions=tuple(conditions),
                          text=text or f"Synthetic note {record_id} for {patient_key}.", age_at_record=age)


def dataset(*, by: User | None = None, name: str | None = None, modality: str = "text", min_patients: int | None = None):
    n = next(_counter)
    return governance_services.dataset_register(
        by=by or steward(), name=name or f"dataset-{n}", title=f"Dataset {n}", modality=modality,
        location="test", min_patients=min_patients,
    )


def dataset_with_patients(n: int, *, by: User | None = None, name: str | None = None, ages=None, sex: str = "female",
                          document_type: str = "discharge_summary", conditions: tuple = (),
                          records_per_patient: int = 1, min_patients: int | None = None):
    """A text dataset of exactly `n` patients, each with `records_per_patient` records.

    Patient i (0-based) is `ages[i]` years old at every record (default 30 + i).
    """
    by = by or steward()
    target = dataset(by=by, name=name, min_patients=min_patients)
    ages = list(ages) if ages is not None else [30 + i for i in range(n)]
    patients = [patient_identity(f"{target.name}-p{i}", sex=sex) for i in range(n)]
    records = [
        clinical_record(f"{target.name}-r{i}-{j}", patients[i].key, age=ages[i], document_type=document_type,
                        conditions=conditions)
        for i in range(n) for j in range(records_per_patient)
    ]
    governance_services.dataset_import_records(dataset=target, patients=patients, records=records, by=by,
                                               source="tests")
    return target


def project(*, pi: User | None = None, members=(), title: str | None = None, sponsor_org: Organisation | None = None):
    return governance_services.project_create(
        by=pi or researcher(), title=title or f"Project {next(_counter)}", lay_summary="Training a clinical model.",
        members=members, sponsor=sponsor_org,
    )


def _new_project():
    return project()


def submitted_ethics(project, *, by: User | None = None, approved_on: date | None = None,
                     expires_on: date | None = None, letter: bytes = PDF_LETTER):
    today = timezone.localdate()
    return governance_services.ethics_submit(
        by=by or project.principal_investigator, project=project, committee="North Research Ethics Committee",
        reference=f"REC/{next(_counter)}", approved_on=approved_on or today - timedelta(days=30),
        expires_on=expires_on or today + timedelta(days=365), scope="Secondary use of discharge summaries.",
        letter=letter,
    )


def verified_ethics(project, *, by: User | None = None, verifier: User | None = None, **kw):
    """An ethics approval submitted by a project member and verified by an officer outside the project."""
    approval = submitted_ethics(project, by=by, **kw)
    return governance_services.ethics_verify(approval=approval, by=verifier or officer())


def text_base_model(name: str = "tiny-text"):
    """A registered, approved text base model (config and a placeholder weights file): requests must name one."""
    from django.conf import settings

    from training import services as training_services
    from training.models import BaseModel

    existing = BaseModel.objects.filter(name=name).first()
    if existing is not None:
        return existing
    folder = settings.DATA_ROOT / "base-models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "model.safetensors").write_bytes(b"placeholder weights")
    return training_services.base_model_register(by=None, path=folder, name=name, family="gpt2", modality="text",
                                                 licence="Apache-2.0")


def request(*, project=None, by: User | None = None, datasets=None, ethics_approval=_CREATE,
            cohort_definition=None, title: str | None = None, submit: bool = False, recipe: dict | None = None):
    """A draft data-access request (submitted with `submit=True`), with a verified ethics approval by default."""
    project = project or _new_project()
    by = by or project.principal_investigator
    if ethics_approval is _CREATE:
        ethics_approval = verified_ethics(project)
    text_base_model()
    created = governance_services.request_create(
        by=by, project=project, datasets=datasets if datasets is not None else [dataset_with_patients(5)],
        title=title or f"Request {next(_counter)}", purpose="Fine-tune a summariser.", modality="text",
        cohort_definition=cohort_definition or {}, base_model_name="tiny-text", ethics_approval=ethics_approval,
        recipe=recipe,
    )
    if submit:
        created = governance_services.request_submit(request=created, by=by)
    return created


class GovernancePersonas:
    """The governance tests' personas, each created on first use."""

    @cached_property
    def officer(self) -> User:
        return officer()

    @cached_property
    def officer_member(self) -> User:  # an officer who is also a researcher on the project
        return user(Role.GOVERNANCE_OFFICER, Role.RESEARCHER)

    @cached_property
    def researcher_member(self) -> User:
        return researcher()

    @cached_property
    def researcher_other(self) -> User:
        return researcher()

    @cached_property
    def steward(self) -> User:
        return steward()

    @cached_property
    def reviewer(self) -> User:
        return reviewer()

    @cached_property
    def sponsor(self) -> User:
        return sponsor()
