"""Arrange helpers that build the real state of one round through the services, in seconds.

Each function returns the object a test acts on and makes whatever it needs that was not given:
`approved_request()` an approved request with a frozen cohort of synthetic patients,
`succeeded_job()` a training job moved to succeeded by the worker's transitions,
`adapter_in_review()` an adapter from stock peft that passed the real validator and a passing
audit, `approved_adapter()` one signed off by two reviewers, `release()` one released to a sponsor.

Models are tiny and built once per test session (the database is per test, so each test registers
the cached folder again). Nothing here queues work that must run: tasks queued on commit find
their objects already finished, or are never sent inside a test's transaction.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from egress import services as egress_services
from egress.models import Adapter, Release
from governance import services as governance_services
from governance.models import DataAccessRequest, Dataset
from governance.synthetic import generate_hospital, synthetic_corpus
from portal.models import Organisation, User
from tests import factories
from training import services as training_services
from training.models import BaseModel, TrainingJob

S = TrainingJob.Status
TINY_LM = {"vocab_size": 500, "hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "max_positions": 64,
           "pretrain_epochs": 0}
TINY_MODEL_NAME = "tiny-llama"
# A recipe the tiny model can take: one layer, Llama-style attention projections.
TINY_RECIPE = {"rank": 4, "alpha": 8, "epochs": 1, "target_modules": ["q_proj", "v_proj"]}
ADAPTER_FILE = "adapter_model.safetensors"

_session_dir: Path | None = None
_built: dict[str, Path] = {}
_adapters: dict[tuple, bytes] = {}


def isolate_storage(settings, tmp_path: Path) -> None:
    """What tests/conftest.py's `_isolated_storage` does, under a folder of the caller's choosing:
    this test's own data, model, staging, quarantine, release and upload folders and signing key."""
    for name in ("DATA_ROOT", "STAGING_ROOT", "QUARANTINE_ROOT", "RELEASES_ROOT", "UPLOADS_ROOT", "MODELS_ROOT"):
        folder = tmp_path / name.lower()
        folder.mkdir(exist_ok=True)
        setattr(settings, name, folder)
    settings.SIGNING_KEY_PATH = tmp_path / "keys" / "signing.pem"
    settings.STORAGES = {**settings.STORAGES,
                         "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


def fast_passwords(settings) -> None:
    """MD5 password hashing: creating a persona then takes milliseconds instead of a second."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


PERSONAS = ("anonymous", "officer", "member", "non_member", "steward", "reviewer", "sponsor", "other_sponsor")


@dataclass
class Cast:
    """Named personas: `member` leads the project, `sponsor` belongs to the organisation that
    sponsors it (and receives its releases), `other_sponsor` to another sponsor organisation."""

    officer: User
    member: User
    non_member: User
    steward: User
    reviewer: User
    second_reviewer: User
    sponsor: User
    other_sponsor: User

    def person(self, persona: str) -> User | None:
        return None if persona == "anonymous" else getattr(self, persona)

    @property
    def sponsor_org(self) -> Organisation:
        return self.sponsor.organisation


def cast() -> Cast:
    return Cast(
        officer=factories.officer(), member=factories.researcher(), non_member=factories.researcher(),
        steward=factories.steward(), reviewer=factories.reviewer(), second_reviewer=factories.reviewer(),
        sponsor=factories.sponsor(), other_sponsor=factories.sponsor(),
    )


def signed_in(client, user: User | None):
    """Sign `user` in on a Django or DRF test client, past the second factor (None: stay anonymous)."""
    from portal.middleware import SESSION_KEY

    if user is not None:
        client.force_login(user)
        session = client.session
        session[SESSION_KEY] = True
        session.save()
    return client


def _cache_dir() -> Path:
    global _session_dir
    if _session_dir is None:
        _session_dir = Path(tempfile.mkdtemp(prefix="rapha-flow-"))
        _session_dir.chmod(0o711)  # the sandbox's unprivileged user reads the models under it
        atexit.register(shutil.rmtree, _session_dir, ignore_errors=True)
    return _session_dir


def tiny_model_folder() -> Path:
    """A Llama-style model with one layer and a tokenizer of 500 tokens, built once per session."""
    if TINY_MODEL_NAME not in _built:
        from training.runtime.build import build_text_lm

        corpus = list(synthetic_corpus(generate_hospital(30, seed=11)))
        folder = _cache_dir() / TINY_MODEL_NAME
        _built[TINY_MODEL_NAME] = build_text_lm(folder, corpus, **TINY_LM)
    return _built[TINY_MODEL_NAME]


def tiny_base_model(*, by: User | None = None) -> BaseModel:
    """Register the session's tiny model (approved, text) in this test's database."""
    return training_services.base_model_register(
        by=by, path=tiny_model_folder(), name=TINY_MODEL_NAME, family="llama", modality="text",
        licence="Apache-2.0", public_name="Tiny Llama (test)",
    )


def hospital_dataset(*, n_patients: int = 12, seed: int = 5, steward: User | None = None) -> Dataset:
    """A text dataset of `n_patients` synthetic patients (1-8 notes each), imported by a steward."""
    steward = steward or factories.steward()
    hospital = generate_hospital(n_patients, seed=seed)
    dataset = governance_services.dataset_register(
        by=steward, name=f"notes-{Dataset.objects.count() + 1}-{seed}", title="Synthetic discharge notes",
        modality="text", location="synthetic",
    )
    governance_services.dataset_import_records(dataset=dataset, patients=hospital.patients, records=hospital.records,
                                               by=steward, source="synthetic")
    return dataset


def approved_request(
    *, n_patients: int = 12, researcher: User | None = None, officer: User | None = None,
    steward: User | None = None, members: tuple[User, ...] = (), sponsor_org: Organisation | None = None,
    recipe: dict | None = None, title: str = "Draft discharge summaries", cast: Cast | None = None,
) -> DataAccessRequest:
    """An approved request (frozen cohort) of a new project led by `researcher`.

    With `cast`, its member leads the project, its officer decides, its steward imports the data
    and its sponsor's organisation sponsors the project.

    The disclosure policy's minimum is lowered to 5 patients (suppression 5, differencing 2) so a
    dozen synthetic patients make a valid cohort; the officer verifies the ethics approval and
    approves the request, the researcher does everything else.
    """
    if cast is not None:
        researcher, officer, steward = cast.member, cast.officer, cast.steward
        sponsor_org = sponsor_org or cast.sponsor_org
    officer = officer or factories.officer()
    researcher = researcher or factories.researcher()
    governance_services.policy_update(by=officer, note="small cohorts for tests", min_patients=5,
                                      suppression_limit=5, differencing_minimum=2)
    model = tiny_base_model()
    dataset = hospital_dataset(n_patients=n_patients, steward=steward)
    project = governance_services.project_create(
        by=researcher, title=f"{title} (project)", lay_summary="Help clinicians draft discharge summaries.",
        members=members, sponsor=sponsor_org,
    )
    today = timezone.localdate()
    ethics = governance_services.ethics_submit(
        by=researcher, project=project, committee="North Research Ethics Committee", reference="REC/24/0042",
        approved_on=today - timedelta(days=30), expires_on=today + timedelta(days=365),
        scope="Fine-tuning on discharge notes.", letter=factories.PDF_LETTER,
    )
    governance_services.ethics_verify(approval=ethics, by=officer)
    request = governance_services.request_create(
        by=researcher, project=project, datasets=[dataset], title=title, purpose="A drafting aid for clinicians.",
        modality="text", cohort_definition={}, base_model_name=model.name,
        recipe=dict(TINY_RECIPE if recipe is None else recipe), ethics_approval=ethics,
    )
    governance_services.request_submit(request=request, by=researcher)
    return governance_services.request_approve(request=request, by=officer, conditions="Tests.")


def loss_curve(steps: int = 24, start: float = 6.2, end: float = 2.9) -> list[list[float]]:
    """A plausible decreasing training-loss curve of [step, loss] points."""
    return [[step, round(end + (start - end) * (0.82 ** step), 4)] for step in range(1, steps + 1)]


def succeeded_job(*, request: DataAccessRequest, by: User | None = None, final_metrics: dict | None = None) -> TrainingJob:
    """`job_start`, then the worker's moves (staging, running, succeeded) with its progress numbers."""
    by = by or request.project.principal_investigator
    with transaction.atomic():
        job = training_services.job_start(request=request, by=by)
        job = training_services.job_transition(job=job, to=S.STAGING)
        job = training_services.job_transition(job=job, to=S.RUNNING, backend="bubblewrap")
        curve = loss_curve()
        metrics = {"eval_loss_base": 6.4, "eval_loss_adapted": 3.1, "qlora": 0, "lora_moved": 1, **(final_metrics or {})}
        job = training_services.job_transition(
            job=job, to=S.SUCCEEDED, quantization="none", step=len(curve), total_steps=len(curve),
            loss=curve[-1][1], tokens_per_second=850.0, eta_seconds=0.0, eval_loss_base=metrics["eval_loss_base"],
            eval_loss_adapted=metrics["eval_loss_adapted"], loss_curve=curve, final_metrics=metrics,
        )
    return job


def peft_adapter_bytes(recipe: dict) -> bytes:
    """adapter_model.safetensors as stock peft saves it for the tiny model (cached per recipe).

    lora_B gets small random values, as after a few steps of training (peft initialises it to zero).
    """
    key = (tuple(recipe["target_modules"]), recipe["rank"], recipe["alpha"], recipe.get("dropout", 0.0))
    if key not in _adapters:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_folder(), local_files_only=True)
        peft_model = get_peft_model(model, LoraConfig(r=recipe["rank"], lora_alpha=recipe["alpha"],
                                                      lora_dropout=recipe.get("dropout", 0.0),
                                                      target_modules=list(recipe["target_modules"])))
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.02)
        out = Path(tempfile.mkdtemp(dir=_cache_dir()))
        peft_model.save_pretrained(out, safe_serialization=True)
        _adapters[key] = (out / ADAPTER_FILE).read_bytes()
    return _adapters[key]


def _attack(auc: float, *, n_members: int, n_nonmembers: int, p_value: float) -> dict:
    roc = [[round(x / 10, 2), round(min(1.0, (x / 10) ** (1 / (1 + (auc - 0.5) * 4))), 4)] for x in range(11)]
    return {"n_members": n_members, "n_nonmembers": n_nonmembers, "auc": auc, "auc_ci_low": round(auc - 0.06, 4),
            "auc_ci_high": round(auc + 0.06, 4), "p_value": p_value, "tpr_at_1pct_fpr": 0.012,
            "tpr_at_0_1pct_fpr": 0.0, "tpr_at_1pct_fpr_lower": 0.001, "roc": roc}


def passing_audit_numbers(*, n_members: int = 400, n_nonmembers: int = 400) -> dict:
    """Audit numbers that pass every gate of the default audit policy (valid against the schema)."""
    from training.runtime.schema import validate_audit

    numbers = {
        "schema_version": 1,
        "membership": {
            "loss": _attack(0.53, n_members=n_members, n_nonmembers=n_nonmembers, p_value=0.21),
            "reference": _attack(0.51, n_members=n_members, n_nonmembers=n_nonmembers, p_value=0.4),
            "zlib": _attack(0.52, n_members=n_members, n_nonmembers=n_nonmembers, p_value=0.3),
        },
        "extraction": {
            "prompt_fraction": 0.5, "suffix_tokens": 32, "near_threshold": 0.9,
            "members": {"n": 50, "exact": 0, "near": 1, "exact_rate": 0.0, "near_rate": 0.02},
            "nonmembers": {"n": 50, "exact": 0, "near": 1, "exact_rate": 0.0, "near_rate": 0.02},
            "exact_p_value": 1.0, "near_p_value": 0.75,
        },
        "canaries": {
            "log2_space": 26.6, "n_candidates": 100000, "max_exposure": 3.1,
            "groups": [
                {"repeats": 1, "n_canaries": 4, "exposure": [1.2, 0.4, 2.0, 0.9], "exposure_mean": 1.125,
                 "exposure_max": 2.0, "exposure_extrapolated": [1.3, 0.5, 2.1, 1.0], "exposure_extrapolated_mean": 1.225},
                {"repeats": 10, "n_canaries": 4, "exposure": [2.5, 3.1, 1.9, 2.2], "exposure_mean": 2.425,
                 "exposure_max": 3.1, "exposure_extrapolated": [2.6, 3.2, 2.0, 2.3], "exposure_extrapolated_mean": 2.525},
            ],
        },
        "elapsed_seconds": 12.5,
    }
    return validate_audit(numbers)


def adapter_in_review(
    *, request: DataAccessRequest | None = None, job: TrainingJob | None = None, audit: dict | None = None,
    **request_kwargs,
) -> Adapter:
    """An adapter awaiting privacy review: stock-peft weights in quarantine, received and checked by
    the real validator (which queues the audit job), and that audit job succeeded with `audit`
    (passing numbers by default) before `audit_receive` judged it against the gates.

    Pass `audit` with failing numbers to get a rejected adapter instead.
    """
    with transaction.atomic():
        if job is None:
            job = succeeded_job(request=request or approved_request(**request_kwargs))
        quarantine = Path(django_settings.QUARANTINE_ROOT) / str(job.pk)
        quarantine.mkdir(parents=True, exist_ok=True)
        (quarantine / ADAPTER_FILE).write_bytes(peft_adapter_bytes(job.recipe))
        adapter = egress_services.adapter_receive(job=job, quarantine_dir=quarantine)
        adapter = egress_services.adapter_validate(adapter=adapter)
        adapter.refresh_from_db()
        if adapter.status != Adapter.Status.VALIDATED:
            raise AssertionError(f"The validator rejected the test adapter: {adapter.rejected_reason}")
        audit_job = training_services.job_transition(job=adapter.audit_job, to=S.STAGING)
        audit_job = training_services.job_transition(job=audit_job, to=S.RUNNING, backend="bubblewrap")
        audit_job = training_services.job_transition(job=audit_job, to=S.SUCCEEDED,
                                                     result=audit if audit is not None else passing_audit_numbers())
        egress_services.audit_receive(job=audit_job)
    adapter.refresh_from_db()
    return adapter


def approved_adapter(*, adapter: Adapter | None = None, reviewers: tuple[User, User] | None = None,
                     **request_kwargs) -> Adapter:
    """An adapter approved by two distinct privacy reviewers outside its project."""
    adapter = adapter or adapter_in_review(**request_kwargs)
    for reviewer in reviewers or (factories.reviewer(), factories.reviewer()):
        egress_services.signoff_record(adapter=adapter, by=reviewer, decision="approve",
                                       reason="Validation and audit read; no concerns.")
    adapter.refresh_from_db()
    return adapter


def release(*, adapter: Adapter | None = None, organisation: Organisation | None = None, officer: User | None = None,
            terms: str = "", **request_kwargs) -> Release:
    """An approved adapter released, signed, to a sponsor organisation (a signing key is made if missing)."""
    adapter = adapter or approved_adapter(**request_kwargs)
    organisation = organisation or factories.organisation(kind=Organisation.Kind.SPONSOR)
    egress_services.signing_key_create()
    return egress_services.release_create(adapter=adapter, organisation=organisation, by=officer or factories.officer(),
                                          terms=terms)


def public_key_path() -> Path:
    """The release-signing public key that sponsors verify with."""
    return Path(django_settings.SIGNING_KEY_PATH).with_suffix(".pub.pem")


# Added for the audit tests (tests/egress/test_audit_flow.py) ----------------------------------------

PRETRAINED_LM = {"vocab_size": 1000, "hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "max_positions": 128,
                 "pretrain_epochs": 10}


def pretrained_model_folder() -> Path:
    """A small Llama-style model pretrained on notes of other synthetic patients, built once per session.

    Its output head and norms are trained, so a LoRA adapter on it can memorise records; on the
    randomly initialised tiny model every logit stays near zero and nothing can be memorised,
    which is no use to a test that needs a memorising adapter to fail the privacy audit. The
    session folder is made traversable for the sandbox's unprivileged uid (it binds it at /models).
    """
    name = "pretrained-llama"
    if name not in _built:
        from training.runtime.build import build_text_lm

        corpus = list(synthetic_corpus(generate_hospital(30, seed=1001)))
        folder = _cache_dir() / name
        _built[name] = build_text_lm(folder, corpus, seed=0, **PRETRAINED_LM)
        _cache_dir().chmod(0o755)
    return _built[name]
