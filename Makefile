# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
# Both create (once) and reuse .venv in this folder.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch first, then everything else with torch pinned (see constraints.txt).
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nnslurm demo

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slurm and not nnunet" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check nnslurm tests benchmarks
	$(BIN)/ruff format --check nnslurm tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-data .test-data
