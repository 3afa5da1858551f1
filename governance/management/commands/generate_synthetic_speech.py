from django.core.management.base import CommandError

from governance.management.commands._dataset import SyntheticDatasetCommand
from governance.synthetic_speech import EspeakMissing, generate_speech_hospital


class Command(SyntheticDatasetCommand):
    help = ("Generate synthetic clinical speech (dictations and consultation lines spoken by espeak-ng, with "
            "transcripts) into a speech dataset. Idempotent per seed.")
    modality = "speech"
    title = "Synthetic hospital: clinical speech"
    default_dataset = "synthetic-speech"
    default_patients = 150
    max_patients = 5000
    unit = "recordings"
    source_label = "speech"

    def generate(self, patients, seed):
        try:
            return generate_speech_hospital(patients, seed)
        except EspeakMissing as exc:
            raise CommandError(str(exc)) from None
