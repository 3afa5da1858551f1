# Load the Celery app with Django so that @shared_task binds to it (and its broker settings).
from portal.celery import app as celery_app

__all__ = ("celery_app",)
