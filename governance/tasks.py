from celery import shared_task

from governance import services


@shared_task(name="governance.tasks.task_expire_ethics_approvals")
def task_expire_ethics_approvals() -> int:
    """Periodic: expire approvals past their date; the service suspends requests relying on them."""
    return services.ethics_expire_due()
