"""The package's shape: no import circles, and every import points down the layers.

Every ``import`` in ``ssl_derm`` is read with :mod:`ast`, the lazy ones inside functions included, so the
shape cannot erode behind a function-level import. The layers, top to bottom:

6. entry points: ``ssl_derm.cli``, ``ssl_derm.api``, ``ssl_derm.docs_reference`` (writes the config reference)
5. commands (``ssl_derm.commands``): the only place a run is put together
4. ``ssl_derm.serve``: loads and runs what the families export
3. families: ``methods``, ``evaluate`` (protocols), ``segmenters``; no family imports another
2. shared models, metrics and pipelines: ``models``, ``metrics``, ``augment``, ``select``, ``plots``, ``robustness``
1. engine, data, runs, encoders
0. config, registry, errors

A module may import its own layer or a lower one (a family only itself below layer 3). The root package
holds ``__version__`` and the lazy API hooks, so importing it is allowed everywhere and its own imports are not
counted.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ssl_derm"

LAYERS = {
    6: ("cli", "api", "docs_reference"),
    5: ("commands",),
    4: ("serve",),
    3: ("methods", "evaluate", "segmenters"),
    2: ("models", "metrics", "augment", "select", "plots", "robustness"),
    1: ("engine", "data", "runs", "encoders", "encoder_files", "encoder_init"),
    0: ("config", "config_values", "registry", "errors", "packaged", "plugins"),
}
FAMILIES = LAYERS[3]
TOP = {name: rank for rank, names in LAYERS.items() for name in names}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name: str, path: Path):
    """Absolute names of the ssl_derm modules ``path`` imports (``from a import b`` counts as ``a.b`` when
    ``a.b`` is a module, else as ``a``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ssl_derm"):
                    yield a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("ssl_derm"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield sub if sub in MODULES else base


MODULES = {name for name, _ in _modules()}
GRAPH = {name: sorted(set(_imports(name, path)) - {name}) for name, path in _modules()}


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES if m != "ssl_derm" and _top(m) not in TOP})
    assert not missing, f"modules with no layer in tests/test_layers.py: {missing}"


def test_imports_point_down_the_layers():
    wrong = []
    for src, targets in GRAPH.items():
        if src == "ssl_derm":
            continue
        a = _top(src)
        for dst in targets:
            b = _top(dst)
            if dst == "ssl_derm" or a == b:
                continue
            if TOP[b] > TOP[a] or (TOP[a] == TOP[b] == 3):
                wrong.append(f"{src} (layer {TOP[a]}) imports {dst} (layer {TOP[b]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_family_imports_the_commands():
    assert not [(s, d) for s, ds in GRAPH.items() for d in ds
                if _top(s) not in ("commands", "cli", "api", "") and _top(d) == "commands"]


def _circles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("level", ["modules", "packages"])
def test_no_import_circles(level):
    graph = {k: v for k, v in GRAPH.items() if k != "ssl_derm"}
    if level == "packages":
        def pkg(m):
            return ".".join(m.split(".")[:2])
        merged = {}
        for s, ds in graph.items():
            merged.setdefault(pkg(s), set()).update(pkg(d) for d in ds if pkg(d) != pkg(s) and d != "ssl_derm")
        graph = {k: sorted(v) for k, v in merged.items()}
    assert _circles(graph) == []


def test_the_checker_sees_a_circle_and_a_lazy_upward_import(tmp_path):
    """The walk reads imports inside functions, and the circle finder finds a two-node circle."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ssl_derm.commands.finetune import run_finetune\n")
    assert list(_imports("ssl_derm.evaluate.m", src)) == ["ssl_derm.commands.finetune"]
    assert _circles({"a": ["b"], "b": ["a"], "c": ["a"]}) == [["a", "b"]]
