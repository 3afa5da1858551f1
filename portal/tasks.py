from celery import shared_task


@shared_task(name="portal.tasks.task_ping")
def task_ping(value: str) -> str:
    """A round trip through the broker and a worker, used by the health check and the tests."""
    return f"pong:{value}"
