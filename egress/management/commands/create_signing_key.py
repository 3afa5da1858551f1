from django.conf import settings
from django.core.management.base import BaseCommand

from egress import services


class Command(BaseCommand):
    help = "Create the institution's Ed25519 release-signing key at RAPHA_SIGNING_KEY (mode 0600), if absent."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Replace an existing key (old releases stay verifiable only with the old public key).")

    def handle(self, *args, force, **options):
        existed = settings.SIGNING_KEY_PATH.exists()
        path = services.signing_key_create(force=force)
        verb = "Kept existing" if existed and not force else "Created"
        self.stdout.write(f"{verb} signing key {path}; public key {path.with_suffix('.pub.pem')}.")
