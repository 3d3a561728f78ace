# crowdclust: every target works on a fresh machine that has only python3 and make.
# The installer (uv, pinned) is bootstrapped into .tools/ on first use; the project's
# environment is .venv/, built from uv.lock.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install test test-service test-scale lint fmt demo bench up down status clean

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Re-runs only when the lock file or the project metadata changed. Byte-compiles at install time:
# with PYTHONDONTWRITEBYTECODE set (it is, in this workplace's sessions) every process would otherwise
# recompile numba/pandas/prefect from source (measured: `crowdclust aggregate` 3.3 s -> 1.3 s).
# The warm-up fit compiles the aggregation's numba kernels into their on-disk cache (__pycache__),
# so the first `crowdclust aggregate` loads machine code instead of compiling (~10-50 s otherwise).
$(STAMP): $(UV) uv.lock pyproject.toml
	$(UV) sync --locked --quiet --compile-bytecode
	$(VENV)/bin/python -m aggregation.warmup
	@touch $(STAMP)

# Lanes: the tests mostly wait (simulated clocks, servers starting, polls), so 4 workers keep 2 cores
# busy. `make test TEST_LANES=0` runs everything in this one process.
# The project's own modules are byte-compiled first (stale .pyc only; a second or so): with
# PYTHONDONTWRITEBYTECODE set, every process the suite starts (about 130: `crowdclust run` and
# `aggregate`, flow runs, workers, emulators) would otherwise compile them from source again.
TEST_LANES ?= 4
test: install
	$(VENV)/bin/python -m compileall -q -j 0 aggregation crowdclust emulator flows tasks
	$(VENV)/bin/pytest $(if $(filter 0,$(TEST_LANES)),,-n $(TEST_LANES) --dist loadscope)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(VENV)/bin/python -m crowdclust.demo $(if $(TIMINGS),--timings)

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(VENV)/bin/python $$script || exit 1; done

# Local service: Prefect server + emulator + run files + workers, deployments from prefect.yaml.
# `make up PROFILE=postgres WORKERS=2 AUTH=1 LISTEN=0.0.0.0 FORCE=1`; every setting is remembered in
# .service/ for the next `up`, `status` and `down` (AUTH=0 turns the password off again). LISTEN, not
# HOST: some shells export HOST (the machine's name), which make would take.
up: install
	$(if $(AUTH),CROWDCLUST_AUTH=$(AUTH) )$(VENV)/bin/crowdclust service up --timings \
		$(if $(PROFILE),--profile $(PROFILE)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(FORCE),--force) \
		$(if $(LISTEN),--host $(LISTEN))

down:
	@if [ -x $(VENV)/bin/crowdclust ]; then $(VENV)/bin/crowdclust service down $(if $(FORCE),--force); else echo "nothing to stop"; fi

status: install
	$(VENV)/bin/crowdclust service status

# Only the service, lifecycle and browser tests (one shared service on free ports). `make test`
# runs them too.
test-service: install
	$(VENV)/bin/pytest tests/test_service_*.py tests/test_browser_*.py

# The six-runs-at-once scale test alone (it is also part of `make test`), printing its figures.
test-scale: install
	$(VENV)/bin/pytest tests/test_scale_service.py -s

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
