# Two commands for a fresh machine: `make run` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock browser run test bench chaos lint format clean

install: $(STAMP)

# Exactly the versions requirements-test.lock names, their hashes checked; then kitrelay itself, adding nothing.
$(STAMP): pyproject.toml requirements-test.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kitrelay needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-test.lock
	$(BIN)/python -m pip install --quiet --no-deps -e '.[test]'
	@touch $(STAMP)

# Refresh the lock files from pyproject.toml's ranges (newest versions they admit), with uv run from build/.
UV_VERSION := 0.13.8
LOCK_ARGS := --universal --python-version 3.11 --generate-hashes --quiet
lock:
	$(PYTHON) -m pip install --quiet --target build/uv uv==$(UV_VERSION)
	build/uv/bin/uv pip compile pyproject.toml $(LOCK_ARGS) -o requirements.lock
	build/uv/bin/uv pip compile pyproject.toml --extra test $(LOCK_ARGS) -o requirements-test.lock

run: install
	$(BIN)/kitrelay up

test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The browser tests drive Debian's Chromium (Playwright cannot download its own here): install it when missing.
# Their accessibility checks inject axe-core, installed from npm at the version its lock file names.
AXE_DIR := tests/browser/axe
browser: $(AXE_DIR)/node_modules/.installed
	@if [ -x "$${KITRELAY_CHROMIUM:-/usr/bin/chromium}" ] || command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| echo "make browser: installing chromium failed; the browser tests will be skipped"; \
	else echo "make browser: no Chromium; the browser tests will be skipped. Install it: sudo apt-get install chromium"; fi

$(AXE_DIR)/node_modules/.installed: $(AXE_DIR)/package.json $(AXE_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(AXE_DIR) --no-audit --no-fund --loglevel=error && touch $@ \
		|| echo "make browser: npm ci failed; the accessibility checks will be skipped"; \
	else echo "make browser: no npm; the accessibility checks will be skipped. Install it: sudo apt-get install npm"; fi

# The load generator against the embedded default and the in-process baseline (benchmarks/README.md).
bench: install
	$(BIN)/python -m benchmarks.load $(BENCH_ARGS)

# The chaos runner: every fault in turn under scripted conversations, each judged against a fault-free run
# (README "Chaos"; `make chaos CHAOS_ARGS=--quick` for one round).
chaos: install
	$(BIN)/python -m benchmarks.chaos $(CHAOS_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy cannot follow the editable install's mapping of kitrelay.* onto the top-level folders, so it reads
	@# them through a tree of links laid out as the installed package.
	@rm -rf build/typecheck && mkdir -p build/typecheck/kitrelay
	@for d in gateway agents services shared; do ln -s "$(CURDIR)/$$d" build/typecheck/kitrelay/$$d; done
	MYPYPATH=build/typecheck $(BIN)/python -m mypy -p kitrelay -p tests -p benchmarks

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build .kitrelay .pytest_cache .mypy_cache .ruff_cache kitrelay.db* $(AXE_DIR)/node_modules
