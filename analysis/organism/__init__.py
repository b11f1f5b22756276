"""The model organism: a small GPT-2-style model trained here, with planted heads of known kinds.

`language`: its synthetic language (category words, repeated chunks, random tokens). `train`: the
training loop that plants a previous-token, an induction and a semantic head. `files`: where the
shipped checkpoint lives and what a trained organism records beside its weights (`ground_truth`:
which heads were planted, which categories the language uses). `report`: the behaviours the planted
heads must show (`THRESHOLDS`), measured by `planted_head_report`. `sae`: training the organism's
own SAE. Analyses must find the planted heads without being told; only tests compare against the truth.
"""
