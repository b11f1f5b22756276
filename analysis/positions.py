"""How the weight-space QK analyses treat positions, decided from what the model has, and recorded in words.

With learned absolute positions the positional term is part of a head's input (`vocab_input` adds the mean
positional embedding), so a word's input already carries it and M = I (`attention.QKHead.rotation` None).
With rotary positions a head's score in context is q R(Δ) k^T / scale, Δ = pos_q − pos_k
(`rotary`): a word's self-score sits at Δ = 0 (R = I), and a score between different words is read at
M = E_Δ[R(Δ)] over the query–partner distances of the survey's category prompts (`prompts.category_probe`
with the script's categories; partners: the semantic mask without its BOS column, as `scan.semantic_survey`
reads them). `position_treatment` gives M and the sentence every weight-space script records under
"position_treatment".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from torch import Tensor
from transformer_lens import HookedTransformer

from analysis import prompts
from analysis.rotary import model_rotary, partner_distances, rotary_mean_rotation

ABSOLUTE = "absolute positions: the positional term is in the input (vocab_input)"
SURVEY_PROMPTS, SURVEY_WORDS = 64, 64  # scan.semantic_survey's defaults


class PositionTreatment(NamedTuple):
    """M `[d_head, d_head]` for scores between different inputs (None: absolute positions, M = I) and the sentence
    the results record (`description`)."""

    rotation: Tensor | None
    description: str

    def described(self, note: str) -> str:
        """The sentence a results file records, with `note` (what this analysis does beyond the rule) appended where
        positions are rotary; with absolute positions `description` as it is."""
        return self.description if self.rotation is None else f"{self.description}; {note}"


def position_treatment(model: HookedTransformer, categories: Mapping[str, Sequence[str]], seed: int = 0
                       ) -> PositionTreatment:
    """The model's position treatment: absolute positions (`ABSOLUTE`, M = None) or, for rotary heads,
    M = E_Δ[R(Δ)] over every query–partner distance of the survey prompts (`SURVEY_PROMPTS` prompts of
    min(`SURVEY_WORDS`, n_ctx - 1) words of `categories`, drawn with `seed` + 1 as the survey's scripts draw them)."""
    if model_rotary(model.cfg) is None:
        return PositionTreatment(None, ABSOLUTE)
    n_words = min(SURVEY_WORDS, model.cfg.n_ctx - 1)
    probe = prompts.category_probe(model, categories, SURVEY_PROMPTS, n_words, seed + 1)
    partner = probe.mask.clone()
    partner[:, :, 0] = 0  # the semantic mask without its BOS fallback
    distances = partner_distances(partner.bool())
    return PositionTreatment(rotary_mean_rotation(model, distances),
                             f"self at Δ = 0; others at E_Δ[R(Δ)] over {len(distances)} query–partner distances "
                             f"of the survey prompts (mean Δ {distances.float().mean():.1f})")


IN_CONTEXT = "in context: each query and key turned by its own position (rotary), scores recomputed by the model's rule"


def recorded_treatment(model: HookedTransformer, rotary_text: str) -> str:
    """The "position_treatment" a script records where it does not use `position_treatment`'s M: `ABSOLUTE` for
    absolute positions, else `rotary_text` (e.g. `IN_CONTEXT`), decided from the model's config."""
    return ABSOLUTE if model_rotary(model.cfg) is None else rotary_text
