from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from governance.importers.fhir import FhirImportError, parse_bundle_file
from governance.management.commands._dataset import acting_steward, import_into, summary_line


class Command(BaseCommand):
    help = "Import FHIR R4 bundles (files or folders of .json) into a text dataset. All or nothing, idempotent."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--title", default="")
        parser.add_argument("--steward")

    def handle(self, *args, paths, dataset, title, steward, **options):
        files = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                files.extend(sorted(path.rglob("*.json")))
            elif path.is_file():
                files.append(path)
            else:
                raise CommandError(f"{raw}: no such file or folder.")
        if not files:
            raise CommandError("No .json bundles found.")
        parsed = []
        for path in files:
            try:
                parsed.append(parse_bundle_file(path))
            except FhirImportError as exc:
                raise CommandError(f"Nothing imported. {exc}") from None
        by = acting_steward(steward)
        patients = {p.key: p for bundle in parsed for p in bundle.patients}
        target, summary = import_into(
            name=dataset, title=title or dataset, modality="text", location=f"FHIR import from {files[0].parent}",
            steward=by, patients=patients.values(), records=[r for bundle in parsed for r in bundle.records],
            source=f"FHIR: {len(files)} bundle(s)",
        )
        skipped = [s for bundle in parsed for s in bundle.skipped]
        for entry in skipped:
            self.stdout.write(f"skipped entry {entry.entry_index} ({entry.resource_type} {entry.full_url}): {entry.reason}")
        self.stdout.write(summary_line(target, summary, tail=f"{len(skipped)} entries skipped"))
