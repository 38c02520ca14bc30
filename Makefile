# Two commands for a fresh machine: `make run` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kitrelay needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: install
	$(BIN)/kitrelay up

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy cannot follow the editable install's mapping of kitrelay.* onto the top-level folders, so it reads
	@# them through a tree of links laid out as the installed package.
	@rm -rf build/typecheck && mkdir -p build/typecheck/kitrelay
	@for d in gateway agents services shared; do ln -s "$(CURDIR)/$$d" build/typecheck/kitrelay/$$d; done
	MYPYPATH=build/typecheck $(BIN)/python -m mypy -p kitrelay -p tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build .kitrelay .pytest_cache .mypy_cache .ruff_cache kitrelay.db*
