"""Imported by the sandbox interpreter at start-up (PYTHONPATH puts /opt/rapha/boot first).

The worker's site-packages reach the sandbox through PYTHONPATH, which does not process `.pth`
files; `site.addsitedir` does, without adding the directory a second time. This file is bound
read-only at /opt/rapha/boot; it is the only file of the repository outside training/runtime
that a sandbox sees.
"""
import os
import site

for _d in os.environ.get("RAPHA_SITE_PACKAGES", "").split(":"):
    if _d and os.path.isdir(_d):
        site.addsitedir(_d)
del _d
