"""README.md and docs/: generated regions up to date, links that resolve, a short README with no typed measurements.

The regions rendered from the organism's results are checked against the paper's fixture (tests/fixtures/paper/
organism, the trimmed copy of those results that tests/test_paper.py reads), the others against the records under
docs/data/. When a test here fails after a change of results or records: `make docs` (or `make paper-fixture`,
which refreshes the fixture and the regions together).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from analysis.errors import UsageError
from conftest import REPO
from writeup import docs
from writeup.results import Results

FIXTURE = REPO / "tests" / "fixtures" / "paper" / "organism"
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_WORDS = 1500


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> docs.Sources:
    root = tmp_path_factory.mktemp("fixture")
    shutil.copytree(FIXTURE, root / "results" / "organism")
    return docs.Sources(Results(root, "organism"))


def test_generated_regions_are_up_to_date(sources):
    assert docs.stale_regions(sources) == [], "run `make docs` (regions differ from the fixture and records)"


def test_every_region_has_its_markers_once():
    for region in docs.REGIONS:
        text = (REPO / region.file).read_text()
        assert text.count(f"<!-- {region.name}:begin") == 1 and text.count(f"<!-- {region.name}:end -->") == 1, \
            f"{region.file}: {region.name}"


def test_a_changed_region_is_stale_and_rewritten(sources, tmp_path):
    for file in {r.file for r in docs.REGIONS}:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / file, tmp_path / file)
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("S = ", "S = 9", 1))
    assert docs.stale_regions(sources, tmp_path) == ["README.md: results"]
    assert docs.write_regions(sources, tmp_path) == ["README.md"]
    assert docs.stale_regions(sources, tmp_path) == [] and readme.read_text() == README.read_text()


def test_missing_markers_are_an_error(tmp_path):
    with pytest.raises(UsageError, match="markers"):
        docs.region_text("no markers here\n", "results")


def test_the_readme_block_prints_the_papers_values(sources):
    block = docs.region_text(README.read_text(), "results")
    for name in ("SurveyHead", "SurveyS", "SurveyPartner", "SurveySelf", "SurveyBos", "ScanIndScore",
                 "EvidenceClaim", "EvidenceSCorrected", "EvidenceMarginCorrected", "EvidenceBelowCorrected"):
        assert docs.plain(sources.values[name]) in block, name


def test_plain_text_of_latex():
    assert docs.plain(r"\num{0.123}") == "0.123"
    assert docs.plain(r"\SI{40}{\percent}") == "40%"
    assert docs.plain(r"\numrange{17000}{20000}") == "17000–20000"
    assert docs.plain(r"margin\_normalised, R\&D") == "margin_normalised, R&D"
    assert docs.plain(r"negative share of $|\lambda|$") == "negative share of |λ|"
    assert docs.plain(r"$W_\text{sym}$ has $d_\text{head}$ negative eigenvalues") == \
        "W_sym has d_head negative eigenvalues"
    assert docs.plain(r"$\geq$ \num{0.9}") == "≥ 0.9"
    assert docs.markdown_table(["a", "b"], [["|x|", "1"]]) == "| a | b |\n|---|---|\n| \\|x\\| | 1 |"
    with pytest.raises(KeyError, match="NoSuchMacro"):
        docs.fill("{NoSuchMacro}", {})


def renamed_results(tmp_path: Path, edit) -> Results:
    """The fixture's results with `edit(provenance)` applied to every file's provenance."""
    target = tmp_path / "results" / "organism"
    target.mkdir(parents=True)
    for file in FIXTURE.glob("*.json"):
        data = json.loads(file.read_text())
        edit(data["provenance"])
        (target / file.name).write_text(json.dumps(data))
    return Results(tmp_path, "organism")


def test_only_the_shipped_organisms_results_rewrite_the_regions(sources, tmp_path):
    assert docs.not_shipped_organism(sources.results) is None
    plain_model = renamed_results(tmp_path / "a", lambda p: p["model"].update(ground_truth=None))
    assert "no record of planted heads" in docs.not_shipped_organism(plain_model)
    retrained = renamed_results(tmp_path / "b", lambda p: p["model"].update(source="checkpoints/organism"))
    assert "not from the shipped checkpoint" in docs.not_shipped_organism(retrained)
    raw = Results(sources.results.root, "organism", processing="none")
    assert "processed" in docs.not_shipped_organism(raw)


def test_a_missing_record_names_the_command_that_writes_it(tmp_path):
    sources = docs.Sources(None, records=tmp_path)
    assert "make record-runs MODEL=gpt2-random" in docs.render_runs("runs-gpt2-random")(sources)
    assert 'make record-time NAME=make-test CMD="make test"' in docs.render_commands(sources)
    assert "make record-bench" in docs.render_bench(sources)


def test_records_are_rendered_with_commit_and_machine(tmp_path):
    machine = {"cpus": 2, "load_average": 0.5, "platform": "Linux"}
    (tmp_path / "commands").mkdir()
    (tmp_path / "commands" / "make-test.json").write_text(json.dumps(
        {"command": "make test", "seconds": 300.0, "commit": "0123456789abcdef", "machine": machine,
         "venv_ready": True}))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "organism.json").write_text(json.dumps(
        {"command": "make all MODEL=organism", "commits": ["0123456789abcdef+dirty"],
         "machine": {"cpus": 2, "torch_threads": 2, "platform": "Linux"},
         "scripts": {"scan_heads": {"seconds": 30.4, "peak_rss_gb": 0.86},
                     "clustering": {"seconds": 12.0, "peak_rss_gb": 1.5}}}))
    sources = docs.Sources(None, records=tmp_path)
    commands = docs.render_commands(sources)
    assert "| `make test` | the test suite | 5.0 min | 0123456; 2 CPU cores, load average 0.5" in commands
    runs = docs.render_runs("runs-organism")(sources)
    assert "2 scripts, 42 s together; highest peak 1.50 GB (`clustering`)" in runs
    assert "0123456 (with uncommitted changes)" in runs and "| `scan_heads` | 30 | 0.86 |" in runs


def test_bench_names_are_those_run_py_finds():
    assert "scan_batched_vs_per_head" in docs.bench_names()
    assert len(docs.bench_names()) == len(set(docs.bench_names()))


# --- links, length, typed numbers -------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.name}: links to files that do not exist: {missing}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t).resolve() for t in LINK.findall(README.read_text())}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_is_short():
    assert len(README.read_text().split()) <= MAX_README_WORDS


def prose(text: str) -> str:
    """`text` without its generated regions, code blocks and inline code."""
    text = re.sub(r"<!-- ([\w-]+):begin.*?<!-- \1:end -->", " ", text, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", " ", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_measured_number_is_typed(page):
    """Outside generated regions and code, no decimal number and no number with a unit of time, memory, share or
    speed-up: such a number is a measurement, and belongs in a generated region."""
    measured = re.findall(r"\d+[.,]\d+|\d+\s*(?:%|s\b|ms\b|min\b|minutes?\b|hours?\b|[KMG]i?B\b|×)",
                          prose(page.read_text()))
    assert not measured, f"{page.name} types what looks measured: {measured}"


def test_the_readme_table_has_every_script_with_its_paper_section():
    rows = [line.split("|")[1:-1] for line in README.read_text().splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row[0])}
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")}
    assert scripts <= named, f"scripts without a row in the README's table: {sorted(scripts - named)}"
    main_tex = (REPO / "paper" / "main.tex").read_text()
    titles = set(re.findall(r"\\(?:sub)*section\{([^}]*)\}", main_tex))
    for row in rows:
        assert row[3].strip() in titles, f"{row[0].strip()}: no section {row[3].strip()!r} in paper/main.tex"
