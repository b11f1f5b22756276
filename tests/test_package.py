"""The package's shape: imports run one way, and only cli/plotting hold argument parsing and plotting."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "analysis"
UI = {"argparse", "matplotlib", "seaborn", "plotly", "circuitsvis"}
UI_MODULES = {"cli", "plotting"}


def module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST) -> list[tuple[ast.AST, list[str]]]:
    """Every import statement with the names it could bind (module, and module.name for `from` imports)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node, [node.module] + [f"{node.module}.{a.name}" for a in node.names]))
    return found


def package_graph(with_local: bool = False):
    """(module -> the package modules it imports at module level (with `with_local`: anywhere),
    function-local package imports as "file:line", UI imports outside cli/plotting as "file:line")."""
    modules = {module_of(p): p for p in PACKAGE.rglob("*.py")}
    edges, local, ui = {m: set() for m in modules}, [], []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if n is not f}
        for node, names in imports(tree):
            targets = {n for n in names if n in modules and n != name}
            if id(node) in in_function and targets:
                local.append(f"{path.name}:{node.lineno}")
            if id(node) not in in_function or with_local:
                edges[name] |= targets
            if name.split(".")[-1] not in UI_MODULES and any(n.split(".")[0] in UI for n in names):
                ui.append(f"{path.name}:{node.lineno}")
    return edges, local, ui


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    return next((c for m in sorted(edges) if m not in state and (c := visit(m))), None)


def test_the_checks_see_a_cycle_and_a_local_import():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from analysis import io\n")
    (node, names), = imports(tree)
    assert names == ["analysis", "analysis.io"] and node.lineno == 2


def test_imports_run_one_way():
    edges, local, ui = package_graph()
    assert cycle(edges) is None
    assert local == []
    assert ui == []  # argparse and plotting only in analysis/cli.py and analysis/plotting.py
    assert "analysis.cli" not in {t for m, ts in edges.items() if m != "analysis.cli" for t in ts}
    for path in PACKAGE.rglob("*.py"):  # the write-up reads the package, never the other way round
        assert not any(n.split(".")[0] == "writeup" for _, names in imports(ast.parse(path.read_text())) for n in names)


def test_contributing_lists_what_each_module_imports():
    """CONTRIBUTING.md's module map names, for every module, the package modules it imports, in import order."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    table = text[text.index("## Modules"):text.index("The write-up lives apart")]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith(("py`", "/`")):
            rows[cells[0].strip("`").removesuffix(".py").rstrip("/")] = cells[2]
    edges, _, _ = package_graph(with_local=True)
    order, imported = list(rows), {}

    def row_of(module: str) -> str:
        """A module's own row (`organism/files.py`), else its subpackage's (`organism/`: its other submodules)."""
        path = module.removeprefix("analysis.").replace(".", "/")
        while path not in rows and "/" in path:
            path = path.rsplit("/", 1)[0]
        return path

    for module, targets in edges.items():
        if module == "analysis":
            continue
        imported.setdefault(row_of(module), set()).update(row_of(t) for t in targets if t != "analysis")
    assert set(imported) == set(rows), "CONTRIBUTING.md's module map misses or names modules that do not exist"
    for name, actual in imported.items():
        actual -= {name}
        listed = {t.strip() for t in rows[name].split(",")} - {"—", ""}
        assert actual == listed, f"{name}: imports {sorted(actual)}, CONTRIBUTING.md lists {sorted(listed)}"
        assert all(order.index(t) < order.index(name) for t in actual), f"{name} imports a module below it"


MAX_PARAMETERS = 6  # more travel together as a value or a settings dataclass (issue 17)


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
    """Positional, keyword-only, *args and **kwargs parameters; a method's self or cls is not counted."""
    a = function.args
    positional = a.posonlyargs + a.args
    count = len(positional) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return count - (1 if positional and positional[0].arg in ("self", "cls") else 0)


def long_signatures(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, parameter count) of every function (and lambda) in `tree` with more than MAX_PARAMETERS."""
    return [(getattr(node, "name", "lambda"), parameter_count(node)) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            and parameter_count(node) > MAX_PARAMETERS]


def test_the_parameter_count_sees_every_kind_of_parameter():
    tree = ast.parse("def f(a, /, b, *c, d, e=1, **f): pass\n"
                     "class A:\n    def m(self, a, b, c, d, e, f): pass\n"
                     "g = lambda a, b, c, d, e, f, h: 0\n")
    counts = {node.name if hasattr(node, "name") else "lambda": parameter_count(node) for node in ast.walk(tree)
              if isinstance(node, (ast.FunctionDef, ast.Lambda))}
    assert counts == {"f": 6, "m": 6, "lambda": 7}
    assert long_signatures(tree) == [("lambda", 7)]


def test_no_function_of_the_package_takes_more_than_six_parameters():
    """A dataclass's generated __init__ is not in the source: settings objects may have as many fields as they need."""
    found = {f"{path.relative_to(REPO)}: {name} ({count})" for path in PACKAGE.rglob("*.py")
             for name, count in long_signatures(ast.parse(path.read_text()))}
    assert not found, "functions with more than 6 parameters: " + ", ".join(sorted(found))
