from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from governance.importers.dicom import IMAGING_MODALITIES, DicomImportError, parse_dicom_folder
from governance.management.commands._dataset import acting_steward, import_into, summary_line


class Command(BaseCommand):
    help = ("Import a folder tree of DICOM files (with their reports) into an imaging dataset. Prints every "
            "file's outcome; all or nothing, idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("folder")
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--modality", choices=IMAGING_MODALITIES, default="vision_language")
        parser.add_argument("--title", default="")
        parser.add_argument("--steward")

    def handle(self, *args, folder, dataset, modality, title, steward, **options):
        root = Path(folder)
        if not root.is_dir():
            raise CommandError(f"{folder}: no such folder.")
        by = acting_steward(steward)
        try:
            parsed = parse_dicom_folder(root, modality=modality)
        except DicomImportError as exc:
            raise CommandError(f"Nothing imported. {exc}") from None
        for outcome in parsed.outcomes:
            detail = f": {outcome.reason}" if outcome.reason else ""
            self.stdout.write(f"{outcome.status} {outcome.path}{detail}")
        if not parsed.records:
            raise CommandError(f"Nothing imported: no importable DICOM instance under {folder}.")
        target, summary = import_into(
            name=dataset, title=title or dataset, modality=modality, location=f"DICOM import from {root}", steward=by,
            patients=parsed.patients, records=parsed.records,
            source=f"DICOM: {parsed.count('imported')} instance(s) from {len(parsed.outcomes)} file(s)",
        )
        self.stdout.write(summary_line(target, summary, tail=f"{parsed.count('skipped')} files skipped"))
