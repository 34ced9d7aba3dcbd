# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
# Both create (once) and reuse .venv in this folder.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-oldest lint venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch first, then everything else with torch pinned (see constraints.txt).
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The oldest nnU-Net that pyproject.toml claims, in a venv of its own: the stop/resume and
# drop-in tests run against it too (nnslurm/nnunet_compat.py: what differs between versions).
OLDEST_NNUNET := 2.6.0
OLDEST := .venv-nnunet-$(OLDEST_NNUNET)
OLDEST_STAMP := $(OLDEST)/.installed
# ~3 min on 2 CPUs (the venv: ~2.5 min once): stops mid-epoch, at an epoch's start, in validation
# and in final validation; plain nnU-Net's --c, --val and predict on what nnslurm leaves.
OLDEST_TESTS := tests/test_nnunet_compat.py tests/test_resume.py::test_deterministic_stops_end_bitwise_identical \
	tests/test_resume.py::test_signal_during_final_validation_is_resumable

$(OLDEST_STAMP): pyproject.toml constraints.txt
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q --upgrade pip
	$(OLDEST)/bin/pip install -q -c constraints.txt torch==2.13.0
	$(OLDEST)/bin/pip install -q -c constraints.txt nnunetv2==$(OLDEST_NNUNET) -e '.[test]'
	touch $(OLDEST_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nnslurm demo

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slurm and not nnunet" $(PYTEST_ARGS)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -m pytest $(OLDEST_TESTS) -m "not slurm" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check nnslurm tests benchmarks
	$(BIN)/ruff format --check nnslurm tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OLDEST) demo-data .test-data
