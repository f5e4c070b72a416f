# Two commands matter: `make run` (set up and serve on embedded defaults) and
# `make test` (set up and run the suite). Both create .venv from the pins.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup setup-dev run serve test lint bench demo clean

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

# Development server on embedded defaults (SQLite, local memory, mock AI).
run: setup
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py migrate --noinput
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py seed_upstreams
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py runserver $(HOST):$(PORT)

# Production-style server: gunicorn, several workers (needs SECRET_KEY).
serve: setup
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_upstreams
	$(BIN)/gunicorn project.wsgi --bind $(HOST):$(PORT) --workers $${WORKERS:-4} --threads $${THREADS:-4}

test: setup-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup-dev
	$(BIN)/ruff check .

bench: setup-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
