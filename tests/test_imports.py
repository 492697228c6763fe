"""The project's modules import one another in one direction: no import cycle, not even through an
import placed inside a function (which would only hide the cycle from Python, not remove it).

The graph is read from the source with `ast`, every import statement counted wherever it stands,
`if TYPE_CHECKING:` blocks included; `from package import name` points at the submodule `name`
when there is one, else at the package's __init__.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workbench", "store", "ui")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages (Alembic's scripts aside)."""
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if "migrations" in parts:
                continue  # run by Alembic, never imported by the project
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The project modules one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
    out = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(imported(module, path, node, modules))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
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


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles among the project's modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    """The check above cannot pass vacuously: a made-up graph with a cycle is caught, a DAG is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph()
    assert "workbench.engine" in graph["workbench.api"]  # the graph is really read from the code
    assert "workbench.methods.base" in graph["workbench.methods.sequoia"]


def test_lower_layers_do_not_reach_up():
    """The core never imports the layers built on it: the engine, methods, backends, models and the
    store know nothing of the API, the benchmark, the cluster, the CLI or the app."""
    graph = import_graph()
    upper = ("workbench.api", "workbench.cli", "workbench.bench", "workbench.cluster", "workbench.train",
             "workbench.advisor", "workbench.advise_cli", "ui")  # bench_cli, train_cli too
    core = ("workbench.engine", "workbench.methods", "workbench.backend", "workbench.models", "workbench.verify",
            "workbench.draft", "workbench.tree_shape", "workbench.trace", "workbench.metrics", "workbench.preflight", "workbench.record",
            "store")
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith(core)
                 for t in targets if t.startswith(upper))
    assert not bad, "imports from the core up to the layers above it:\n" + "\n".join(bad)
