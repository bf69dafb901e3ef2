"""The project's import graph read with ``ast`` (no module is imported): every ``import`` and
``from ... import`` statement of every module, also those inside functions."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

PACKAGES = ("mghash_tf", "export", "edge_demo", "demo", "benchmarks")


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a submodule when ``from package import submodule``)
    names: tuple  # names taken by ``from target import ...``
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict:
    """``{module name: path}`` for every ``.py`` file of :data:`PACKAGES` under ``root``."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if ".venv" not in path.parts:
                out[module_name(root, path)] = path
    return out


def imports_of(source: str, text: str, known) -> list:
    """The imports in ``text``, the code of module ``source``; ``known`` is the set of module
    names, used to tell ``from package import submodule`` from ``from module import name``."""
    package = source if source in known and _is_package(source, known) else source.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out += [Import(source, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    out.append(Import(source, sub, (), node.lineno))
                else:
                    out.append(Import(source, base, (a.name,), node.lineno))
    return out


def _is_package(name: str, known) -> bool:
    return any(other.startswith(name + ".") for other in known)


def project_imports(root: Path) -> list:
    mods = modules(root)
    known = set(mods)
    return [imp for name, path in mods.items() for imp in imports_of(name, path.read_text(), known)]


def top(name: str) -> str:
    return name.split(".")[0]


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.startswith(zone + ".")


def violations(imports) -> list:
    """Every import against the dependency rules, as readable lines."""
    bad = []
    for imp in imports:
        where = f"{imp.source}:{imp.line} imports {imp.target}"
        if in_zone(imp.source, "mghash_tf.core"):
            if top(imp.target) in ("tensorflow", "keras", "tf_keras", "tensorflow_datasets"):
                bad.append(f"{where}: the core must not import TensorFlow/Keras")
            elif top(imp.target) == "mghash_tf" and imp.target != "mghash_tf" and not in_zone(
                    imp.target, "mghash_tf.core"):
                bad.append(f"{where}: the core imports only the core")
        if top(imp.source) == "mghash_tf" and top(imp.target) in ("export", "edge_demo", "demo"):
            bad.append(f"{where}: the library never imports its apps")
        apps = {top(imp.source), top(imp.target)}
        if apps == {"export", "edge_demo"} or (top(imp.source) in ("export", "edge_demo")
                                                and top(imp.target) == "demo"):
            bad.append(f"{where}: export and edge_demo never import each other (or the demo)")
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and imp.target != imp.source:
            bad.append(f"{where}: private name(s) {private} of another module")
        if imp.target.rpartition(".")[2].startswith("_") and not imp.target.endswith("__"):
            bad.append(f"{where}: a private module")
    return bad


def cycles(imports) -> list:
    """Module-level cycles among project modules (each as a list of names), none expected."""
    graph = {}
    for imp in imports:
        if top(imp.target) in PACKAGES and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found
