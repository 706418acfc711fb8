"""The seams, read off the source: the gateway uses admission only through what ``sluice.admission`` exports (a
permit's own verbs, never a ticket's fields), and no module imports another that imports it back.

Imports are read with ``ast`` from the files, every import counted, those under ``if TYPE_CHECKING:`` and those
inside functions too: a circle that only the type checker sees is still a circle in the design."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import sluice.admission

SRC = pathlib.Path(sluice.admission.__file__).parents[2]  # .../src, holding sluice/
# Fields only a gate's ticket has: the gateway reads none of them (``.ticket`` itself included).
TICKET_ONLY = frozenset({"ticket", "granted", "on_preempt", "in_flight_at_dispatch", "arrival_s", "resumed"})


def modules(src: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of the sluice tree under ``src``, by dotted name (a package by its own name)."""
    found = {}
    for path in (src / "sluice").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: pathlib.Path) -> Iterator[tuple[str, list[str]]]:
    """(module imported from, names imported) for every import in a module, relative ones resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


def import_graph(src: pathlib.Path) -> dict[str, set[str]]:
    """Module -> the sluice modules it imports (``from package import submodule`` is an edge to the submodule)."""
    known = modules(src)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = set()
        for module, names in imports(name, path):
            submodules = {f"{module}.{n}" for n in names} & known.keys()
            if submodules:
                edges |= submodules
            if module in known and (not names or len(submodules) < len(names)):
                edges.add(module)
        edges.discard(name)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(frozenset(group))
    return found


def admission_names_used(src: pathlib.Path) -> list[str]:
    """What the gateway's modules import from admission: ``name`` when exported, ``module:name`` otherwise."""
    used = []
    for name, path in modules(src).items():
        if not name.startswith("sluice.gateway"):
            continue
        for module, names in imports(name, path):
            if module == "sluice.admission":
                used += names or [module]
            elif module.startswith("sluice.admission."):
                used += [f"{module}:{n}" for n in names or ["*"]]
    return used


def ticket_fields_read(src: pathlib.Path) -> list[str]:
    """Where the gateway's source reads a field only a gate's ticket has, as ``file:line .field``."""
    found = []
    for path in sorted((src / "sluice" / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in TICKET_ONLY:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.keyword) and node.arg in TICKET_ONLY:
                found.append(f"{path.name}:{node.value.lineno} {node.arg}=")
    return found


def test_the_gateway_imports_from_admission_only_what_it_exports():
    used = admission_names_used(SRC)
    assert used, "the gateway uses admission: the scan found nothing, it is broken"
    exported = set(sluice.admission.__all__) - {"Ticket"}  # a ticket is the gate's own: the gateway never builds one
    assert [n for n in used if n not in exported] == []


def test_the_gateway_reads_no_field_of_a_ticket():
    assert ticket_fields_read(SRC) == []


def test_no_gateway_or_admission_module_is_in_an_import_circle():
    ours = [c for c in circles(import_graph(SRC)) if any(m.startswith(("sluice.gateway", "sluice.admission"))
                                                          for m in c)]
    assert ours == []


def test_no_module_of_the_tree_is_in_an_import_circle():
    graph = import_graph(SRC)
    assert len(graph) > 50 and graph["sluice.gateway.service"], "the scan reads the tree: else it is broken"
    assert set(circles(graph)) == set()  # ``if TYPE_CHECKING:`` imports included


def nesting(tree: ast.AST, depth: int = 0) -> int:
    """The deepest nesting of blocks (if, for, while, try, with) inside one function or class body."""
    deepest = depth
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            deepest = max(deepest, nesting(child, 0))
        else:
            blocks = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith)
            deepest = max(deepest, nesting(child, depth + isinstance(child, blocks)))
    return deepest


def test_the_stream_relay_and_the_resend_loop_are_flat():
    deepest = {name: nesting(ast.parse((SRC / "sluice" / "gateway" / name).read_text()))
               for name in ("_relay.py", "_resume.py", "_flight.py", "service.py")}
    assert max(deepest.values()) <= 3, deepest
    assert nesting(ast.parse("def f():\n    while x:\n        try:\n            if y:\n                for z in w:\n"
                             "                    pass\n        except E:\n            pass\n")) == 4


def test_the_scan_finds_a_circle_and_an_internal_name_when_there_is_one(tmp_path):
    package = tmp_path / "sluice"
    (package / "gateway").mkdir(parents=True)
    (package / "admission").mkdir()
    (package / "__init__.py").write_text("")
    (package / "admission" / "__init__.py").write_text("")
    (package / "admission" / "_gate.py").write_text("class Ticket: ...\n")
    (package / "gateway" / "__init__.py").write_text("")
    (package / "gateway" / "a.py").write_text("from sluice.gateway import b\nfrom sluice.admission._gate import T\n")
    (package / "gateway" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sluice.gateway.a import X\n"
        "def f(permit):\n    return permit.ticket.on_preempt\n")
    assert circles(import_graph(tmp_path)) == [frozenset({"sluice.gateway.a", "sluice.gateway.b"})]
    assert admission_names_used(tmp_path) == ["sluice.admission._gate:T"]
    assert ticket_fields_read(tmp_path) == ["b.py:5 .on_preempt", "b.py:5 .ticket"]
