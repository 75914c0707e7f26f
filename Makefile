# musegen: `make demo` trains on the built-in demo set and generates a sample; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.musegen-installed
DEMO_DIR := outputs/demo/make-demo
DEMO_CKPT := $(DEMO_DIR)/checkpoints/last.ckpt
DEMO_OUT := outputs/demo/make-demo/generated
VOC_DIR := outputs/vocoder_demo/make-demo
VOC_CKPT := $(VOC_DIR)/checkpoints/last.ckpt

.PHONY: setup demo test bench app clean-demo system-deps

setup: $(STAMP)

# FluidSynth renders the demo set (required). Debian's sonic-pi-samples (165 FLAC one-shots and loops
# in /usr/share/sonic-pi/samples) are the real recordings tests/test_recordings.py trains on; chromium and
# chromium-driver are the headless browser tests/test_app.py drives the web app with. Without apt those
# tests are skipped and say why.
system-deps:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); updated=; \
	apt_install() { [ -n "$$updated" ] || $$SUDO apt-get update -qq; updated=1; $$SUDO apt-get install -y -qq "$$@"; }; \
	if ! ldconfig -p | grep -q libfluidsynth; then \
	  echo "installing FluidSynth (needed to render the demo set)"; \
	  if command -v apt-get >/dev/null; then \
	    apt_install libfluidsynth3 || apt_install fluidsynth || exit 1; \
	  else echo "please install libfluidsynth (FluidSynth) with your system's package manager"; exit 1; fi; \
	fi; \
	if command -v apt-get >/dev/null && ! dpkg -s sonic-pi-samples >/dev/null 2>&1; then \
	  echo "installing sonic-pi-samples (real recordings for tests/test_recordings.py)"; \
	  apt_install sonic-pi-samples || echo "sonic-pi-samples not installed: tests/test_recordings.py will be skipped"; \
	fi; \
	if command -v apt-get >/dev/null && ! { command -v chromium && command -v chromedriver; } >/dev/null; then \
	  echo "installing chromium and chromium-driver (the browser tests/test_app.py drives)"; \
	  apt_install chromium chromium-driver || echo "chromium not installed: the browser tests of tests/test_app.py will be skipped"; \
	fi

$(STAMP): pyproject.toml | system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Build the demo data, train the demo experiment and its vocoder (resuming if interrupted), generate 20 s
# through the vocoder and, to compare, through the analytic synthesis.
demo: setup
	@if [ -f $(DEMO_DIR)/.trained ]; then echo "demo model already trained: $(DEMO_CKPT)"; else \
	  $(PY) train.py experiment=demo run_name=make-demo resume=auto && touch $(DEMO_DIR)/.trained; fi
	@if [ -f $(VOC_DIR)/.trained ]; then echo "demo vocoder already trained: $(VOC_CKPT)"; else \
	  $(PY) train.py experiment=vocoder_demo run_name=make-demo resume=auto && touch $(VOC_DIR)/.trained; fi
	@if [ -f $(DEMO_OUT)/calm-piano-melody-s0.wav ]; then echo "demo sample already generated"; else \
	  $(PY) generate.py ckpt=$(DEMO_CKPT) prompt="calm piano melody" duration=20 seed=0 out=$(DEMO_OUT) \
	    vocoder=$(VOC_CKPT); fi
	@if [ -f $(DEMO_OUT)/mix/calm-piano-melody-s0.wav ]; then echo "analytic demo sample already generated"; else \
	  $(PY) generate.py ckpt=$(DEMO_CKPT) prompt="calm piano melody" duration=20 seed=0 out=$(DEMO_OUT)/mix; fi
	@echo
	@echo "samples:     $(DEMO_OUT) (the demo vocoder), $(DEMO_OUT)/mix (the analytic synthesis)"
	@echo "checkpoints: $(DEMO_DIR)/checkpoints, $(VOC_DIR)/checkpoints"
	@echo "tensorboard: $(VENV)/bin/tensorboard --logdir outputs"

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The web app (musegen.app, the `app` extra) on the demo checkpoint, rendered by the demo vocoder once
# it is trained, at http://127.0.0.1:7860
app: setup
	@test -f $(DEMO_CKPT) || { echo "no demo checkpoint at $(DEMO_CKPT): run make demo first"; exit 1; }
	@$(PY) -c "import gradio" 2>/dev/null || $(PY) -m pip install -q -e '.[app]'
	$(PY) -m musegen.app ckpt=$(DEMO_CKPT) $$( [ -f $(VOC_DIR)/.trained ] && echo vocoder=$(VOC_CKPT) )

# Every benchmark, one JSON object each into bench/results/; the ones that read a trained model get
# `make demo`'s checkpoints (the generator, or the vocoder for the vocoder benches).
bench: demo
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do n=$$(basename $$b .py); \
	  case $$n in bench_sampling|bench_hazard|bench_note_lengths) args="--ckpt $(DEMO_CKPT)";; \
	    bench_vocoder|bench_vocoder_quality) args="--ckpt $(VOC_CKPT)";; *) args="";; esac; \
	  echo "== $$b $$args"; $(PY) $$b $$args | tee bench/results/$$n.json; done

clean-demo:
	rm -rf $(DEMO_DIR) $(VOC_DIR)
