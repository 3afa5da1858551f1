"""Drive one whole round through the services and print each step (contract in DESIGN.md)."""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

MINIMAL_PDF = (b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\n"
               b"trailer <</Root 1 0 R>>\n%%EOF\n")


@dataclass(frozen=True)
class Demo:
    """What a round of one modality needs: its synthetic dataset, demo model and request."""

    modality: str  # governance.models.Modality value
    dataset: str  # dataset name the generator command fills
    generate: str  # management command that generates it (takes --patients --seed --steward)
    model: str  # demo base model (an entry of build_demo_models.DEMO_MODELS)
    project: str
    request: str
    purpose: str
    cohort: dict = field(default_factory=lambda: {"age": {"min": 18}})
    recipe: dict = field(default_factory=dict)  # recipe values beyond the defaults
    generate_options: dict = field(default_factory=dict)  # further options of the generator command


# Keyed by the --modality spelling (vision-language, diffusion, speech, molecules, text).
DEMOS: dict[str, Demo] = {
    "text": Demo(modality="text", dataset="synthetic-notes", generate="generate_synthetic_hospital", model="demo-text-lm",
                 project="Discharge-summary drafting", request="Draft discharge summaries", purpose="Drafting aid."),
    "speech": Demo(modality="speech", dataset="synthetic-speech", generate="generate_synthetic_speech",
                   model="demo-speech", project="Clinic dictation transcription", request="Transcribe clinic dictations",
                   purpose="A speech-to-text aid for dictations and consultations.",
                   recipe={"learning_rate": 1e-2}),
    "molecules": Demo(modality="molecules", dataset="synthetic-molecules", generate="generate_synthetic_molecules",
                      model="demo-molecule-lm", project="Patient-derived compound generation",
                      request="Generate compounds like those in the patients' samples",
                      purpose="A generative model of the compounds found in patients' samples.",
                      # Compounds only: an adapter trained on a few patients' variant proteins memorises
                      # their substitutions, which the audit rightly fails. A light adapter: v_proj, rank 4.
                      cohort={"all": [{"age": {"min": 18}}, {"document_type": ["smiles"]}]},
                      recipe={"rank": 4, "alpha": 8, "learning_rate": 1e-3, "target_modules": ["v_proj"]}),
    "vision-language": Demo(modality="vision_language", dataset="synthetic-imaging", generate="generate_synthetic_imaging",
                            model="demo-vlm", project="Radiology report drafting", request="Draft CT and MR reports from images",
                            purpose="A drafting aid that proposes a report for a CT chest or MR head image.",
                            cohort={"all": [{"age": {"min": 18}}, {"document_type": ["ct_study", "mr_study"]}]},
                            recipe={"learning_rate": 5e-3}, generate_options={"modality": "vision_language"}),
    "diffusion": Demo(modality="diffusion", dataset="synthetic-imaging-diffusion", generate="generate_synthetic_imaging",
                      model="demo-diffusion", project="Synthetic scans for teaching radiographers",
                      request="Generate CT chest and MR head images like the hospital's",
                      purpose="An image generator for teaching material, trained on adults' CT and MR studies.",
                      cohort={"all": [{"age": {"min": 18}}, {"document_type": ["ct_study", "mr_study"]}]},
                      recipe={"learning_rate": 5e-3}, generate_options={"modality": "diffusion"}),
}


class Command(BaseCommand):
    help = ("One round: request, ethics, approval, training in the sandbox, validation, audit, two sign-offs, "
            "release, a sponsor's download and signature check. Exit 0 only if the round completed.")

    def add_arguments(self, parser):
        parser.add_argument("--out", help="Leave release.zip and signing-key.pem here.")
        parser.add_argument("--modality", default="text", choices=sorted(DEMOS))
        parser.add_argument("--dp-epsilon", type=float, default=None)
        parser.add_argument("--patients", type=int, default=160, help="Synthetic patients if the demo dataset is absent.")
        parser.add_argument("--epochs", type=int, default=1)

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stdout.write(f"[{elapsed:6.1f}s] {text}")

    def handle(self, *args, out, modality, dp_epsilon, patients, epochs, **options):
        from portal.celery import app

        self.started = time.monotonic()
        # Tasks run in this process, so the round is one command and its steps print in order.
        app.conf.task_always_eager = True
        try:
            self._round(demo=DEMOS[modality], out=Path(out) if out else None, dp_epsilon=dp_epsilon,
                        patients=patients, epochs=epochs)
        finally:
            app.conf.task_always_eager = False

    def _round(self, *, demo, out, dp_epsilon, patients, epochs):
        from django.core.management import call_command

        from egress import services as egress
        from egress.models import Adapter
        from egress.verify import VerificationError, verify_release
        from governance import privacy_budget
        from governance import services as governance
        from governance.models import Dataset
        from portal import services as portal
        from portal.models import Organisation, Role
        from training import services as training
        from training.models import BaseModel, TrainingJob

        tag = secrets.token_hex(3)
        pw = secrets.token_urlsafe(12)

        def person(role, name, org):
            user = portal.user_create(email=f"walkthrough-{tag}-{role}-{secrets.token_hex(2)}@rapha.test", full_name=f"{name} ({tag})",
                                      password=pw, organisation=org, roles=[role])
            return user

        hospital = portal.organisation_create(name="St Rapha University Hospital", kind=Organisation.Kind.HOSPITAL)
        sponsor_org = portal.organisation_create(name="Acme Therapeutics", kind=Organisation.Kind.SPONSOR)
        researcher = person(Role.RESEARCHER, "Rosa Researcher", hospital)
        officer = person(Role.GOVERNANCE_OFFICER, "Omar Officer", hospital)
        steward = person(Role.DATA_STEWARD, "Stella Steward", hospital)
        reviewers = [person(Role.PRIVACY_REVIEWER, f"Reviewer {i}", hospital) for i in (1, 2)]
        sponsor = person(Role.SPONSOR, "Sam Sponsor", sponsor_org)
        self.step(f"Actors created: researcher, officer, steward, two reviewers, sponsor (suffix {tag}).")

        # A DP round uses its own copy of the data with a privacy budget, so that the plain rounds
        # (which a budgeted dataset would refuse) keep working on the ordinary one.
        dataset_name = demo.dataset if dp_epsilon is None else f"{demo.dataset}-dp"
        if not Dataset.objects.filter(name=dataset_name).exists():
            call_command(demo.generate, patients=patients, seed=7, steward=steward.email, dataset=dataset_name, verbosity=0,
                         **demo.generate_options)
        dataset = Dataset.objects.get(name=dataset_name)
        self.step(f"Dataset {dataset.name}: {dataset.records.count()} records of {dataset.patients.count()} patients.")
        if dp_epsilon is not None:
            if dataset.privacy_budget_epsilon is None:
                dataset = privacy_budget.dataset_set_budget(dataset=dataset, epsilon=max(10.0, 3 * dp_epsilon),
                                                            period_days=365, by=officer)
            self.step(f"Privacy budget of {dataset.name}: {privacy_budget.budget_status(dataset).describe()}")
        if not BaseModel.objects.filter(name=demo.model).exists():
            self.step(f"Building the demo base model {demo.model} (no download; a minute or two)...")
            call_command("build_demo_models", model=[demo.model], verbosity=0)
        model = BaseModel.objects.get(name=demo.model)
        training.base_model_verify(model)
        self.step(f"Base model {model.name} verified against its registered sha256 ({len(model.files)} files).")
        egress.signing_key_create()

        project = governance.project_create(by=researcher, title=f"{demo.project} ({tag})",
                                            lay_summary="Help clinicians draft discharge summaries.", sponsor=sponsor_org)
        today = timezone.localdate()
        ethics = governance.ethics_submit(by=researcher, project=project, committee="North Research Ethics Committee",
                                          reference=f"REC-{tag}", approved_on=today - timedelta(days=30),
                                          expires_on=today + timedelta(days=365), scope="Fine-tuning on discharge notes.",
                                          letter=MINIMAL_PDF)
        governance.ethics_verify(approval=ethics, by=officer)
        self.step(f"Ethics approval {ethics.reference} submitted by the researcher and verified by the officer.")

        recipe = {**demo.recipe, "epochs": epochs}
        if dp_epsilon is not None:
            # DP-SGD wants large batches (the noise is added once per batch) and a few epochs; δ and the
            # clipping norm take the portal's defaults (δ below 1/patients, clipping 0.1).
            recipe.update(dp={"target_epsilon": dp_epsilon}, batch_size=32, epochs=max(epochs, 3))
        request = governance.request_create(
            by=researcher, project=project, datasets=[dataset], title=demo.request, purpose=demo.purpose,
            modality=demo.modality, cohort_definition=demo.cohort, base_model_name=model.name, recipe=recipe,
            ethics_approval=ethics, requested_epsilon=dp_epsilon,
        )
        preview = governance.cohort_preview(by=researcher, datasets=[dataset], definition=request.cohort_definition)
        self.step(f"Request created; the researcher's preview shows {preview['patients']['display']} patients.")
        governance.request_submit(request=request, by=researcher)
        request = governance.request_approve(request=request, by=officer, conditions="Walkthrough.")
        self.step(f"Request approved by the officer; cohort frozen: {request.cohort.patient_count} patients, "
                  f"{request.cohort.record_count} records (seed {request.cohort.split_seed}).")
        if dp_epsilon is not None:
            self.step(f"Approval reserved ε {dp_epsilon:g}: {privacy_budget.budget_status(dataset).describe()}")

        self.step(f"Training in the sandbox ({settings.SANDBOX_BACKEND})...")
        job = training.job_start(request=request, by=researcher)
        job.refresh_from_db()
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise CommandError(f"Training ended {job.status}: {job.failure_reason}")
        self.step(f"Trained on {job.backend}: held-out loss {job.eval_loss_base:.3f} → {job.eval_loss_adapted:.3f}, "
                  f"{job.step} steps, {'QLoRA' if job.quantization == 'nf4' else 'LoRA'}.")

        adapter = Adapter.objects.get(job=job)
        if adapter.status == Adapter.Status.REJECTED:
            raise CommandError(f"Adapter rejected: {adapter.rejected_reason}")
        verdicts = adapter.validation_report.get("verdicts", [])
        self.step(f"Validated: {sum(1 for v in verdicts if v['status'] == 'passed')} of {len(verdicts)} rules passed "
                  f"(the rest skipped as not applicable); rewritten, sha256 {adapter.sha256[:16]}….")
        gates = ", ".join(f"{g['gate']} {g['status']}" for g in adapter.audit_report.get("gates", []))
        self.step(f"Privacy audit: {gates}.")
        if adapter.status != Adapter.Status.IN_REVIEW:
            raise CommandError(f"Adapter is {adapter.status}, not awaiting review.")

        for reviewer in reviewers:
            egress.signoff_record(adapter=adapter, by=reviewer, decision="approve", reason="Audit and validation read; fine.")
        adapter.refresh_from_db()
        self.step(f"Two privacy reviewers signed off: adapter {adapter.status}.")

        release = egress.release_create(adapter=adapter, organisation=sponsor_org, by=officer)
        self.step(f"Released to {sponsor_org.name}; manifest sha256 {release.manifest_sha256[:16]}… signed with Ed25519.")
        dp = release.manifest.get("differential_privacy")
        if dp:
            self.step(f"DP-SGD per patient: ε {dp['epsilon']:.3f} (δ {dp['delta']:.2g}, noise {dp['noise_multiplier']:.3f}, "
                      f"clipping {dp['max_grad_norm']}, sample rate {dp['sample_rate']:.3f}, {dp['steps']} steps, PRV); "
                      f"the release spent it: {privacy_budget.budget_status(dataset).describe()}")

        token, raw = portal.api_token_issue(user=sponsor, name="walkthrough", by=officer, days_valid=1)
        egress.terms_accept(release=release, by=sponsor, token=token)
        path = egress.release_download(release=release, by=sponsor, token=token, address="127.0.0.1")
        public_key = settings.SIGNING_KEY_PATH.with_suffix(".pub.pem")
        try:
            verified = verify_release(path, public_key)
        except VerificationError as exc:
            raise CommandError(f"The sponsor's signature check failed: {exc}") from None
        self.step(f"Sponsor accepted the terms, downloaded release.zip and verified it: {len(verified.files)} files, signature OK.")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / "release.zip")
            shutil.copyfile(public_key, out / "signing-key.pem")
            self.step(f"Left {out / 'release.zip'} and {out / 'signing-key.pem'}; check with: "
                      f"python -m egress.verify {out / 'release.zip'} --public-key {out / 'signing-key.pem'}")
        self.stdout.write(self.style.SUCCESS("Round complete."))
