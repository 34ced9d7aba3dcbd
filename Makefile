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

# The oldest nnU-Net that pyproject.toml claims, laid over .venv's packages (PYTHONPATH): nnunetv2
# and the network package it pins (<0.4), nothing else, so it takes seconds instead of a second venv.
# The stop/resume and drop-in tests run against it too (nnslurm/training/nnunet_compat.py: what differs).
OLDEST_NNUNET := 2.6.0
OLDEST := .nnunet-$(OLDEST_NNUNET)
OLDEST_STAMP := $(OLDEST)/.installed
# Stops mid-epoch, at an epoch's start, in validation and in final validation; plain nnU-Net's
# --c, --val and predict on what nnslurm leaves; the drop-in tests (nnslurm where nnUNetv2_train
# was); `nnslurm predict` equal to nnUNetv2_predict.
OLDEST_TESTS := tests/test_nnunet_compat.py tests/test_dropin.py \
	tests/test_resume.py::test_deterministic_stops_end_bitwise_identical \
	tests/test_resume.py::test_signal_during_final_validation_is_resumable \
	tests/test_predict.py::test_output_equals_nnunetv2_predict

$(OLDEST_STAMP): $(STAMP)
	rm -rf $(OLDEST)
	$(BIN)/pip install -q --no-deps --target $(OLDEST) nnunetv2==$(OLDEST_NNUNET) 'dynamic-network-architectures>=0.3.1,<0.4'
	touch $(OLDEST_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nnslurm demo

# The SLURM tests (one cluster: in order) and all the others (two workers, one per half of the
# cores) run side by side, then OLDEST_TESTS against the oldest nnU-Net: scripts/run-tests.
test: $(OLDEST_STAMP)
	PYTHON=$(BIN)/python OLDEST_PATH=$(CURDIR)/$(OLDEST) OLDEST_TESTS="$(OLDEST_TESTS)" scripts/run-tests $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slurm and not nnunet" $(PYTEST_ARGS)

test-oldest: $(OLDEST_STAMP)
	PYTHONPATH=$(CURDIR)/$(OLDEST) NNSLURM_PIN_TEST_WORKERS=1 $(BIN)/python -m pytest $(OLDEST_TESTS) \
		-m "not slurm" -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check nnslurm tests benchmarks
	$(BIN)/ruff format --check nnslurm tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(OLDEST) demo-data .test-data
