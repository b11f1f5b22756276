"""Reusable analysis code for the study of semantic, previous-token and induction heads.

The science modules hold small, pure functions (math on tensors); the scripts in `scripts/` are
thin wrappers that parse arguments, call into this package and save results and figures.

* Models and prompts: `models` (load, save, shapes), `prompts` (category sets, prompt builders,
  ground-truth masks), `organism/` (the trained model organism: its language, training, planted
  heads, its SAE's training).
* Running a model: `patterns` (attention patterns, a layer's input), `scan` (every head on every
  probe), `heads` (a script's target head and its controls).
* Metrics: `scores` (previous-token, induction, duplicate and the semantic metrics), `survey`,
  `attention_stats`, `detector_check`, `controls` (a statistic of the target ranked against
  control heads).
* Analyses: `attention`, `circuits`, `ablation`, `patching`, `vocab_input`, `token_maps`,
  `similarity`, `frequency`, `qk_decomposition` (weights only) and `qk_edits` (the same edits run
  in the model), `self_suppression`, `steering`, `clustering`, `sae/` (SAE sources, features,
  the study's precision).
* Results: `records` holds every results-record builder and printed summary (what a results file
  keeps, what a script prints); `io` writes results and figures with their provenance;
  `plotting` draws every figure.
* Around them: `cli` (argument parsing and checks), `errors`, `ids`, and `infra/` (atomic writes,
  a run's outputs as one unit, the Hugging Face hub, model-directory checks), which a
  researcher never needs to open.
"""
