"""Cleaning up after a worker that died: orphaned containers, cgroups and staging folders."""

from __future__ import annotations

import logging
import shutil

from django.conf import settings

from training.models import TrainingJob

log = logging.getLogger(__name__)
ACTIVE = (TrainingJob.Status.STAGING, TrainingJob.Status.RUNNING)


def reap_on_worker_start() -> list[str]:
    from training.sandbox import reap_orphans

    # Jobs other workers may be running right now must be left alone.
    running = {str(pk) for pk in TrainingJob.objects.filter(status__in=ACTIVE).values_list("pk", flat=True)}
    reaped = reap_orphans(running)
    root = settings.STAGING_ROOT
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and folder.name not in running:
                shutil.rmtree(folder, ignore_errors=True)
                reaped.append(f"staging {folder.name}")
    for line in reaped:
        log.warning("reaped %s", line)
    return reaped
