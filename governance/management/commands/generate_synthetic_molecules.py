from governance.management.commands._dataset import SyntheticDatasetCommand
from governance.synthetic_molecules import generate_molecules


class Command(SyntheticDatasetCommand):
    help = ("Generate synthetic patients' compounds (SMILES) and variant protein sequences into a molecules "
            "dataset. Idempotent per seed.")
    modality = "molecules"
    title = "Synthetic hospital: compounds and variant proteins"
    default_dataset = "synthetic-molecules"
    source_label = "molecules"

    def generate(self, patients, seed):
        return generate_molecules(patients, seed)
