"""The package's import graph, read from the source (ast; nothing is imported): no import
circle, and no import from a lower layer to a higher one. And the one exception to imports at
module top: building the CLI's parser loads no heavy package (checked in a subprocess).

Every `import` counts, at module top or inside a function: a lazy import is still an arrow
between the two modules. Importing `a.b.c` also runs the `__init__` of `a.b`, so that is an
arrow too; a package's `__init__` therefore sits at the layer of its lowest module.
"""

from __future__ import annotations

import ast
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "facegen_ray"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top. A module may import from its own unit and from the layers below; units that
# share a layer do not import each other. A unit is a module or a package (with everything
# below it); the longest listed name wins.
LAYERS: list[list[str]] = [
    ["facegen_ray", "facegen_ray.errors"],
    ["facegen_ray.config"],
    ["facegen_ray.storage", "facegen_ray.progress", "facegen_ray.resources", "facegen_ray.cluster"],
    ["facegen_ray.runtime", "facegen_ray.storage_workers"],  # Ray start-up and the shared-storage check, over storage
    # the model registry needs only storage: train registers an export, serve resolves MODEL,
    # lifecycle promotes
    ["facegen_ray.registry"],
    ["facegen_ray.models"],  # pure torch
    ["facegen_ray.losses", "facegen_ray.provenance", "facegen_ray.observability"],
    ["facegen_ray.data"],  # includes the feedback and pairwise-vote stores serve writes
    ["facegen_ray.metrics"],
    ["facegen_ray.train"],
    ["facegen_ray.tune"],
    ["facegen_ray.lifecycle"],  # gate, retrain: read what serve wrote, never import serve
    ["facegen_ray.serve"],
    ["facegen_ray.commands"],
    ["facegen_ray.cli"],
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    """ast.parse with the cyclic garbage collector paused: on CPython 3.11 a finaliser that the
    collector runs in the middle of ast.parse (a Ray Data iterator left half-read by an earlier
    test) made it fail with "AST constructor recursion depth mismatch" (CI, 2026-11-28)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text(encoding="utf-8"), str(path))
    finally:
        if enabled:
            gc.enable()


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported package module, line) for every import of the package in one file: the
    longest existing module named by `import a.b`, `from a.b import c` (c when it is a
    submodule) or a relative import."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for target in names:
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                out.append((".".join(parts), node.lineno))
    return out


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, including the implicit arrow to the
    `__init__` of each package above an imported module (not the importer's own packages)."""
    modules = read_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges: dict[str, int] = {}
        for target, line in imports_of(name, path, set(modules)):
            parents = [".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)]
            for t in [target, *parents]:
                if t not in own and t != name:
                    edges.setdefault(t, line)
        graph[name] = edges
    return graph


def unit_of(module: str, layers: list[list[str]]) -> str | None:
    """The longest listed unit that is `module` or a package above it; None when unlisted
    (the root package only names itself)."""
    best = None
    for layer in layers:
        for unit in layer:
            if module == unit or (unit != PACKAGE and module.startswith(unit + ".")):
                if best is None or len(unit) > len(best):
                    best = unit
    return best


def assign_layers(modules: list[str], layers: list[list[str]]) -> tuple[dict[str, int], list[str]]:
    """module -> layer index; a package's __init__ at the layer of its lowest module.
    Second value: modules no listed unit covers."""
    index = {unit: i for i, layer in enumerate(layers) for unit in layer}
    level, unlisted = {}, []
    for m in modules:
        unit = unit_of(m, layers)
        if unit is None:
            unlisted.append(m)
        else:
            level[m] = index[unit]
    for m in modules:
        below = [level[n] for n in modules if n.startswith(m + ".") and n in level]
        if m in level and below and m != PACKAGE:
            level[m] = min([level[m], *below])
    return level, unlisted


def upward_imports(graph: dict[str, dict[str, int]], layers: list[list[str]]) -> list[str]:
    """Every arrow to a higher layer, or to another unit of the same layer."""
    level, _ = assign_layers(sorted(graph), layers)
    bad = []
    for a, targets in sorted(graph.items()):
        for b, line in sorted(targets.items()):
            if a not in level or b not in level:
                continue
            if level[b] > level[a]:
                bad.append(f"{a}:{line} imports {b} (layer {level[b]} above its {level[a]})")
            elif level[b] == level[a] and unit_of(a, layers) != unit_of(b, layers):
                bad.append(f"{a}:{line} imports {b}: both in layer {level[a]}, different units")
    return bad


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------ the package


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_DIR)


def test_every_module_has_a_layer(graph):
    _, unlisted = assign_layers(sorted(graph), LAYERS)
    assert not unlisted, f"place these modules in tests/test_layers.py LAYERS: {unlisted}"


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_imports_run_downward(graph):
    bad = upward_imports(graph, LAYERS)
    assert not bad, "imports against the layer order (tests/test_layers.py LAYERS):\n" + "\n".join(bad)


def test_the_graph_sees_lazy_and_relative_imports(graph):
    """The parser finds what the checks rely on: a function-level import, `from pkg import
    submodule`, and the implicit arrow to a package __init__."""
    assert "facegen_ray.progress" in graph["facegen_ray.metrics.reals"]  # inside a function
    assert (
        "facegen_ray.serve.generation" in graph["facegen_ray.serve.ingress"]
    )  # from facegen_ray.serve import generation
    assert "facegen_ray.data" in graph["facegen_ray.lifecycle.human_votes"]  # __init__ of data.comparison
    assert "facegen_ray.models" in graph["facegen_ray.train.steps"]


def test_the_lifecycle_sits_between_training_and_serving():
    """The order the layers above hold, stated on its own so that reordering LAYERS to let an
    arrow through fails here: train below lifecycle (train registers a model without the
    lifecycle), lifecycle below serve (the gate reads the vote store, not the serve app)."""
    names = ["facegen_ray.registry", "facegen_ray.train", "facegen_ray.lifecycle", "facegen_ray.serve"]
    level, _ = assign_layers(names, LAYERS)
    assert [level[n] for n in names] == sorted({level[n] for n in names})


def test_building_the_cli_parser_loads_no_heavy_package():
    """cli.py imports every command module to build `facegen`'s parser; they import their heavy
    dependencies in the functions that run the command, so the CLI answers --help and
    argument errors without loading them (the one exception to imports at module top)."""
    heavy = ["numpy", "torch", "ray", "pyarrow", "pandas", "PIL", "httpx", "matplotlib", "scipy", "fastapi"]
    code = (
        "import sys; from facegen_ray.cli import build_parser; build_parser(); "
        "from facegen_ray.registry import RegistryError; from facegen_ray.storage import StorageError; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE_DIR.parent,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"loaded while building the parser: {out.stdout.strip()}"


# ------------------------------------------------------------------ the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / PACKAGE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / PACKAGE


def test_checker_reports_an_upward_import_a_peer_import_and_a_circle(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from facegen_ray import high\n",  # upward, lazily
            "high.py": "from facegen_ray.low import f\n",
            "peer_a.py": "from . import peer_b\n",  # relative, same layer, other unit
            "peer_b.py": "",
            "pkg/__init__.py": "",
            "pkg/base.py": "",
            "pkg/top.py": "import facegen_ray.high\n",
            "stray.py": "",
        },
    )
    layers = [
        ["facegen_ray", "facegen_ray.low", "facegen_ray.pkg.base"],
        ["facegen_ray.peer_a", "facegen_ray.peer_b"],
        ["facegen_ray.high"],
        ["facegen_ray.pkg"],
    ]
    g = import_graph(pkg)
    assert g["facegen_ray.low"] == {"facegen_ray.high": 2}
    assert circles(g) == [["facegen_ray.high", "facegen_ray.low"]]
    bad = upward_imports(g, layers)
    assert bad == [
        "facegen_ray.low:2 imports facegen_ray.high (layer 2 above its 0)",
        "facegen_ray.peer_a:1 imports facegen_ray.peer_b: both in layer 1, different units",
    ]
    level, unlisted = assign_layers(sorted(g), layers)
    assert unlisted == ["facegen_ray.stray"]
    assert level["facegen_ray.pkg"] == 0 and level["facegen_ray.pkg.top"] == 3  # __init__ at its lowest module


def test_configs_are_changed_only_through_validation():
    """`model_copy(update=...)` skips pydantic validation: a config changed that way can hold a
    value its field forbids. Changes go through config.with_updates (or model_validate)."""
    offenders = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{i}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "model_copy(update" in line and not line.lstrip().startswith("#")
    ]
    assert offenders == [], f"unvalidated config copies: {offenders}"
