"""Extension points for egress, so that training never imports it.

Egress registers a handler called (inside the job's final transaction) when a training job has
put its output into quarantine, and one called when an audit job finishes.
"""

from __future__ import annotations

from typing import Callable

# (job, quarantine_dir) -> None
adapter_produced: list[Callable] = []
# (job) -> None; job.status tells how it ended, job.result holds the numbers
audit_finished: list[Callable] = []
# (job, user) -> [(label, url)]: links a later stage offers on a job's page (egress: its adapter)
job_links: list[Callable] = []
