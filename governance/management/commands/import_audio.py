from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from governance.importers.audio import AudioImportError, parse_audio_folder
from governance.management.commands._dataset import acting_steward, import_into, summary_line


class Command(BaseCommand):
    help = ("Import recordings (WAV/FLAC) with transcripts and FHIR R4 Media/DocumentReference + Patient JSON "
            "into a speech dataset. Unusable recordings are reported one by one; the database write is all or "
            "nothing, and idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("folder")
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--title", default="")
        parser.add_argument("--steward")
        parser.add_argument("--strict", action="store_true",
                            help="Import nothing if any recording is refused (default: import the usable ones).")

    def handle(self, *args, folder, dataset, title, steward, strict, **options):
        try:
            parsed = parse_audio_folder(folder, max_seconds=settings.AUDIO_MAX_SECONDS)
        except AudioImportError as exc:
            raise CommandError(f"Nothing imported. {exc}") from None
        for entry in parsed.refused:
            self.stdout.write(f"refused {entry.entry}: {entry.reason}")
        refused = len(parsed.refused)
        if strict and refused:
            raise CommandError(f"Nothing imported: {refused} recording(s) refused (--strict).")
        if not parsed.records:
            raise CommandError(f"Nothing imported: no usable recording in {folder} ({refused} refused).")
        by = acting_steward(steward)
        target, summary = import_into(
            name=dataset, title=title or dataset, modality="speech", location=f"audio import from {parsed.folder}",
            steward=by, patients=parsed.patients, records=parsed.records,
            source=f"audio: {len(parsed.records)} recording(s), {refused} refused",
        )
        self.stdout.write(summary_line(target, summary, unit="recordings", tail=f"{refused} refused"))
