"""The architecture as ARCHITECTURE.md states it: no import cycle in the whole package (explain/
and models/, type-checking imports included), models/ at the bottom (it imports only
explain.errors and explain.models), every module on the code map."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package from the source under ``root``: explain/ (without the
    ``explain/models`` link a checkout may have) and models/, installed as ``explain.models``."""
    found = {}
    for folder, package in ((root / "explain", "explain"), (root / "models", "explain.models")):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if folder.name == "explain" and parts[0] == "models":
                continue
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def imports(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package's modules it imports, from its source: at any depth of its code (in
    function bodies and under ``if TYPE_CHECKING:`` too); an import of a package's submodule
    (``from explain.audit import metrics``) points at the submodule."""
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        seen = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                seen |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                for a in node.names:
                    seen.add(f"{base}.{a.name}" if f"{base}.{a.name}" in found else base)
        graph[name] = {m for m in seen if m in found and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """The package's import graph, read once for the tests below."""
    return imports(modules())


def test_the_package_has_no_import_cycle(graph):
    assert len(graph) > 100 and "explain.models.base" in graph and "explain.cli.score" in graph
    assert cycles(graph) == []


def test_models_import_nothing_of_explain_but_its_errors(graph):
    """models/ is the bottom layer: besides its own modules it imports explain.errors only."""
    models = {m: ws for m, ws in graph.items() if m == "explain.models"
              or m.startswith("explain.models.")}
    assert len(models) >= 10
    outside = {m: sorted(w for w in ws if w != "explain.errors"
                         and not w.startswith("explain.models"))
               for m, ws in models.items()}
    assert {m: ws for m, ws in outside.items() if ws} == {}


def test_the_graph_counts_type_only_and_function_body_imports(tmp_path):
    """An import under ``if TYPE_CHECKING:`` or in a function body is an edge: a type-only
    cycle is a cycle."""
    for folder in ("explain", "models"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "explain" / "a.py").write_text("from typing import TYPE_CHECKING\n"
                                               "if TYPE_CHECKING:\n    from explain.b import B\n")
    (tmp_path / "explain" / "b.py").write_text("def f():\n    from explain.a import A\n")
    (tmp_path / "models" / "base.py").write_text("from explain.a import A\n")
    graph = imports(modules(tmp_path))
    assert graph["explain.models.base"] == {"explain.a"}
    assert cycles(graph) == [["explain.a", "explain.b"]]


# ARCHITECTURE.md's layers, top to bottom: a module's layer is that of its longest prefix here
LAYERS = {
    **dict.fromkeys(("explain", "explain.__main__", "explain.cli"), 4),
    **dict.fromkeys(("explain.audit", "explain.report", "explain.grid", "explain.serve"), 3),
    **dict.fromkeys((f"explain.{m}" for m in (
        "methods occlusion sliding rise backprop grad_cam whitebox reconstruction faithfulness "
        "sanity clips frame_reuse").split()), 2),
    **dict.fromkeys((f"explain.{m}" for m in (
        "perturbation perturb incremental drill_down windows render render_clip outputs heatmap "
        "images frames files budget progress choices html").split()), 1),
    **dict.fromkeys(("explain.models", "explain.errors"), 0),
}
# the dataset tools that may import another: the audit its mosaic and embedder from the grid,
# the service the grid and the audit it runs as jobs
TOOLS_ALLOWED = {("explain.audit", "explain.grid"), ("explain.serve", "explain.grid"),
                 ("explain.serve", "explain.audit")}


def layer_of(name: str) -> tuple[str, int] | None:
    """(the LAYERS key, its layer) of module ``name``, or None when it has none."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    return None


def test_imports_point_down_the_layers(graph):
    """An import points down, or sideways in its layer; between the dataset tools only as
    TOOLS_ALLOWED says. A module with no layer is an error: give it one here and in
    ARCHITECTURE.md's diagram."""
    assert [m for m in graph if layer_of(m) is None] == []
    wrong = []
    for m, ws in sorted(graph.items()):
        (home, level) = layer_of(m)
        for w in sorted(ws):
            (there, below) = layer_of(w)
            if below > level or (level == below == 3 and home != there
                                 and (home, there) not in TOOLS_ALLOWED):
                wrong.append(f"{m} -> {w}")
    assert wrong == []


def code_map(text: str) -> dict[str, set[str]]:
    """Folder (``explain/report/``) → the ``*.py`` files ARCHITECTURE.md's code map names in
    it. A line that is no bullet opens a folder (its first backticked name: ``models/``,
    ``explain/``, ``explain/cli/``); a bullet whose first backticked name is a folder
    (``- `audit/` — …``) names files in that folder, any other bullet in the open one."""
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    blocks: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("- ") or (line and not line.startswith(" ")):
            blocks.append([line])
        elif line.strip() and blocks:
            blocks[-1].append(line)
    named: dict[str, set[str]] = {}
    folder = ""
    for block in blocks:
        body = " ".join(block)
        first = re.search(r"`([^`]+)`", body)
        head = first.group(1) if first else ""
        where = folder
        if not block[0].startswith("- "):
            folder = where = head if head.endswith("/") else folder
        elif head.endswith("/"):
            where = folder + head
        named.setdefault(where, set()).update(re.findall(r"`([\w/]+\.py)`", body))
    return named


def test_every_module_is_on_the_code_map():
    named = code_map((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    missing = []
    for name, path in modules().items():
        top = "models" if name.startswith("explain.models") else "explain"
        relative = path.relative_to(ROOT / top)
        folder = "/".join((top, *relative.parent.parts)) + "/"
        if relative.name not in named.get(folder, ()):
            missing.append(f"{folder}{relative.name}")
    assert missing == []
