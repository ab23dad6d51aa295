# Everything a fresh machine needs: `make run` and `make test` both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here: 2.13.0 is the CPU build; any other torch request would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup tools run test test-fast clean

$(BIN)/.installed: pyproject.toml Makefile
	@echo "setting up $(VENV): Python virtual environment"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing $(TORCH) (the CPU build)"
	@$(BIN)/python -m pip install --quiet $(TORCH)
	@echo "installing embprof and its dependencies (editable, with the test tools, the ONNX/OpenVINO backends and Ray)"
	@# setuptools' note that an editable install links to this folder is expected here, not a problem: not shown.
	@# The torch pin is a constraint here too, so that nothing the extras need can replace it.
	@echo "$(TORCH)" > $(VENV)/torch-pin.txt
	@PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -c $(VENV)/torch-pin.txt -e '.[test,backends,ray]'
	@touch $@
	@echo "ready: $(VENV)"

setup: $(BIN)/.installed

run: setup
	$(BIN)/embprof

# tmux drives the dashboard in a real terminal in the tests; cmake and g++ build the real llama.cpp
# server the server tests use; Chromium opens the matrix's HTML report. Debian's packages, where apt-get and root allow.
tools:
	@missing=""; for t in tmux cmake g++ chromium; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	  [ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$(echo $$missing | sed 's/g++/g++ make/') >/dev/null; } || \
	  echo "could not install:$$missing (the tests that need them will say so)"

# llama-server (for the server tests) builds from the llama-cpp-python sdist, and the infinity server installs into
# a virtual environment of its own, while the venv installs: the build is compiler-bound, the installs mostly disk-bound.
# Both are cached outside the project per version.
test: tools
	@( $(PYTHON) tests/llama_server.py --build-only > .llama-build.log 2>&1 || echo "llama-server build failed: see .llama-build.log" ) & \
	  ( $(PYTHON) tests/infinity_server.py > .infinity-install.log 2>&1 || echo "infinity install failed: see .infinity-install.log" ) & \
	  $(MAKE) --no-print-directory setup; wait
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .llama-build.log .infinity-install.log
