"""Reusable analysis code for the study of semantic, previous-token and induction heads.

Modules hold small, pure functions (math on tensors); the scripts in `scripts/` are thin
wrappers that parse arguments, call into this package and save results and figures.
"""
