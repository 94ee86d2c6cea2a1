# Everything a fresh machine needs, installed by the project itself.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install frontend chromium run test lint typecheck unit check bench soak screenshots clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

# axe-core for the accessibility test (the page's own libraries are committed in the package).
frontend:
	cd frontend && npm ci --no-audit --no-fund --loglevel=error

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## make run: the relay with the mock upstream on SQLite; open the URL it prints.
run: install
	$(BIN)/relay serve --bind $(HOST):$(PORT)

lint: $(VENV)/.installed
	$(BIN)/ruff check relay tests

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# The tests that start no server: no PostgreSQL, Redis or browser needed.
unit: $(VENV)/.installed
	$(BIN)/pytest -q -m "not live and not browser" --ignore=tests/live

## make check: lint, types and the tests that start no server, side by side; under 30 s.
check:
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck unit

## make test: install everything, lint, type-check, then the whole suite (needs PostgreSQL, Redis).
test: install frontend chromium lint typecheck
	$(BIN)/pytest

## make screenshots: PNGs of the chat page's main states, desktop and phone, in screenshots/.
screenshots: install chromium
	$(BIN)/python scripts/screenshots.py

## make bench: relay vs. the direct upstream vs. LiteLLM's proxy (bench/README.md); ~10 min.
bench: install
	$(BIN)/python -m bench

## make soak: thousands of tickets, random clients and upstream faults, then nothing may be lost
## (README "Soak"); e.g. make soak SOAK_ARGS="--duration 600 --tickets 20000 --seed 7".
SOAK_ARGS ?= --duration 180 --tickets 3000 --concurrency 48
soak: install
	$(BIN)/python -m soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) instance frontend/node_modules screenshots bench/results
