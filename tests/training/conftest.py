"""Markers for the sandbox tests (Django-free; works with or without a root conftest)."""

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a Docker engine and the rapha-sandbox image")
    config.addinivalue_line("markers", "bubblewrap: needs bubblewrap (bwrap) and user namespaces")
