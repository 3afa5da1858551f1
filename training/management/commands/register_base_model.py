from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from governance.models import Modality
from training import services


class Command(BaseCommand):
    help = "Register base-model weights copied into the hospital (a save_pretrained folder), pinning every file's sha256."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", required=True, help="Registry name, e.g. llama-3.2-1b")
        parser.add_argument("--family", required=True, help="Architecture family: llama, gpt2, ...")
        parser.add_argument("--modality", default="text", choices=Modality.values)
        parser.add_argument("--licence", required=True)
        parser.add_argument("--public-name", default="", help="Name written into released model cards.")
        parser.add_argument("--not-approved", action="store_true", help="Register without approving it for training.")

    def handle(self, *args, path, name, family, modality, licence, public_name, not_approved, **options):
        try:
            model = services.base_model_register(
                by=None, path=Path(path), name=name, family=family, modality=modality, licence=licence,
                public_name=public_name, approved=not not_approved,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Registered {model.name}: {len(model.files)} files, manifest sha256 {model.manifest_sha256}.")
