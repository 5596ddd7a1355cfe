"""The package's layers only point down, and no two subpackages import each other (directly or around a loop).

Read from the source with `ast` (imports inside functions count too), so the check needs nothing installed and
sees lazy imports that an import-time tracer would miss.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fewshotseg"

# Lowest first. A unit (a subpackage or a top-level module of fewshotseg) may import units of its own layer or of
# lower layers; cycles inside a layer are caught separately. The package root (`fewshotseg/__init__.py`) is the
# public API above everything; lower units may take only `__version__` from it.
LAYERS: list[set[str]] = [
    # errors; `~` in paths; how settings are declared, read and checked; tensors; files and pixels; run plumbing;
    # reports
    {"errors", "paths", "config", "models", "data", "runs", "reports"},
    {"meta_learning", "analysis"},  # models and task tensors; computations on weights
    {"adaptation"},  # the adaptation methods (U, probe, prototype, rf) behind one interface
    {"initializations"},  # weights files, cards (how to adapt them), packaged and pretrained folders, run cards
    {"evaluation"},  # every number we report, early stopping, the episode jobs
    {"tuning"},  # UHO
    {"training"},  # the two training loops, their budget and checkpoints
    {"adapt", "segmenter", "multiclass", "quickstart", "predict"},  # applications built on the library
    {"app"},  # the web page (`fewshotseg serve`) over segmenter and adapt
    {"cli", "__main__"},  # the only place that knows argparse
]
ROOT_NAMES_ALLOWED_BELOW = {"__version__"}
# runs/ is usable from anywhere because it needs nothing of the domain: folders, files, devices, processes.
RUNS_MAY_IMPORT = {"errors", "runs"}
# config.py is the settings mechanism only; each command's settings live beside the command.
CONFIG_MAY_IMPORT = {"errors", "paths"}


def unit_of(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[str, int, set[str]]]:
    """(imported module inside fewshotseg, line, imported names) for every import in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(("fewshotseg", *path.relative_to(root).parent.parts))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, set()) for a in node.names if a.name.split(".")[0] == "fewshotseg"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "fewshotseg":
                names = {a.name for a in node.names}
                if module == "fewshotseg":  # `from fewshotseg import data` imports the subpackage `data`
                    subpackages = {n for n in names if (root / n).is_dir() or (root / f"{n}.py").is_file()}
                    found += [(f"fewshotseg.{n}", node.lineno, set()) for n in subpackages]
                    names -= subpackages
                    if names:
                        found.append(("fewshotseg", node.lineno, names))
                else:
                    found.append((module, node.lineno, names))
    return found


def import_edges(package: Path = PACKAGE) -> list[tuple[str, str, str]]:
    """(from unit, to unit, "file:line") for every import between two different units."""
    edges = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "__init__.py":
            continue  # the public API re-exports from every layer
        here = unit_of(path, package)
        for module, line, names in imports_of(path, package):
            parts = module.split(".")
            there = parts[1] if len(parts) > 1 else "fewshotseg"
            if there == "fewshotseg" and names <= ROOT_NAMES_ALLOWED_BELOW:
                continue
            if there != here:
                edges.append((here, there, f"{path.relative_to(package.parent)}:{line}"))
    return edges


def layer_of(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    if unit == "fewshotseg":
        return len(LAYERS)
    raise KeyError(unit)


def upward_imports(edges: list[tuple[str, str, str]]) -> list[str]:
    return [f"{where}: {a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a, b, where in edges if layer_of(b) > layer_of(a)]


def cycles(edges: list[tuple[str, str, str]]) -> list[list[str]]:
    """Every strongly connected set of two or more units (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_every_unit_has_a_declared_layer():
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    undeclared = sorted(u for u in units if not any(u in layer for layer in LAYERS))
    assert not undeclared, f"declare {undeclared} in LAYERS in tests/test_layers.py (lowest layer it may sit in)"


def test_no_import_points_up_a_layer():
    found = upward_imports(import_edges())
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_no_cycle_between_subpackages():
    found = cycles(import_edges())
    assert not found, f"import cycles between subpackages: {found}"


def test_runs_imports_nothing_of_the_domain():
    found = [f"{where}: runs imports {b}" for a, b, where in import_edges() if a == "runs" and b not in RUNS_MAY_IMPORT]
    assert not found, "\n".join(found)


def test_config_is_only_the_settings_mechanism():
    found = [f"{where}: config imports {b}" for a, b, where in import_edges() if a == "config" and b not in CONFIG_MAY_IMPORT]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source, bad", [
    ("from fewshotseg.evaluation.metrics import binary_iou\n", "upward"),  # meta_learning -> evaluation
    ("from ..training import meta_train\n", "upward"),  # relative, from meta_learning
    ("def f():\n    import fewshotseg.cli\n", "upward"),  # a lazy import counts too
    ("from fewshotseg import __version__\n", None),
])
def test_the_checker_sees_a_planted_upward_import(tmp_path, source, bad):
    pkg = tmp_path / "fewshotseg"
    for unit in ("meta_learning", "evaluation", "training"):
        (pkg / unit).mkdir(parents=True)
        (pkg / unit / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "meta_learning" / "weights.py").write_text(source)
    found = upward_imports(import_edges(pkg))
    assert bool(found) == (bad == "upward"), found


def test_the_checker_finds_a_cycle():
    edges = [("evaluation", "meta_learning", "x"), ("meta_learning", "evaluation", "y"), ("data", "models", "z")]
    assert cycles(edges) == [["evaluation", "meta_learning"]]

