# ganserve: `make run` serves the bundled model, `make test` runs every test.
# Both create the virtual environment on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 50051
METRICS_PORT ?= 8000
# torch is pinned (torch==2.13.0): an unpinned one may pull a newer CUDA build. PyPI's Linux
# wheel bundles the multi-GB CUDA libraries; TORCH_INDEX=https://download.pytorch.org/whl/cpu
# installs the CPU build from PyTorch's index first (see the README).
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
# Exits 0 when the Python it runs on is new enough for pyproject.toml's requires-python.
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 11))'

.PHONY: run test model proto lint clean bench soak

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" && $(PYTHON) $(NEW_ENOUGH) || { \
		echo "need python3.11 (or python3 >= 3.11) on PATH, or PYTHON=/path/to/python3.11;" \
		"found: $(or $(PYTHON),none)"; exit 1; }
	@# A venv made by an older Python (before 3.11 was installed) is made again, not reused.
	@if test -x $(BIN)/python && ! $(BIN)/python $(NEW_ENOUGH); then \
		echo "$(VENV) runs $$($(BIN)/python --version 2>&1); making it again with $(PYTHON)"; \
		rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

# System packages the tests use: Debian's prometheus, which tests/serve/test_prometheus_scrape.py
# runs to scrape a real server. Nothing to do when it is already on PATH. Where it cannot be
# installed (no root or sudo, not Debian) that one test skips, except in CI, which must run it.
.PHONY: system-deps
system-deps:
	@if command -v prometheus >/dev/null 2>&1; then exit 0; fi; \
	SUDO=; if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
	( set -x; \
	$$SUDO apt-get update && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends prometheus ) || { \
	case "$$CI" in ""|0|false|no) ;; *) exit 1;; esac; \
	echo "make: could not install Debian's prometheus (it needs apt-get and root or sudo);"; \
	echo "make: tests/serve/test_prometheus_scrape.py will skip. Install it to run that test."; }

run: $(STAMP)
	$(BIN)/ganserve serve --model-repository models --port $(PORT) --metrics-port $(METRICS_PORT)

test: system-deps $(STAMP)
	$(BIN)/python -m pytest

# Reproduce the bundled model: train on digits, export and verify, keep the checkpoint beside it.
model: $(STAMP)
	# A fresh run each time: gan-train refuses a run folder holding one, and replaces an
	# existing --out only with --overwrite.
	rm -rf build/digits-run
	$(BIN)/gan-train --out build/digits.pt --overwrite --steps 8000 --diffaugment translation,cutout --seed 0
	$(BIN)/export-gan build/digits.pt --repository models --name digits --version 2 --force --fp16-onnx
	cp build/digits.pt models/digits/2/checkpoint.pt

# Side-by-side performance table (docs/benchmarks.md): engine alone, ganserve, Triton.
# Triton comes from PyTriton in its own environment (its protobuf differs from ours).
TRITON_VENV := build/triton-venv
$(TRITON_VENV)/.installed:
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet nvidia-pytriton onnxruntime numpy pillow
	touch $@

bench: $(STAMP) $(TRITON_VENV)/.installed
	$(BIN)/gan-bench compare --out build/bench --triton-python $(TRITON_VENV)/bin/python

# The full reliability runs (docs/reliability.md): 100,000 calls at concurrency 128, then
# offered load at 3x capacity against a small queue. CI runs shortened forms in the tests.
soak: $(STAMP)
	$(BIN)/gan-bench soak --calls 100000 --concurrency 128 --out build/reliability
	$(BIN)/gan-bench overload --queue-size 64 --factor 3 --out build/reliability

proto: $(STAMP)
	$(BIN)/python proto/generate.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build .pytest_cache
