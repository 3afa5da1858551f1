from governance.management.commands._dataset import SyntheticDatasetCommand
from governance.synthetic import generate_hospital


class Command(SyntheticDatasetCommand):
    help = "Generate a synthetic hospital (patients and clinical notes) into a text dataset. Idempotent per seed."
    modality = "text"
    title = "Synthetic hospital: clinical notes"
    default_dataset = "synthetic-notes"

    def generate(self, patients, seed):
        return generate_hospital(patients, seed)
