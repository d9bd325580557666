"""The package's layering, read from its source: the core imports no domain, no module imports itself back through
a circle, and no domain keeps a training loop of its own (issue 19).

Every ``import`` counts, also the ones deferred inside functions: a deferred import is still a dependency, and a
deferred core → domain import is the kind of special case the registries replace. ``python tests/test_layering.py``
prints the figures.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Container, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sparring"
DOMAINS = ("points", "recsys", "language", "streaming")


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, str]]:
    """Dotted module name → (file, the package its relative imports resolve against)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        found[".".join(parts)] = (path, package)
    return found


def _targets(node: ast.AST, package: str, known: Container[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        # `from pkg import submodule` depends on the submodule and, named outright, on pkg's __init__ (write
        # `import pkg.submodule as submodule` to depend on the submodule alone). Importing any module runs its
        # parent packages' __init__ first: that edge is implied for every module and not drawn.
        yield from (f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known)
        yield module


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package modules it imports (anywhere in the file)."""
    found = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, (path, package) in found.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            graph[name].update(t for t in _targets(node, package, found) if t in found and t != name)
    return graph


def domain_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in DOMAINS else None


def core_to_domain(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if domain_of(a) is None and domain_of(b) is not None)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def domain_optimizer_loops(root: Path = PACKAGE) -> list[str]:
    """Domain modules that build a ``torch.optim`` optimizer (a training loop of their own, outside the Trainer)."""
    loops = []
    for name, (path, _) in modules(root).items():
        if domain_of(name) is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and "torch.optim." in ast.unparse(node.func) + ".":
                if ast.unparse(node.func).split(".")[-1][:1].isupper():  # an optimizer class, not a helper
                    loops.append(f"{name}: {ast.unparse(node.func)}")
    return loops


def test_the_core_imports_no_domain() -> None:
    offenders = core_to_domain(import_graph())
    assert offenders == [], "core modules import domain modules (register them through the registries instead): " + \
        "; ".join(f"{a} -> {b}" for a, b in offenders)


def test_there_is_no_import_circle() -> None:
    found = circles(import_graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_domain_keeps_an_optimizer_loop_of_its_own() -> None:
    assert domain_optimizer_loops() == []


def test_the_checks_see_what_they_should() -> None:
    """The analysis itself: a made-up package with a core → domain import, a circle and a domain optimizer."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sparring"
        (root / "recsys").mkdir(parents=True)
        files = {
            "__init__.py": "",
            "a.py": "import sparring.b as b\n",
            "b.py": "def f():\n    from .a import g\n",  # deferred and relative: still a dependency
            "c.py": "from sparring import d\n",  # names the package: depends on its __init__ too
            "d.py": "",
            "core.py": "import sparring.recsys.train\n",
            "recsys/__init__.py": "",
            "recsys/train.py": "import torch\nopt = torch.optim.Adam([])\nfrom sparring.core import x\n",
        }
        for name, text in files.items():
            (root / name).write_text(text)
        graph = import_graph(root)
        assert core_to_domain(graph) == [("sparring.core", "sparring.recsys.train")]
        assert graph["sparring.c"] == {"sparring", "sparring.d"} and graph["sparring.a"] == {"sparring.b"}
        assert sorted(circles(graph)) == [["sparring.a", "sparring.b"], ["sparring.core", "sparring.recsys.train"]]
        assert domain_optimizer_loops(root) == ["sparring.recsys.train: torch.optim.Adam"]


if __name__ == "__main__":
    graph = import_graph()
    edges = core_to_domain(graph)
    found = circles(graph)
    loops = domain_optimizer_loops()
    for a, b in edges:
        sys.stdout.write(f"core -> domain: {a} -> {b}\n")
    for circle in found:
        sys.stdout.write(f"circle ({len(circle)} modules): {' '.join(circle)}\n")
    for loop in loops:
        sys.stdout.write(f"optimizer loop in a domain: {loop}\n")
    sys.stdout.write(f"{len(edges)} core -> domain imports, {len(found)} import circles, "
                     f"{len(loops)} domain optimizer loops\n")
    sys.exit(1 if edges or found or loops else 0)
