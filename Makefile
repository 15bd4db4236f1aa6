# `make demo` and `make test` work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO := demo-out

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned: these versions install from the local wheel cache, others download GBs.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check eqsurgeon tests fixtures benchmarks

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(VENV)/bin/eqsurgeon analyze upernet_tiny --input-size 128x128 --json $(DEMO)/analyze.json
	-$(VENV)/bin/eqsurgeon check upernet_tiny --input-size 128x128

bench: $(STAMP)
	$(PY) benchmarks/bench_analyze.py

clean:
	rm -rf $(DEMO) .pytest_cache
