"""The package's import structure: no import cycles, and no import from a lower layer to a higher
one. Imports are read with ``ast`` from every module, function-level imports included (a lazy
import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "safecrs_core"

# bottom to top; a module may import from its own layer or any layer below
LAYERS = [
    ("foundation", {"sources", "traits", "rows"}),
    ("data", {"catalog", "conversations", "phrasing"}),
    ("stages", {"pipeline"}),
    ("safety", {"oracle"}),
    ("benchmark", {"benchmark"}),
    ("recommender", {"prompts", "metrics", "rewards", "grounding", "models", "plots", "baselines", "candidates"}),
    ("training", {"sft", "gdpo"}),
    ("evaluation", {"evaluate"}),
    ("interface", {"cli"}),
]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def package_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for the package's top-level modules."""
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    out: dict[str, set[str]] = {}
    for m in sorted(modules):
        tree = ast.parse((package / f"{m}.py").read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from .x import y / from . import x
                    names = [node.module] if node.module else [a.name for a in node.names]
                elif node.level == 0 and node.module and node.module.startswith(f"{package.name}."):
                    names = [node.module.split(".", 1)[1]]
                elif node.level == 0 and node.module == package.name:
                    names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith(f"{package.name}.")]
            deps.update(n.split(".")[0] for n in names if n.split(".")[0] in modules and n.split(".")[0] != m)
        out[m] = deps
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    missing = sorted(set(package_imports()) - set(LAYER_OF))
    assert not missing, f"place the new modules {missing} in a layer of tests/test_layers.py LAYERS"
    gone = sorted(set(LAYER_OF) - set(package_imports()))
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_no_import_cycles():
    cycle = find_cycle(package_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_imports():
    upward = [f"{m} ({LAYERS[LAYER_OF[m]][0]}) imports {d} ({LAYERS[LAYER_OF[d]][0]})"
              for m, deps in package_imports().items() for d in sorted(deps)
              if m in LAYER_OF and d in LAYER_OF and LAYER_OF[d] > LAYER_OF[m]]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_checks_can_fail(tmp_path):
    pkg = tmp_path / "safecrs_core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from safecrs_core.c import y\n")
    (pkg / "c.py").write_text("import safecrs_core.a\n")
    graph = package_imports(pkg)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

