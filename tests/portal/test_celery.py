"""A real round trip: a Celery worker process on Redis runs a task and answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import redis_url


@pytest.mark.redis
def test_celery_round_trip_through_worker_on_redis(tmp_path):
    url = redis_url()
    if url is None:
        pytest.skip("needs Redis: set CELERY_BROKER_URL=redis://…")
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "RAPHA_VAR_DIR": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "default", "--pool=solo",
         "--concurrency=1", "--loglevel=WARNING", "-n", f"test-{os.getpid()}@%h"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        code = (
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE','portal.settings'); django.setup();"
            "from portal.tasks import task_ping; print(task_ping.delay('hello').get(timeout=60))"
        )
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "pong:hello"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
