# Two commands are the contract (see README.md):
#   make demo   set up .venv if missing, then run the main job on the shipped model organism
#   make test   set up .venv if missing, then run the test suite
MODEL ?= organism
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Weight processing of every script: default (TransformerLens's) or none (raw weights, filed apart as <id>+raw).
PROCESSING ?= default
SCRIPT_ARGS := --model $(MODEL)$(if $(filter-out default,$(PROCESSING)), --processing $(PROCESSING))
# The folder name of MODEL's results, figures and paper build (analysis/ids.py, standard library only):
# a hub or built-in name as it is, a directory as its base name + a hash of its resolved path; +raw for none.
MODEL_ID := $(shell $(PYTHON) analysis/ids.py '$(MODEL)' '$(PROCESSING)')

# Scripts of the demo, in order: each writes results/$(MODEL_ID)/<name>.json and figures/$(MODEL_ID)/.
DEMO_SCRIPTS := scan_heads
# baseline: previous-token and induction heads, circuits, visualisation
DEMO_SCRIPTS += manual_attention attention_stats qk_ov_circuits token_circuit_tables visualize_attention logit_lens activation_patching
# semantic head, part 1: survey, ablation, vocabulary-level input, attention versus similarity
DEMO_SCRIPTS += characterize_head component_ablation query_key_paths head_output token_freq cosine_attention_analysis
# semantic head, part 2: QK decomposition, steering, clustering, SAE features
DEMO_SCRIPTS += skew_analysis sym_skew_maps eigenvalue_scaling eigenvalue_rank_ablation gradient_steering clustering sae_features
# the evidence: the primary statistics corrected together, every other comparison listed as secondary
DEMO_SCRIPTS += evidence
# The organism as a simulation study, read by the paper (not part of the demo): the primary statistics and the
# scan on every organism of MODEL's recipe (seeds), and every statistic on its negative control. Each first runs
# the scripts it reads on those organisms (a model without a training log has none: both record that).
REPLICATION_SCRIPTS := seeds negative_control
SEED_SCRIPTS := scan_heads characterize_head skew_analysis evidence
NEGATIVE_CONTROL_SCRIPTS := scan_heads token_freq characterize_head cosine_attention_analysis \
	skew_analysis sym_skew_maps eigenvalue_scaling eigenvalue_rank_ablation gradient_steering clustering sae_features evidence

.PHONY: setup demo test test-fast test-slow bench clean
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

# The tests that are neither end-to-end (scripts, the paper build, make) nor slow: the quick check while working.
test-fast: setup
	$(PY) -m pytest -m "not e2e and not slow"

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf results figures/*/ paper/generated paper/build paper/main.pdf atlas

# --- the atlas ----------------------------------------------------------------------------------
#   make atlas [MODELS="a b ..."] [ATLAS_ARGS="--executor local ..."]   every head of every model, ranked across
#   models (scripts/atlas.py; docs/atlas.md): atlas/models/<id>/ per model (finished ones are skipped on a rerun),
#   atlas/atlas.json, atlas/atlas.csv, atlas/figures/ and the offline page atlas/index.html
MODELS ?= organism organism-llama organism-neox organism-negative-control gpt2-random
ATLAS_OUT ?= atlas
.PHONY: atlas
atlas: setup
	$(PY) scripts/atlas.py --models $(MODELS) --out $(ATLAS_OUT) $(ATLAS_ARGS)

# --- the paper ----------------------------------------------------------------------------------
#   make figures  rerun each script of DEMO_SCRIPTS whose script, analysis package or inputs changed
#   make paper    regenerate the paper's numbers and tables from the results, build paper/main.pdf
#   make all      both (MODEL=gpt2-small for GPT-2; each model's results, figures and build apart)
# One stamp per script, results/$(MODEL_ID)/.runs/<script>.json, holding its wall time under make.
# A script that reads another's results lists them:  $(RUNS)/<script>.json: $(RUNS)/<other>.json
# Extra arguments for one script: ARGS_<script>, e.g. make all MODEL=gpt2-small \
#   ARGS_token_freq="--corpus FILE" (default: the study's WikiText-103 through `datasets`; the organism samples its own).
# LIGHT=1: light settings for every script (fewer prompts, samples, resamples and steps; every entry the paper
# reads is kept), for a quick build of the whole pipeline at any model's size: CI builds GPT-2's shapes so.
# A light build is filed apart, results and figures under build/light/ and the paper under <id>-light, so it
# never passes for a full one. An ARGS_<script> given to make still wins.
ifeq ($(LIGHT),1)
OUT_ROOT := build/light
BUILD_ID := $(MODEL_ID)-light
OUT_ARGS := --out $(OUT_ROOT)
ARGS_scan_heads ?= --n-prompts 4 --category-prompts 8 --detect-prompts 2
ARGS_manual_attention ?= --n-random 1 --length 16
ARGS_attention_stats ?= --n-prompts 4 --length 16
ARGS_qk_ov_circuits ?= --n-prompts 2 --baseline-samples 32
ARGS_characterize_head ?= --n-prompts 8 --n-words 16 --n-resamples 100
ARGS_component_ablation ?= --n-prompts 8 --n-words 16
ARGS_query_key_paths ?= --n-prompts 8 --n-words 16 --n-swaps 4
ARGS_head_output ?= --n-prompts 8 --length 16
ARGS_cosine_attention_analysis ?= --n-tokens 500 --n-resamples 100
ARGS_skew_analysis ?= --n-null-draws 50
ARGS_eigenvalue_scaling ?= --n-prompts 8 --n-words 16
ARGS_eigenvalue_rank_ablation ?= --n-prompts 4 --n-words 16
ARGS_gradient_steering ?= --steps 3 --batch-size 4 --n-prompts 8 --n-words 16
ARGS_clustering ?= --n-tokens 500
ARGS_sae_features ?= --n-prompts 8 --n-words 16
else
OUT_ROOT := .
BUILD_ID := $(MODEL_ID)
OUT_ARGS :=
endif
RUNS := $(OUT_ROOT)/results/$(MODEL_ID)/.runs
RUN_STAMPS := $(DEMO_SCRIPTS:%=$(RUNS)/%.json)
REPLICATION_STAMPS := $(REPLICATION_SCRIPTS:%=$(RUNS)/%.json)
PACKAGE_FILES := $(shell find analysis -type f -not -path '*/__pycache__/*')
WRITEUP_FILES := $(wildcard writeup/*.py)  # the paper's generator and build check (not the scripts' input)
GENERATED := paper/generated/$(BUILD_ID)
PAPER_BUILD := paper/build/$(BUILD_ID)
# Run a command; if it succeeds, write {"seconds": its wall time, "peak_rss_gb": its peak resident memory} to the
# file named first (ru_maxrss of its one child), so one `make all` gives the per-script wall time and memory table.
TIMED := $(PY) -c 'import json, resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[2:]); \
	rc or json.dump({"seconds": round(time.perf_counter() - t, 2), \
	"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9, 2)}, open(sys.argv[1], "w")); \
	sys.exit(rc)'

.PHONY: figures paper all paper-fixture model-id script-args seeds negative-control
model-id:  # the id MODEL's results are filed under
	@echo $(MODEL_ID)
script-args:  # each script of DEMO_SCRIPTS and its extra arguments under these settings, one line each
	@$(foreach s,$(PAPER_SCRIPTS),echo "$(s) $(ARGS_$(s))";)
all: figures paper

figures: $(RUN_STAMPS)

$(RUNS)/%.json: scripts/%.py $(PACKAGE_FILES) | $(STAMP)
	@mkdir -p $(@D)
	@echo "== scripts/$*.py $(SCRIPT_ARGS) $(OUT_ARGS) $(ARGS_$*)"
	@$(TIMED) $@ $(PY) scripts/$*.py $(SCRIPT_ARGS) $(OUT_ARGS) $(ARGS_$*)

seeds: $(RUNS)/seeds.json
negative-control: $(RUNS)/negative_control.json

# Another organism's scripts, then this one's: --list-models names the organisms (none for a model without a recipe).
$(RUNS)/seeds.json: $(SEED_SCRIPTS:%=$(RUNS)/%.json) scripts/seeds.py $(PACKAGE_FILES) | $(STAMP)
	@for m in $$($(PY) scripts/seeds.py $(SCRIPT_ARGS) --list-models); do [ "$$m" = "$(MODEL)" ] || \
		$(MAKE) --no-print-directory figures MODEL=$$m DEMO_SCRIPTS="$(SEED_SCRIPTS)" || exit 1; done
	@echo "== scripts/seeds.py $(SCRIPT_ARGS) $(OUT_ARGS) $(ARGS_seeds)"
	@$(TIMED) $@ $(PY) scripts/seeds.py $(SCRIPT_ARGS) $(OUT_ARGS) $(ARGS_seeds)

$(RUNS)/negative_control.json: $(RUNS)/evidence.json scripts/negative_control.py $(PACKAGE_FILES) | $(STAMP)
	@for m in $$($(PY) scripts/negative_control.py $(SCRIPT_ARGS) --list-models); do \
		$(MAKE) --no-print-directory figures MODEL=$$m DEMO_SCRIPTS="$(NEGATIVE_CONTROL_SCRIPTS)" || exit 1; done
	@echo "== scripts/negative_control.py $(SCRIPT_ARGS) $(OUT_ARGS) $(ARGS_negative_control)"
	@$(TIMED) $@ $(PY) scripts/negative_control.py $(SCRIPT_ARGS) $(OUT_ARGS) $(ARGS_negative_control)

$(GENERATED)/macros.tex: $(RUN_STAMPS) $(REPLICATION_STAMPS) scripts/make_paper_inputs.py $(WRITEUP_FILES) analysis/organism/report.py \
		paper/reported_gpt2.json | $(STAMP)
	$(PY) scripts/make_paper_inputs.py $(SCRIPT_ARGS) $(OUT_ARGS) --generated $(GENERATED) --scripts $(PAPER_SCRIPTS) \
		$(if $(filter 1,$(LIGHT)),,--docs)

# build_paper.py writes its --pdf only when the log is clean, so a failed check is retried next time.
$(PAPER_BUILD)/checked.pdf: paper/main.tex paper/references.bib $(GENERATED)/macros.tex scripts/build_paper.py $(WRITEUP_FILES)
	$(PY) scripts/build_paper.py $(SCRIPT_ARGS) --generated $(GENERATED) --build-dir $(PAPER_BUILD) --pdf $@

paper: $(PAPER_BUILD)/checked.pdf  # a light build's PDF stays in its build folder
	$(if $(filter 1,$(LIGHT)),@echo "light build: $<",cp $< paper/main.pdf)

# The paper tests read a trimmed copy of the organism's results: refresh it after changing writeup/ or a script's results.
paper-fixture: $(RUN_STAMPS) $(REPLICATION_STAMPS)
	rm -rf tests/fixtures/paper/$(MODEL_ID)
	$(PY) scripts/make_paper_inputs.py $(SCRIPT_ARGS) --scripts $(PAPER_SCRIPTS) --trimmed-copy tests/fixtures/paper/$(MODEL_ID) \
		--docs

# --- the generated regions of README.md and docs/*.md (writeup/docs.py) --------------------------------
#   make docs          rewrite them: the organism's numbers from results/organism, run times from docs/data/
#   make docs-check    exit 1 if one is stale (tests/test_docs.py checks them against the paper fixture)
# make paper (and paper-fixture) rewrites them too, but only from the shipped organism's results, processed as by
# default (decided from the results' provenance): any other model's paper leaves them as they are.
# Records of measured run times, each with its commit and machine; each target then runs make docs:
#   make record-runs [MODEL=.. LIGHT=1]              MODEL's run stamps of its last build -> docs/data/runs/<id>.json
#   make record-time NAME=make-test CMD="make test"  CMD's wall time -> docs/data/commands/NAME.json
#   make record-bench [BENCH_ARGS="--only NAME"]     benchmarks -> docs/data/bench/<name>.json
RECORDS := docs/data
.PHONY: docs docs-check record-runs record-time record-bench
docs: | $(STAMP)
	$(PY) -m writeup.docs

docs-check: | $(STAMP)
	$(PY) -m writeup.docs --check

record-runs: | $(STAMP)
	$(PY) bench/records.py runs $(RUNS) $(RECORDS)/runs/$(BUILD_ID).json --scripts $(DEMO_SCRIPTS) \
		--command "make all MODEL=$(MODEL)$(if $(filter-out default,$(PROCESSING)), PROCESSING=$(PROCESSING))$(if $(filter 1,$(LIGHT)), LIGHT=1)"
	$(PY) -m writeup.docs

record-time: | $(STAMP)
	$(if $(and $(NAME),$(CMD)),,$(error name the record and the command: make record-time NAME=make-test CMD="make test"))
	$(PY) bench/records.py time $(RECORDS)/commands/$(NAME).json -- $(CMD)
	$(PY) -m writeup.docs

record-bench: setup
	$(PY) bench/run.py --out $(RECORDS)/bench $(BENCH_ARGS)
	$(PY) -m writeup.docs

# Scripts that read other scripts' results (besides the analysis package):
$(RUNS)/cosine_attention_analysis.json: $(RUNS)/token_freq.json
$(RUNS)/clustering.json: $(RUNS)/token_freq.json
$(RUNS)/evidence.json: $(filter-out $(RUNS)/evidence.json,$(RUN_STAMPS))

# --- held-out categories: the survey's head on categories its attention supervision never named ----------------
#   make held-out   rerun the scripts of HELD_OUT_SCRIPTS with --categories held_out into HELD_OUT_ROOT, then
#                   scripts/held_out.py sets both runs side by side in results/$(MODEL_ID)/held_out.json
# The held-out runs study the head the supervised survey chose (--layer/--head from the main run's
# characterize_head.json): letting them choose on held-out words would select on the test set. They run only for a
# model whose recorded ground truth (scan_heads' provenance, read from the model's own files) lists held-out
# categories; for any other the stamps say so and held_out.json records that nothing ran (the paper leaves it out).
HELD_OUT_SCRIPTS := characterize_head skew_analysis clustering cosine_attention_analysis
PAPER_SCRIPTS := $(DEMO_SCRIPTS) held_out $(REPLICATION_SCRIPTS)  # the scripts whose results the paper reads
HELD_OUT_ROOT := $(if $(filter 1,$(LIGHT)),build/light/held_out,build/held_out)
HELD_RUNS := $(HELD_OUT_ROOT)/results/$(MODEL_ID)/.runs
MAIN_RESULTS := $(OUT_ROOT)/results/$(MODEL_ID)
# prints "--layer L --head H" (the supervised survey's head) when the model has held-out categories, else nothing
HELD_OUT_HEAD := $(PY) -c 'import json, sys; d = sys.argv[1]; \
	truth = json.load(open(d + "/scan_heads.json"))["provenance"]["model"].get("ground_truth") or {}; \
	t = json.load(open(d + "/characterize_head.json"))["results"]["target"]; \
	print("--layer %d --head %d" % (t["layer"], t["head"]) if truth.get("held_out_categories") else "")'
HELD_OUT_INPUTS_cosine_attention_analysis := --freq-csv $(MAIN_RESULTS)/token_freq.csv
HELD_OUT_INPUTS_clustering := --frequencies $(MAIN_RESULTS)/token_freq.csv
.PHONY: held-out
held-out: $(RUNS)/held_out.json
$(GENERATED)/macros.tex: $(RUNS)/held_out.json
paper-fixture: $(RUNS)/held_out.json

$(HELD_RUNS)/%.json: scripts/%.py $(PACKAGE_FILES) $(RUNS)/scan_heads.json $(RUNS)/characterize_head.json | $(STAMP)
	@mkdir -p $(@D)
	@head="$$($(HELD_OUT_HEAD) $(MAIN_RESULTS))" || exit 1; \
	if [ -z "$$head" ]; then echo '{"skipped": "no held-out categories in the ground truth"}' > $@; exit 0; fi; \
	echo "== scripts/$*.py $(SCRIPT_ARGS) --out $(HELD_OUT_ROOT) --categories held_out $$head $(ARGS_$*)"; \
	$(TIMED) $@ $(PY) scripts/$*.py $(SCRIPT_ARGS) --out $(HELD_OUT_ROOT) --categories held_out $$head \
		$(HELD_OUT_INPUTS_$*) $(ARGS_$*)
$(HELD_RUNS)/cosine_attention_analysis.json $(HELD_RUNS)/clustering.json: $(RUNS)/token_freq.json

$(RUNS)/held_out.json: scripts/held_out.py $(PACKAGE_FILES) $(HELD_OUT_SCRIPTS:%=$(RUNS)/%.json) \
		$(HELD_OUT_SCRIPTS:%=$(HELD_RUNS)/%.json) | $(STAMP)
	@echo "== scripts/held_out.py $(SCRIPT_ARGS) $(OUT_ARGS) --held-out-root $(HELD_OUT_ROOT)"
	@$(TIMED) $@ $(PY) scripts/held_out.py $(SCRIPT_ARGS) $(OUT_ARGS) --held-out-root $(HELD_OUT_ROOT)
