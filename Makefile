# dwell: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint broker-fetch prometheus clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) broker-fetch

# Debian's prometheus package: the server and promtool for the monitoring tests.
prometheus:
	@command -v promtool >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; }

broker-fetch:
	bash deploy/kafka/kafka.sh fetch

demo: install
	$(BIN)/dwell demo

test: install prometheus
	$(BIN)/ruff check stream learner producers tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

# mypy checks the packages that pyproject.toml's [tool.mypy] names
lint: install
	$(BIN)/ruff check stream learner producers tests
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
