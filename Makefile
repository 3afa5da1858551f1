# The two commands: `make demo` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export DJANGO_SETTINGS_MODULE := portal.settings

.PHONY: demo test install bench sandbox-image migrate clean

$(STAMP): requirements.txt requirements/*.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch is pinned to the CPU build that lies on this disk; see requirements/training.txt.
	$(PIP) install --quiet -r requirements.txt -r requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	DJANGO_DEBUG=true $(PY) manage.py migrate --noinput

# Seeds users for every role (credentials printed), a synthetic hospital and small base models,
# then serves http://127.0.0.1:8000 with a Celery worker; Ctrl-C stops both.
demo: install
	DJANGO_DEBUG=true $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=true $(PY) manage.py seed_demo
	DJANGO_DEBUG=true ./scripts/run_demo.sh

test: install
	RAPHA_ALLOW_INSECURE_SECRET=true $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

sandbox-image:
	./scripts/start_dockerd.sh && ./scripts/build_sandbox_image.sh

clean:
	rm -rf var/ .pytest_cache
