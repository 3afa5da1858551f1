"""Seed the demo: organisations, one user per role (credentials printed), data and models."""

from __future__ import annotations

import secrets

import pyotp
from django.core.management import call_command
from django.core.management.base import BaseCommand

from portal import services
from portal.models import Organisation, Role, User

HOSPITAL = "St Rapha University Hospital"
SPONSOR = "Acme Therapeutics"

DEMO_USERS = [
    ("researcher@rapha.test", "Rosa Researcher", Role.RESEARCHER, HOSPITAL),
    ("officer@rapha.test", "Omar Officer", Role.GOVERNANCE_OFFICER, HOSPITAL),
    ("steward@rapha.test", "Stella Steward", Role.DATA_STEWARD, HOSPITAL),
    ("reviewer1@rapha.test", "Ravi Reviewer", Role.PRIVACY_REVIEWER, HOSPITAL),
    ("reviewer2@rapha.test", "Rita Reviewer", Role.PRIVACY_REVIEWER, HOSPITAL),
    ("sponsor@acme.test", "Sam Sponsor", Role.SPONSOR, SPONSOR),
]


class Command(BaseCommand):
    help = "Create (or refresh) the demo users, organisations, synthetic hospital and base models."

    def add_arguments(self, parser):
        parser.add_argument("--patients", type=int, default=300)
        parser.add_argument("--skip-data", action="store_true", help="Only users and organisations.")

    def handle(self, *args, patients: int, skip_data: bool, **options):
        hospital = services.organisation_create(name=HOSPITAL, kind=Organisation.Kind.HOSPITAL)
        services.organisation_create(name="Radiology", kind=Organisation.Kind.DEPARTMENT, parent=hospital)
        sponsor = services.organisation_create(name=SPONSOR, kind=Organisation.Kind.SPONSOR)
        orgs = {HOSPITAL: hospital, SPONSOR: sponsor}

        rows = []
        for email, name, role, org_name in DEMO_USERS:
            password = "demo-" + secrets.token_urlsafe(9)
            user = User.objects.filter(email=email).first()
            if user is None:
                user = services.user_create(
                    email=email, full_name=name, password=password, organisation=orgs[org_name], roles=[role]
                )
            else:
                services.user_set_password(user=user, password=password, by=None)
            secret = ""
            if user.requires_two_factor:
                secret = pyotp.random_base32()
                services.totp_set_secret(user=user, secret=secret, by=None)
            rows.append((Role(role).label, email, password, secret))

        if not skip_data:
            self._seed_data(patients)
        from egress.services import signing_key_create

        key = signing_key_create()  # officers can release from the pages straight away

        self.stdout.write("\nDemo accounts (passwords are new on every seed):\n")
        for label, email, password, secret in rows:
            line = f"  {label:<20} {email:<24} password {password}"
            if secret:
                line += f"   TOTP secret {secret} (add it to an authenticator app, or: python -c \"import pyotp; print(pyotp.TOTP('{secret}').now())\")"
            self.stdout.write(line)
        self.stdout.write(f"\nReleases are signed with {key}; sponsors verify with {key.with_suffix('.pub.pem')}.")
        self.stdout.write("\nOpen http://127.0.0.1:8000 and sign in.\n")

    def _seed_data(self, patients: int) -> None:
        from django.core.management import get_commands

        commands = get_commands()
        if "generate_synthetic_hospital" in commands:
            call_command("generate_synthetic_hospital", patients=patients, seed=7, verbosity=0)
        if "build_demo_models" in commands:
            call_command("build_demo_models", verbosity=0)
