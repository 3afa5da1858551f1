"""Thin tasks on the `egress` queue (validation runs outside the training sandbox)."""

from celery import shared_task

from egress import services
from egress.models import Adapter


@shared_task(name="egress.tasks.task_validate_adapter", acks_late=True, reject_on_worker_lost=True,
             soft_time_limit=3600, time_limit=3900)
def task_validate_adapter(*, adapter_id: str) -> None:
    adapter = Adapter.objects.filter(pk=adapter_id).first()
    if adapter is None:
        return
    services.adapter_validate(adapter=adapter)


@shared_task(name="egress.tasks.task_delete_expired_rejections")
def task_delete_expired_rejections() -> int:
    return services.delete_expired_rejections()
