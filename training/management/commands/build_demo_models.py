"""Build the small demo base models here (no download) and register them like real weights."""

from django.conf import settings
from django.core.management.base import BaseCommand

from governance.synthetic import generate_hospital, synthetic_corpus
from training import services
from training.models import BaseModel


class Command(BaseCommand):
    help = "Build demo-text-lm (Llama-style, tokenizer trained on the synthetic corpus) and register it."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Rebuild even if registered and intact.")
        parser.add_argument("--patients", type=int, default=150, help="Synthetic patients for the corpus.")

    def handle(self, *args, force, patients, **options):
        from training.runtime.build import build_text_lm

        name = "demo-text-lm"
        existing = BaseModel.objects.filter(name=name).first()
        if existing and not force:
            try:
                services.base_model_verify(existing)
                self.stdout.write(f"{name} is registered and intact.")
                return
            except services.BaseModelIntegrityError:
                pass
        folder = settings.MODELS_ROOT / name
        # A different seed from the demo dataset's, so the base model has not seen those notes.
        corpus = list(synthetic_corpus(generate_hospital(patients, seed=1001)))
        build_text_lm(folder, corpus, pretrain_epochs=1, seed=0)
        model = services.base_model_register(
            by=None, path=folder, name=name, family="llama", modality="text", licence="Apache-2.0 (demo)",
            public_name="Rapha demo text LM (Llama-style, 2 layers)",
        )
        self.stdout.write(f"Built and registered {name} at {folder} ({len(model.files)} files).")
