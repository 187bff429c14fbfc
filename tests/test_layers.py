"""The package's import structure: no import cycles, and no import from a lower layer to a higher
one. Imports are read with ``ast`` from every module, function-level imports included (a lazy
import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "safecrs_core"

# bottom to top; a module may import from its own layer or any layer below. The subpackages
# (data, safety, train, evaluation) group the modules by the paper's pipeline; the layers are
# finer, per module. ``domains`` is the domain registry; the domain plug-ins (``domains.movies``, ``domains.games``) use the data,
# safety and recommender code and are reached from below only through the registry.
LAYERS = [
    ("foundation", {"data", "data.sources", "data.rows", "safety.traits", "domains"}),
    ("data", {"data.catalog", "data.conversations", "safety.phrasing"}),
    ("stages", {"pipeline"}),
    ("safety", {"safety.oracle"}),
    ("world", {"world"}),
    ("benchmark", {"benchmark"}),
    ("recommender", {"train.prompts", "evaluation.metrics", "train.rewards", "train.grounding", "train.models",
                     "evaluation.plots", "evaluation.baselines", "train.candidates"}),
    ("domain plug-ins", {"domains.movies", "domains.games"}),
    ("training", {"train.sft", "train.gdpo"}),
    ("evaluation", {"evaluation.evaluate"}),
    ("interface", {"cli"}),
    # the subpackages' own __init__ files hold only their docstring
    ("subpackages", {"safety", "train", "evaluation"}),
]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def _module_name(package: Path, path: Path) -> str:
    """``catalog`` for ``catalog.py``, ``domains`` for ``domains/__init__.py``, ``domains.movies``
    for ``domains/movies.py`` ("" for the package's own ``__init__``)."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for the package's modules, subpackages
    included (a subpackage's ``__init__`` is the module named like the subpackage)."""
    files = {_module_name(package, p): p for p in sorted(package.rglob("*.py"))}
    files.pop("", None)
    modules = set(files)

    def known(parts: list[str]) -> str | None:  # the longest prefix that names a module
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    out: dict[str, set[str]] = {}
    for m, path in sorted(files.items()):
        is_pkg = path.name == "__init__.py"
        home = m.split(".") if is_pkg else m.split(".")[:-1]  # the package the module lives in
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level >= 1:
                    base = home[: len(home) - (node.level - 1)]
                    if node.module:
                        targets = [base + node.module.split(".") + [a.name] for a in node.names]
                    else:
                        targets = [base + [a.name] for a in node.names]
                elif node.module and node.module.split(".")[0] == package.name:
                    targets = [node.module.split(".")[1:] + [a.name] for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == package.name]
            for t in targets:
                d = known(t)
                if d is not None and d != m:
                    deps.add(d)
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


def test_subpackage_imports_are_resolved(tmp_path):
    pkg = tmp_path / "safecrs_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import f\n")
    (pkg / "sub" / "__init__.py").write_text("def f():\n    import importlib\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom . import f\nfrom ..a import g\n")
    (pkg / "sub" / "c.py").write_text("from safecrs_core.sub.b import x\nfrom .b import y\n")
    assert package_imports(pkg) == {"a": {"sub"}, "sub": set(), "sub.b": {"a", "sub"}, "sub.c": {"sub.b"}}


def test_domain_plugins_are_reached_only_through_the_registry():
    """No module below the plug-ins imports one: the domain-free code asks the registry."""
    plugins = LAYERS[[name for name, _ in LAYERS].index("domain plug-ins")][1]
    graph = package_imports()
    wrong = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                   if d in plugins and m not in plugins)
    assert not wrong, wrong

