"""Every number the paper prints, named once: macro -> (JSON path, format), one table per results file.

`SPEC[source]` maps each macro `\\Name` to the entry it prints, a dotted path into
`results/<model>/<source>.json` (or into `results.FIXED_SOURCES`, the values *reported* for GPT-2 small,
citations typed from the literature, or `results.CHECKPOINT_SOURCES`, a model organism's records), and its
format (`writeup.format`). Scripts store what the paper reads under names (factors by factor,
cells by "k=..,scale=..", conditions by mode and condition, the best cell as "best_cell"), so a
path is all a macro needs. `DERIVED` holds the few values that combine entries of several
sources, each with a named function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.ablation import damage_share
from writeup.format import Format, Words, format_value, same_head
from writeup.results import MODEL_TRUTH, Results

Entry = tuple[str, Format]  # (dotted JSON path, format)


def provenance(prefix: str) -> dict[str, Entry]:
    """Model shape and commit, from one results file's provenance."""
    model = "provenance.model"
    return {f"{prefix}Name": (f"{model}.name", "text"), f"{prefix}Layers": (f"{model}.n_layers", "d"),
            f"{prefix}Heads": (f"{model}.n_heads", "d"), f"{prefix}DModel": (f"{model}.d_model", "d"),
            f"{prefix}DHead": (f"{model}.d_head", "d"), f"{prefix}DVocab": (f"{model}.d_vocab", "d"),
            f"{prefix}NCtx": (f"{model}.n_ctx", "d"), f"{prefix}Commit": ("provenance.git_commit", "commit")}


def with_interval(prefix: str, path: str, fmt: Format) -> dict[str, Entry]:
    """\\Prefix, \\PrefixLow and \\PrefixHigh: a value and its 95% CI, stored as path, path_low, path_high."""
    ends = (("", ""), ("Low", "_low"), ("High", "_high"))
    return {f"{prefix}{suffix}": (f"{path}{end}", fmt) for suffix, end in ends}


# component_ablation's conditions: (the paper's name in tables, the infix of its macros \Abl<infix><Mode>)
ABLATION_CONDITIONS = {
    "baseline": ("none (baseline)", "Base"), "token_embedding": ("token embedding", "Token"),
    "positional_embedding": ("positional embedding", "Pos"), "attention_0": ("first attention layer", "Attn"),
    "mlp_0": ("first MLP", "MLP"), "mlp_only_residual": ("MLP-only residual", "MLPOnly"),
}
ABLATION_MODES = ("mean", "zero")
# query_key_paths' properties: the infix of their macros -> the key of results.strongest (analysis.path_records)
QKP_PROPERTIES = {"Self": "self_avoidance", "Attract": "category_attraction", "Bos": "bos_fallback"}
# The rank-ablation cell the original study reported (paper/reported_gpt2.json: rank_ablation.k and .scale).
STUDY_CELL = "k=24,scale=-2"

TOP, MAPS, SETTINGS = "results.top_heads", "results.best_head_scores", "results.settings"
PLAIN, BIASED = "results.without_bias", "results.with_bias"
METRICS, KEYS = "results.metrics", "results.top_keys"
TRAIN = "train_config"

SPEC: dict[str, dict[str, Entry]] = {
    "ground_truth": {
        "OrgCategories": ("categories", "count"),
    },
    "training_log": {
        "OrgLayers": (f"{TRAIN}.n_layers", "d"), "OrgHeads": (f"{TRAIN}.n_heads", "d"),
        "OrgDModel": (f"{TRAIN}.d_model", "d"), "OrgDHead": (f"{TRAIN}.d_head", "d"),
        "OrgDMLP": (f"{TRAIN}.d_mlp", "d"), "OrgNCtx": (f"{TRAIN}.n_ctx", "d"),
        "OrgSteps": (f"{TRAIN}.steps", "d"), "OrgBatch": (f"{TRAIN}.batch_size", "d"),
        "OrgLR": (f"{TRAIN}.lr", ".0e"), "OrgWarmup": (f"{TRAIN}.warmup_steps", "d"),
        "OrgWeightDecay": (f"{TRAIN}.weight_decay", ".2f"),
        "OrgSupervisionWeight": (f"{TRAIN}.supervision_weight", ".1f"), "OrgTrainSeed": (f"{TRAIN}.seed", "d"),
        "OrgMixCategory": (f"{TRAIN}.mixture.category_text", "percent"),
        "OrgMixRepeated": (f"{TRAIN}.mixture.repeated_chunks", "percent"),
        "OrgMixRandom": (f"{TRAIN}.mixture.random_tokens", "percent"),
        "OrgTrainMinutes": ("seconds", "minutes"), "OrgTrainThreads": ("torch_threads", "d"),
        "OrgInitialLMLoss": ("log.0.lm_loss", ".2f"), "OrgFinalLMLoss": ("log.-1.lm_loss", ".2f"),
    },
    "scan_heads": {
        **provenance("Model"),
        "ScanPrevHead": (f"{TOP}.previous_token.0", "head"), "ScanPrevScore": (f"{TOP}.previous_token.0.score", ".3f"),
        "ScanPrevRunnerHead": (f"{TOP}.previous_token.1", "head"),
        "ScanPrevRunnerScore": (f"{TOP}.previous_token.1.score", ".3f"),
        "ScanIndHead": (f"{TOP}.induction.0", "head"), "ScanIndScore": (f"{TOP}.induction.0.score", ".3f"),
        "ScanIndRunnerHead": (f"{TOP}.induction.1", "head"), "ScanIndRunnerScore": (f"{TOP}.induction.1.score", ".3f"),
        "ScanDupHead": (f"{TOP}.duplicate.0", "head"), "ScanDupScore": (f"{TOP}.duplicate.0.score", ".3f"),
        "ScanSemHead": (f"{TOP}.semantic.0", "head"), "ScanSemScore": (f"{TOP}.semantic.0.score", ".3f"),
        "ScanSemRunnerHead": (f"{TOP}.semantic.1", "head"), "ScanSemRunnerScore": (f"{TOP}.semantic.1.score", ".3f"),
        "ScanPrevNoBos": (f"{MAPS}.previous_token.previous_token_no_bos", ".3f"),  # at the best previous-token head
        "ScanIndShort": (f"{MAPS}.induction.induction_20", ".3f"),  # at the best induction head, |r| = 20
        "ScanNRandom": (f"{SETTINGS}.n_random", "d"), "ScanRandomLength": (f"{SETTINGS}.random_length", "d"),
        "ScanNRepeated": (f"{SETTINGS}.n_repeated", "d"), "ScanRepeatLong": (f"{SETTINGS}.repeat_lengths.0", "d"),
        "ScanRepeatShort": (f"{SETTINGS}.repeat_lengths.1", "d"), "ScanNCategory": (f"{SETTINGS}.n_category", "d"),
        "ScanCategoryWords": (f"{SETTINGS}.category_words", "d"), "ScanCeiling": ("results.induction_ceiling", ".1f"),
        "DetectRatioPrev": ("results.detect_head.previous_token.expected_ratio", ".3f"),
        "DetectRatioInd": ("results.detect_head.induction.expected_ratio", ".3f"),
        "DetectDeviation": ("results.detect_head.max_deviation", ".0e"),
    },
    "manual_attention": {
        "ManualTolerance": ("results.tolerance", ".0e"),
        "ManualMaxTL": ("results.overall_max.vs_transformer_lens", ".1e"),
        "ManualMaxHF": ("results.overall_max.vs_hugging_face", ".1e"),
        "ManualMaxProcessed": ("results.overall_max.vs_processed_transformer_lens", ".1e"),
        "ManualWithin": ("results.all_within_tolerance", Words("within", "not within")),
    },
    "attention_stats": {
        "StatsNPrompts": ("provenance.arguments.n_prompts", "d"), "StatsLength": ("provenance.arguments.length", "d"),
        "StatsFocusedHead": ("results.rankings.most_focused.0", "head"),
        "StatsFocusedValue": ("results.rankings.most_focused.0.value", ".2f"),
        "StatsDiffuseHead": ("results.rankings.most_diffuse.0", "head"),
        "StatsDiffuseValue": ("results.rankings.most_diffuse.0.value", ".2f"),
        "StatsLongestHead": ("results.rankings.longest_range.0", "head"),
        "StatsLongestValue": ("results.rankings.longest_range.0.value", ".1f"),
        "StatsBosHead": ("results.rankings.most_bos.0", "head"),
        "StatsBosValue": ("results.rankings.most_bos.0.value", ".2f"),
    },
    "qk_ov_circuits": {
        "CircIndHead": ("results.top_induction_head", "head"),
        "CircIndCopyFull": ("results.top_induction_head.copying_score.full_W_E_W_V_W_O_W_U", ".2f"),
        "CircIndCopyResid": ("results.top_induction_head.copying_score.residual_W_V_W_O", ".2f"),
        "CircKPartner": ("results.induction_strongest_k_partner", "head"),
        "CircKPartnerScore": ("results.induction_strongest_k_partner.score", ".3f"),
        "CircKRunner": ("results.induction_k_composition.1", "head"),
        "CircKRunnerScore": ("results.induction_k_composition.1.score", ".3f"),
        "CircRandomBaseline": ("results.composition_baseline.random_matrices", ".3f"),
        "CircOneOverSqrt": ("results.composition_baseline.one_over_sqrt_d_model", ".3f"),
        "CircMaxCopyFull": ("results.max_copying_score.full_W_E_W_V_W_O_W_U", ".2f"),
    },
    "token_circuit_tables": {
        "TokHead": ("results", "head"), "TokProbabilities": ("results.token_probabilities", "text"),
        "TokVariant": ("results.variant", "text"),
    },
    "activation_patching": {
        "PatchTask": ("results.task", "text"), "PatchClean": ("results.clean", "text"),
        "PatchCorrupted": ("results.corrupted", "text"), "PatchAnswer": ("results.answer", "word"),
        "PatchWrong": ("results.wrong", "word"), "PatchCleanDiff": ("results.clean_logit_diff", ".2f"),
        "PatchCorruptedDiff": ("results.corrupted_logit_diff", ".2f"),
        "PatchTopHead": ("results.top_heads.0", "head"),
        "PatchTopRecovered": ("results.top_heads.0.recovered", "percent"),
        "PatchSecondHead": ("results.top_heads.1", "head"),
        "PatchSecondRecovered": ("results.top_heads.1.recovered", "percent"),
    },
    "logit_lens": {
        "LensPrompt": ("results.prompt", "text"), "LensDepths": ("results.depths", "count"),
        "LensTopOneShare": ("results.final_top1_share", "percent"),
    },
    "characterize_head": {
        "SurveyHead": ("results.target", "head"), "SurveyChosenBy": ("results.target.chosen_by", "text"),
        "SurveyLayer": ("results.target.layer", "text"),  # plain digits: part of a file name
        **with_interval("SurveyS", "results.target.surprisal", ".3f"),
        **with_interval("SurveyPartner", "results.target.partner_mass", ".3f"),
        **with_interval("SurveySelf", "results.target.self_mass", ".3f"),
        **with_interval("SurveySelfOnly", "results.target.self_only_mass", ".3f"),
        **with_interval("SurveyCopies", "results.target.copies_mass", ".3f"),
        **with_interval("SurveyBos", "results.target.bos_mass_no_partner", ".3f"),
        **with_interval("SurveyArgmax", "results.target.argmax_accuracy", ".3f"),
        "SurveyRunnerHead": ("results.separation.runner_up", "head"),
        "SurveyRunnerS": ("results.separation.runner_up_surprisal", ".3f"),
        "SurveySelectionSeed": ("results.seeds.selection", "d"), "SurveyReportSeed": ("results.seeds.report", "d"),
        "SurveySelectionRank": ("results.target.selection_rank", "d"),
        "SurveySelectionS": ("results.target.selection_surprisal", ".3f"),
        "SurveyCategorySet": ("results.categories.set", "text"),
        "SurveyCategoryCount": ("results.categories.names", "count"),
        "SurveyWorstHead": ("results.worst_head", "head"), "SurveyWorstS": ("results.worst_head.surprisal", ".1f"),
        "SurveyClampedCap": ("results.worst_head.clamped_row_cap", ".1f"),
        "SurveyMargin": ("results.separation.margin", ".3f"),
        "SurveyCIs": ("results.separation.separated", Words("disjoint", "overlapping")),
        "SurveyNPrompts": ("provenance.arguments.n_prompts", "d"),
        "SurveyNWords": ("provenance.arguments.n_words", "d"),
        "SurveyResamples": ("provenance.arguments.n_resamples", "d"), "SurveyHeadsTotal": ("results.survey", "count"),
        "ExampleWords": ("provenance.arguments.example_words", "d"),
        "ExampleS": ("results.example.scores.surprisal", ".3f"),
        "ExamplePartner": ("results.example.scores.partner_mass", ".2f"),
        "ExampleSelf": ("results.example.scores.self_mass", ".2f"),
        "SurveySVerdict": ("results.comparison.target.surprisal.verdict", "text"),
        "SurveySDiffLow": ("results.comparison.target.surprisal.difference.low", ".3f"),
        "SurveySDiffHigh": ("results.comparison.target.surprisal.difference.high", ".3f"),
        "SurveySelfVerdict": ("results.comparison.target.self_mass.verdict", "text"),
        "SurveySelfRival": ("results.comparison.target.self_mass.strongest_control", "head"),
        "SurveySelfRivalValue": ("results.comparison.target.self_mass.strongest_control.value", ".3f"),
        "SurveyBosVerdict": ("results.comparison.target.bos_mass_no_partner.verdict", "text"),
        "SurveyBosRival": ("results.comparison.target.bos_mass_no_partner.strongest_control", "head"),
        "SurveyBosRivalValue": ("results.comparison.target.bos_mass_no_partner.strongest_control.value", ".3f"),
        # the study's design beside ours: one prompt of its figure-era keywords, BOS row in the mean, last row to BOS
        **{f"StudyDesign{name}{part}": (f"results.study_design.{key}.{path}", fmt)
           for name, key in (("", "target"), ("Runner", "runner_up"))
           for part, path, fmt in (("S", "one_prompt", ".3f"), ("Median", "median", ".3f"), ("Low", "p05", ".3f"),
                                   ("High", "p95", ".3f"))},
        "StudyDesignRank": ("results.study_design.target.rank", "d"),
        "StudyDesignRunnerHead": ("results.study_design.runner_up", "head"),
        "StudyDesignBestHead": ("results.study_design.best", "head"),
        "StudyDesignWords": ("results.study_design.n_words", "d"),
        "StudyDesignRequestedWords": ("results.study_design.requested_words", "d"),
        "StudyDesignPrompts": ("results.study_design.n_prompts", "d"),
        "StudyDesignDepartures": ("results.study_design.departures_text", "text"),
        "StudyDesignSeed": ("results.seeds.study_design", "d"),
    },
    "query_key_paths": {
        "QKPNPrompts": ("provenance.arguments.n_prompts", "d"), "QKPNWords": ("provenance.arguments.n_words", "d"),
        "QKPNSwaps": ("provenance.arguments.n_swaps", "d"), "QKPHead": ("results.target", "head"),
        "QKPParts": ("results.parts.names", "count"),
        "QKPPositional": ("results.parts.positional_embedding", "text"),
        **{f"QKPBase{name}": (f"results.baseline.{metric}.value", ".3f")
           for name, metric in (("Self", "self_mass"), ("Partner", "partner_mass"), ("Bos", "bos_mass_no_partner"))},
        # per side, the part whose mean ablation most builds each property (largest fall of the partner mass, rise
        # of the self mass, fall of the BOS-when-no-partner mass), and that change
        **{f"QKP{prop}{side}{field}": (f"results.strongest.ablation.{side.lower()}_side.mean.{key}.{path}", fmt)
           for prop, key in QKP_PROPERTIES.items() for side in ("Query", "Key")
           for field, path, fmt in (("Part", "label", "text"), ("Value", "value", "+.3f"))},
        **{f"QKPPatch{prop}{side}Value": (f"results.strongest.path_patching.{side.lower()}_side.{key}.value", "+.3f")
           for prop, key in QKP_PROPERTIES.items() for side in ("Query", "Key")},
        **{f"QKPPatch{prop}{side}Part": (f"results.strongest.path_patching.{side.lower()}_side.{key}.label", "text")
           for prop, key in QKP_PROPERTIES.items() for side in ("Query", "Key")},
    },
    "head_output": {
        "HOHead": ("results.target", "head"), "HOWords": ("results.ov.per_word", "count"),
        **{f"HO{name}": (f"results.ov.summary.{key}.value", "+.2f")
           for name, key in (("Self", "self"), ("Same", "same"), ("Other", "other"))},
        **{f"HO{name}{suffix}": (f"results.ov.summary.{key}.{end}", "+.2f")
           for name, key in (("SelfMinusSame", "self_minus_same"), ("SameMinusOther", "same_minus_other"))
           for suffix, end in (("", "value"), ("Low", "low"), ("High", "high"))},
        "HOSelfAboveSame": ("results.ov.self_above_same", Words("above", "not above")),
        "HOSameAboveOther": ("results.ov.same_above_other", Words("above", "not above")),
        "HOLossText": ("results.loss.text", "text"), "HOLossPrompts": ("results.loss.n_prompts", "d"),
        "HOLossLength": ("results.loss.length", "d"),
        "HOLoss": ("results.loss.comparison.target.loss_change.value", ".3f"),
        "HOLossRival": ("results.loss.comparison.target.loss_change.strongest_control", "head"),
        "HOLossRivalValue": ("results.loss.comparison.target.loss_change.strongest_control.value", ".3f"),
        "HOLossVerdict": ("results.loss.comparison.target.loss_change.verdict", "text"),
        "HOLossRank": ("results.loss.comparison.target.loss_change.rank", "d"),
        "HOLossRanked": ("results.loss.comparison.target.loss_change.n_ranked", "d"),
        "HOPurpose": ("results.copies_for_prediction", Words(
            "copies the category-mate it attends to into the next-token prediction, and the model needs it more "
            "than any other head of its layer",
            "is not shown by these two measurements to copy its mates into a prediction the model needs")),
    },
    "component_ablation": {
        "AblNPrompts": ("provenance.arguments.n_prompts", "d"), "AblNWords": ("provenance.arguments.n_words", "d"),
        "AblHead": ("results.target", "head"),
        **{f"Abl{infix}{mode.title()}": (f"results.table.{mode}.{condition}.median", ".2f")
           for condition, (_, infix) in ABLATION_CONDITIONS.items()
           for mode in (("mean",) if condition == "baseline" else ABLATION_MODES)},  # unablated: one baseline
        "AblTokenMinusPosMean": ("results.token_minus_positional_median.mean", ".2f"),
        "AblPosShare": ("results.positional_share_of_token_damage.mean", "percent"),
        "AblTokenMinusPosZero": ("results.token_minus_positional_median.zero", ".2f"),
        # the study's way: its prompts (figure-era keywords, last row to BOS), its convention (means with BOS, BOS
        # ablated too, mean mode) and its S (clamp, BOS row)
        **{f"AblStudy{infix}": (f"results.study_way.{condition}.median", ".2f")
           for condition, (_, infix) in ABLATION_CONDITIONS.items()},
        "AblStudyDesignPrompts": ("results.study_design.n_prompts", "d"),
        "AblStudyDesignWords": ("results.study_design.n_words", "d"),
        "AblStudyDesignDepartures": ("results.study_design.departures_text", "text"),
        # the study's convention and S on our prompts: what its prompts and last-row quirk change
        "AblStudyOurPromptsBase": ("results.study_convention_our_prompts.baseline.median", ".2f"),
        "AblStudyOurPromptsToken": ("results.study_convention_our_prompts.token_embedding.median", ".2f"),
        "AblStudyNoQuirkBase": ("results.study_way_without_last_row_quirk.baseline.median", ".3f"),
        "AblStudyNoQuirkToken": ("results.study_way_without_last_row_quirk.token_embedding.median", ".2f"),
        # the study's convention scored with our S (exact, uncapped, BOS row out)
        "AblStudyConvOurSToken": ("results.by_convention.study_bos_ablated.token_embedding.median", ".2f"),
        "AblCategories": ("results.categories.set", "text"), "AblCategoryWords": ("results.categories.words", "d"),
    },
    "cosine_attention_analysis": {
        "CosHead": ("results.target", "head"), "CosTokens": ("results.settings.n_tokens", "d"),
        "CosPairs": ("results.settings.pairs", "d"), "CosWindow": ("results.settings.window", ".3f"),
        "CosVariant": ("results.settings.variant", "text"),
        "CosBiases": ("results.settings.biases_included", Words("included", "left out")),
        "CosUnits": ("results.settings.units", "text"), "CosCI": ("results.settings.ci", "text"),
        "CosBeatsSelf": ("results.beats_self_from_cosine", ".2f"), "CosPeakCosine": ("results.peak.cosine", ".2f"),
        "CosPeakMean": ("results.peak.mean", ".2f"),
        "CosMatesMean": ("results.category_contrast.mates_mean", ".2f"),
        "CosMatesBeat": ("results.category_contrast.mates_beat_self", "percent"),
        "CosMatesPairs": ("results.category_contrast.mates_pairs", "d"),
        "CosOthersMean": ("results.category_contrast.others_mean", ".2f"),
        "CosOthersBeat": ("results.category_contrast.others_beat_self", "percent"),
        "CosQuery": ("results.example.query", "word"), "CosTopKey": ("results.example.top_keys.0.token", "word"),
        "CosTopKeyScore": ("results.example.top_keys.0.score_minus_self", ".2f"),
        # the study's curve (bits, unscaled, no biases, column-wise, windows of 0.03)
        "CosStudyZero": ("results.study.beats_self_from_cosine", ".2f"),
        "CosStudyPeakCosine": ("results.study.peak.cosine", ".2f"), "CosStudyPeakBits": ("results.study.peak.bits", ".1f"),
        # the study's curve on the study's own head input (its vocabulary-level construction)
        "CosStudyInputZero": ("results.study_on_study_input.beats_self_from_cosine", ".2f"),
        "CosStudyInputPeakCosine": ("results.study_on_study_input.peak.cosine", ".2f"),
        "CosStudyInputPeakBits": ("results.study_on_study_input.peak.bits", ".1f"),
        "CosStudyWidth": ("results.study.width", ".2f"), "CosStudyWindows": ("results.study.x", "count"),
        # the category contrast against every other head
        "CosContrast": ("results.target.mates_minus_others.value", ".2f"),
        "CosContrastRank": ("results.target.mates_minus_others.rank", "d"),
        "CosContrastN": ("results.target.mates_minus_others.n_ranked", "d"),
        "CosContrastControl": ("results.target.mates_minus_others.strongest_control", "head"),
        "CosContrastControlValue": ("results.target.mates_minus_others.strongest_control.value", ".2f"),
        "CosContrastLow": ("results.target.mates_minus_others.difference.low", ".2f"),
        "CosContrastHigh": ("results.target.mates_minus_others.difference.high", ".2f"),
        "CosContrastVerdict": ("results.target.mates_minus_others.verdict", "text"),
        "CosBeatControl": ("results.target.word_mates_beat_self.strongest_control", "head"),
        "CosBeatControlValue": ("results.target.word_mates_beat_self.strongest_control.value", "percent"),
    },
    "token_freq": {
        "FreqTokens": ("results.total_tokens", "d"), "FreqDistinct": ("results.distinct_tokens", "d"),
        "FreqSource": ("results.corpus.source", "text"),
    },
    "skew_analysis": {
        "SkewHead": ("results.head", "head"), "SkewInput": ("results.input", "text"),
        "SkewNormW": (f"{PLAIN}.norms.W", ".1f"), "SkewNormSym": (f"{PLAIN}.norms.sym", ".1f"),
        "SkewNormSkew": (f"{PLAIN}.norms.skew", ".1f"), "SkewSymShare": (f"{PLAIN}.norms.sym_share", ".2f"),
        "SkewSkewShare": (f"{PLAIN}.norms.skew_share", ".2f"), "SkewNEigen": (f"{PLAIN}.eigenvalues", "count"),
        "SkewNNeg": (f"{PLAIN}.spectrum.n_negative", "d"), "SkewNPos": (f"{PLAIN}.spectrum.n_positive", "d"),
        "SkewNegTotal": (f"{PLAIN}.spectrum.negative_total", ".1f"),
        "SkewPosTotal": (f"{PLAIN}.spectrum.positive_total", ".1f"),
        "SkewNegShare": (f"{PLAIN}.spectrum.negative_share", "percent"),
        "SkewMostNeg": (f"{PLAIN}.spectrum.most_negative", ".2f"),
        "SkewMostPos": (f"{PLAIN}.spectrum.most_positive", ".2f"),
        "SkewCheckSym": (f"{PLAIN}.check.max_abs_self_W_minus_sym", ".0e"),
        "SkewCheckSkew": (f"{PLAIN}.check.max_abs_self_skew", ".0e"),
        "SkewCheckScale": (f"{PLAIN}.check.self_score_scale", ".1f"),
        "SkewSelfNegative": (f"{PLAIN}.self_score.fraction_negative", "percent"),
        "SkewBiasNNeg": (f"{BIASED}.spectrum.n_negative", "d"),
        "SkewBiasMostNeg": (f"{BIASED}.spectrum.most_negative", ".2f"),
        "SkewBiasSelfNegative": (f"{BIASED}.self_score.fraction_negative", "percent"),
        "SkewBiasKeyStd": ("results.bias_terms_on_group_set.key_term_std", ".2f"),
        "SkewBiasScoreStd": ("results.bias_terms_on_group_set.score_std_over_keys", ".2f"),
        # the target against every other head (controls) and the nulls
        "SkewDHead": ("results.d_head", "d"), "SkewNControls": ("results.controls", "count"),
        "SkewSylvesterHeads": ("results.sylvester.heads_with_d_head_negative", "d"),
        "SkewSylvesterN": ("results.sylvester.n_heads", "d"),
        "SkewMargin": ("results.target.margin.value", ".2f"),
        "SkewMarginRival": ("results.target.margin.strongest_control", "head"),
        "SkewMarginRivalValue": ("results.target.margin.strongest_control.value", ".2f"),
        "SkewMarginNull": ("results.null.self_vs_random_words.value", ".2f"),
        "SkewMarginCILow": ("results.target.margin.difference.low", ".2f"),
        "SkewMarginCIHigh": ("results.target.margin.difference.high", ".2f"),
        "SkewMarginVerdict": ("results.target.margin.verdict", "text"),
        "SkewAttraction": ("results.target.category_attraction.value", ".2f"),
        "SkewAttractionRival": ("results.target.category_attraction.strongest_control", "head"),
        "SkewAttractionRivalValue": ("results.target.category_attraction.strongest_control.value", ".2f"),
        "SkewNormMargin": ("results.target.margin_normalised.value", ".2f"),
        "SkewNormMarginRival": ("results.target.margin_normalised.strongest_control", "head"),
        "SkewNormMarginRivalValue": ("results.target.margin_normalised.strongest_control.value", ".2f"),
        "SkewBelow": ("results.target.below_partners_share.value", "percent"),
        "SkewBelowRival": ("results.target.below_partners_share.strongest_control", "head"),
        "SkewBelowRivalValue": ("results.target.below_partners_share.strongest_control.value", "percent"),
        "SkewBelowNull": ("results.null.below_partners.mean", "percent"),
        "SkewBelowNullHigh": ("results.null.below_partners.q95", "percent"),
        "SkewBelowBeatsNull": ("results.null.below_partners.beats_null", Words("above", "not above")),
        "SkewNullDraws": ("provenance.arguments.n_null_draws", "d"),
        "SkewNegShareRank": ("results.target.negative_eigenvalue_share.rank", "d"),
        "SkewNegShareRival": ("results.target.negative_eigenvalue_share.strongest_control", "head"),
        "SkewNegShareRivalValue": ("results.target.negative_eigenvalue_share.strongest_control.value", "percent"),
        "SkewTraceRank": ("results.target.trace.rank", "d"), "SkewTrace": ("results.target.trace.value", ".2f"),
        "SkewTraceRival": ("results.target.trace.strongest_control", "head"),
        "SkewTraceRivalValue": ("results.target.trace.strongest_control.value", ".2f"),
        "SkewSelfScoreRank": ("results.target.self_score.rank", "d"),
        "SkewTopFourShare": ("results.target.top4_negative_share.value", "percent"),
        "SkewTopFourRank": ("results.target.top4_negative_share.rank", "d"),
        "SkewNRanked": ("results.target.margin.n_ranked", "d"),
        "SkewSeparating": ("results.separating", "list"),
        "SkewCountSeparates": ("results.target.n_negative_eigenvalues.separates", Words("does", "does not")),
        "SkewCategories": ("results.categories.set", "text"), "SkewCategoryWords": ("results.category_words.n_words", "d"),
    },
    "sym_skew_maps": {
        "MapsInput": ("results.input", "text"), "MapsTokens": ("results.tokens", "count"),
        "MapsGroups": ("results.groups", "count"), "MapsSelf": ("results.block_means.base.self", ".2f"),
        "MapsInGroup": ("results.block_means.base.in_group", ".2f"),
        "MapsOutGroup": ("results.block_means.base.out_group", ".2f"),
        "MapsRelSym": ("results.relative_norms.sym", ".2f"), "MapsRelSkew": ("results.relative_norms.skew", ".2f"),
        "MapsCheckDiag": ("results.check.max_abs_diag_deviation", ".0e"),
        "MapsBiasChange": ("results.bias_effect.max_abs_change_row_centred", ".2f"),
        "MapsGap": ("results.target.self_minus_in_group.value", ".2f"),
        "MapsGapRival": ("results.target.self_minus_in_group.strongest_control", "head"),
        "MapsGapRivalValue": ("results.target.self_minus_in_group.strongest_control.value", ".2f"),
        "MapsBelow": ("results.target.below_partners_share.value", "percent"),
        "MapsBelowRival": ("results.target.below_partners_share.strongest_control", "head"),
        "MapsBelowRivalValue": ("results.target.below_partners_share.strongest_control.value", "percent"),
        "MapsNRanked": ("results.target.self_minus_in_group.n_ranked", "d"),
        "MapsSeparating": ("results.separating", "list"),
    },
    "eigenvalue_scaling": {  # factors keyed by factor: "1" (unedited), "0", "-1" (flipped)
        "SteerNNeg": ("results.n_negative_eigenvalues", "d"), "SteerNPrompts": ("provenance.arguments.n_prompts", "d"),
        "SteerSelfBefore": ("results.unedited_in_context.self_mass", ".3f"),
        "SteerZeroGap": ("results.factors.0.block_means.self_minus_in_group", ".2f"),
        "SteerFlipGap": ("results.factors.-1.block_means.self_minus_in_group", ".2f"),
        "SteerOneGap": ("results.factors.1.block_means.self_minus_in_group", ".2f"),
        "SteerZeroSelf": ("results.factors.0.in_context.self_mass", ".2f"),
        "SteerFlipSelf": ("results.factors.-1.in_context.self_mass", ".2f"),
        "SteerFlipPartner": ("results.factors.-1.in_context.partner_mass", ".2f"),
        # the same edits on the control heads (controls.compare over "edits")
        "SteerNControls": ("results.controls", "count"),
        **{f"Steer{name}Gain{part}": (f"results.target.{key}_self_mass_change.{path}", fmt)
           for name, key in (("Flip", "factor -1"), ("Zero", "factor 0"), ("Targeted", "targeted"))
           for part, path, fmt in (("", "value", ".2f"), ("Rank", "rank", "d"),
                                   ("Ctl", "strongest_control.value", ".2f"),
                                   ("CtlHead", "strongest_control", "head"))},
        "SteerTargetedK": ("results.targeted_k", "d"),
        "SteerTargetedSelf": ("results.target_edits.targeted.self_mass", ".2f"),
        "SteerTargetedPartner": ("results.target_edits.targeted.partner_mass", ".2f"),
        # the targeted edit as a curve over k (controls.compare at each k; ends keyed "smallest", "largest")
        "SteerCurveKs": ("results.targeted_curve.ks", "list"),
        "SteerCurveSeparating": ("results.targeted_curve.separating_ks.self_mass_change", "list"),
        "SteerCurveSeparatingLogit": ("results.targeted_curve.separating_ks.self_mass_log_odds_change", "list"),
        "SteerCurveLastSep": ("results.targeted_curve.largest_separating_k.self_mass_change", "d"),
        "SteerCurveWidest": ("results.targeted_curve.widest_gap_k.self_mass_change", "d"),
        **{f"SteerCurve{end.title()}{part}": (f"results.targeted_curve.ends.{end}.self_mass_change{path}", fmt)
           for end in ("smallest", "largest")
           for part, path, fmt in (("Gain", ".value", ".2f"), ("Ctl", ".strongest_control.value", ".2f"),
                                   ("CtlHead", ".strongest_control", "head"))},
        **{f"SteerCurve{end.title()}K": (f"results.targeted_curve.ends.{end}.k", "d") for end in ("smallest", "largest")},
        **{f"SteerCurveLargestDiff{part}": (f"results.targeted_curve.ends.largest.self_mass_change.difference.{key}",
                                            ".2f") for part, key in (("", "value"), ("Low", "low"), ("High", "high"))},
    },
    "eigenvalue_rank_ablation": {  # cells keyed "k=<k>,scale=<scale>"
        "RankVocab": ("results.d_vocab", "d"),
        "RankUnedited": ("results.unedited_cell.mean_rank", ".1f"),
        "RankUneditedAccOne": ("results.unedited_cell.acc@1", ".2f"),
        "RankBestK": ("results.best_cell.k", "d"), "RankBestScale": ("results.best_cell.scale", "g"),
        "RankBest": ("results.best_cell.mean_rank", ".2f"), "RankBestAccOne": ("results.best_cell.acc@1", ".2f"),
        "RankBestSelfMass": ("results.best_cell.self_mass", ".2f"),
        "RankStudyCell": (f"results.cells.{STUDY_CELL}.mean_rank", ".1f"),
        # on the study's scale, (rank - 1) / V, and the study's own edit (eig of W, solver order) at its cell
        "RankUneditedNorm": ("results.unedited_cell.mean_rank_normalised", ".3f"),
        "RankStudyCellNorm": (f"results.cells.{STUDY_CELL}.mean_rank_normalised", ".3f"),
        **{f"RankStudyWay{name}{suffix}": (f"results.study_edit.{key}.{path}", fmt)
           for name, key in (("Unedited", "unedited"), ("Edited", "edited"),
                             ("StudyInputUnedited", "unedited_study_input"), ("StudyInputEdited", "edited_study_input"))
           for suffix, path, fmt in (("", "mean_rank", ".1f"), ("Norm", "mean_rank_normalised", ".3f"))},
        "RankStudyWayEditedImag": ("results.study_edit.edited.imaginary_share", ".1e"),
        "RankAccKept": ("results.at", "list"),
        # the grid on the control heads
        "RankGainSeparates": ("results.target.best_self_mass_change.separates", Words("singles out", "does not single out")),
        "RankFallSeparates": ("results.target.best_mean_rank_change.separates", Words("singles out", "does not single out")),
        "RankNControls": ("results.controls", "count"), "RankControlCells": ("results.control_cells", "text"),
        "RankNRanked": ("results.target.mean_rank.n_ranked", "d"),
        **{f"Rank{name}{part}": (f"results.target.{key}.{path}", fmt)
           for name, key, value_fmt in (("Gain", "best_self_mass_change", ".2f"),
                                         ("Fall", "best_mean_rank_change", ".1f"),
                                         ("CellGain", "self_mass_change", ".2f"), ("Base", "mean_rank", ".1f"))
           for part, path, fmt in (("", "value", value_fmt), ("Rank", "rank", "d"),
                                   ("Ctl", "strongest_control.value", value_fmt),
                                   ("CtlHead", "strongest_control", "head"))},
    },
    "gradient_steering": {
        "GradSteps": ("provenance.arguments.steps", "d"), "GradLR": ("provenance.arguments.lr", "g"),
        "GradLambda": ("provenance.arguments.lam", "g"),
        **{f"Grad{mass}{name.title()}": (f"{METRICS}.{name}.{mass.lower()}_mass", ".3f")
           for name in ("before", "suppress", "restore") for mass in ("Self", "Partner")},
        "GradQuery": ("results.query", "word"),
        **{f"GradSelfRank{name.title()}": (f"{KEYS}.{name}.query_self_rank", "d")
           for name in ("before", "restore", "suppress")},
        "GradTopKeysBefore": (f"{KEYS}.before.keys", "list:3"),
        "GradTopKeysRestore": (f"{KEYS}.restore.keys", "list:3"),
        "GradTraceEta": ("results.largest_trace_step.eta", ".2f"),
        "GradTraceSelf": ("results.largest_trace_step.metrics.self_mass", ".3f"),
        "GradTracePartner": ("results.largest_trace_step.metrics.partner_mass", ".3f"),
        "GradMu": ("results.mu", "g"),
        **{f"Grad{label}{name.title()}": (f"{METRICS}.{name}.{key}", ".3f")
           for name in ("before", "suppress", "restore")
           for label, key in (("Bos", "bos_mass_no_partner"), ("S", "surprisal"))},
        **{f"GradChange{w}{name.title()}": (f"results.runs.{name}.relative_change.W_{w}", ".2f")
           for name in ("suppress", "restore") for w in ("Q", "K", "QK")},
        "GradNControls": ("results.controls", "count"),
        "GradRestoreGain": ("results.target.restore_self_gain.value", ".3f"),
        "GradRestoreGainRank": ("results.target.restore_self_gain.rank", "d"),
        "GradRestoreGainCtl": ("results.target.restore_self_gain.strongest_control.value", ".3f"),
        "GradRestoreGainCtlHead": ("results.target.restore_self_gain.strongest_control", "head"),
        "GradTraceGainRank": ("results.target.trace_self_gain.rank", "d"),
        "GradTraceGainCtl": ("results.target.trace_self_gain.strongest_control.value", ".2f"),
        "GradTraceGainCtlHead": ("results.target.trace_self_gain.strongest_control", "head"),
    },
    "clustering": {
        "CluNodes": ("results.n_nodes", "d"), "CluEdges": ("results.n_edges", "d"), "CluK": ("results.k", "d"),
        "CluInput": ("results.input", "text"), "CluMethod": ("results.method", "text"),
        "CluCommunities": ("results.n_communities", "d"), "CluModularity": ("results.modularity", ".2f"),
        "CluARI": ("results.agreement.ari", ".2f"), "CluNMI": ("results.agreement.nmi", ".2f"),
        "CluCategoryWords": ("results.agreement.n_tokens", "d"),
        # the study's graph
        "CluStudyNodes": ("results.study_graph.n_nodes", "d"), "CluStudyEdges": ("results.study_graph.n_edges", "d"),
        "CluStudySelfLoops": ("results.study_graph.n_self_loops", "d"),
        "CluStudyCommunities": ("results.study_graph.n_communities", "d"),
        "CluCountReason": ("results.community_count.reason", "text"),
        # every input view: the target's ARI (ours, the study's graph) and its rank among the heads
        "CluViewRule": ("results.default_view_rule", "text"),
        **{f"CluView{view.title()}{name}": (f"results.views.{view}.target.{key}.{path}", fmt)
           for view in ("study", "mean", "zero", "context")
           for name, key, path, fmt in (("ARI", "ari", "value", ".2f"), ("ARIRank", "ari", "rank", "d"),
                                        ("StudyARI", "study_ari", "value", ".2f"),
                                        ("StudyARIRank", "study_ari", "rank", "d"))},
        "CluStudyPrinted": ("results.study_graph.printed_clusters", "d"),
        "CluStudyMaxSize": ("results.study_graph.max_comm_size", "d"),
        "CluStudyARI": ("results.study_graph.agreement.ari", ".2f"),
        "CluStudyNMI": ("results.study_graph.agreement.nmi", ".2f"),
        # ARI against the control heads, both graphs
        "CluARIRank": ("results.target.ari.rank", "d"), "CluARIN": ("results.target.ari.n_ranked", "d"),
        "CluARIControl": ("results.target.ari.strongest_control", "head"),
        "CluARIControlValue": ("results.target.ari.strongest_control.value", ".2f"),
        "CluStudyARIRank": ("results.target.study_ari.rank", "d"),
        "CluStudyARIControl": ("results.target.study_ari.strongest_control", "head"),
        "CluStudyARIControlValue": ("results.target.study_ari.strongest_control.value", ".2f"),
    },
    "sae_features": {
        "SaeKind": ("results.sae.kind", "text"), "SaeHook": ("results.sae.hook", "text"),
        "SaeWidth": ("results.sae.d_sae", "d"), "SaeArchitecture": ("results.sae.architecture", "text"),
        "SaeVariance": ("results.sae.variance_explained_on_category_prompts", "percent"),
        "SaeFeatures": ("results.features", "count"), "SaeSelf": ("results.block_means.self", ".1f"),
        "SaeInGroup": ("results.block_means.in_group", ".1f"), "SaeOutGroup": ("results.block_means.out_group", ".1f"),
        "SaeSelfBelowMates": ("results.self_avoidance.self_below_mates", "percent"),
        "SaeBestIsMate": ("results.self_avoidance.best_key_is_mate", "percent"),
        "SaeBestIsSelf": ("results.self_avoidance.best_key_is_self", "percent"),
        "SaeTopPairsSame": ("results.top_pairs_same_category", "percent"),
        "SaeTopPairs": ("results.top_pairs", "count"),
        # the study's precision at the one k of its verdict (results.k_verdict), against controls and its null
        "SaePrecision": ("results.target.precision.value", ".2f"),
        "SaePrecisionRank": ("results.target.precision.rank", "d"),
        "SaePrecisionRanked": ("results.target.precision.n_ranked", "d"),
        "SaePrecisionControl": ("results.target.precision.strongest_control", "head"),
        "SaePrecisionControlValue": ("results.target.precision.strongest_control.value", ".2f"),
        **{f"SaePrecisionDiff{suffix}": (f"results.target.precision.difference.{key}", ".3f")
           for suffix, key in (("", "value"), ("Low", "low"), ("High", "high"))},
        "SaePrecisionK": ("results.k_verdict.k", "d"),
        "SaePrecisionActive": ("results.k_verdict.active_count", "d"),
        "SaePrecisionStudyK": ("results.k_verdict.study_k", "d"),
        "SaePrecisionSeparates": ("results.target.precision.separates", Words("singles out", "does not single out")),
        "SaePrecisionNull": ("results.null.precision_shuffled", ".2f"),
        **{f"SaePrecisionMinusNull{suffix}": (f"results.null.target_minus_null.{key}", ".3f")
           for suffix, key in (("", "value"), ("Low", "low"), ("High", "high"))},
        "SaePrecisionAboveNull": ("results.null.target_minus_null.above", Words("above", "not above")),
        # the curve over k (tab_sae_precision holds all of it): its first point, k = 1
        "SaeCurveFirst": ("results.precision_curve.k=1.target.value", ".2f"),
        "SaeCurveFirstNull": ("results.precision_curve.k=1.null.value", ".2f"),
        "SaeCurveFirstControl": ("results.precision_curve.k=1.strongest_control", "head"),
        "SaeCurveFirstControlValue": ("results.precision_curve.k=1.strongest_control.value", ".2f"),
        "SaeCurvePoints": ("results.precision_curve", "count"),
        "SaeCategories": ("results.categories.set", "text"),
        # the feature map's statistics for every head (controls)
        "SaeNControls": ("results.controls", "count"), "SaeMapRanked": ("results.target.in_minus_out_group.n_ranked", "d"),
        **{f"SaeMap{name}{part}": (f"results.target.{key}.{path}", fmt)
           for name, key, value_fmt in (("Gap", "self_minus_in_group", ".2f"), ("Attract", "in_minus_out_group", ".1f"),
                                         ("Margin", "margin_normalised", ".2f"),
                                         ("Below", "below_partners_share", "percent"))
           for part, path, fmt in (("", "value", value_fmt), ("Rank", "rank", "d"),
                                   ("Ctl", "strongest_control.value", value_fmt),
                                   ("CtlHead", "strongest_control", "head"))},
        "SaeSeparating": ("results.separating", "list"),
    },
    "evidence": {  # the primary statistics corrected together (Holm), the two properties, the claim
        "EvidenceAlpha": ("results.rule.alpha", ".3f"), "EvidenceLevel": ("results.rule.level", "percent"),
        "EvidencePrimaryCount": ("results.primary", "count"),
        "EvidenceClaim": ("results.claim.supported", Words("supported", "not supported")),
        "EvidencePrimaryHold": ("results.claim.primary_separate_corrected", Words("all separate", "not all separate")),
        **{f"Evidence{name}{part}": (f"results.family.{key}.{path}", fmt)
           for name, key in (("S", "characterize_head.surprisal"), ("Margin", "skew_analysis.margin"),
                             ("Below", "skew_analysis.below_partners_share"))
           for part, path, fmt in (("P", "p_value", ".4f"), ("Holm", "p_holm", ".4f"),
                                   ("Chance", "rank_chance", ".2f"),
                                   ("Corrected", "separates_corrected", Words("separates", "does not separate")))},
        **{f"Prop{view}{name}{part}": (f"results.properties.target.{key}.{prop}.{path}", fmt)
           for view, key in (("Behaviour", "behaviour"), ("Weights", "weights"))
           for name, prop in (("Self", "self_avoidance"), ("Attract", "category_attraction"))
           for part, path, fmt in (("", "value", ".2f"), ("Low", "low", ".2f"), ("High", "high", ".2f"),
                                   ("Holds", "holds", Words("holds", "does not hold")))},
        **{f"EvidenceSecondary{name}{part}": (f"results.secondary_by_verdict.{verdict}", fmt)
           for name, verdict in (("Separating", "separates"), ("NotSeparating", "does not separate"),
                                 ("Ties", "tie"), ("Descriptive", "descriptive"), ("Undefined", "undefined"))
           for part, fmt in (("Count", "count"),)},
        "PropBehaviourBoth": ("results.properties.heads_with_both.behaviour", "list"),
        "PropWeightsBoth": ("results.properties.heads_with_both.weights", "list"),
    },
    "seeds": {  # the primary statistics and the scan on every organism of the recipe (scripts/seeds.py)
        "SeedsN": ("results.summary.n", "d"), "SeedsClaim": ("results.summary.claim_supported", "d"),
        "SeedsTargetPlanted": ("results.summary.target_is_planted", "d"),
        "SeedsBothBehaviour": ("results.summary.both_properties.behaviour", "d"),
        "SeedsBothWeights": ("results.summary.both_properties.weights", "d"),
        **{f"SeedsFound{name}": (f"results.summary.planted_found_first.{kind}", "d")
           for name, kind in (("Prev", "previous_token"), ("Ind", "induction"))},
        **{f"Seeds{name}{part}": (f"results.summary.primary.{key}.{path}", fmt)
           for name, key, value_fmt in (("S", "characterize_head.surprisal", ".3f"),
                                        ("Margin", "skew_analysis.margin", ".2f"),
                                        ("Below", "skew_analysis.below_partners_share", "percent"))
           for part, path, fmt in (("Holds", "holds", "d"), ("Min", "min", value_fmt), ("Max", "max", value_fmt))},
    },
    "negative_control": {  # every statistic on the negative control (scripts/negative_control.py)
        "NcName": ("results.negative_control", "text"), "NcChosen": ("results.chosen_head", "text"),
        "NcDecoy": ("results.planted_heads.decoy", "head"), "NcAvoider": ("results.planted_heads.avoider", "head"),
        "NcClaim": ("results.claim_supported", Words("supported", "not supported")),
        "NcAsExpected": ("results.as_expected", Words("exactly its own", "not exactly its own")),
        "NcBothBehaviour": ("results.heads_with_both.behaviour", "list"),
        "NcBothWeights": ("results.heads_with_both.weights", "list"),
        "NcStatistics": ("results.statistics", "count"), "NcCannot": ("results.cannot_tell_apart", "count"),
        **{f"Nc{kind_name}{view_name}{prop_name}": (f"results.properties.{view}.{kind}.holds.{prop}",
                                                    Words("holds", "does not hold"))
           for kind_name, kind in (("Decoy", "decoy"), ("Avoider", "avoider"))
           for view_name, view in (("Behaviour", "behaviour"), ("Weights", "weights"))
           for prop_name, prop in (("Self", "self_avoidance"), ("Attract", "category_attraction"))},
    },
    "reported": {  # values reported for GPT-2 small by the original study and the literature (citations)
        "RepSemHead": ("semantic_head.head", "head"), "RepSemLayer": ("semantic_head.head.0", "d"),
        "RepSemHeadIndex": ("semantic_head.head.1", "d"), "RepSemPromptTokens": ("semantic_head.prompt_tokens", "d"),
        "RepSemS": ("semantic_head.surprisal", "g"), "RepSemRunnerS": ("semantic_head.runners_up.0.surprisal", "g"),
        "RepSemRunnerHead": ("semantic_head.runners_up.0", "head"),
        "RepSemPartner": ("semantic_head.partner_mass", "g"), 
        "RepSemSelfOnly": ("semantic_head.self_only_mass", "g"), "RepSemCopies": ("semantic_head.copies_mass", "g"),
        "RepSemBos": ("semantic_head.bos_mass_no_partner", "g"),
        "RepSaePrecision": ("sae_precision.precision", ".2f"), "RepSaePrecisionK": ("sae_precision.k", "d"),
        "RepSaePrecisionHead": ("sae_precision.head", "head"),
        "RepCopySuppressionHead": ("baseline.copy_suppression_head", "head"),
        "RepPrevHead": ("baseline.previous_token_heads.0", "text"),
        "RepPrevHeads": ("baseline.previous_token_heads", "list"), "RepIndHeads": ("baseline.induction_heads", "list"),
        "RepDupHeads": ("baseline.duplicate_token_heads", "list"),
        "RepAblBase": ("ablation_medians.baseline", "g"), "RepAblToken": ("ablation_medians.token_embedding", "g"),
        "RepAblPos": ("ablation_medians.positional_embedding", "g"), "RepAblMLP": ("ablation_medians.mlp_0", "g"),
        "RepCosNegative": ("cosine.strongly_negative_below", "g"), "RepCosZero": ("cosine.zero_crossing", "g"),
        "RepCosPeak": ("cosine.peak", "g"),
        "RepRankUnedited": ("rank_ablation.mean_self_rank_unedited", "range"),
        "RepRankEdited": ("rank_ablation.mean_self_rank_edited", "range"),
        "RepRankK": ("rank_ablation.k", "d"), "RepRankScale": ("rank_ablation.scale", "g"),
        "RepRankAcc": ("rank_ablation.accuracy_at_cutoff", "g"),
        "RepRankCutoff": ("rank_ablation.accuracy_cutoff", "d"),
        "RepCluTokens": ("clustering.n_tokens", "d"), "RepCluCommunities": ("clustering.communities", "d"),
        "RepCluExamples": ("clustering.examples", "list"),
    },
}


# --- switches: steps a model could not run ------------------------------------------------------------

# \newif\if<Name> per switch, true when its entry holds; results written before the entry existed read `absent`.
# GUARDS puts a whole source (snake_case) or a single macro (CamelCase) under a switch: its macros are written
# only while the switch holds, and main.tex prints them only inside \if<Name> ... \fi, so a step that was
# impossible for a model leaves no undefined macro and no wrong number.
SWITCHES: dict[str, tuple[str, str, bool]] = {
    # the model came with a record of what was planted in it (a model organism): the paper checks the analyses
    # against that ground truth. Decided by what the model has, never by its name.
    "Organism": (*MODEL_TRUTH, False),
    "SaeRan": ("sae_features", "results.sae.ran", True),  # no SAE of the model could be had: no feature step
    # the model as loaded had no weight processing (random or raw weights): no processed model to compare with
    "ManualProcessed": ("manual_attention", "results.processed_compared", True),
    # the graph has the study's number of frequency-chosen nodes: only then does a community count compare
    "CluCountComparable": ("clustering", "results.community_count.comparable", False),
    # organisms of the model's recipe ship (its other seeds; its negative control): the simulation study
    "Seeds": ("seeds", "results.summary", False),
    "NegativeControl": ("negative_control", "results.negative_control", False),
}
GUARDS: dict[str, str] = {"sae_features": "SaeRan", "seeds": "Seeds", "negative_control": "NegativeControl",
                          "ManualMaxProcessed": "ManualProcessed",
                          "ScanPlantedFound": "Organism", "ScanPlantedScanned": "Organism"}  # the scan against this model's planted heads


# --- held-out categories (scripts/held_out.py): the supervised run beside the --categories held_out run -----------
# Only for a model whose recorded ground truth lists held-out categories (its own files, never its name).
HELD = "results.statistics"
# statistic of held_out.json -> (macro infix, format, its label in tab_held_out)
HELD_OUT_ROWS: dict[str, tuple[str, Format, str]] = {
    "surprisal": ("S", ".3f", "$S$ in context (nats)"),
    "partner_mass": ("Partner", ".3f", "attention on category-mates"),
    "self_mass": ("Self", ".3f", "attention on itself and its copies"),
    "bos_mass_no_partner": ("Bos", ".3f", "attention on BOS without a mate"),
    "self_avoidance_behaviour": ("SelfAvoid", ".2f", "self-avoidance, behaviour"),
    "category_attraction_behaviour": ("Attract", ".2f", "category attraction, behaviour"),
    "margin": ("Margin", ".2f", "partner margin (weights)"),
    "below_partners_share": ("Below", "percent", "words below every partner"),
    "self_avoidance_weights": ("SelfAvoidWeights", ".2f", "self-avoidance, weights"),
    "category_attraction_weights": ("AttractWeights", ".2f", "category attraction, weights"),
    "ari": ("ARI", ".2f", "Leiden communities against the categories (ARI)"),
    "cosine_mates_minus_self": ("CosMates", ".2f", "cosine: mates minus self"),
    "cosine_others_minus_self": ("CosOthers", ".2f", "cosine: other categories minus self"),
    "cosine_mates_minus_others": ("CosContrast", ".2f", "cosine: mates minus other categories"),
}
HELD_OUT_PROSE = ("surprisal", "partner_mass", "self_mass", "bos_mass_no_partner", "self_avoidance_behaviour",
                  "category_attraction_behaviour", "ari", "cosine_mates_minus_self", "cosine_others_minus_self")
SPEC["held_out"] = {
    "HeldOutHead": ("results.target", "head"),
    "HeldOutCategoryCount": ("results.categories.held_out.names", "count"),
    "HeldOutWords": ("results.categories.held_out.words", "d"),
    "HeldOutSupervisedCount": ("results.categories.supervised.names", "count"),
    "HeldOutGeneralises": ("results.generalises", Words("generalises", "does not generalise")),
    "HeldOutRecoverCount": ("results.by_verdict.recovers", "count"),
    "HeldOutStatCount": (HELD, "count"),
    **{f"HeldOut{HELD_OUT_ROWS[key][0]}{side}": (f"{HELD}.{key}.{run}.value", HELD_OUT_ROWS[key][1])
       for key in HELD_OUT_PROSE for side, run in (("Sup", "supervised"), ("", "held_out"))},
    **{f"HeldOut{HELD_OUT_ROWS[key][0]}{end.title()}": (f"{HELD}.{key}.held_out.{end}", ".3f")
       for key in ("partner_mass", "bos_mass_no_partner") for end in ("low", "high")},
    **{f"HeldOut{HELD_OUT_ROWS[key][0]}Verdict": (f"{HELD}.{key}.held_out.verdict", "text")
       for key in ("surprisal", "partner_mass", "self_avoidance_behaviour", "category_attraction_behaviour", "ari",
                   "cosine_mates_minus_others")},
}
SWITCHES["HeldOut"] = ("scan_heads", "provenance.model.ground_truth.held_out_categories", False)
GUARDS["held_out"] = "HeldOut"


def guard_of(*names: str) -> str | None:
    """The switch a macro or table row stands under: the first of `names` (the macro, then its sources) in GUARDS."""
    return next((GUARDS[n] for n in names if n in GUARDS), None)


# --- values derived from several entries (each path "source:dotted.path") ---------------------------


def planted_found_first(top_heads: Mapping[str, Sequence[Any]], planted: Mapping[str, Any]) -> int:
    """How many planted heads the scan ranks first of their kind (the scan knows nothing of them)."""
    return sum(same_head(top_heads[kind][0], head) for kind, head in planted.items() if kind in top_heads)


def planted_list(planted: Mapping[str, Sequence[int]]) -> str:
    """Every planted head with its kind, in the ground truth's order: "L0H2 (previous-token), ... and L1H3 (semantic)"."""
    names = [f"L{layer}H{head} ({kind.replace('_', '-')})" for kind, (layer, head) in planted.items()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def planted_scanned(top_heads: Mapping[str, Sequence[Any]], planted: Mapping[str, Any]) -> int:
    """How many planted heads are of a kind the scan ranks (a decoy or an avoider is not)."""
    return sum(kind in top_heads for kind in planted)


def total_members(groups: Mapping[str, Sequence[Any]]) -> int:
    """The number of members of all groups together."""
    return sum(map(len, groups.values()))


def total(a: float, b: float) -> float:
    return a + b


def ratio(a: float, b: float) -> float:
    return a / b


def normalised_range(ranks: Sequence[float], n_keys: int, start: int) -> list[float]:
    """A reported range of mean self-ranks on the scale (rank - first rank) / V of `n_keys` keys, to 3 places."""
    return [round((r - start) / n_keys, 3) for r in ranks]


def reported_damage_share(medians: Mapping[str, float]) -> float:
    """The study's positional-embedding damage as a share of its token-embedding damage (median S)."""
    return damage_share(medians["baseline"], medians["positional_embedding"], medians["token_embedding"])


# macro: (function of the entries, the entries, format)
DERIVED: dict[str, tuple[Callable[..., Any], tuple[str, ...], Format]] = {
    # the organism's ground truth against a scan that is never told of it
    "ScanPlantedFound": (planted_found_first, ("scan_heads:results.top_heads", "ground_truth:planted_heads"), "d"),
    "ScanPlantedScanned": (planted_scanned, ("scan_heads:results.top_heads", "ground_truth:planted_heads"), "d"),
    "OrgPlantedHeads": (planted_list, ("ground_truth:planted_heads",), "text"),
    "OrgCategoryWords": (total_members, ("ground_truth:categories",), "d"),
    # one script's head against another's
    "CircKPartnerIsPrev": (same_head, ("qk_ov_circuits:results.induction_strongest_k_partner",
                                       "scan_heads:results.top_heads.previous_token.0"), Words("is", "is not")),
    # flipped against unedited eigenvalues: the factor of increase in self mass
    "SteerFlipRatio": (ratio, ("eigenvalue_scaling:results.factors.-1.in_context.self_mass",
                               "eigenvalue_scaling:results.factors.1.in_context.self_mass"), ".0f"),
    # the study's mean self-ranks (from 0 over its vocabulary) on the scale (rank - first) / V
    **{f"RepRank{name}Norm": (normalised_range, (f"reported:rank_ablation.mean_self_rank_{key}",
                                                 "reported:rank_ablation.n_keys", "reported:rank_ablation.rank_from"),
                              "range") for name, key in (("Unedited", "unedited"), ("Edited", "edited"))},
    "RepAblPosShare": (reported_damage_share, ("reported:ablation_medians",), "percent"),
    # the study's self and earlier-copies masses, summed: like for like with our combined self mass
    "RepSemSelfPlusCopies": (total, ("reported:semantic_head.self_only_mass", "reported:semantic_head.copies_mass"),
                             ".3f"),
}


# --- the macros ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Macro:
    """`\\name` = `fmt` applied to the one entry, or to `combine(*entries)`; entries are (source, path)."""

    name: str
    entries: tuple[tuple[str, str], ...]
    fmt: Format
    combine: Callable[..., Any] | None = None
    guard: str | None = None  # a switch of SWITCHES: the macro exists only while it holds

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z]+", self.name):
            raise ValueError(f"macro name {self.name!r}: LaTeX macro names are letters only")

    def resolve(self, results: Results) -> Any:
        values = [results.get(source, path) for source, path in self.entries]
        return self.combine(*values) if self.combine is not None else values[0]

    def latex(self, results: Results) -> str:
        return format_value(self.resolve(results), self.fmt)


def _macros() -> Iterator[Macro]:
    for source, table in SPEC.items():
        for name, (path, fmt) in table.items():
            yield Macro(name, ((source, path),), fmt, guard=guard_of(name, source))
    for name, (combine, paths, fmt) in DERIVED.items():
        entries = tuple(tuple(p.split(":", 1)) for p in paths)
        yield Macro(name, entries, fmt, combine, guard_of(name, *(s for s, _ in entries)))


def switches(results: Results) -> dict[str, bool]:
    """Each switch of SWITCHES: whether its entry holds in `results` (`absent` where the entry is missing)."""
    return {name: bool(results.get(source, path, default=absent)) for name, (source, path, absent) in SWITCHES.items()}


def macros() -> list[Macro]:
    """Every macro of the paper, in the order macros.tex lists them; a name declared twice is an error."""
    found = list(_macros())
    names = [m.name for m in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"macro names declared twice: {twice}")
    return found
