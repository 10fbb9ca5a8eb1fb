"""The import graph of lomar and lomar_ops has no cycle, between modules or between
packages (lomar_ops, lomar.data, lomar.models, lomar.engine, ...), counting imports
inside functions too (a local import hides a cycle, it does not remove it); and the
bottom floor, lomar_ops, imports nothing of lomar."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lomar_ops", "lomar")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, modules: dict) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            # "from pkg import name": the submodule pkg.name when there is one, else pkg.
            names = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of nodes, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _package_of(module: str) -> str:
    """lomar_ops (one floor), lomar.<subpackage>, or lomar.<module> for top-level modules."""
    parts = module.split(".")
    return parts[0] if parts[0] == "lomar_ops" else ".".join(parts[:2])


def test_the_graph_sees_imports_of_every_kind():
    graph = _graph()
    assert "lomar_ops.ops.window_attention" in graph["lomar_ops"]  # from .ops import name
    assert "lomar.models.lomar_vit" in graph["lomar.models"]
    assert len(graph) > 60


def test_no_cycle_between_modules():
    # A package's __init__ that re-exports its modules is no cycle with them: the edge
    # module -> its own package's __init__ is left out (Python runs that __init__ first).
    graph = {m: {t for t in targets if not m.startswith(t + ".")}
             for m, targets in _graph().items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        source = _package_of(module)
        packages.setdefault(source, set()).update(
            _package_of(t) for t in targets if _package_of(t) != source)
    cycle = _cycle(packages)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("lomar_ops")))
def test_lomar_ops_imports_nothing_of_lomar(module):
    assert not any(t.split(".")[0] == "lomar" for t in _graph()[module]), module
