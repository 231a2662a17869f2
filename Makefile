# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ml-connector demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy connector workers webhook_receiver simulators cli sandbox console

# Two test processes (pytest-xdist); TEST_PROCESSES=1 runs the suite in one.
TEST_PROCESSES ?= 2

test: lint
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadgroup

clean:
	rm -rf $(VENV) var build *.egg-info
