"""The atlas on disk: one folder per model, complete or absent, and the combined table built from the folders.

    <out>/models/<model id>/profile.json   the model's profile (`atlas.profile_heads`) with provenance
    <out>/models/<model id>/heads.csv      its heads as a flat table (`table_row`)
    <out>/models/<model id>/display.json   every head's pattern on one category prompt (for the page)
    <out>/atlas.json, <out>/atlas.csv      every head of every model, ranked across models (`combine`)

A model's folder is filled in a staging folder and swapped in whole (`infra.atomic.staged_directory`), so a
killed job leaves its model absent, and a rerun skips every model whose folder exists (`run_model_job`).
`run_model_job` is the one job of the engine (`infra.jobs.run_jobs`): a module-level function of plain values.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from analysis import atlas, io, prompts
from analysis.errors import UsageError
from analysis.ids import model_id
from analysis.infra.atomic import staged_directory
from analysis.models import load_model

PROFILE, HEADS_CSV, DISPLAY = "profile.json", "heads.csv", "display.json"


@dataclass(frozen=True)
class ModelJob:
    """One model of the atlas: its --model name, the output root, device, seed, category set, torch threads (None:
    torch's default), measurement settings, and whether to profile it again when its folder exists (`redo`)."""

    model: str
    out: Path
    device: str = "cpu"
    seed: int = 0
    categories: str = "study"
    threads: int | None = None
    settings: atlas.AtlasSettings = field(default_factory=atlas.AtlasSettings)
    redo: bool = False

    @property
    def folder(self) -> Path:
        return model_folder(self.out, self.model)


def model_folder(out: Path | str, model: str) -> Path:
    """`<out>/models/<model id>/` (`ids.model_id`: a directory model's id carries a hash of its path)."""
    return Path(out) / "models" / model_id(model)


def is_finished(out: Path | str, model: str) -> bool:
    """Whether `model`'s folder exists: it is only ever there complete."""
    return (model_folder(out, model) / PROFILE).is_file()


def run_model_job(job: ModelJob) -> str:
    """Profile `job.model` and write its folder in one step, unless it is already there (and not `job.redo`):
    "done" or "skipped". With `redo` the old folder stays until the new one replaces it whole."""
    if is_finished(job.out, job.model) and not job.redo:
        return "skipped"
    started = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    model = load_model(job.model, job.device)
    categories = prompts.CATEGORY_SETS[job.categories]
    profile = atlas.profile_heads(model, categories, job.settings, job.seed, progress=job.threads is None)
    cfg = model.cfg
    record = {
        "model": {"name": job.model, "id": model_id(job.model), "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                  "d_model": cfg.d_model, "d_head": cfg.d_head, "architecture": architecture_text(cfg),
                  "architecture_config": architecture(cfg)},
        "categories": {"set": job.categories, "names": list(categories)},
        "settings": job_settings(job), "rules": atlas.KIND_RULES, "ranking": atlas.RANKING,
        "survey_seeds": profile["survey_seeds"], "shared_prompts": profile["shared_prompts"],
        "position_treatment": profile["position_treatment"],
        "heads": profile["heads"],
        "job": {"process": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds")},
    }
    arguments = {k: v for k, v in asdict(job).items() if k not in ("settings", "redo")}
    provenance = io.Provenance(model.analysis_info, arguments, job.seed).record()
    with staged_directory(job.folder) as folder:
        (folder / PROFILE).write_text(io.json_text({"provenance": provenance, "results": record}))
        rows = [table_row(job.model, name, head) for name, head in profile["heads"].items()]
        (folder / HEADS_CSV).write_text(csv_text(rows))
        (folder / DISPLAY).write_text(json.dumps(profile["display"], separators=(",", ":")))
    return "done"


def architecture(cfg) -> dict:
    """What a weight-space analysis must know of a model's architecture, from its config (never its name)."""
    kv = cfg.n_key_value_heads or cfg.n_heads
    return {"positions": cfg.positional_embedding_type,
            "rotary_dim": cfg.rotary_dim if cfg.positional_embedding_type == "rotary" else None,
            "normalization": cfg.normalization_type, "key_value_heads": kv, "query_heads": cfg.n_heads,
            "gated_mlp": bool(cfg.gated_mlp), "parallel_attn_mlp": bool(cfg.parallel_attn_mlp),
            "attn_only": bool(cfg.attn_only)}


def architecture_text(cfg) -> str:
    """`architecture` in words, e.g. "RMSNorm, rotary (32 of 32 dims), 2 key/value heads for 4, gated MLP"."""
    a = architecture(cfg)
    norm = {"LN": "LayerNorm", "LNPre": "LayerNorm (folded)", "RMS": "RMSNorm", "RMSPre": "RMSNorm (folded)"}
    positions = (f"rotary ({a['rotary_dim']} of {cfg.d_head} dims)" if a["positions"] == "rotary"
                 else "learned positions" if a["positions"] == "standard" else f"{a['positions']} positions")
    parts = [norm.get(a["normalization"], str(a["normalization"])), positions]
    if a["key_value_heads"] != a["query_heads"]:
        parts.append(f"{a['key_value_heads']} key/value heads for {a['query_heads']}")
    parts += ["gated MLP"] * a["gated_mlp"] + ["parallel attention and MLP"] * a["parallel_attn_mlp"]
    return ", ".join(parts + ["attention only"] * a["attn_only"])


# --- reading the folders back: the combined table --------------------------------------------------


def read_profile(out: Path | str, model: str) -> dict:
    """The "results" of `model`'s profile.json (a `UsageError` naming it when damaged)."""
    return io.read_json(model_folder(out, model) / PROFILE, f"scripts/atlas.py --models {model}")["results"]


def job_settings(job: ModelJob) -> dict:
    """What a model's values depend on besides the model: the measurement settings, the seed and the categories.
    Profiles combined in one table must agree on it (`check_same_settings`)."""
    return json.loads(json.dumps({**asdict(job.settings), "seed": job.seed, "categories": job.categories}))


def check_same_settings(job: ModelJob) -> None:
    """A `UsageError` when `job.model`'s finished folder was profiled with other settings than `job` asks for."""
    recorded, wanted = read_profile(job.out, job.model)["settings"], job_settings(job)
    if recorded != wanted:
        differ = sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))
        raise UsageError(f"{job.folder} was profiled with other settings ({', '.join(differ)}) than this run asks "
                         "for, and one table must compare heads measured alike. Give the same settings, --redo "
                         "to profile it again, or another --out.")


def read_display(out: Path | str, model: str) -> dict:
    return io.read_json(model_folder(out, model) / DISPLAY, f"scripts/atlas.py --models {model}")


def combine(profiles: Mapping[str, Mapping]) -> dict:
    """{"models": {model id: its model record}, "heads": {"<model id>/<head>": record with "model", "head_name" and
    "rank" across every model (`atlas.ranked`)}, "rules", "ranking"}: the combined table, from the profiles only."""
    heads = {f"{p['model']['id']}/{name}": {"model": p["model"]["id"], "head_name": name, **record}
             for p in profiles.values() for name, record in p["heads"].items()}
    for key, rank in atlas.ranked(heads).items():
        heads[key]["rank"] = rank
    return {"models": {p["model"]["id"]: {**p["model"], "folder": f"models/{p['model']['id']}",
                                          "categories": p["categories"]} for p in profiles.values()},
            "heads": dict(sorted(heads.items(), key=lambda item: item[1]["rank"])),
            "rules": atlas.KIND_RULES, "ranking": atlas.RANKING}


def _verdict_columns(prefix: str, verdict: Mapping) -> dict:
    return {prefix: verdict.get("value"), f"{prefix}_low": verdict.get("low"), f"{prefix}_high": verdict.get("high"),
            f"{prefix}_holds": verdict["holds"]}


def table_row(model: str, name: str, head: Mapping) -> dict:
    """One head as a flat row (the CSV's columns)."""
    row = {"rank": head.get("rank"), "model": model, "head": name, "layer": head["layer"], "head_index": head["head"],
           "depth": head["depth"], "kind": head["kind"]}
    for value in ("S", *atlas.MASSES):
        row |= {value: head[value]["value"], f"{value}_low": head[value]["low"], f"{value}_high": head[value]["high"]}
    row |= {"previous_token": head["previous_token"],
            **{f"induction_{n}": s for n, s in head["induction"].items()},
            **{f"duplicate_{n}": s for n, s in head["duplicate"].items()}}
    for reading in atlas.READINGS:
        for prop, verdict in head[reading].items():
            row |= _verdict_columns(f"{reading}_{prop}", verdict)
    row |= {"selection_S": head["selection"]["S"]}
    row |= {f"{key}_in_model": value for key, value in head["within_model"].items()}
    return row


def csv_text(rows: Sequence[Mapping]) -> str:
    """CSV of `rows` (the first row's keys as columns; NaN and None as empty cells)."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and v != v) else v for k, v in row.items()})
    return buffer.getvalue()
