"""Build the small demo base models here (no download) and register them like real weights.

One entry per demo model in ``DEMO_MODELS``: a builder that writes a complete model folder
(config, weights, tokenizer or processor) through the same code path real weights use, and the
registry facts. Each modality adds its entry; ``--model`` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from training import services
from training.models import BaseModel


@dataclass(frozen=True)
class DemoModel:
    build: Callable[[Path, int], None]  # (folder, patients for the corpus) -> writes the folder
    family: str
    modality: str
    public_name: str
    licence: str = "Apache-2.0 (demo)"


def _build_text_lm(folder: Path, patients: int) -> None:
    from governance.synthetic import generate_hospital, synthetic_corpus
    from training.runtime.build import build_text_lm

    # A different seed from the demo dataset's, so the base model has not seen those notes.
    corpus = list(synthetic_corpus(generate_hospital(patients, seed=1001)))
    build_text_lm(folder, corpus, pretrain_epochs=1, seed=0)


def _build_molecule_lm(folder: Path, patients: int) -> None:
    from governance.synthetic_molecules import synthetic_corpus
    from training.runtime.build_molecules import build_demo_molecule_lm

    # About four structures a patient, as in the demo dataset; another seed, so none of its patients'.
    build_demo_molecule_lm(folder, synthetic_corpus(patients * 4, seed=1001), seed=0)


def _build_demo_speech(folder: Path, patients: int) -> None:
    from governance.synthetic_speech import pretraining_audio, synthetic_transcripts
    from training.runtime.build_speech import build_demo_speech

    # Another seed than the demo dataset's, so the base model has not heard those recordings; the
    # pre-training audio is capped so that the build stays near a minute on two cores.
    build_demo_speech(folder, synthetic_transcripts(patients, seed=1001), pretraining_audio(min(patients, 60), seed=1001),
                      seed=0)


def _imaging_pretraining(count: int, *, size: int) -> tuple[list, list[str]]:
    """Studies of other synthetic patients (seed 1001, not the demo dataset's): images read as the
    runtime reads staged DICOM ([0, 1] by the file's window), reports as staging leaves them."""
    import io
    import re

    from governance.synthetic_imaging import synthetic_images
    from training.runtime.dicom import read_dicom_image

    studies = synthetic_images(count, seed=1001)
    images = [read_dicom_image(io.BytesIO(study.dicom), size=size).numpy() for study in studies]
    return images, [re.sub(r"ACC\d+", "[ACCESSION]", study.report) for study in studies]


def _build_demo_vlm(folder: Path, patients: int) -> None:
    from training.runtime.build_imaging import build_demo_vlm

    images, reports = _imaging_pretraining(min(patients, 200), size=32)
    build_demo_vlm(folder, reports, images, seed=0)


def _build_demo_diffusion(folder: Path, patients: int) -> None:
    from training.runtime.build_imaging import build_demo_diffusion

    images, _ = _imaging_pretraining(min(patients, 200), size=32)
    build_demo_diffusion(folder, images, seed=0)


DEMO_MODELS: dict[str, DemoModel] = {
    "demo-text-lm": DemoModel(_build_text_lm, family="llama", modality="text",
                              public_name="Rapha demo text LM (Llama-style, 2 layers)"),
    "demo-vlm": DemoModel(_build_demo_vlm, family="vision-encoder-decoder", modality="vision_language",
                          public_name="Rapha demo vision-language model (ViT + GPT-2 with cross-attention, 32 px)"),
    "demo-diffusion": DemoModel(_build_demo_diffusion, family="unet2d", modality="diffusion",
                                public_name="Rapha demo diffusion model (UNet2D + DDPM, 32 px grey)"),
    "demo-speech": DemoModel(_build_demo_speech, family="whisper", modality="speech",
                             public_name="Rapha demo speech model (Whisper-style, 2+2 layers, 8 s window)"),
    "demo-molecule-lm": DemoModel(_build_molecule_lm, family="llama", modality="molecules",
                                  public_name="Rapha demo molecule LM (Llama-style, SMILES and protein sequences)"),
}


class Command(BaseCommand):
    help = "Build the demo base models (no download: configs, tokenizers trained on synthetic data) and register them."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Rebuild even if registered and intact.")
        parser.add_argument("--patients", type=int, default=150, help="Synthetic patients for the corpus.")
        parser.add_argument("--model", action="append", choices=sorted(DEMO_MODELS),
                            help="Build only this model (repeatable; default: all).")

    def handle(self, *args, force, patients, model, **options):
        for name in model or sorted(DEMO_MODELS):
            self._build(name, DEMO_MODELS[name], force=force, patients=patients)

    def _build(self, name: str, demo: DemoModel, *, force: bool, patients: int) -> None:
        existing = BaseModel.objects.filter(name=name).first()
        if existing and not force:
            try:
                services.base_model_verify(existing)
                self.stdout.write(f"{name} is registered and intact.")
                return
            except services.BaseModelIntegrityError:
                pass
        folder = settings.MODELS_ROOT / name
        try:
            demo.build(folder, patients)
        except Exception as exc:  # noqa: BLE001 -- say which model failed, keep the cause
            raise CommandError(f"Building {name} failed: {exc}") from exc
        registered = services.base_model_register(
            by=None, path=folder, name=name, family=demo.family, modality=demo.modality, licence=demo.licence,
            public_name=demo.public_name,
        )
        self.stdout.write(f"Built and registered {name} at {folder} ({len(registered.files)} files).")
