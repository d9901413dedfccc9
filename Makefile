# A newcomer needs two commands: `make serve` and `make test`.  Both install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test test-fast lint bench redis chromium clean

install: $(STAMP)

# torch==2.13.0 is the CPU build (on this machine's local disk); a GPU user installs the torch
# build for their CUDA into .venv first, and it is kept since the project accepts torch>=2.2.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || $(MAKE) redis
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || $(MAKE) chromium
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]' -e clients/python
	touch $(STAMP)

# The tests start their own redis-server on free loopback ports; install it where missing.
redis:
	@if command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends redis-server; \
	else echo "install redis-server (>= 6) with your package manager" >&2; exit 1; fi

# The playground's tests drive a headless Chromium through Playwright, which is pointed at this
# system browser (Playwright's own browser download is not needed); install it where missing.
chromium:
	@if command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; \
	else echo "install chromium with your package manager" >&2; exit 1; fi

# Serve the bundled checkpoints on http://$(HOST):$(PORT) (set VSSM_REDIS_URL to share sessions).
serve: $(STAMP)
	$(VENV)/bin/vssm serve --host $(HOST) --port $(PORT)

# One pytest worker per core (pytest-xdist); a file's tests stay on one worker, so its module
# fixtures (servers, Redis, trained checkpoints) are built once. `make test XDIST=` runs serially.
XDIST ?= -n auto --dist loadfile

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# One torch thread per process: the serving part runs a server, load generators and Redis on the
# machine's 2 cores, and two threads each oversubscribe them (docs/experiments/rounds-and-serving.md).
bench: $(STAMP)
	$(PY) -m bench.run --threads 1 --out docs/benchmarks.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
