# `make demo` and `make test` work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO := demo-out

.PHONY: demo test test-fast test-parity lint bench mutate clean

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

# MMSegmentation as the oracle (tests marked parity; `make test` skips them): its own venv, so its pins
# (mmcv-lite 2.1.0, mmengine, numpy/opencv) never touch .venv. About 0.5 min to install, 1-4 min to run on 2 cores.
# The files are named because mmsegmentation installs a top-level `tests` package into site-packages,
# which shadows ours for the other test modules (`from tests._train_helpers import ...`).
PARITY_VENV := .venv-parity
PARITY_PY := $(PARITY_VENV)/bin/python
PARITY_STAMP := $(PARITY_VENV)/.installed-stamp

# torch and torchvision (5.5 GB with their CUDA libraries) are not installed twice: a .pth file appends
# .venv's site-packages to this venv's path, after its own packages, so pip finds them already there.
$(PARITY_STAMP): pyproject.toml $(STAMP)
	@test -x $(PARITY_PY) || $(PYTHON) -m venv $(PARITY_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
		> "$$($(PARITY_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/eqsurgeon-dot-venv.pth"
	$(PARITY_PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PARITY_PY) -m pip install --quiet -e '.[dev,parity]'
	@touch $(PARITY_STAMP)

test-parity: $(PARITY_STAMP)
	$(PARITY_PY) -m pytest -m parity tests/test_parity_*.py tests/test_mmseg_convert.py

lint: $(STAMP)
	$(VENV)/bin/ruff check eqsurgeon tests fixtures benchmarks tools

# The main job on a bundled default: synthetic data → analyze → calibrate → check → train → eval (CPU, minutes).
EQ := $(VENV)/bin/eqsurgeon
TINY := upernet_tiny --arg num_classes=5 --input-size 64x64
demo: $(STAMP)
	rm -rf $(DEMO)
	$(EQ) demo-data $(DEMO)/data
	$(EQ) analyze $(TINY) --data $(DEMO)/data/images --batch-size 8 --batches 2 --json $(DEMO)/analyze.json
	$(EQ) calibrate $(TINY) --data $(DEMO)/data/images --out $(DEMO)/calibrated.safetensors
	$(EQ) check $(TINY) --checkpoint $(DEMO)/calibrated.safetensors --data $(DEMO)/data/images --batch-size 8 --batches 6
	$(EQ) train train/recipes/demo.toml --data $(DEMO)/data --init $(DEMO)/calibrated.safetensors --out $(DEMO)/run
	$(EQ) eval train/recipes/demo.toml --data $(DEMO)/data --checkpoint $(DEMO)/run/best.safetensors

bench: $(STAMP)
	$(PY) benchmarks/bench_analyze.py
	$(PY) benchmarks/bench_calibrate.py
	$(PY) benchmarks/bench_train.py

# Mutation testing of the surgery core (mutmut, in .mutate/): the score per module and the survivors
# (docs/mutation.md). Not part of `make test` or CI. Niced: about 36 min from scratch on 2 cores.
# Some groups only: make mutate GROUPS="checking measure"; the last report: $(PY) tools/mutate.py --report
mutate: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,mutate]'
	nice -n 19 $(PY) tools/mutate.py $(GROUPS)

clean:
	rm -rf $(DEMO) .pytest_cache .mutate
