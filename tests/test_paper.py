"""The paper: numbers only from results files, a clean LaTeX build, and the PDF tracks the results.

The tests run the generator on a trimmed copy of real organism results (tests/fixtures/paper/
organism, refreshed with `scripts/make_paper_inputs.py --scripts $(DEMO_SCRIPTS) --trimmed-copy
tests/fixtures/paper/organism`) with placeholder figures, and build into a temporary directory. They need
latexmk and pdftotext: skipped locally when missing, failed under CI (CI=true).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis.errors import UsageError
from conftest import REPO, run_held_out, run_script
from writeup import spec, tables
from writeup.build import build_pdf, log_problems
from writeup.fixture import trimmed_copy
from writeup.format import MISSING, Words, format_value
from writeup.generate import generate
from writeup.results import PAPER_DIR, RUNS_DIR, Results, lookup, walk

FIXTURE = REPO / "tests" / "fixtures" / "paper" / "organism"  # laid out as results/organism/
MAIN_TEX = (PAPER_DIR / "main.tex").read_text()


def makefile_demo_scripts() -> list[str]:
    """DEMO_SCRIPTS as the Makefile assembles it (`:=` then `+=` lines)."""
    scripts = []
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"DEMO_SCRIPTS\s*[:+]=(.*)", line)
        if match:
            scripts += match.group(1).split()
    return scripts


def fixture_scripts() -> list[str]:
    return sorted(p.stem for p in FIXTURE.glob("*.json"))


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    """An output root holding the fixture as results/organism/."""
    root = tmp_path_factory.mktemp("fixture")
    shutil.copytree(FIXTURE, root / "results" / "organism")
    return root


def strip_comments(tex: str) -> str:
    return re.sub(r"(?<!\\)%.*", "", tex)


# --- the spec and the generator, without TeX ---------------------------------------------------


def test_lookup_follows_dicts_and_lists():
    data = {"a": {"b": [{"c": 1.5}, {"c": 2.5}]}}
    assert lookup(data, "a.b.1.c") == 2.5
    assert lookup(data, "a.b.-1.c") == 2.5
    for missing in ("a.x", "a.b.2.c", "a.b.c"):
        with pytest.raises(KeyError):
            lookup(data, missing)


def test_lookup_reads_keys_named_by_numbers_and_with_dots():
    factors = {"factors": {"1": {"m": 1.0}, "0": {"m": 0.0}, "0.5": {"m": 0.5}, "-1": {"m": -1.0}}}
    assert [lookup(factors, f"factors.{f}.m") for f in ("1", "0", "0.5", "-1")] == [1.0, 0.0, 0.5, -1.0]
    assert walk(factors, "factors.0.5.m") == ["factors", "0.5", "m"]
    assert walk({"a": [{"k=8,scale=0.5": 3}]}, "a.-1.k=8,scale=0.5") == ["a", -1, "k=8,scale=0.5"]


def test_format_value_exact():
    assert format_value(0.12345, ".3f") == r"\num{0.123}"
    assert format_value(3000, "d") == r"\num{3000}"
    assert format_value(0.4, "percent") == r"\SI{40}{\percent}"
    assert format_value({"layer": 1, "head": 5}, "head") == "L1H5"
    assert format_value([0, 2], "head") == "L0H2"
    assert format_value("x86_64 & 50%", "text") == r"x86\_64 \& 50\%"
    assert format_value(None, ".3f") == MISSING
    assert format_value([17000, 20000], "range") == r"\numrange{17000}{20000}"
    assert format_value(" Monday", "word") == "Monday"
    assert format_value([" a", " b_c", " d"], "list:2") == r"a, b\_c"
    assert format_value(["L5H1", "L5H5"], "list") == "L5H1, L5H5"
    assert format_value({"x": 1, "y": 2}, "count") == r"\num{2}"
    assert format_value(150, "minutes") == r"\num{2.5}"
    assert format_value("0123456789abcdef+dirty", "commit") == "0123456789ab+dirty"
    assert [format_value(v, Words("is", "is not")) for v in (True, False)] == ["is", "is not"]


def test_derived_values_exact():
    top = {"previous_token": [{"layer": 0, "head": 2}], "induction": [{"layer": 1, "head": 0}]}
    planted = {"previous_token": [0, 2], "induction": [1, 1], "semantic": [1, 3]}
    assert spec.planted_found_first(top, planted) == 1  # induction misranked, semantic not scanned
    assert spec.total_members({"a": [1, 2], "b": [3]}) == 3
    medians = {"cite": "x", "baseline": 0.5, "positional_embedding": 1.0, "token_embedding": 2.5}
    assert spec.reported_damage_share(medians) == 0.25


def test_missing_results_say_what_to_run(tmp_path):
    results = Results(tmp_path, "organism")
    with pytest.raises(UsageError, match="make figures MODEL=organism"):
        results.get("scan_heads", "results")
    target = tmp_path / "results" / "organism" / "scan_heads.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"results": {"a": 1}}))
    with pytest.raises(UsageError, match="no entry 'results.b'"):
        results.get("scan_heads", "results.b")


def test_spec_names_are_unique_and_all_used_in_main_tex():
    names = [m.name for m in spec.macros()]
    assert len(names) == len(set(names))
    # A dict literal keeps the last of two equal keys silently: look for them in the source.
    for node in ast.walk(ast.parse(Path(spec.__file__).read_text())):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            assert len(keys) == len(set(keys)), f"a key declared twice in writeup/spec.py: {keys}"
    used = set(re.findall(r"\\([A-Za-z]+)", strip_comments(MAIN_TEX)))
    used |= {name for _, ours, theirs in tables.REPLICATION_ROWS for name in (ours, theirs)}  # tab_replication
    used |= {name for label, _, _ in tables.REPLICATION_ROWS for name in re.findall(r"\\([A-Za-z]+)", label)}
    unused = [n for n in names if n not in used]
    assert not unused, f"macros generated but never printed: {unused}"


def test_replication_table_prints_declared_macros_only():
    names = {m.name for m in spec.macros()}
    listed = [name for _, ours, theirs in tables.REPLICATION_ROWS for name in (ours, theirs)]
    in_labels = {name for label, _, _ in tables.REPLICATION_ROWS for name in re.findall(r"\\([A-Za-z]+)", label)}
    assert in_labels <= names, in_labels - names  # the labels print macros too
    assert set(listed) <= names, set(listed) - names
    theirs = {m.name: m for m in spec.macros() if m.name in {t for _, _, t in tables.REPLICATION_ROWS}}
    assert all(source == "reported" for m in theirs.values() for source, _ in m.entries)  # citations, never outputs


def test_replication_table_marks_exactly_the_values_derived_from_the_studys_saved_data(fixture_root):
    results = Results(fixture_root, "organism")
    derived = {theirs for _, _, theirs in tables.REPLICATION_ROWS if tables.derived_note(results, theirs)}
    assert derived == {"RepSemPartner", "RepSemSelfOnly", "RepSemCopies", "RepSemSelfPlusCopies", "RepSemBos"}
    table = tables.table_replication(results)
    marked = [line for line in table.splitlines() if line.endswith(tables.DERIVED_MARK + r" \\")]
    assert len(marked) == 5 and all(r"\RepSemS{}" not in line for line in marked)
    assert "not reported in its text" in tables.derived_note(results, "RepSemBos")
    assert tables.derived_note(results, "RepSemS") is None and tables.derived_note(results, "SurveyS") is None


def test_names_agree_with_the_reported_values():
    """The study's rank-ablation cell and its ablation conditions are named as the scripts name them."""
    reported = json.loads((PAPER_DIR / "reported_gpt2.json").read_text())
    cell = reported["rank_ablation"]
    assert spec.STUDY_CELL == f"k={cell['k']},scale={float(cell['scale']):g}"
    assert set(reported["ablation_medians"]) - {"cite"} <= set(spec.ABLATION_CONDITIONS)


def test_main_tex_types_no_number():
    """Digits in the prose would be hand-typed results: only math, keys and names may hold them."""
    text = strip_comments(MAIN_TEX)
    text = text[text.index(r"\begin{document}"):]
    text = re.sub(r"\\begin\{(equation|align)\*?\}.*?\\end\{\1\*?\}", " ", text, flags=re.S)
    text = re.sub(r"\$[^$]*\$", " ", text)
    text = re.sub(r"\\(label|ref|cref|Cref|cite|citep|citet|input|includegraphics|bibliography\w*|code)"
                  r"(\[[^\]]*\])?\{[^}]*\}", " ", text)
    for allowed in ("GPT-2", "WikiText-103", r"95\,\%"):  # names, and the level of every CI (analysis.scores)
        text = text.replace(allowed, "")
    assert not re.findall(r"\d", text), re.findall(r".{30}\d.{30}", text)


def test_generated_macros_come_from_files_that_exist(fixture_root, tmp_path):
    results = Results(fixture_root, "organism")
    manifest = generate(results, tmp_path, tmp_path, fixture_scripts())
    macros = (tmp_path / "macros.tex").read_text()
    defined = re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", macros)
    assert defined and set(defined) <= set(manifest)
    for name, entry in manifest.items():
        assert entry["entries"], name
        for file, _ in entry["entries"]:
            assert Path(file).exists(), f"\\{name} comes from {file}, which does not exist"
    for table in re.findall(r"\\input\{(tab_\w+)\}", MAIN_TEX):
        assert (tmp_path / f"{table}.tex").exists(), table


def test_trimmed_copy_keeps_only_what_the_paper_reads(fixture_root, tmp_path):
    results = Results(fixture_root, "organism")
    generate(results, tmp_path / "gen", tmp_path, fixture_scripts())
    trimmed_copy(results, tmp_path / "copy" / "results" / "organism", fixture_scripts())
    again = Results(tmp_path / "copy", "organism")
    generate(again, tmp_path / "gen2", tmp_path, fixture_scripts())
    assert (tmp_path / "gen" / "macros.tex").read_text() == (tmp_path / "gen2" / "macros.tex").read_text()
    ablation = json.loads((tmp_path / "copy" / "results" / "organism" / "component_ablation.json").read_text())
    assert "table" in ablation["results"] and "per_prompt" not in ablation["results"]  # read / never read


def test_log_problems_exact():
    log = "\n".join([
        "Overfull \\hbox (12.5pt too wide) in paragraph at lines 3--4",
        "Overfull \\hbox (0.4pt too wide) in paragraph at lines 5--6",
        "LaTeX Warning: Reference `sec:x' on page 3 undefined on input line 7.",
        "Package natbib Warning: Citation `nobody2020' on page 1 undefined on input line 9.",
        "LaTeX Warning: File `missing.pdf' not found on input line 11.",
        "LaTeX Warning: Float too large for page by 443.4pt on input line 1212.",
    ])
    assert log_problems(log) == [
        "undefined reference: sec:x", "undefined citation: nobody2020", "missing file: missing.pdf",
        "float too large for its page: 443.4pt", "overfull \\hbox by 12.5pt",
    ]
    assert log_problems("Output written on main.pdf (3 pages).") == []


@pytest.mark.e2e
def test_generator_script_reports_missing_results(tmp_path):
    result = run_script("make_paper_inputs", "--out", str(tmp_path), "--generated", str(tmp_path / "g"))
    assert result.returncode == 2
    assert "make figures MODEL=organism" in result.stderr and "Traceback" not in result.stderr


# --- building the PDF ------------------------------------------------------------------------------

TOOLS = ("latexmk", "pdftotext")


@pytest.fixture(scope="module")
def tex():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        message = (f"{', '.join(missing)} not installed: apt-get install latexmk texlive-latex-recommended "
                   "texlive-latex-extra texlive-fonts-recommended texlive-science poppler-utils")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


def included_figures(manifest: dict) -> list[str]:
    """File names of every figure main.tex includes, with the generated macros in them expanded."""
    names = re.findall(r"\\includegraphics(?:\[[^\]]*\])?\{\\FigureDir\s*([^}]+)\}", MAIN_TEX)
    return [re.sub(r"\\([A-Za-z]+)", lambda m: manifest[m.group(1)]["latex"], name) for name in names]


def placeholder_figures(directory: Path, manifest: dict) -> None:
    """A small PDF for every figure main.tex includes (the build test checks text, not plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    for name in included_figures(manifest):
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, name, ha="center")
        fig.savefig(directory / name)
        plt.close(fig)


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tex):
    """A copy of the fixture results (both model names) with placeholder figures."""
    root = tmp_path_factory.mktemp("paper")
    shutil.copytree(FIXTURE, root / "results" / "organism")
    manifest = generate(Results(root, "organism"), root / "names", root, fixture_scripts())
    placeholder_figures(root / "figures" / "organism", manifest)
    return root


def build(root: Path, model: str, name: str) -> tuple[str, list[str], dict]:
    results = Results(root, model)
    manifest = generate(results, root / name / "generated", root / "figures" / model, fixture_scripts())
    pdf, problems = build_pdf(root / name / "generated", root / name / "build")
    return pdf_text(pdf), problems, manifest


@pytest.mark.e2e
def test_paper_builds_cleanly_and_prints_the_results(workspace):
    text, problems, manifest = build(workspace, "organism", "organism")
    assert problems == []
    assert "organism" in text.split("Abstract")[0]  # the title page names the model
    flat = " ".join(text.split())
    for name in ("ScanPrevScore", "ScanIndScore", "SurveyS", "SurveyPartner"):
        number = re.fullmatch(r"\\num\{(.+)\}", manifest[name]["latex"]).group(1)
        assert number in flat, f"\\{name} = {number} missing from the PDF"


@pytest.mark.e2e
def test_a_changed_result_changes_the_pdf(workspace):
    path = workspace / "results" / "organism" / "scan_heads.json"
    original = path.read_text()
    data = json.loads(original)
    data["results"]["top_heads"]["induction"][0]["score"] = 0.4321
    path.write_text(json.dumps(data))
    try:
        text, problems, manifest = build(workspace, "organism", "changed")
    finally:
        path.write_text(original)
    assert problems == []
    assert manifest["ScanIndScore"]["latex"] == r"\num{0.432}"
    assert "0.432" in text


def renamed_copy(workspace: Path, model: str, planted: bool = False) -> Path:
    """The fixture's results and figures as another model's (its name in every provenance), one without a record
    of planted heads unless `planted`; its results folder."""
    source, target = workspace / "results" / "organism", workspace / "results" / model
    target.mkdir(parents=True, exist_ok=True)
    for file in source.glob("*.json"):
        data = json.loads(file.read_text())
        data["provenance"]["model"]["name"] = model
        if not planted:
            data["provenance"]["model"]["ground_truth"] = None
        (target / file.name).write_text(json.dumps(data))
    shutil.copytree(source / RUNS_DIR, target / RUNS_DIR, dirs_exist_ok=True)
    shutil.copytree(workspace / "figures" / "organism", workspace / "figures" / model, dirs_exist_ok=True)
    return target


@pytest.mark.e2e
def test_paper_builds_for_gpt2_small_names(workspace):
    """The same sources with another model's results: only the model (and its numbers) differ."""
    renamed_copy(workspace, "gpt2-small")
    text, problems, _ = build(workspace, "gpt2-small", "gpt2")
    assert problems == []
    assert "gpt2-small" in text.split("Abstract")[0]
    flat = " ".join(text.split())
    assert "This build reports gpt2-small" in flat  # the model-dependent passages switch
    assert "This build reports the model organism" not in flat


@pytest.mark.e2e
def test_organism_branch_follows_the_ground_truth_not_the_name(workspace):
    """A model that comes with planted heads gets the organism's passages whatever it is called, and one without
    gets the other branch even when it is called "organism"."""
    renamed_copy(workspace, "my-organism", planted=True)
    text, problems, _ = build(workspace, "my-organism", "mine")
    flat = " ".join(text.split())
    assert problems == [] and "This build reports the model organism" in flat
    originals = {file: file.read_text() for file in (workspace / "results" / "organism").glob("*.json")}
    try:
        for file, original in originals.items():
            data = json.loads(original)
            data["provenance"]["model"]["ground_truth"] = None
            file.write_text(json.dumps(data))
        text, problems, _ = build(workspace, "organism", "plain")
    finally:
        for file, original in originals.items():
            file.write_text(original)
    flat = " ".join(text.split())
    assert problems == [] and "This build reports organism" in flat
    assert "This build reports the model organism" not in flat


def no_sae_step(results_dir: Path) -> None:
    """sae_features's results as a model without any SAE leaves them: the head, and why the step did not run."""
    path = results_dir / "sae_features.json"
    data = json.loads(path.read_text())
    data["results"] = {"head": {"layer": 1, "head": 3}, "sae": {"ran": False, "reason": "no SAE here"},
                       "not_run": ["feature map", "precision"]}
    path.write_text(json.dumps(data))


def test_a_step_the_model_could_not_run_leaves_its_macros_out(fixture_root, tmp_path):
    full = generate(Results(fixture_root, "organism"), tmp_path / "full", tmp_path, fixture_scripts())
    assert full["ifSaeRan"]["latex"] == "True" and "SaeSelf" in full  # results from before the switch: ran
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "results", root / "results")
    no_sae_step(root / "results" / "organism")
    manifest = generate(Results(root, "organism"), tmp_path / "gen", tmp_path, fixture_scripts())
    macros = (tmp_path / "gen" / "macros.tex").read_text()
    assert manifest["ifSaeRan"]["latex"] == "False" and "\\SaeRanfalse" in macros
    left_out = {m.name for m in spec.macros() if m.guard == "SaeRan"}
    assert left_out and not left_out & set(manifest) and "SurveyS" in manifest


def test_a_model_loaded_without_processing_leaves_the_processed_comparison_out(fixture_root, tmp_path):
    """manual_attention on a model with no weight processing (random or raw weights) has no processed model to
    compare with: its one macro is left out and the switch is false, while the file's other macros stay."""
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "results", root / "results")
    path = root / "results" / "organism" / "manual_attention.json"
    data = json.loads(path.read_text())
    data["results"]["processed_compared"] = False
    del data["results"]["overall_max"]["vs_processed_transformer_lens"]
    path.write_text(json.dumps(data))
    manifest = generate(Results(root, "organism"), tmp_path / "gen", tmp_path, fixture_scripts())
    assert manifest["ifManualProcessed"]["latex"] == "False"
    assert "ManualMaxProcessed" not in manifest and "ManualMaxTL" in manifest


@pytest.mark.e2e
def test_paper_builds_without_the_sae_step(workspace):
    """A non-organism build whose sae_features had no SAE: no undefined macro, and the text says why."""
    no_sae_step(renamed_copy(workspace, "no-sae"))
    text, problems, manifest = build(workspace, "no-sae", "no-sae")
    assert problems == []
    flat = " ".join(text.split())
    assert "The SAE step was not run on no-sae" in flat and "SaeSelf" not in manifest


@pytest.mark.e2e
@pytest.mark.slow
def test_make_all_from_scratch(tmp_path, tex):
    """Every demo script into a fresh output root, then the paper from its results: as `make all`."""
    scripts = makefile_demo_scripts()
    for script in scripts:
        done = run_script(script, "--out", str(tmp_path))
        assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
    run_held_out(tmp_path, tmp_path / "held_out")  # the organism's ground truth lists held-out categories
    results = Results(tmp_path, "organism")
    manifest = generate(results, tmp_path / "generated", tmp_path / "figures" / "organism", scripts)
    for name in included_figures(manifest):
        assert (tmp_path / "figures" / "organism" / name).exists(), f"no script made {name}"
    pdf, problems = build_pdf(tmp_path / "generated", tmp_path / "build")
    assert problems == []
