"""The import layering of README.md's architecture notes, drawn from the source with ``ast``: every
import of every module under dyt/ and models/ (imports inside functions included; ``if TYPE_CHECKING:``
blocks excluded, they never run) goes to the same or a lower layer, and no module reaches itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: nn < engine < data/metrics/diffusion < models < tasks < weights/analysis/results < cli.
# The entry points (train.py, eval.py, scripts/) sit above them all. A prefix maps a module and its
# submodules; the longest matching prefix wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("nn", ("dyt", "dyt.io", "dyt.nn")),
    ("engine", ("dyt.engine",)),
    ("data/metrics/diffusion", ("dyt.data", "dyt.metrics", "dyt.diffusion")),
    ("models", ("models",)),
    ("tasks", ("dyt.tasks",)),
    ("weights/analysis/results", ("dyt.weights", "dyt.analysis", "dyt.results")),
    ("cli", ("dyt.cli", "dyt.preflight", "dyt.launch")),  # start-up checks of train.py; the torchrun launcher
]
ENGINE_MUST_NOT_REACH = ("models", "dyt.tasks", "dyt.analysis", "dyt.cli", "dyt.weights", "hydra")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module under dyt/ and models/."""
    out = {}
    for path in sorted([*root.glob("dyt/**/*.py"), *root.glob("models/**/*.py")]):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported name, line) for every import ``name`` makes; a project name is resolved to the module
    it names (``from dyt.engine import weights`` -> ``dyt.engine.weights``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in modules else base, node.lineno))
    return out


def project_module(imported: str, modules: set[str]) -> str | None:
    """The project module an import loads (its longest existing prefix), or None for a third-party one."""
    while imported and imported not in modules:
        imported = imported.rpartition(".")[0]
    return imported or None


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py; add its package to LAYERS")
    return level


def import_graph(root: Path = ROOT) -> tuple[dict[str, list[tuple[str, int]]], dict[str, list[str]]]:
    """(project imports per module: [(module, line)], third-party top-level names per module)."""
    files = module_files(root)
    names = set(files)
    project, external = {}, {}
    for name, path in files.items():
        found = imports_of(name, path, names)
        project[name] = [(m, line) for imp, line in found if (m := project_module(imp, names)) and m != name]
        external[name] = sorted({imp.split(".")[0] for imp, _ in found if project_module(imp, names) is None})
    return project, external


def upward_imports(project: dict[str, list[tuple[str, int]]], files: dict[str, Path]) -> list[str]:
    return [
        f"{files[m].relative_to(ROOT)}:{line}: {m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in project.items()
        for t, line in targets
        if layer_of(t) > layer_of(m)
    ]


def cycles(project: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph = {m: sorted({t for t, _ in targets}) for m, targets in project.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(start: str, project: dict[str, list[tuple[str, int]]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for t, _ in project.get(todo.pop(), []):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_no_import_runs_from_a_lower_layer_to_a_higher_one(graph):
    project, _ = graph
    assert upward_imports(project, module_files()) == []


def test_the_import_graph_has_no_circle(graph):
    project, _ = graph
    assert cycles(project) == []


def test_nothing_under_dyt_engine_reaches_models_tasks_analysis_cli_or_hydra(graph):
    project, external = graph
    engine = [m for m in project if m == "dyt.engine" or m.startswith("dyt.engine.")]
    assert len(engine) > 10
    bad = []
    for m in engine:
        reached = reachable(m, project) | {m}
        names = reached | {e for r in reached for e in external.get(r, [])}
        bad += [
            f"{m} reaches {n}"
            for n in sorted(names)
            if any(n == p or n.startswith(p + ".") for p in ENGINE_MUST_NOT_REACH)
        ]
    assert bad == []


def test_the_checks_catch_an_upward_import_a_lazy_one_and_a_circle(tmp_path):
    """The checks themselves: a lazy ``import models`` inside an engine function is an upward import and
    a reach, two modules importing each other a circle; a TYPE_CHECKING import is neither."""
    (tmp_path / "dyt" / "engine").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "dyt" / "__init__.py").write_text("")
    (tmp_path / "dyt" / "engine" / "__init__.py").write_text("")
    (tmp_path / "dyt" / "engine" / "a.py").write_text("def f():\n    import models.b\n")
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "b.py").write_text("from models import c\n")
    (tmp_path / "models" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dyt.engine import a\nfrom models.b import x\n"
    )
    project, _ = import_graph(tmp_path)
    assert [t for t, _ in project["dyt.engine.a"]] == ["models.b"]
    assert [t for t, _ in project["models.c"]] == ["models.b"]
    assert layer_of("dyt.engine.a") < layer_of("models.b")
    assert cycles(project) == [["models.b", "models.c"]]
    assert "models.c" in reachable("dyt.engine.a", project)
