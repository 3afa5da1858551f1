"""The whole round, as `manage.py demo_walkthrough` drives it, in a real sandbox."""

import shutil
import subprocess
import sys

import pytest
from django.core.management import call_command

from egress.models import Adapter, Download, Release
from portal.audit import verify_chain


@pytest.mark.slow
@pytest.mark.bubblewrap
@pytest.mark.django_db(transaction=True)
def test_demo_walkthrough_completes_and_release_verifies(settings, tmp_path, capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")
    settings.SANDBOX_BACKEND = "bubblewrap"
    out = tmp_path / "out"

    call_command("demo_walkthrough", out=str(out), patients=120)

    printed = capsys.readouterr().out
    assert "Round complete." in printed
    assert Release.objects.count() == 1 and Download.objects.count() == 1
    assert Adapter.objects.get().status == Adapter.Status.RELEASED
    assert verify_chain()[1] is None
    verified = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(out / "release.zip"), "--public-key", str(out / "signing-key.pem")],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tampered = out / "tampered.zip"
    data = bytearray((out / "release.zip").read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    refused = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(tampered), "--public-key", str(out / "signing-key.pem")],
        capture_output=True, text=True,
    )
    assert refused.returncode == 1
