# dwell: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint broker-fetch clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) broker-fetch

broker-fetch:
	bash deploy/kafka/kafka.sh fetch

demo: install
	$(BIN)/dwell demo

test: install
	$(BIN)/ruff check stream learner producers tests
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check stream learner producers tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
