# Two commands matter: `make run` (set up and serve on embedded defaults) and
# `make test` (set up and run the suite). Both create .venv from the pins.
PYTHON ?= python3
# Another environment than ./.venv: `make VENV=/path/to/venv ...` (the load
# tool passes the one it runs in to `make serve`).
VENV ?= .venv
BIN ?= $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup setup-dev run serve test accept fuzz lint bench bench-stats loadtest demo clean

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

# Development server on embedded defaults (SQLite, local memory, mock AI),
# with one jobs worker alongside it (its own process on the same SQLite file,
# ticking the schedules; stopped with the server; restart after changing job
# code: the worker does not reload).
run: setup
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py migrate --noinput
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py seed_upstreams
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py config_apply --on-start
	export DEBUG=$${DEBUG:-true}; \
	$(BIN)/python manage.py jobs_worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT; \
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# Production-style server: gunicorn, several workers (needs SECRET_KEY;
# set REDIS_URL so the workers share breakers, caches and statistics).
# Background jobs need at least one `manage.py jobs_worker` process next to it,
# with the same environment (README, Jobs): this target does not start one.
# PROMETHEUS_MULTIPROC_DIR must exist before any Django process starts, the
# start-up check included (django-rq's collector opens its files at import),
# so it is made first.
serve: setup
	export PROMETHEUS_MULTIPROC_DIR=$${PROMETHEUS_MULTIPROC_DIR:-$(CURDIR)/var/prometheus}; \
	mkdir -p "$$PROMETHEUS_MULTIPROC_DIR" && \
	$(BIN)/python -m project.startup && \
	$(BIN)/python manage.py migrate --noinput && \
	$(BIN)/python manage.py seed_upstreams && \
	$(BIN)/python manage.py config_apply --on-start && \
	$(BIN)/python manage.py collectstatic --noinput -v 0 && \
	exec $(BIN)/gunicorn project.asgi:application --config gunicorn.conf.py --bind $(HOST):$(PORT)

# The suite on TEST_WORKERS pytest-xdist workers (0: in this process), the
# acceptance suite together on one of them (tests/support/xdist_scheduler.py);
# each worker has a Redis database of its own (tests/testenv.py, TEST_REDIS_DB).
TEST_WORKERS ?= 2
test: setup-dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The acceptance suite alone (tests/acceptance/, also part of `make test`):
# schema fuzzing, injected faults, clean shutdown under load, abuse.
accept: setup-dev
	$(BIN)/python -m pytest -m acceptance tests/acceptance $(PYTEST_ARGS)

# A longer schemathesis run than CI's (FUZZ_EXAMPLES per operation, FUZZ_SEED).
fuzz: setup-dev
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest -s tests/acceptance/test_schema_fuzz.py $(PYTEST_ARGS)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup-dev
	$(BIN)/python -m bench

# Statistics readers on PostgreSQL at 1e5..1e7 calls/day (BENCH_DATABASE_URL).
bench-stats: setup-dev
	$(BIN)/python -m bench.bench_stats

# Load scenarios against the server as `make serve` starts it, next to the same
# driver going straight to a loopback provider (LOADTEST_ARGS="--quick",
# "--litellm", "--json out.json"; see python -m bench.loadtest --help).
loadtest: setup-dev
	$(BIN)/python -m bench.loadtest $(LOADTEST_ARGS)

# The tour: serve on embedded defaults with a flaky demo upstream and drive
# traffic through it; watch breakers trip and recover on the dashboard.
# One process serves and drives (the local-memory cache is per process), so
# Ctrl-C stops both. Creates the staff user admin/admin if missing (DEBUG only).
demo: setup
	DEBUG=true $(BIN)/python manage.py migrate --noinput
	DEBUG=true $(BIN)/python manage.py seed_upstreams
	DEBUG=true $(BIN)/python manage.py demo --serve $(HOST):$(PORT) --create-staff $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
