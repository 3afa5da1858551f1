"""Thin Celery tasks: fetch by id, call the service, let the worker's failure handling work."""

from celery import shared_task
from celery.signals import worker_ready


@shared_task(name="training.tasks.task_run_job", acks_late=True, reject_on_worker_lost=True)
def task_run_job(*, job_id: str) -> None:
    from training.runner import execute_job

    execute_job(job_id)


@worker_ready.connect
def _reap_orphans_on_start(sender=None, **kwargs) -> None:
    """A worker that starts removes sandboxes and staging left by one that died."""
    from training.reaper import reap_on_worker_start

    reap_on_worker_start()
