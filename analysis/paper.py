"""The paper's generated inputs: every number it prints, named once, with where it comes from.

The paper (`paper/main.tex`) types no number. Each one is a LaTeX macro declared here as

    Value(name, source, path, fmt)     e.g.  Value("ScanPrevScore", "scan_heads",
                                                   "results.top_heads.previous_token.0.score")

and read from a JSON file: `source` is a results file (`results/<model>/<source>.json`) or one of
`FIXED_SOURCES` (the organism's checkpoint records, and the values *reported* by the original
study of GPT-2 small, which are citations typed from the literature, never outputs). `path` is a
dotted path into the JSON (list indices are numbers, -1 is the last); `fmt` is a format spec for
a number typeset with siunitx's `\\num` (".3f", "d", ...) or one of "head" (`{"layer": 1,
"head": 5}` -> L1H5), "text", "percent", "range" ([a, b] -> siunitx's `\\numrange`). A value
computed from several entries gives a tuple of paths (a path "other:a.b" reads another source)
and a `combine` function of the entries.

Tables are short functions of the loaded results that return booktabs `tabular`s; the table
environment and its caption stay in main.tex. `generate` writes `macros.tex`, one
`tab_<name>.tex` per table and `manifest.json` (every macro with its file, path and LaTeX), so
a test can check that each macro comes from a results file that exists.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.errors import UsageError
from analysis.io import REPO_ROOT, model_slug, write_json_atomic, write_text_atomic
from analysis.models import ORGANISM_DIR

PAPER_DIR = REPO_ROOT / "paper"
FIXED_SOURCES: dict[str, Path] = {
    "training_log": ORGANISM_DIR / "training_log.json",
    "ground_truth": ORGANISM_DIR / "ground_truth.json",
    "reported": PAPER_DIR / "reported_gpt2.json",
}
RUNS_DIR = ".runs"  # results/<model>/.runs/<script>.json: {"seconds": wall time}, written by make


# --- looking values up ----------------------------------------------------------------------------


def lookup(obj: Any, path: str) -> Any:
    """`obj` followed along a dotted path such as "results.top_heads.semantic.0.score"."""
    for key in path.split("."):
        if isinstance(obj, list) and re.fullmatch(r"-?\d+", key) and -len(obj) <= int(key) < len(obj):
            obj = obj[int(key)]
        elif isinstance(obj, Mapping) and key in obj:
            obj = obj[key]
        else:
            raise KeyError(key)
    return obj


class Results:
    """The JSON files of one model's run, each read once; records every entry the paper reads."""

    def __init__(self, root: Path | str, model: str, fixed: Mapping[str, Path] = FIXED_SOURCES):
        self.root, self.model, self.fixed = Path(root), model, dict(fixed)
        self._cache: dict[str, Any] = {}
        self.read: set[tuple[str, str]] = set()  # (source, path) pairs, for trimmed fixture copies

    @property
    def directory(self) -> Path:
        return self.root / "results" / model_slug(self.model)

    def path(self, source: str) -> Path:
        return self.fixed[source] if source in self.fixed else self.directory / f"{source}.json"

    def load(self, source: str) -> Any:
        if source not in self._cache:
            path = self.path(source)
            if not path.exists():
                hint = ("it is one of the repository's own files: restore it with git" if source in self.fixed
                        else f"run `make figures MODEL={self.model}` (or scripts/{source}.py --model {self.model})")
                raise UsageError(f"The paper needs {path}, which does not exist; {hint}.")
            self._cache[source] = json.loads(path.read_text())
        return self._cache[source]

    def get(self, source: str, path: str) -> Any:
        try:
            value = lookup(self.load(source), path)
        except KeyError as err:
            raise UsageError(
                f"{self.path(source)} has no entry {path!r} (no key {err.args[0]!r}): the script's output "
                "changed since the paper's spec in analysis/paper.py was written. Update the spec, or rerun "
                "the script if its results file is older than the script."
            ) from None
        self.read.add((source, path))
        return value

    def run_seconds(self, script: str) -> float | None:
        """Wall time of a script's last run by make, or None if make did not run it."""
        stamp = self.directory / RUNS_DIR / f"{script}.json"
        return json.loads(stamp.read_text())["seconds"] if stamp.exists() else None


# --- formatting -----------------------------------------------------------------------------------

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
MISSING = "--"  # a number a results file stores as null (NaN): printed, never hidden


def latex_escape(text: str) -> str:
    """Plain text made safe for LaTeX: R&D_1 -> R\\&D\\_1; characters pdflatex cannot set become "?"."""
    return "".join(_LATEX_SPECIALS.get(c, c if 32 <= ord(c) < 127 else "?") for c in str(text))


def token_tex(token: str) -> str:
    """A vocabulary token in the text: its word without GPT-2's leading space, escaped, in italics."""
    return r"\emph{" + (latex_escape(token.strip()) or r"\textvisiblespace{}") + "}"


def short_commit(commit: str) -> str:
    """A commit hash as printed: its first 12 characters, plus "+dirty" for uncommitted changes."""
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def head_name(value: Any) -> str:
    """L<layer>H<head> from {"layer": l, "head": h} or [l, h]."""
    layer, head = (value["layer"], value["head"]) if isinstance(value, Mapping) else value
    return f"L{int(layer)}H{int(head)}"


def format_value(value: Any, fmt: str) -> str:
    """The LaTeX for one value: numbers through siunitx's \\num, heads as LxHy, text escaped."""
    if fmt == "head":
        return head_name(value)
    if fmt == "text":
        return latex_escape(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if fmt == "range":
        return rf"\numrange{{{value[0]}}}{{{value[1]}}}"
    if fmt == "percent":
        return rf"\SI{{{100 * value:.0f}}}{{\percent}}"
    if fmt == "d":
        return rf"\num{{{int(round(value))}}}"
    return rf"\num{{{value:{fmt}}}}"


# --- the declarative spec of macros ---------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """Macro `\\name` = `fmt` applied to the entry at `path` of `source`, or to `combine(*entries)`."""

    name: str
    source: str
    path: str | tuple[str, ...]
    fmt: str = ".3f"
    combine: Callable[..., Any] | None = None

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z]+", self.name):
            raise ValueError(f"macro name {self.name!r}: LaTeX macro names are letters only")

    @property
    def entries(self) -> list[tuple[str, str]]:
        """(source, path) of each entry read; a path "other:a.b" reads entry a.b of source other."""
        paths = (self.path,) if isinstance(self.path, str) else self.path
        return [tuple(p.split(":", 1)) if ":" in p else (self.source, p) for p in paths]

    def resolve(self, results: Results) -> Any:
        entries = [results.get(source, path) for source, path in self.entries]
        return self.combine(*entries) if self.combine is not None else entries[0]

    def latex(self, results: Results) -> str:
        return format_value(self.resolve(results), self.fmt)


def value_at_head(values: Sequence[Sequence[float]], head: Mapping[str, int]) -> float:
    """A `[layer][head]` map's entry at the head named by {"layer": l, "head": h}."""
    return values[head["layer"]][head["head"]]


def at_head(name: str, source: str, map_path: str, head_path: str, fmt: str = ".3f") -> Value:
    """Macro `\\name`: a `[layer][head]` map read at the head another entry names (e.g. the scan's best)."""
    return Value(name, source, (map_path, head_path), fmt, value_at_head)


def _provenance(prefix: str, source: str) -> list[Value]:
    """Model shape, seed and commit, from one results file's provenance."""
    model = "provenance.model"
    return [
        Value(f"{prefix}Name", source, f"{model}.name", "text"),
        Value(f"{prefix}Layers", source, f"{model}.n_layers", "d"),
        Value(f"{prefix}Heads", source, f"{model}.n_heads", "d"),
        Value(f"{prefix}DModel", source, f"{model}.d_model", "d"),
        Value(f"{prefix}DHead", source, f"{model}.d_head", "d"),
        Value(f"{prefix}DVocab", source, f"{model}.d_vocab", "d"),
        Value(f"{prefix}NCtx", source, f"{model}.n_ctx", "d"),
        Value(f"{prefix}Commit", source, "provenance.git_commit", "text", short_commit),
    ]


def _organism() -> list[Value]:
    """The organism's planted heads and training run (its checkpoint's own records)."""
    cfg = "train_config"
    return [
        Value("OrgPlantedPrev", "ground_truth", "planted_heads.previous_token", "head"),
        Value("OrgPlantedInd", "ground_truth", "planted_heads.induction", "head"),
        Value("OrgPlantedSem", "ground_truth", "planted_heads.semantic", "head"),
        Value("OrgPlantedCount", "ground_truth", "planted_heads", "d", len),
        Value("OrgCategories", "ground_truth", "categories", "d", len),
        Value("OrgCategoryWords", "ground_truth", "categories", "d", lambda c: sum(map(len, c.values()))),
        Value("OrgLayers", "training_log", f"{cfg}.n_layers", "d"),
        Value("OrgHeads", "training_log", f"{cfg}.n_heads", "d"),
        Value("OrgDModel", "training_log", f"{cfg}.d_model", "d"),
        Value("OrgDHead", "training_log", f"{cfg}.d_head", "d"),
        Value("OrgDMLP", "training_log", f"{cfg}.d_mlp", "d"),
        Value("OrgNCtx", "training_log", f"{cfg}.n_ctx", "d"),
        Value("OrgSteps", "training_log", f"{cfg}.steps", "d"),
        Value("OrgBatch", "training_log", f"{cfg}.batch_size", "d"),
        Value("OrgLR", "training_log", f"{cfg}.lr", ".0e"),
        Value("OrgWarmup", "training_log", f"{cfg}.warmup_steps", "d"),
        Value("OrgWeightDecay", "training_log", f"{cfg}.weight_decay", ".2f"),
        Value("OrgSupervisionWeight", "training_log", f"{cfg}.supervision_weight", ".1f"),
        Value("OrgTrainSeed", "training_log", f"{cfg}.seed", "d"),
        Value("OrgMixCategory", "training_log", f"{cfg}.mixture.category_text", "percent"),
        Value("OrgMixRepeated", "training_log", f"{cfg}.mixture.repeated_chunks", "percent"),
        Value("OrgMixRandom", "training_log", f"{cfg}.mixture.random_tokens", "percent"),
        Value("OrgTrainMinutes", "training_log", "seconds", ".1f", lambda s: s / 60),
        Value("OrgTrainThreads", "training_log", "torch_threads", "d"),
        Value("OrgInitialLMLoss", "training_log", "log.0.lm_loss", ".2f"),
        Value("OrgFinalLMLoss", "training_log", "log.-1.lm_loss", ".2f"),
    ]


def same_head(a: Any, b: Any) -> bool:
    return head_name(a) == head_name(b)


def planted_found_first(top_heads: Mapping[str, Sequence[Any]], planted: Mapping[str, Any]) -> int:
    """How many planted heads the scan ranks first of their kind (the scan knows nothing of them)."""
    return sum(same_head(top_heads[kind][0], head) for kind, head in planted.items() if kind in top_heads)


def _scan() -> list[Value]:
    """The all-heads scan (scripts/scan_heads.py): best heads of each kind and the probe sizes."""
    src, top, maps, settings = "scan_heads", "results.top_heads", "results.maps", "results.settings"
    values = []
    for prefix, kind, ranks in (("ScanPrev", "previous_token", 2), ("ScanInd", "induction", 2),
                                ("ScanDup", "duplicate", 1), ("ScanSem", "semantic", 2)):
        for rank, suffix in list(enumerate(("", "Runner")))[:ranks]:
            values += [Value(f"{prefix}{suffix}Head", src, f"{top}.{kind}.{rank}", "head"),
                       Value(f"{prefix}{suffix}Score", src, f"{top}.{kind}.{rank}.score", ".3f")]
    return values + [
        Value("ScanPlantedFound", src, (top, "ground_truth:planted_heads"), "d", planted_found_first),
        at_head("ScanPrevNoBos", src, f"{maps}.previous_token_no_bos", f"{top}.previous_token.0"),
        Value("ScanIndShort", src, (maps, f"{settings}.repeat_lengths.1", f"{top}.induction.0"), ".3f",
              lambda m, length, head: value_at_head(m[f"induction_{length}"], head)),
        Value("ScanNRandom", src, f"{settings}.n_random", "d"),
        Value("ScanRandomLength", src, f"{settings}.random_length", "d"),
        Value("ScanNRepeated", src, f"{settings}.n_repeated", "d"),
        Value("ScanRepeatLong", src, f"{settings}.repeat_lengths.0", "d"),
        Value("ScanRepeatShort", src, f"{settings}.repeat_lengths.1", "d"),
        Value("ScanNCategory", src, f"{settings}.n_category", "d"),
        Value("ScanCategoryWords", src, f"{settings}.category_words", "d"),
        Value("ScanCeiling", src, "results.induction_ceiling", ".1f"),
    ]


def _survey() -> list[Value]:
    """The semantic-head survey and the target head (scripts/characterize_head.py)."""
    src, target, args = "characterize_head", "results.target", "provenance.arguments"
    values = [Value("SurveyHead", src, target, "head"),
              Value("SurveyChosenBy", src, f"{target}.chosen_by", "text"),
              Value("SurveyLayer", src, f"{target}.layer", "text", str)]  # plain digits: part of a file name
    for prefix, metric, fmt in (("SurveyS", "surprisal", ".3f"), ("SurveyPartner", "partner_mass", ".3f"),
                                ("SurveySelf", "self_mass", ".3f"), ("SurveyBos", "bos_mass_no_partner", ".3f"),
                                ("SurveyArgmax", "argmax_accuracy", ".3f")):
        values += [Value(prefix, src, f"{target}.{metric}", fmt),
                   Value(f"{prefix}Low", src, f"{target}.{metric}_low", fmt),
                   Value(f"{prefix}High", src, f"{target}.{metric}_high", fmt)]
    return values + [
        Value("SurveyRunnerHead", src, "results.survey.1", "head"),
        Value("SurveyRunnerS", src, "results.survey.1.surprisal", ".3f"),
        Value("SurveyMargin", src, "results.separation.margin", ".3f"),
        Value("SurveyCIs", src, "results.separation.separated", "text", lambda s: "disjoint" if s else "overlapping"),
        Value("SurveyNPrompts", src, f"{args}.n_prompts", "d"),
        Value("SurveyNWords", src, f"{args}.n_words", "d"),
        Value("SurveyResamples", src, f"{args}.n_resamples", "d"),
        Value("SurveyHeadsTotal", src, "results.survey", "d", len),
        Value("ExampleWords", src, f"{args}.example_words", "d"),
        Value("ExampleS", src, "results.example.scores.surprisal", ".3f"),
        Value("ExamplePartner", src, "results.example.scores.partner_mass", ".2f"),
        Value("ExampleSelf", src, "results.example.scores.self_mass", ".2f"),
    ]


def _baseline() -> list[Value]:
    """The baseline scripts: manual attention, attention statistics, circuits, patching, logit lens."""
    manual, stats, circ, patch, lens = ("manual_attention", "attention_stats", "qk_ov_circuits",
                                        "activation_patching", "logit_lens")
    values = [
        Value("ManualTolerance", manual, "results.tolerance", ".0e"),
        Value("ManualMaxTL", manual, "results.overall_max.vs_transformer_lens", ".1e"),
        Value("ManualMaxHF", manual, "results.overall_max.vs_hugging_face", ".1e"),
        Value("ManualMaxProcessed", manual, "results.overall_max.vs_processed_transformer_lens", ".1e"),
        Value("ManualWithin", manual, "results.within_tolerance", "text",
              lambda w: "within" if all(v for v in w.values() if v is not None) else "not within"),
        Value("StatsNPrompts", stats, "provenance.arguments.n_prompts", "d"),
        Value("StatsLength", stats, "provenance.arguments.length", "d"),
    ]
    for prefix, ranking, fmt in (("StatsFocused", "most_focused", ".2f"), ("StatsDiffuse", "most_diffuse", ".2f"),
                                 ("StatsLongest", "longest_range", ".1f"), ("StatsBos", "most_bos", ".2f")):
        values += [Value(f"{prefix}Head", stats, f"results.rankings.{ranking}.0", "head"),
                   Value(f"{prefix}Value", stats, f"results.rankings.{ranking}.0.value", fmt)]
    induction = "results.top_induction_head"
    values += [
        Value("CircIndHead", circ, induction, "head"),
        Value("CircIndCopyFull", circ, ("results.copying_score.full_W_E_W_V_W_O_W_U", induction), ".2f", value_at_head),
        Value("CircIndCopyResid", circ, ("results.copying_score.residual_W_V_W_O", induction), ".2f", value_at_head),
        Value("CircKPartner", circ, "results.induction_strongest_k_partner", "head"),
        Value("CircKPartnerScore", circ, "results.induction_strongest_k_partner.score", ".3f"),
        Value("CircKPartnerIsPrev", circ, ("results.induction_strongest_k_partner",
                                           "scan_heads:results.top_heads.previous_token.0"), "text",
              lambda a, b: "is" if same_head(a, b) else "is not"),
        Value("CircKRunner", circ, "results.induction_k_composition.1", "head"),
        Value("CircKRunnerScore", circ, "results.induction_k_composition.1.score", ".3f"),
        Value("CircRandomBaseline", circ, "results.composition_baseline.random_matrices", ".3f"),
        Value("CircOneOverSqrt", circ, "results.composition_baseline.one_over_sqrt_d_model", ".3f"),
        Value("CircMaxCopyFull", circ, "results.copying_score.full_W_E_W_V_W_O_W_U", ".2f",
              lambda m: max(v for row in m for v in row if v is not None)),
        Value("TokHead", "token_circuit_tables", "results", "head"),
        Value("TokProbabilities", "token_circuit_tables", "results.token_probabilities", "text"),
        Value("TokVariant", "token_circuit_tables", "results.variant", "text"),
        Value("PatchTask", patch, "results.task", "text"),
        Value("PatchClean", patch, "results.clean", "text"),
        Value("PatchCorrupted", patch, "results.corrupted", "text"),
        Value("PatchAnswer", patch, "results.answer", "text", str.strip),
        Value("PatchWrong", patch, "results.wrong", "text", str.strip),
        Value("PatchCleanDiff", patch, "results.clean_logit_diff", ".2f"),
        Value("PatchCorruptedDiff", patch, "results.corrupted_logit_diff", ".2f"),
        Value("PatchTopHead", patch, "results.top_heads.0", "head"),
        Value("PatchTopRecovered", patch, "results.top_heads.0.recovered", "percent"),
        Value("PatchSecondHead", patch, "results.top_heads.1", "head"),
        Value("PatchSecondRecovered", patch, "results.top_heads.1.recovered", "percent"),
        Value("LensPrompt", lens, "results.prompt", "text"),
        Value("LensDepths", lens, "results.depths", "d", len),
        Value("LensTopOneShare", lens, "results.final_top1_matches_next", "percent", lambda m: sum(m) / len(m)),
        Value("DetectRatioPrev", "scan_heads", "results.detect_head.previous_token.expected_ratio", ".3f"),
        Value("DetectRatioInd", "scan_heads", "results.detect_head.induction.expected_ratio", ".3f"),
        Value("DetectDeviation", "scan_heads", "results.detect_head", ".0e",
              lambda d: max(d[k]["max_deviation"] for k in ("previous_token", "induction", "duplicate"))),
    ]
    return values


ABLATION_CONDITIONS = {  # component_ablation's conditions, as the paper names them
    "baseline": "none (baseline)", "token_embedding": "token embedding", "positional_embedding": "positional embedding",
    "attention_0": "first attention layer", "mlp_0": "first MLP", "mlp_only_residual": "MLP-only residual",
}


def ablation_row(table: Sequence[Mapping[str, Any]], mode: str, condition: str) -> Mapping[str, Any]:
    """component_ablation's table row for one (mode, condition)."""
    return next(r for r in table if r["mode"] == mode and r["condition"] == condition)


def damage_share(baseline: float, ablated: float, reference: float) -> float:
    """(ablated - baseline) / (reference - baseline): an ablation's damage as a share of another's."""
    return (ablated - baseline) / (reference - baseline)


def _ablation() -> list[Value]:
    """Component ablation (scripts/component_ablation.py): median S per ablated component and mode."""
    src, table = "component_ablation", "results.table"
    values = [Value("AblNPrompts", src, "provenance.arguments.n_prompts", "d"),
              Value("AblNWords", src, "provenance.arguments.n_words", "d"),
              Value("AblHead", src, "results.target", "head")]
    names = {"baseline": "Base", "token_embedding": "Token", "positional_embedding": "Pos", "attention_0": "Attn",
             "mlp_0": "MLP", "mlp_only_residual": "MLPOnly"}
    for condition, short in names.items():
        for mode in ("mean",) if condition == "baseline" else ("mean", "zero"):  # unablated: one baseline
            values.append(Value(f"Abl{short}{mode.title()}", src, table, ".2f",
                                lambda t, m=mode, c=condition: ablation_row(t, m, c)["median"]))
    return values + [
        Value("AblTokenMinusPosMean", src, "results.token_minus_positional_median.mean", ".2f"),
        Value("AblPosShare", src, table, "percent", lambda t: damage_share(
            *(ablation_row(t, "mean", c)["median"] for c in ("baseline", "positional_embedding", "token_embedding")))),
        Value("AblTokenMinusPosZero", src, "results.token_minus_positional_median.zero", ".2f"),
    ]


def _cosine() -> list[Value]:
    """Attention versus similarity (scripts/cosine_attention_analysis.py) and the token counts it uses."""
    src, settings, contrast = "cosine_attention_analysis", "results.settings", "results.category_contrast"
    return [
        Value("CosHead", src, "results.target", "head"),
        Value("CosTokens", src, f"{settings}.n_tokens", "d"),
        Value("CosPairs", src, f"{settings}.pairs", "d"),
        Value("CosWindow", src, f"{settings}.window", ".3f"),
        Value("CosVariant", src, f"{settings}.variant", "text"),
        Value("CosBiases", src, f"{settings}.biases_included", "text", lambda b: "included" if b else "left out"),
        Value("CosUnits", src, f"{settings}.units", "text"),
        Value("CosCI", src, f"{settings}.ci", "text"),
        Value("CosBeatsSelf", src, "results.beats_self_from_cosine", ".2f"),
        Value("CosPeakCosine", src, "results.peak.cosine", ".2f"),
        Value("CosPeakMean", src, "results.peak.mean", ".2f"),
        Value("CosMatesMean", src, f"{contrast}.mates_mean", ".2f"),
        Value("CosMatesBeat", src, f"{contrast}.mates_beat_self", "percent"),
        Value("CosMatesPairs", src, f"{contrast}.mates_pairs", "d"),
        Value("CosOthersMean", src, f"{contrast}.others_mean", ".2f"),
        Value("CosOthersBeat", src, f"{contrast}.others_beat_self", "percent"),
        Value("CosQuery", src, "results.example.query", "text", str.strip),
        Value("CosTopKey", src, "results.example.top_keys.0.token", "text", str.strip),
        Value("CosTopKeyScore", src, "results.example.top_keys.0.score_minus_self", ".2f"),
        Value("FreqTokens", "token_freq", "results.total_tokens", "d"),
        Value("FreqDistinct", "token_freq", "results.distinct_tokens", "d"),
        Value("FreqSource", "token_freq", "results.corpus.source", "text"),
    ]


def factor_row(factors: Sequence[Mapping[str, Any]], factor: float) -> Mapping[str, Any]:
    """svd_group_scaling_heatmap's entry for one eigenvalue factor (the paper reads 1, 0 and -1)."""
    for row in factors:
        if row["factor"] == factor:
            return row
    raise UsageError(f"svd_group_scaling_heatmap has no factor {factor}: the paper reads factors 1, 0 and -1; "
                     "rerun it with --factors including them (its default 1 0.5 0 -1 does).")


def grid_cell(cells: Sequence[Mapping[str, Any]], k: int, scale: float) -> Mapping[str, Any]:
    """svd_rank_ablation's cell for (k, scale)."""
    for cell in cells:
        if cell["k"] == k and cell["scale"] == scale:
            return cell
    raise UsageError(f"svd_rank_ablation has no cell k = {k}, scale = {scale}, which the paper reads (the study's "
                     "cell and the unedited scale 1); rerun it with --ks and --scales including them.")


# The rank-ablation cell the original study reported, read from the reported values.
STUDY_CELL = ("results.cells", "reported:rank_ablation.k", "reported:rank_ablation.scale")


def study_cell_rank(cells: Sequence[Mapping[str, Any]], k: int, scale: float) -> float:
    return grid_cell(cells, k, scale)["mean_rank"]


def _mechanism() -> list[Value]:
    """The QK decomposition: skew_analysis, svd_sym_skew_heatmap (token maps), eigenvalue steering."""
    skew, maps, steer = "skew_analysis", "svd_sym_skew_heatmap", "svd_group_scaling_heatmap"
    plain, biased = "results.without_bias", "results.with_bias"
    factors = "results.factors"
    return [
        Value("SkewHead", skew, "results.head", "head"),
        Value("SkewInput", skew, "results.input", "text"),
        Value("SkewNormW", skew, f"{plain}.norms.W", ".1f"),
        Value("SkewNormSym", skew, f"{plain}.norms.sym", ".1f"),
        Value("SkewNormSkew", skew, f"{plain}.norms.skew", ".1f"),
        Value("SkewSymShare", skew, f"{plain}.norms.sym_share", ".2f"),
        Value("SkewSkewShare", skew, f"{plain}.norms.skew_share", ".2f"),
        Value("SkewNEigen", skew, f"{plain}.eigenvalues", "d", len),
        Value("SkewNNeg", skew, f"{plain}.spectrum.n_negative", "d"),
        Value("SkewNPos", skew, f"{plain}.spectrum.n_positive", "d"),
        Value("SkewNegTotal", skew, f"{plain}.spectrum.negative_total", ".1f"),
        Value("SkewPosTotal", skew, f"{plain}.spectrum.positive_total", ".1f"),
        Value("SkewNegShare", skew, f"{plain}.spectrum.negative_share", "percent"),
        Value("SkewMostNeg", skew, f"{plain}.spectrum.most_negative", ".2f"),
        Value("SkewMostPos", skew, f"{plain}.spectrum.most_positive", ".2f"),
        Value("SkewCheckSym", skew, f"{plain}.check.max_abs_self_W_minus_sym", ".0e"),
        Value("SkewCheckSkew", skew, f"{plain}.check.max_abs_self_skew", ".0e"),
        Value("SkewCheckScale", skew, f"{plain}.check.self_score_scale", ".1f"),
        Value("SkewSelfNegative", skew, f"{plain}.self_score.fraction_negative", "percent"),
        Value("SkewBiasNNeg", skew, f"{biased}.spectrum.n_negative", "d"),
        Value("SkewBiasMostNeg", skew, f"{biased}.spectrum.most_negative", ".2f"),
        Value("SkewBiasSelfNegative", skew, f"{biased}.self_score.fraction_negative", "percent"),
        Value("SkewBiasKeyStd", skew, "results.bias_terms_on_group_set.key_term_std", ".2f"),
        Value("SkewBiasScoreStd", skew, "results.bias_terms_on_group_set.score_std_over_keys", ".2f"),
        Value("MapsInput", maps, "results.input", "text"),
        Value("MapsTokens", maps, "results.tokens", "d", len),
        Value("MapsGroups", maps, "results.groups", "d", len),
        Value("MapsSelf", maps, "results.block_means.base.self", ".2f"),
        Value("MapsInGroup", maps, "results.block_means.base.in_group", ".2f"),
        Value("MapsOutGroup", maps, "results.block_means.base.out_group", ".2f"),
        Value("MapsRelSym", maps, "results.relative_norms.sym", ".2f"),
        Value("MapsRelSkew", maps, "results.relative_norms.skew", ".2f"),
        Value("MapsCheckDiag", maps, "results.check", ".0e",
              lambda c: max(c["max_abs_diag_base_minus_sym"], c["max_abs_diag_skew"])),
        Value("MapsBiasChange", maps, "results.bias_effect.max_abs_change_row_centred", ".2f"),
        Value("SteerNNeg", steer, "results.n_negative_eigenvalues", "d"),
        Value("SteerNPrompts", steer, "provenance.arguments.n_prompts", "d"),
        Value("SteerSelfBefore", steer, "results.unedited_in_context.self_mass", ".3f"),
        Value("SteerZeroGap", steer, factors, ".2f", lambda f: factor_row(f, 0.0)["block_means"]["self_minus_in_group"]),
        Value("SteerFlipGap", steer, factors, ".2f", lambda f: factor_row(f, -1.0)["block_means"]["self_minus_in_group"]),
        Value("SteerOneGap", steer, factors, ".2f", lambda f: factor_row(f, 1.0)["block_means"]["self_minus_in_group"]),
        Value("SteerZeroSelf", steer, factors, ".2f", lambda f: factor_row(f, 0.0)["in_context"]["self_mass"]),
        Value("SteerFlipSelf", steer, factors, ".2f", lambda f: factor_row(f, -1.0)["in_context"]["self_mass"]),
        Value("SteerFlipPartner", steer, factors, ".2f", lambda f: factor_row(f, -1.0)["in_context"]["partner_mass"]),
        Value("SteerFlipRatio", steer, factors, ".0f",
              lambda f: factor_row(f, -1.0)["in_context"]["self_mass"] / factor_row(f, 1.0)["in_context"]["self_mass"]),
    ]


def largest_trace_step(runs: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """gradient_steering's closed-form run with the largest step: (its name, its record with "eta")."""
    return max(((name, run) for name, run in runs.items() if "eta" in run), key=lambda item: item[1]["eta"])


def _steering() -> list[Value]:
    """Rank ablation over the vocabulary and gradient steering (svd_rank_ablation, gradient_steering)."""
    rank, grad = "svd_rank_ablation", "gradient_steering"
    cells, metrics, keys = "results.cells", "results.metrics", "results.top_keys"
    best = lambda c: min(c, key=lambda x: x["mean_rank"])  # noqa: E731  the cell whose self-scores rank highest
    return [
        Value("RankVocab", rank, "results.d_vocab", "d"),
        Value("RankUnedited", rank, cells, ".1f", lambda c: grid_cell(c, c[0]["k"], 1.0)["mean_rank"]),
        Value("RankUneditedAccOne", rank, cells, ".2f", lambda c: grid_cell(c, c[0]["k"], 1.0)["acc@1"]),
        Value("RankBestK", rank, cells, "d", lambda c: best(c)["k"]),
        Value("RankBestScale", rank, cells, "g", lambda c: best(c)["scale"]),
        Value("RankBest", rank, cells, ".2f", lambda c: best(c)["mean_rank"]),
        Value("RankBestAccOne", rank, cells, ".2f", lambda c: best(c)["acc@1"]),
        Value("RankBestSelfMass", rank, cells, ".2f", lambda c: best(c)["self_mass"]),
        Value("RankStudyCell", rank, STUDY_CELL, ".1f", study_cell_rank),
        Value("GradSteps", grad, "provenance.arguments.steps", "d"),
        Value("GradLR", grad, "provenance.arguments.lr", "g"),
        Value("GradLambda", grad, "provenance.arguments.lam", "g"),
        Value("GradSelfBefore", grad, f"{metrics}.before.self_mass", ".3f"),
        Value("GradPartnerBefore", grad, f"{metrics}.before.partner_mass", ".3f"),
        Value("GradSelfSuppress", grad, f"{metrics}.suppress.self_mass", ".3f"),
        Value("GradPartnerSuppress", grad, f"{metrics}.suppress.partner_mass", ".3f"),
        Value("GradSelfRestore", grad, f"{metrics}.restore.self_mass", ".3f"),
        Value("GradPartnerRestore", grad, f"{metrics}.restore.partner_mass", ".3f"),
        Value("GradQuery", grad, "results.query", "text", str.strip),
        Value("GradSelfRankBefore", grad, f"{keys}.before.query_self_rank", "d"),
        Value("GradSelfRankRestore", grad, f"{keys}.restore.query_self_rank", "d"),
        Value("GradSelfRankSuppress", grad, f"{keys}.suppress.query_self_rank", "d"),
        Value("GradTopKeysBefore", grad, f"{keys}.before.keys", "text", lambda k: ", ".join(t.strip() for t in k[:3])),
        Value("GradTopKeysRestore", grad, f"{keys}.restore.keys", "text", lambda k: ", ".join(t.strip() for t in k[:3])),
        Value("GradTraceEta", grad, "results.runs", ".2f", lambda r: largest_trace_step(r)[1]["eta"]),
        Value("GradTraceSelf", grad, ("results.runs", metrics), ".3f", lambda r, m: m[largest_trace_step(r)[0]]["self_mass"]),
        Value("GradTracePartner", grad, ("results.runs", metrics), ".3f",
              lambda r, m: m[largest_trace_step(r)[0]]["partner_mass"]),
    ]


def _clusters_and_features() -> list[Value]:
    """Leiden communities of the score graph (clustering) and SAE features through the head (semantic_head)."""
    clu, sae = "clustering", "semantic_head"
    return [
        Value("CluNodes", clu, "results.n_nodes", "d"),
        Value("CluEdges", clu, "results.n_edges", "d"),
        Value("CluK", clu, "results.k", "d"),
        Value("CluInput", clu, "results.input", "text"),
        Value("CluMethod", clu, "results.method", "text"),
        Value("CluCommunities", clu, "results.n_communities", "d"),
        Value("CluModularity", clu, "results.modularity", ".2f"),
        Value("CluARI", clu, "results.agreement.ari", ".2f"),
        Value("CluNMI", clu, "results.agreement.nmi", ".2f"),
        Value("CluCategoryWords", clu, "results.agreement.n_tokens", "d"),
        Value("SaeKind", sae, "results.sae.kind", "text"),
        Value("SaeHook", sae, "results.sae.hook", "text"),
        Value("SaeWidth", sae, "results.sae.d_sae", "d"),
        Value("SaeArchitecture", sae, "results.sae.architecture", "text"),
        Value("SaeVariance", sae, "results.sae.variance_explained_on_category_prompts", "percent"),
        Value("SaeFeatures", sae, "results.features", "d", len),
        Value("SaeSelf", sae, "results.block_means.self", ".1f"),
        Value("SaeInGroup", sae, "results.block_means.in_group", ".1f"),
        Value("SaeOutGroup", sae, "results.block_means.out_group", ".1f"),
        Value("SaeSelfBelowMates", sae, "results.self_avoidance.self_below_mates", "percent"),
        Value("SaeBestIsMate", sae, "results.self_avoidance.best_key_is_mate", "percent"),
        Value("SaeBestIsSelf", sae, "results.self_avoidance.best_key_is_self", "percent"),
        Value("SaeTopPairsSame", sae, "results.top_pairs_same_category", "percent"),
        Value("SaeTopPairs", sae, "results.top_pairs", "d", len),
    ]


def _reported() -> list[Value]:
    """Values reported for GPT-2 small by the original study and the literature (citations)."""
    src = "reported"
    return [
        Value("RepSemHead", src, "semantic_head.head", "head"),
        Value("RepSemLayer", src, "semantic_head.head.0", "d"),
        Value("RepSemHeadIndex", src, "semantic_head.head.1", "d"),
        Value("RepCopySuppressionHead", src, "baseline.copy_suppression_head", "head"),
        Value("RepSemPromptTokens", src, "semantic_head.prompt_tokens", "d"),
        Value("RepPrevHead", src, "baseline.previous_token_heads.0", "text"),
        Value("RepIndHeads", src, "baseline.induction_heads", "text", ", ".join),
        Value("RepDupHeads", src, "baseline.duplicate_token_heads", "text", ", ".join),
        Value("RepAblBase", src, "ablation_medians.baseline", "g"),
        Value("RepAblToken", src, "ablation_medians.token_embedding", "g"),
        Value("RepAblPos", src, "ablation_medians.positional_embedding", "g"),
        Value("RepAblMLP", src, "ablation_medians.mlp0", "g"),
        Value("RepAblPosShare", src, "ablation_medians", "percent", lambda m: damage_share(
            m["baseline"], m["positional_embedding"], m["token_embedding"])),
        Value("RepCosNegative", src, "cosine.strongly_negative_below", "g"),
        Value("RepCosZero", src, "cosine.zero_crossing", "g"),
        Value("RepCosPeak", src, "cosine.peak", "g"),
        Value("RepRankUnedited", src, "rank_ablation.mean_self_rank_unedited", "range"),
        Value("RepRankEdited", src, "rank_ablation.mean_self_rank_edited", "range"),
        Value("RepRankK", src, "rank_ablation.k", "d"),
        Value("RepRankScale", src, "rank_ablation.scale", "g"),
        Value("RepRankAcc", src, "rank_ablation.accuracy_at_cutoff", "g"),
        Value("RepRankCutoff", src, "rank_ablation.accuracy_cutoff", "d"),
        Value("RepCluTokens", src, "clustering.n_tokens", "d"),
        Value("RepCluCommunities", src, "clustering.communities", "d"),
        Value("RepCluExamples", src, "clustering.examples", "text", ", ".join),
    ]


def spec() -> list[Value]:
    """Every macro of the paper, in the order macros.tex lists them."""
    values = [*_provenance("Model", "scan_heads"), *_organism(), *_scan(), *_baseline(), *_survey(), *_ablation(), *_cosine(),
              *_mechanism(), *_steering(), *_clusters_and_features(), *_reported()]
    names = [v.name for v in values]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"macro names declared twice: {twice}")
    return values


# --- tables -------------------------------------------------------------------------------------


def tabular(colspec: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs tabular from a header and rows of cells that are LaTeX already."""
    lines = [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


SCAN_KINDS = [("previous-token", "previous_token", r"mean $A_{i,i-1}$"),  # (label, scan_heads key, score)
              ("induction", "induction", r"mean $A_{q,q-L+1}$"),
              ("duplicate-token", "duplicate", r"mean $A_{q,q-L}$"),
              ("semantic", "semantic", r"$S$ (nats, lower is better)")]


def table_scan(results: Results, n: int = 3) -> str:
    """The scan's top heads of each kind."""
    rows = []
    for label, kind, unit in SCAN_KINDS:
        heads = results.get("scan_heads", f"results.top_heads.{kind}")[:n]
        cells = [f"{head_name(h)} ({format_value(h['score'], '.3f')})" for h in heads]
        rows.append([label, unit, *cells])
    header = ["kind", "score", *[("best" if i == 0 else f"rank {i + 1}") for i in range(n)]]
    return tabular("ll" + "l" * n, header, rows)


THRESHOLD_LABELS = {
    "previous_token": "previous-token score",
    "semantic_partner_mass": "semantic: mass on partners",
    "semantic_self_mass": "semantic: mass on self and copies",
    "semantic_bos_mass_no_partner": "semantic: BOS mass, no partner",
}


def threshold_label(key: str) -> str:
    """How the thresholds table names a key of analysis.organism.THRESHOLDS ("induction_50": at |r| = 50)."""
    match = re.fullmatch(r"induction_(\d+)", key)
    return rf"induction score, $|r| = {match.group(1)}$" if match else THRESHOLD_LABELS.get(key, latex_escape(key))


def table_token_circuits(results: Results, n_keys: int = 6, n: int = 3) -> str:
    """The key-pivoted token table: each top key with its top queries (QK) and top outputs (OV)."""
    rows = []
    for entry in results.get("token_circuit_tables", "results.table")[:n_keys]:
        rows.append([token_tex(entry["key"]),
                     ", ".join(token_tex(q["token"]) for q in entry["queries"][:n]),
                     ", ".join(token_tex(o["token"]) for o in entry["outputs"][:n])])
    return tabular("lll", ["key", "top queries (QK)", "top outputs (OV)"], rows)


def table_survey(results: Results, n: int = 5) -> str:
    """The survey's best heads by S, with 95% bootstrap CIs and the companions."""
    rows = []
    for row in results.get("characterize_head", "results.survey")[:n]:
        ci = f"[{format_value(row['surprisal_low'], '.3f')}, {format_value(row['surprisal_high'], '.3f')}]"
        rows.append([format_value(row["rank"], "d"), head_name(row), format_value(row["surprisal"], ".3f"), ci,
                     *(format_value(row[m], ".3f") for m in ("partner_mass", "self_mass", "bos_mass_no_partner",
                                                            "argmax_accuracy"))])
    header = ["rank", "head", r"$S$ (nats)", r"95\,\% CI", "partner", "self", "BOS, no partner", "argmax"]
    return tabular("rlrlrrrr", header, rows)


def table_ablation(results: Results) -> str:
    """Median S [quartiles] per ablated component and mode, beside the medians reported for GPT-2."""
    table = results.get("component_ablation", "results.table")
    reported = {k: v for k, v in results.get("reported", "ablation_medians").items() if k != "cite"}
    reported_key = {"attention_0": "attention0", "mlp_0": "mlp0"}
    rows = []
    for condition, label in ABLATION_CONDITIONS.items():
        cells = [label]
        for mode in ("mean", "zero"):
            row = ablation_row(table, mode, condition)
            cells.append(f"{format_value(row['median'], '.2f')} "
                         f"[{format_value(row['q25'], '.2f')}, {format_value(row['q75'], '.2f')}]")
        rep = reported.get(reported_key.get(condition, condition))
        cells.append(format_value(rep, "g") if rep is not None else MISSING)
        rows.append(cells)
    return tabular("llll", ["component ablated", "mean ablation", "zero ablation", "reported, GPT-2"], rows)


def table_eigen_steering(results: Results) -> str:
    """Per eigenvalue factor: the token map's self minus in-group score and the head's in-context masses."""
    rows = []
    for f in results.get("svd_group_scaling_heatmap", "results.factors"):
        ctx = f["in_context"]
        rows.append([format_value(f["factor"], "g"), format_value(f["block_means"]["self_minus_in_group"], ".2f"),
                     *(format_value(ctx[m], ".3f") for m in ("self_mass", "partner_mass", "bos_mass_no_partner")),
                     format_value(ctx["surprisal"], ".2f")])
    header = ["factor", "self $-$ in-group", "self mass", "partner mass", "BOS, no partner", "$S$ (nats)"]
    return tabular("rrrrrr", header, rows)


def table_rank_ablation(results: Results) -> str:
    """Mean self-rank over the vocabulary for every (k, scale) cell, with the in-context self mass."""
    cells = results.get("svd_rank_ablation", "results.cells")
    ks = sorted({c["k"] for c in cells})
    scales = sorted({c["scale"] for c in cells}, reverse=True)
    rows = [[format_value(k, "d"), *(f"{format_value(grid_cell(cells, k, s)['mean_rank'], '.1f')} "
                                     f"({format_value(grid_cell(cells, k, s)['self_mass'], '.2f')})" for s in scales)]
            for k in ks]
    return tabular("r" + "r" * len(scales), ["$k$", *(f"scale {format_value(s, 'g')}" for s in scales)], rows)


def table_gradient_steering(results: Results) -> str:
    """Self, partner and BOS mass before and after each edit of W_Q, W_K (gradient and closed form)."""
    metrics = results.get("gradient_steering", "results.metrics")
    runs = results.get("gradient_steering", "results.runs")
    rows = []
    for name, m in metrics.items():
        if name.startswith("trace"):
            label = rf"closed form, $\eta = {format_value(runs[name]['eta'], '.2f')}$"
        else:
            label = {"before": "unedited", "suppress": "gradient, suppress", "restore": "gradient, restore"}.get(
                name, latex_escape(name))
        rows.append([label, *(format_value(m[k], ".3f") for k in ("self_mass", "partner_mass", "bos_mass_no_partner")),
                     format_value(m["surprisal"], ".2f")])
    return tabular("lrrrr", ["edit", "self mass", "partner mass", "BOS, no partner", "$S$ (nats)"], rows)


def table_communities(results: Results, n_members: int = 5) -> str:
    """Leiden communities: size, best-matching category, purity and the first members."""
    rows = []
    for c in results.get("clustering", "results.communities"):
        rows.append([format_value(c["id"], "d"), format_value(c["size"], "d"), latex_escape(c.get("category") or MISSING),
                     format_value(c.get("purity"), ".2f"),
                     ", ".join(token_tex(t) for t in c["members"][:n_members])])
    column = r">{\raggedright\arraybackslash}p{0.5\linewidth}"
    return tabular("rrlr" + column, ["id", "size", "category", "purity", "first members"], rows)


def table_thresholds(results: Results) -> str:
    """The organism's acceptance thresholds (analysis.organism.THRESHOLDS) beside its measured values."""
    from analysis.organism import THRESHOLDS

    evals = [r for r in results.get("training_log", "log") if "eval" in r]
    first, last = evals[0], evals[-1]
    rows = []
    for key, (rule, bound) in THRESHOLDS.items():
        rule_tex = r"$\geq$" if rule == "at least" else r"$\leq$"
        rows.append([threshold_label(key), f"{rule_tex} {format_value(bound, '.1f')}",
                     format_value(first["eval"][key], ".2f"),
                     format_value(results.get("training_log", f"final_eval.{key}"), ".3f")])
    header = ["behaviour of the planted head", "threshold", f"step {first['step'] + 1}", "final"]
    return tabular("llrr", header, rows)


def table_provenance(results: Results, sources: Sequence[str]) -> str:
    """Hardware, commit and package versions recorded by the results files (every distinct value)."""
    recorded: dict[str, set[str]] = {}
    for source in sources:
        prov = results.get(source, "provenance")
        entries = {"platform": prov["hardware"]["platform"], "torch threads": prov["hardware"]["torch_threads"],
                   "accelerator": prov["hardware"]["cuda"] or "none (CPU only)",
                   "commit": short_commit(prov["git_commit"]), **prov["packages"]}
        for key, value in entries.items():
            recorded.setdefault(key, set()).add(str(value))
    rows = [[latex_escape(key), r"\texttt{" + latex_escape(", ".join(sorted(values))) + "}"]
            for key, values in recorded.items()]
    return tabular(r"l>{\raggedright\arraybackslash}p{0.7\linewidth}", ["recorded", "value"], rows)


def table_runs(results: Results, scripts: Sequence[str]) -> str:
    """Each script of the run: seed, wall time under make and its results file."""
    rows = []
    for script in scripts:
        seconds = results.run_seconds(script)
        seed = results.get(script, "provenance.seed")
        rows.append([rf"\texttt{{{latex_escape(script)}.py}}", format_value(seed, "d"),
                     format_value(seconds, ".1f")])
    return tabular("lrr", ["script", "seed", "wall time (s)"], rows)


def replication_rows() -> list[tuple[str, Value, Value]]:
    """(quantity, this run's value, the value reported for GPT-2 small) for the replication table."""
    rep = "reported"
    return [
        ("best previous-token head", Value("This", "scan_heads", "results.top_heads.previous_token.0", "head"),
         Value("Reported", rep, "baseline.previous_token_heads", "text", ", ".join)),
        ("best induction head", Value("This", "scan_heads", "results.top_heads.induction.0", "head"),
         Value("Reported", rep, "baseline.induction_heads", "text", ", ".join)),
        ("best duplicate-token head", Value("This", "scan_heads", "results.top_heads.duplicate.0", "head"),
         Value("Reported", rep, "baseline.duplicate_token_heads", "text", ", ".join)),
        ("semantic head (lowest $S$)", Value("This", "characterize_head", "results.survey.0", "head"),
         Value("Reported", rep, "semantic_head.head", "head")),
        ("$S$ of the semantic head (nats)", Value("This", "characterize_head", "results.survey.0.surprisal", ".2f"),
         Value("Reported", rep, "semantic_head.surprisal", "g")),
        ("$S$ of the runner-up (nats)", Value("This", "characterize_head", "results.survey.1.surprisal", ".2f"),
         Value("Reported", rep, "semantic_head.runners_up.0.surprisal", "g")),
        ("mass on valid partners", Value("This", "characterize_head", "results.survey.0.partner_mass", ".2f"),
         Value("Reported", rep, "semantic_head.partner_mass", "g")),
        ("mass on self and earlier copies", Value("This", "characterize_head", "results.survey.0.self_mass", ".2f"),
         Value("Reported", rep, "semantic_head.self_mass", "g")),
        ("BOS mass when no partner", Value("This", "characterize_head", "results.survey.0.bos_mass_no_partner", ".2f"),
         Value("Reported", rep, "semantic_head.bos_mass_no_partner", "g")),
        ("median $S$, unablated", Value("This", "component_ablation", "results.table", ".2f",
                                       lambda t: ablation_row(t, "mean", "baseline")["median"]),
         Value("Reported", rep, "ablation_medians.baseline", "g")),
        ("median $S$, token embedding mean-ablated", Value("This", "component_ablation", "results.table", ".2f",
                                                          lambda t: ablation_row(t, "mean", "token_embedding")["median"]),
         Value("Reported", rep, "ablation_medians.token_embedding", "g")),
        ("median $S$, positional embedding mean-ablated",
         Value("This", "component_ablation", "results.table", ".2f",
               lambda t: ablation_row(t, "mean", "positional_embedding")["median"]),
         Value("Reported", rep, "ablation_medians.positional_embedding", "g")),
        ("cosine from which mates beat self", Value("This", "cosine_attention_analysis", "results.beats_self_from_cosine", ".2f"),
         Value("Reported", rep, "cosine.zero_crossing", "g")),
        ("cosine of the peak preference", Value("This", "cosine_attention_analysis", "results.peak.cosine", ".2f"),
         Value("Reported", rep, "cosine.peak", "g")),
        ("mean self-rank, unedited", Value("This", "svd_rank_ablation", "results.cells", ".1f",
                                          lambda c: grid_cell(c, c[0]["k"], 1.0)["mean_rank"]),
         Value("Reported", rep, "rank_ablation.mean_self_rank_unedited", "range")),
        ("mean self-rank at the study's $k$ and scale", Value("This", "svd_rank_ablation", STUDY_CELL, ".1f", study_cell_rank),
         Value("Reported", rep, "rank_ablation.mean_self_rank_edited", "range")),
        ("Leiden communities", Value("This", "clustering", "results.n_communities", "d"),
         Value("Reported", rep, "clustering.communities", "d")),
    ]


def table_replication(results: Results) -> str:
    """This run's numbers beside the numbers reported for GPT-2 small."""
    rows = [[label, ours.latex(results), theirs.latex(results)] for label, ours, theirs in replication_rows()]
    column = r">{\raggedright\arraybackslash}p{%s\linewidth}"
    return tabular(column % 0.45 + column % 0.18 + column % 0.27, ["quantity", "this run", "reported, GPT-2 small"], rows)


# --- writing the generated files --------------------------------------------------------------------


def _run_macros(results: Results, scripts: Sequence[str]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Total wall time and number of the scripts that make timed (the others ran outside make)."""
    timed = [s for s in scripts if results.run_seconds(s) is not None]
    stamps = [(str(results.directory / RUNS_DIR / f"{s}.json"), "seconds") for s in timed]
    total = sum(results.run_seconds(s) for s in timed)
    return [("RunTotalMinutes", format_value(total / 60, ".1f"), stamps),
            ("RunScripts", format_value(len(timed), "d"), stamps)]


def tables(results: Results, scripts: Sequence[str]) -> dict[str, str]:
    """Every generated table, by name (written as tab_<name>.tex)."""
    return {
        "scan": table_scan(results),
        "token_circuits": table_token_circuits(results),
        "survey": table_survey(results),
        "ablation": table_ablation(results),
        "eigen_steering": table_eigen_steering(results),
        "rank_ablation": table_rank_ablation(results),
        "gradient_steering": table_gradient_steering(results),
        "communities": table_communities(results),
        "replication": table_replication(results),
        "thresholds": table_thresholds(results),
        "provenance": table_provenance(results, scripts),
        "runs": table_runs(results, scripts),
    }


def generate(results: Results, out_dir: Path | str, figures_dir: Path | str, scripts: Sequence[str],
             paper_dir: Path | str = PAPER_DIR) -> dict[str, dict]:
    """Write macros.tex, tab_*.tex and manifest.json into `out_dir`; returns the manifest.

    The manifest maps every macro to the (file, entry) pairs it was computed from. `figures_dir`
    becomes `\\FigureDir`, relative to `paper_dir` (where LaTeX runs) when possible.
    """
    out_dir = Path(out_dir)
    macros = [(v.name, v.latex(results), [(str(results.path(src)), path) for src, path in v.entries]) for v in spec()]
    macros += _run_macros(results, scripts)
    figures = Path(figures_dir).resolve()
    try:
        figures_tex = os.path.relpath(figures, Path(paper_dir).resolve())
    except ValueError:  # on another drive (Windows)
        figures_tex = str(figures)
    macros.append(("FigureDir", figures_tex.replace(os.sep, "/") + "/", [(str(figures), "")]))

    lines = ["% Generated by scripts/make_paper_inputs.py from the results JSON; do not edit.",
             "% Each macro's comment names the file(s) and entries it came from."]
    for name, latex, origin in macros:
        where = " + ".join(f"{Path(file).name}: {path}" if path else file for file, path in origin)
        lines.append(rf"\newcommand{{\{name}}}{{{latex}}}% {where}")
    model = results.get("scan_heads", "provenance.model.name")
    lines += [r"\newif\ifOrganism", r"\Organismtrue" if model == "organism" else r"\Organismfalse"]
    manifest = {name: {"latex": latex, "entries": origin} for name, latex, origin in macros}
    manifest["ifOrganism"] = {"latex": str(model == "organism"),
                              "entries": [(str(results.path("scan_heads")), "provenance.model.name")]}

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in tables(results, scripts).items():
        write_text_atomic(out_dir / f"tab_{name}.tex", text)
    write_json_atomic(out_dir / "manifest.json", manifest)
    write_text_atomic(out_dir / "macros.tex", "\n".join(lines) + "\n")  # last: make's target
    return manifest


# --- building and checking the PDF --------------------------------------------------------------

OVERFULL_TOLERANCE_PT = 1.0  # overfull boxes up to this much are invisible in print
LATEXMK = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error"]


def log_problems(log: str, tolerance_pt: float = OVERFULL_TOLERANCE_PT) -> list[str]:
    """Undefined references, citations or macros, missing files and overfull boxes in a LaTeX log."""
    patterns = {
        "undefined reference": r"LaTeX Warning: Reference `([^']+)' on page",
        "undefined citation": r"Warning: Citation `([^']+)' on page",
        "undefined macro": r"! Undefined control sequence\.\s*\n.*?(\\[A-Za-z@]+)",
        "missing file": r"LaTeX Warning: File `([^']+)' not found",
        "unstable labels": r"(Label\(s\) may have changed)",
        "missing character": r"Missing character: There is no (\S+)",
    }
    problems = []
    for what, pattern in patterns.items():
        problems += [f"{what}: {m}" for m in sorted(set(re.findall(pattern, log)))]
    for kind, amount in re.findall(r"Overfull \\([hv]box) \((\d+(?:\.\d+)?)pt too", log):
        if float(amount) > tolerance_pt:
            problems.append(f"overfull \\{kind} by {amount}pt")
    return problems


def build_pdf(generated: Path | str, build_dir: Path | str, paper_dir: Path | str = PAPER_DIR) -> tuple[Path, list[str]]:
    """latexmk on main.tex with `generated` on TeX's input path; (the PDF, the problems in its log).

    A LaTeX error raises `UsageError` with the log's error lines.
    """
    if shutil.which("latexmk") is None:
        raise UsageError(
            "latexmk is not installed, so the paper cannot be built. On Debian or Ubuntu: apt-get install "
            "latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended texlive-science "
            "(README, Reproducing the paper)."
        )
    build_dir = Path(build_dir).resolve()
    env = {**os.environ, "TEXINPUTS": f"{Path(generated).resolve()}{os.pathsep}"}  # trailing separator: TeX's own path too
    done = subprocess.run([*LATEXMK, f"-outdir={build_dir}", "main.tex"], cwd=paper_dir, env=env,
                          capture_output=True, text=True)
    log_path = build_dir / "main.log"
    log = log_path.read_text(errors="replace") if log_path.exists() else done.stdout + done.stderr
    if done.returncode != 0:
        errors = [line for line in log.splitlines() if line.startswith("!") or ":error:" in line or ".tex:" in line]
        raise UsageError(f"LaTeX failed on {Path(paper_dir) / 'main.tex'} (log: {log_path}): "
                         + " | ".join(errors[:5] or log.splitlines()[-5:]))
    return build_dir / "main.pdf", log_problems(log)


# --- a trimmed copy of the results, for the paper's tests ------------------------------------------


def trimmed_copy(results: Results, dest: Path | str, scripts: Sequence[str]) -> list[Path]:
    """Write to `dest` (a results/<model>/ to be) only the entries the paper read, and make's run stamps.

    A path through a list keeps the whole list, so indices stay valid.
    """
    kept: dict[str, dict] = {}
    for source, path in sorted(results.read):
        if source in results.fixed:
            continue
        keys = path.split(".")
        cut = next((i for i, k in enumerate(keys) if re.fullmatch(r"-?\d+", k)), len(keys))
        keep = keys[:max(cut, 1)]
        node, src = kept.setdefault(source, {}), results.load(source)
        for key in keep[:-1]:
            src = src[key]
            node = node.setdefault(key, {})
        node[keep[-1]] = copy.deepcopy(src[keep[-1]])
    dest = Path(dest)
    written = [write_json_atomic(dest / f"{source}.json", data) for source, data in kept.items()]
    for script in scripts:
        seconds = results.run_seconds(script)
        if seconds is not None:
            written.append(write_json_atomic(dest / RUNS_DIR / f"{script}.json", {"seconds": seconds}))
    return written
