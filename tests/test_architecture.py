"""The import rules of docs/architecture.md, checked from the code's own imports: the core
(`codec`, `crypto`, `protocol/`, `ledger/`, `consensus/`, with `errors` and
`limits`) imports nothing of the shell and no I/O library, each core room imports only the rooms
below it, and no module imports, even inside a function, a module that imports it back.

Imports under `if TYPE_CHECKING:` are left out: they never run. The checker is tested on the
real tree, and on a copy with an arrow or a cycle planted, which it must report.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "healthnode"

# What each room of the core may import (besides itself and the standard library).
CORE: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "limits": frozenset(),
    "codec": frozenset({"errors", "limits"}),
    "crypto": frozenset({"codec", "errors", "limits"}),
    "protocol": frozenset({"codec", "crypto", "errors", "limits"}),
    "ledger": frozenset({"protocol", "codec", "crypto", "errors", "limits"}),
    "consensus": frozenset({"protocol", "codec", "crypto", "errors", "limits"}),
}
_CORE_ROOMS: frozenset[str] = frozenset(CORE)
# What each room of the shell may import, besides the core: the node is the top of the house;
# the network, the store and the home never reach up into it, nor does the wallet.
SHELL: dict[str, frozenset[str]] = {
    "clock": frozenset(),
    "logs": frozenset({"crypto"}),  # its pseudonyms are keyed BLAKE2b
    "metrics": frozenset({"errors"}),
    "store": _CORE_ROOMS,
    "home": _CORE_ROOMS | {"clock", "logs", "store"},
    "net": _CORE_ROOMS | {"clock", "logs", "store"},
    "admin": _CORE_ROOMS | {"logs"},
    "wallet": _CORE_ROOMS | {"clock", "logs", "home", "net"},
    "node": _CORE_ROOMS | {"clock", "logs", "metrics", "store", "home", "net", "admin"},
}
# Outside libraries that do I/O or run tasks: the shell's alone.
IO_LIBRARIES = frozenset({"libp2p", "plyvel", "trio", "structlog", "socket", "subprocess",
                          "asyncio", "prometheus_client", "multiaddr", "pathlib", "tomllib",
                          "tomli_w", "shutil", "tempfile", "selectors"})


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imports(root: Path) -> dict[str, set[str]]:
    """Every module of the tree at `root` and what it imports (healthnode modules, resolved to
    the module; other libraries by their top name), at any depth of the file."""
    modules = {module_name(root, path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_only(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")
                    if path.name != "__init__.py":
                        package.pop()
                    package = package[:len(package) - node.level + 1]
                    base = ".".join(package + ([node.module] if node.module else []))
                found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names]
            else:
                continue
            for imported in found:
                if imported.split(".")[0] != "healthnode":
                    targets.add(imported.split(".")[0])
                    continue
                target = imported
                while target not in modules:
                    target = target.rpartition(".")[0]
                if target not in (name, "healthnode", ""):
                    targets.add(target)
        graph[name] = targets
    return graph


def room(module: str) -> str:
    """`healthnode.ledger.rules` -> `ledger`; `healthnode.crypto` -> `crypto`."""
    return module.split(".")[1] if "." in module else module


def wrong_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Each import that the rules forbid: of a room not in the importer's row (CORE, SHELL),
    and of an I/O library in the core. The tools and the command line may import any room."""
    rows = {**CORE, **SHELL}
    found = []
    for module, targets in sorted(graph.items()):
        own = room(module)
        if own not in rows:
            continue
        for target in sorted(targets):
            if not target.startswith("healthnode"):
                if own in CORE and target in IO_LIBRARIES:
                    found.append(f"{module} -> {target} (an I/O library in the core)")
                continue
            other = room(target)
            if other != own and other not in rows[own]:
                found.append(f"{module} -> {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among healthnode modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # iterative Tarjan: (node, iterator over its successors)
        work: list[tuple[str, Iterator[str]]] = []

        def enter(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            work.append((node, iter(sorted(t for t in graph.get(node, ())
                                           if t.startswith("healthnode")))))

        enter(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    enter(successor)
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_each_room_imports_only_the_rooms_its_row_allows() -> None:
    """The core imports nothing of the shell and only the rooms below it; in the shell, the
    network, the store, the home and the wallet never import the node."""
    graph = imports(ROOT)
    assert "healthnode.ledger.rules" in graph and "healthnode.node.daemon" in graph
    assert {room(module) for module in graph} <= {
        *CORE, *SHELL, "tools", "cli", "__main__", "healthnode"}
    assert wrong_arrows(graph) == []


def test_only_the_command_line_imports_the_tools() -> None:
    """The bench, the simulator, the nemesis and the soak drive nodes; no node code needs them."""
    graph = imports(ROOT)
    wrong = [f"{module} -> {target}" for module, targets in sorted(graph.items())
             if room(module) != "tools" and module not in ("healthnode.cli", "healthnode.__main__")
             for target in sorted(targets) if target.startswith("healthnode.tools")]
    assert wrong == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(imports(ROOT)) == []


def test_a_planted_arrow_or_cycle_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "healthnode"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rules = copy / "ledger" / "rules" / "__init__.py"
    rules.write_text(rules.read_text() + "\n\ndef planted() -> None:\n"
                     "    import healthnode.node.daemon  # noqa\n")
    assert wrong_arrows(imports(copy)) == [
        "healthnode.ledger.rules -> healthnode.node.daemon"]
    rules.write_text(rules.read_text() + "\nimport trio  # noqa\n")
    assert "healthnode.ledger.rules -> trio (an I/O library in the core)" in \
        wrong_arrows(imports(copy))
    gossip = copy / "net" / "gossip.py"  # the network reaching up into the node
    gossip.write_text(gossip.read_text() + "\n\ndef planted() -> None:\n"
                      "    from healthnode.node import operator  # noqa\n")
    assert "healthnode.net.gossip -> healthnode.node.operator" in wrong_arrows(imports(copy))
    client = copy / "node" / "client.py"  # daemon imports client: make client import daemon
    client.write_text(client.read_text() + "\n\ndef planted() -> None:\n"
                      "    from healthnode.node import daemon  # noqa\n")
    assert any({"healthnode.node.client", "healthnode.node.daemon"} <= set(cycle)
               for cycle in cycles(imports(copy)))


def test_no_service_takes_the_node() -> None:
    """The services get narrow ports (node/admission.Submitter, the store, callables), never
    the `Node` hub: only `healthnode run` (node/runner.py) imports node/daemon.py, not even
    for type checking."""
    importers = sorted(str(path.relative_to(ROOT)) for path in ROOT.rglob("*.py")
                       if path.name != "daemon.py" and (
                           "healthnode.node.daemon" in path.read_text(encoding="utf-8")
                           or "from healthnode.node import daemon" in
                           path.read_text(encoding="utf-8")))
    assert importers == ["node/runner.py"]
