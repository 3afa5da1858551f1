#!/usr/bin/env bash
# Runs the portal and one Celery worker (all queues) together; Ctrl-C stops both cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY manage.py collectstatic --noinput -v 0
$PY -m celery -A portal worker -Q default,gpu,egress --pool=solo --concurrency=1 --loglevel=INFO -n demo@%h &
worker=$!
$PY -m celery -A portal beat --loglevel=WARNING -s var/celerybeat-schedule &
beat=$!
stop() {
  trap - INT TERM EXIT
  echo "Stopping the portal and the worker..."
  kill -TERM "$worker" "$beat" 2>/dev/null || true
  wait "$worker" "$beat" 2>/dev/null || true
}
trap stop INT TERM EXIT
echo "Portal: http://127.0.0.1:8000"
$PY manage.py runserver 127.0.0.1:8000 --noreload
