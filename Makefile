# musegen: `make demo` trains on the built-in demo set and generates a sample; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.musegen-installed
DEMO_DIR := outputs/demo/make-demo
DEMO_CKPT := $(DEMO_DIR)/checkpoints/last.ckpt
DEMO_OUT := outputs/demo/make-demo/generated

.PHONY: setup demo test bench clean-demo system-deps

setup: $(STAMP)

system-deps:
	@if ! ldconfig -p | grep -q libfluidsynth; then \
	  echo "installing FluidSynth (needed to render the demo set)"; \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libfluidsynth3 || \
	    $$SUDO apt-get install -y -qq fluidsynth; \
	  else echo "please install libfluidsynth (FluidSynth) with your system's package manager"; exit 1; fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Build the demo data, train the demo experiment (resuming if interrupted), generate 20 s from it.
demo: setup
	@if [ -f $(DEMO_DIR)/.trained ]; then echo "demo model already trained: $(DEMO_CKPT)"; else \
	  $(PY) train.py experiment=demo run_name=make-demo resume=auto && touch $(DEMO_DIR)/.trained; fi
	@if [ -f $(DEMO_OUT)/calm-piano-melody-s0.wav ]; then echo "demo sample already generated"; else \
	  $(PY) generate.py ckpt=$(DEMO_CKPT) prompt="calm piano melody" duration=20 seed=0 out=$(DEMO_OUT); fi
	@echo
	@echo "samples:     $(DEMO_OUT)"
	@echo "checkpoints: $(DEMO_DIR)/checkpoints"
	@echo "tensorboard: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)/tensorboard"

test: setup
	$(PY) -m pytest -q

bench: setup
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b | tee bench/results/$$(basename $$b .py).json; done

clean-demo:
	rm -rf $(DEMO_DIR)
