# Two commands are the contract (see README.md):
#   make demo   set up .venv if missing, then run the main job on the shipped model organism
#   make test   set up .venv if missing, then run the test suite
MODEL ?= organism
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCRIPT_ARGS := --model $(MODEL)

# Scripts of the demo, in order: each writes results/$(MODEL)/<name>.json and figures/$(MODEL)/.
DEMO_SCRIPTS := scan_heads
# baseline: previous-token and induction heads, circuits, visualisation
DEMO_SCRIPTS +=
# semantic head, part 1: survey, ablation, vocabulary-level input, attention versus similarity
DEMO_SCRIPTS += characterize_head component_ablation token_freq cosine_attention_analysis
# semantic head, part 2: QK decomposition, steering, clustering, SAE features
DEMO_SCRIPTS +=

.PHONY: setup demo test test-slow bench clean
setup: $(STAMP)

# torch is installed first and alone, pinned, so that nothing pulls an unpinned (CUDA) build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	@for script in $(DEMO_SCRIPTS); do \
		echo "== scripts/$$script.py $(SCRIPT_ARGS)"; \
		$(PY) scripts/$$script.py $(SCRIPT_ARGS) || exit 1; \
	done

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf results figures/*/ paper/generated
