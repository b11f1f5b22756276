"""Bad input, as a careful new user would give it, against every script: a clear error and nothing written.

Each case runs a script's `main` through `cli.run` in this process (as `conftest.run_main` does)
and asserts exit status 2, one paragraph on stderr starting with "error:" that names what to
change, no traceback, and no new or changed file under --out. The cases are those of the
issue on bad input, plus, for every script, a bad seed, an unusable device and a zero for every
count flag, found by reading the script's parser. Validation happens before any model is loaded,
so most cases cost only argument parsing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis import cli
from analysis.organism.files import ORGANISM_DIR

from conftest import REPO, run_script

pytestmark = pytest.mark.e2e  # every test here runs a script's main

SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("*.py"))
_MODULES: dict[str, object] = {}


def script(name: str):
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


@dataclass
class Case:
    id: str
    script: str
    argv: list[str]
    expect: str  # a piece of the message: what to change, or what is wrong
    out: str | None = None  # --out, if not the prepared folder ("{tmp}" and {materials} placeholders)
    prepare: str | None = None  # extra old files under --out: "paper_results" (truncated), "file_in_way:<path>"


LONG = " red" * 211  # 212 tokens with BOS; the organism's context is 128
UNKNOWN = "The xylophone quantum"
CLEAN = "The old man saw a box on the hill." + " the" * 130 + " box"
CORRUPTED = "The old man saw a box on the hill." + " the" * 130 + " tree"


def issue_cases() -> list[Case]:
    """Every case listed under "Why" in the issue on bad input."""
    c = [
        # 1. silently wrong or empty results
        Case("long-prompt", "logit_lens", ["--prompt", LONG], "--truncate"),
        Case("long-patching-pair", "activation_patching",
             ["--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", " box", "--wrong", " tree"], "context holds 128"),
        *[Case(f"unknown-words-{s}", s, [flag, UNKNOWN], "' xylophone', ' quantum'")
          for s, flag in (("logit_lens", "--prompt"), ("manual_attention", "--prompt"),
                          ("visualize_attention", "--prompt"), ("scan_heads", "--sentence"))],
        Case("binary-corpus", "token_freq", ["--corpus", "{binary}"], "binary"),
        Case("blank-corpus", "token_freq", ["--corpus", "{blank}"], "--max-unknown-share"),
        Case("english-corpus-on-organism", "token_freq", ["--corpus", "{english}"], "unknown"),
        *[Case(f"empty-prompt-{s}", s, [flag, ""], "no token besides BOS")
          for s, flag in (("logit_lens", "--prompt"), ("manual_attention", "--prompt"),
                          ("visualize_attention", "--prompt"), ("scan_heads", "--sentence"),
                          ("scan_heads", "--repeated-sentence"))],
        Case("empty-prompt-activation_patching", "activation_patching",
             ["--clean", "", "--corrupted", "", "--answer", " box", "--wrong", " tree"], "no token besides BOS"),
        Case("length-1", "attention_stats", ["--length", "1"], "--length"),
        # 2. damage to files
        Case("overwrite-shipped-checkpoint", "train_organism", ["--out", str(ORGANISM_DIR)], "--replace-shipped",
             out="keep"),
        Case("checkpoint-over-other-files", "train_organism", ["--out", "{tmp}"], "not a checkpoint", out="keep"),
        # 3. tracebacks: damaged model directories
        *[Case(f"model-dir-{name}", "logit_lens", ["--model", "{model_" + name + "}"], expect)
          for name, expect in MODEL_DAMAGE.items()],
        Case("model-dir-damaged-scan", "scan_heads", ["--model", "{model_weights_truncated}"], "model.safetensors"),
        # unwritable --out (tried before any work)
        Case("out-proc", "logit_lens", [], "Cannot write", out="/proc/foo"),
        Case("out-is-file", "logit_lens", [], "is a file", out="{tmp}/file"),
        Case("out-under-file", "logit_lens", [], "Cannot write", out="{tmp}/file/sub"),
        *[Case(f"out-{where.replace('/', '-')}-is-file", "logit_lens", [], expect, prepare=f"file_in_way:{where}")
          for where, expect in (("results", "Not a directory"), ("figures", "Not a directory"),
                                ("results/organism", "in the way"), ("figures/organism", "in the way"))],
        # word counts and repeat lengths beyond the context
        *[Case(f"n-words-{s}", s, ["--n-words", "500"], "--n-words")
          for s in ("component_ablation", "sae_features", "eigenvalue_rank_ablation", "eigenvalue_scaling",
                    "characterize_head", "gradient_steering")],
        Case("example-words", "characterize_head", ["--example-words", "500"], "--example-words"),
        Case("category-words", "scan_heads", ["--category-words", "500"], "--category-words"),
        Case("repeat-lengths-context", "scan_heads", ["--repeat-lengths", "50", "100"], "--repeat-lengths"),
        Case("repeat-length-context", "qk_ov_circuits", ["--repeat-length", "64"], "--repeat-length 63 or less"),
        Case("length-context-stats", "attention_stats", ["--length", "500"], "--length"),
        Case("length-context-manual", "manual_attention", ["--length", "500"], "--length"),
        # absurd counts: memory bounds, named flags
        *[Case(f"n-prompts-{s}", s, ["--n-prompts", "100000000"], "Lower --n-prompts")
          for s in ("attention_stats", "characterize_head", "component_ablation", "gradient_steering",
                    "qk_ov_circuits", "scan_heads", "sae_features", "eigenvalue_scaling",
                    "eigenvalue_rank_ablation")],
        Case("n-random", "manual_attention", ["--n-random", "100000000"], "Lower --n-random"),
        Case("category-prompts", "scan_heads", ["--category-prompts", "100000000"], "Lower --category-prompts"),
        Case("n-resamples", "characterize_head", ["--n-resamples", "1000000000"], "Lower --n-resamples"),
        Case("baseline-samples", "qk_ov_circuits", ["--baseline-samples", "1000000000"], "Lower --baseline-samples"),
        Case("corpus-sequences", "token_freq", ["--corpus-sequences", "100000000"], "Lower --corpus-sequences"),
        Case("train-batch-memory", "train_organism", ["--batch-size", "100000000", "--out", "{tmp}/ckpt"],
             "Lower --batch-size", out="keep"),
        Case("top-beyond-vocab", "logit_lens", ["--top", "100000"], "--top 183 or less"),
        Case("k-beyond-graph", "clustering", ["--k", "100000", "--layer", "1", "--head", "3"], "--k 180 or less"),
        # flags without validation
        *[Case(f"train-{flag[2:]}-0", "train_organism", [flag, "0", "--out", "{tmp}/ckpt"], flag, out="keep")
          for flag in ("--batch-size", "--threads", "--eval-every", "--steps")],
        Case("repeat-lengths-0", "scan_heads", ["--repeat-lengths", "0"], "--repeat-lengths"),
        Case("repeat-lengths-negative", "scan_heads", ["--repeat-lengths", "-3"], "--repeat-lengths"),
        # malformed input files
        Case("binary-text", "attention_stats", ["--text", "{binary}"], "binary"),
        Case("non-utf8-text", "attention_stats", ["--text", "{latin1}"], "UTF-8"),
        Case("text-line-unknown", "attention_stats", ["--text", "{unknown_lines}"], "line 2"),
        *[Case(f"freq-{kind}-{s}", s, [flag, "{csv_" + kind + "}"], "token_freq.py")
          for kind in ("garbage", "columns", "ids_beyond_vocab", "not_integers", "binary")
          for s, flag in (("token_circuit_tables", "--freq"), ("clustering", "--frequencies"),
                          ("cosine_attention_analysis", "--freq-csv"))],
        Case("truncated-results-json", "make_paper_inputs", ["--generated", "{tmp}/generated"], "damaged",
             prepare="paper_results"),
    ]
    return c


MODEL_DAMAGE = {  # model directory: what is wrong -> a piece of the message
    "config_corrupt": "not valid JSON", "config_empty": "not valid JSON", "config_list": "JSON list",
    "config_missing_keys": "lacks positive whole numbers", "config_bad_type": "n_layers",
    "config_unknown_key": "not a TransformerLens config", "config_missing": "holds no config.json",
    "weights_truncated": "cut short", "weights_empty": "cut short", "weights_missing": "is missing",
    "weights_mismatch": "does not match config.json", "tokenizer_corrupt": "tokenizer.json",
    "processing_corrupt": "weight_processing.json",
}


def generic_cases() -> list[Case]:
    """For every script: seeds outside [0, 2**32), a device torch cannot compute on, zero for each count flag."""
    cases = []
    for name in SCRIPTS:
        out = "keep" if name == "train_organism" else None
        extra = ["--out", "{tmp}/ckpt"] if name == "train_organism" else []
        cases += [Case(f"seed-negative-{name}", name, ["--seed", "-1", *extra], "--seed", out=out),
                  Case(f"seed-huge-{name}", name, ["--seed", "99999999999999999999999", *extra], "--seed", out=out),
                  Case(f"device-meta-{name}", name, ["--device", "meta", *extra], "--device 'meta'", out=out)]
        for action in script(name).build_parser()._actions:
            minimum = getattr(action.type, "minimum", None)
            if minimum is not None:
                flag = action.option_strings[-1]
                cases.append(Case(f"zero-{name}{flag}", name, [flag, str(minimum - 1), *extra], flag, out=out))
    return cases


CASES = issue_cases() + generic_cases()


# --- materials: damaged files, made once --------------------------------------------------------


@pytest.fixture(scope="session")
def materials(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_input_materials")
    made: dict[str, Path] = {}

    def model(name: str, damage) -> None:
        directory = root / f"model_{name}"
        shutil.copytree(ORGANISM_DIR, directory)
        damage(directory)
        made[f"model_{name}"] = directory

    def config_edit(change):
        def damage(d):
            config = json.loads((d / "config.json").read_text())
            change(config)
            (d / "config.json").write_text(json.dumps(config))
        return damage

    weights = (ORGANISM_DIR / "model.safetensors").read_bytes()
    model("config_corrupt", lambda d: (d / "config.json").write_bytes(b"{garbage,,"))
    model("config_empty", lambda d: (d / "config.json").write_text(""))
    model("config_list", lambda d: (d / "config.json").write_text("[1, 2]"))
    model("config_missing_keys", lambda d: (d / "config.json").write_text('{"n_layers": 2}'))
    model("config_bad_type", config_edit(lambda c: c.update(n_layers="two")))
    model("config_unknown_key", config_edit(lambda c: c.update(bogus=1)))
    model("config_missing", lambda d: (d / "config.json").unlink())
    model("weights_truncated", lambda d: (d / "model.safetensors").write_bytes(weights[: len(weights) // 2]))
    model("weights_empty", lambda d: (d / "model.safetensors").write_bytes(b""))
    model("weights_missing", lambda d: (d / "model.safetensors").unlink())
    model("weights_mismatch", config_edit(lambda c: c.update(d_mlp=256)))
    model("tokenizer_corrupt", lambda d: (d / "tokenizer.json").write_text('{"added_tokens": [], "model": {}}'))
    model("processing_corrupt", lambda d: (d / "weight_processing.json").write_text("[true]"))

    files = {
        "binary": bytes(range(256)) * 64,
        "latin1": "Le caf\xe9 est pr\xeat\n".encode("latin-1"),
        "blank": b"   \n \t \n      \n",
        "english": b"the quick brown fox jumps over the lazy dog\n" * 50,
        "unknown_lines": b"The cat sat on the mat.\nThe xylophone quantum\n",
        "csv_garbage": b'token,id,count,probability\n"unterminated,1,2\n',
        "csv_columns": b"word,frequency\nred,10\n",
        "csv_ids_beyond_vocab": b"token,id,count,probability\n red,5,10,0.5\n blue,99999,10,0.5\n",
        "csv_not_integers": b"token,id,count,probability\n red,five,10,0.5\n",
        "csv_binary": b"\x00\x01\x02" * 100,
    }
    for name, data in files.items():
        made[name] = root / name
        made[name].write_bytes(data)
    return {k: str(v) for k, v in made.items()}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root, with each file's hash: what "no new or changed file" compares."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def prepare_out(out: Path, prepare: str | None) -> None:
    """An output root holding an earlier run's files, which a refused run must leave exactly as they are."""
    (out / "results" / "organism").mkdir(parents=True)
    (out / "figures" / "organism").mkdir(parents=True)
    (out / "results" / "organism" / "scan_heads.json").write_text('{"results": "old"}')
    (out / "figures" / "organism" / "scan_heads.png").write_bytes(b"old figure")
    if prepare == "paper_results":  # every results file the paper reads, cut short
        for source in (REPO / "tests" / "fixtures" / "paper" / "organism").glob("*.json"):
            text = source.read_text()
            (out / "results" / "organism" / source.name).write_text(text[: len(text) // 2])
    elif prepare and prepare.startswith("file_in_way:"):
        where = out / prepare.removeprefix("file_in_way:")
        if where.is_dir():
            shutil.rmtree(where)
        where.write_text("a file where a folder should be")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case, materials, tmp_path, capsys):
    out = tmp_path / "out"
    prepare_out(out, case.prepare)
    (tmp_path / "file").write_text("a file, not a folder")
    fill = {**materials, "tmp": str(tmp_path)}
    argv = [a.format(**fill) if "{" in a else a for a in case.argv]
    if case.out != "keep":
        argv = ["--out", case.out.format(**fill) if case.out else str(out), *argv]
    watched = [tmp_path, ORGANISM_DIR.parent, REPO / "checkpoints"]
    before = [snapshot(p) for p in watched]
    module = script(case.script)

    with pytest.raises(SystemExit) as exit_:
        cli.run(module.main, module.build_parser(), argv)

    err = capsys.readouterr().err.rsplit("\r", 1)[-1].strip()  # a progress bar erased before the error stays out
    assert exit_.value.code == 2, err
    assert err.startswith("error:") and "\n\n" not in err and "Traceback" not in err, err
    assert case.expect in " ".join(err.split()), err
    assert [snapshot(p) for p in watched] == before  # nothing new or changed, under --out or anywhere near


def test_truncate_allows_a_long_prompt_and_the_results_record_it(tmp_path):
    module = script("logit_lens")
    cli.run(module.main, module.build_parser(), ["--out", str(tmp_path), "--prompt", LONG, "--truncate"])
    data = json.loads((tmp_path / "results" / "organism" / "logit_lens.json").read_text())
    cut = data["provenance"]["arguments"]["truncated"]["--prompt"]
    assert cut["tokens"] == 212 and cut["kept_tokens"] == 128 and cut["removed_text"] == " red" * 84
    assert len(data["results"]["tokens"]) == 128


def test_a_real_process_exits_2_with_one_paragraph(materials, tmp_path):
    for args in (["--seed", "-1"], ["--model", materials["model_weights_truncated"]]):
        result = run_script("scan_heads", "--out", str(tmp_path), *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().split("\n\n")) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_refuses_a_bad_seed_as_a_process(name, tmp_path):
    result = run_script(name, "--seed", "-1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: --seed") and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
