"""The Celery app. Its configuration (queues default, gpu, egress; acks late; prefetch 1;
visibility timeout above the longest job) lives in portal/settings.py under CELERY_*."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("rapha")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue("default"), Queue("gpu"), Queue("egress")]
app.autodiscover_tasks()


def _prepare_filesystem_broker() -> None:
    """The embedded broker is a folder; publishers and workers both need it to exist."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        if key in options:
            Path(options[key]).mkdir(parents=True, exist_ok=True)


_prepare_filesystem_broker()
