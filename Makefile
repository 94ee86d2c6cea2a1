# Everything a fresh machine needs, installed by the project itself.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install frontend chromium run test lint bench screenshots clean

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

## make test: install everything, lint, then the whole suite (needs PostgreSQL and Redis).
test: install frontend chromium lint
	$(BIN)/pytest

## make screenshots: PNGs of the chat page's main states, desktop and phone, in screenshots/.
screenshots: install chromium
	$(BIN)/python scripts/screenshots.py

## make bench: relay vs. the direct upstream vs. LiteLLM's proxy (bench/README.md); ~10 min.
bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) instance frontend/node_modules screenshots bench/results
