from governance.importers.dicom import IMAGING_MODALITIES
from governance.management.commands._dataset import SyntheticDatasetCommand
from governance.synthetic_imaging import generate_imaging

DATASETS = {  # modality: (default dataset name, title)
    "vision_language": ("synthetic-imaging", "Synthetic imaging: CT/MR studies with reports"),
    "diffusion": ("synthetic-imaging-diffusion", "Synthetic imaging: CT/MR studies (images for diffusion)"),
}


class Command(SyntheticDatasetCommand):
    help = ("Generate synthetic CT/MR studies (DICOM images with reports) into an imaging dataset. "
            "Idempotent per seed.")
    default_dataset = "synthetic-imaging, or synthetic-imaging-diffusion for --modality diffusion"
    default_patients = 200  # above the default policy minimum of 100
    max_patients = 10_000
    source_label = "imaging"

    def add_modality_arguments(self, parser):
        parser.add_argument("--modality", choices=IMAGING_MODALITIES, default="vision_language")

    def dataset_facts(self, *, modality, **options):
        name, title = DATASETS[modality]
        return name, title, modality

    def generate(self, patients, seed):
        return generate_imaging(patients, seed)
