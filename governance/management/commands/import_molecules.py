from django.core.management.base import BaseCommand, CommandError

from governance.importers.molecules import FORMATS, MoleculeImportError, parse_file
from governance.management.commands._dataset import acting_steward, import_into, summary_line


class Command(BaseCommand):
    help = ("Import molecules (SMILES in CSV or SDF) or protein sequences (FASTA) into a molecules dataset. "
            "Invalid entries are reported by line and left out; the valid ones are written all or nothing; "
            "a file with no valid entry changes nothing. Idempotent (record ids already present are kept).")

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--format", dest="fmt", choices=FORMATS, help="Default: from the file's suffix.")
        parser.add_argument("--title", default="")
        parser.add_argument("--steward", help="E-mail of the data steward acting (default: the first one).")
        parser.add_argument("--strict", action="store_true", help="Import nothing if any entry is invalid.")

    def handle(self, *args, path, dataset, fmt, title, steward, strict, **options):
        try:
            parsed = parse_file(path, fmt)
        except MoleculeImportError as exc:
            raise CommandError(f"Nothing imported. {exc}") from None
        for entry in parsed.invalid:
            self.stdout.write(f"invalid entry: {parsed.source}: {entry}")
        if not parsed.records:
            raise CommandError(f"Nothing imported: none of the {parsed.entries} entries of {parsed.source} is valid.")
        if strict and parsed.invalid:
            raise CommandError(f"Nothing imported (--strict): {len(parsed.invalid)} of the {parsed.entries} "
                               f"entries of {parsed.source} are invalid.")
        by = acting_steward(steward)
        target, summary = import_into(
            name=dataset, title=title or dataset, modality="molecules",
            location=f"{parsed.format.upper()} import from {parsed.source}", steward=by,
            patients=parsed.patients, records=parsed.records, source=f"{parsed.format.upper()}: {parsed.source}",
        )
        self.stdout.write(summary_line(target, summary, tail=f"{len(parsed.invalid)} invalid entries left out"))
