from django.core.management.base import BaseCommand, CommandError

from portal.audit import verify_chain


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit 1 naming the first broken event."

    def handle(self, *args, **options):
        checked, broken = verify_chain()
        if broken is not None:
            raise CommandError(f"Audit chain broken at {broken} ({checked} events verified before it).", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {checked} events verified."))
