"""diffusekit's import graph: the layer of each module, every upward arrow, every cycle, the function-level imports.

    python tools/import_graph.py [SRC]        (SRC: the folder holding diffusekit/, default src/)

An arrow A -> B means that importing A runs B: a module-level or a function-level import (both count, a
function-level import is a dependency all the same), plus the ``__init__`` of every package B sits in that
A is not itself inside (``from ..metrics.classifier import x`` runs ``metrics/__init__.py``). Imports under
``if TYPE_CHECKING:`` never run and are left out. A function-level import states why it is not at the top
with a ``# lazy: <reason>`` comment on its first line or the line above it.

The layers, lowest first; a module may import its own layer and the ones below, never one above.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "diffusekit"

# (layer, members): a member names a module and, for a package, everything inside it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("diffusekit", "errors", "_files", "_tensors", "_registry", "conditions")),  # no diffusekit imports
    # the Gaussian-path maths and the denoise -> denoise wrappers: tensors in, tensors out
    ("maths", ("schedules", "parameterizations", "time_sampling", "weighting", "targets", "derived", "denoiser",
               "loss", "cascade", "guidance", "images", "posthoc_ema")),
    ("parts", ("sampling", "likelihood", "networks", "text", "distributed", "monitor", "inverse")),  # each usable on its own
    ("data", ("data",)),  # reads a DataConfig without importing config (config validates against data)
    ("config", ("config",)),  # validates names against the registries of everything below it
    ("models", ("models",)),  # config or checkpoint -> network, denoiser, loss, weights
    ("latent", ("latent",)),  # a frozen autoencoder and the dataset encoded by it
    ("generate", ("generate", "generate_video")),
    ("metrics", ("metrics",)),  # evaluation samples through generate
    ("applications", ("rejection", "training")),
    ("cli", ("cli", "__main__")),
]

_REASON = re.compile(r"#\s*lazy:\s*\S")


@dataclass
class Import:
    source: str  # the importing module
    target: str  # the diffusekit module it runs, or the top-level name of an outside package
    line: int
    function_level: bool
    reason: str | None
    internal: bool
    implicit: bool = False  # a package __init__ run on the way to the named module


@dataclass
class Graph:
    src: Path
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)

    @property
    def edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for i in self.imports:
            if i.internal and i.target != i.source:
                out[i.source].add(i.target)
        return out


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``module`` (the most specific member wins), None when unlisted."""
    best, best_len = None, -1
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            name = PACKAGE if member == PACKAGE else f"{PACKAGE}.{member}"
            hit = module == name if member == PACKAGE else (module == name or module.startswith(name + "."))
            if hit and len(name) > best_len:
                best, best_len = index, len(name)
    return best


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool = False):
    """(import node, inside a function) for every import that runs, TYPE_CHECKING blocks skipped."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _walk(ast.Module(body=[other], type_ignores=[]), in_function)
        else:
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _walk(child, inner)


def _reason(lines: list[str], line: int) -> str | None:
    for text in (lines[line - 1], lines[line - 2] if line >= 2 else ""):
        match = _REASON.search(text)
        if match:
            return text[text.index("lazy:") + 5:].strip()
    return None


def build_graph(src: Path) -> Graph:
    src = Path(src)
    modules = {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}
    graph = Graph(src, modules)
    for name, path in modules.items():
        text = path.read_text()
        lines = text.splitlines()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, in_function in _walk(ast.parse(text, str(path))):
            reason = _reason(lines, node.lineno) if in_function else None
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            for target in dict.fromkeys(targets):
                if target.split(".")[0] != PACKAGE:
                    graph.imports.append(Import(name, target.split(".")[0], node.lineno, in_function, reason, False))
                    continue
                while target not in modules:  # `import diffusekit.x.y` where y is a name, not a module
                    target = target.rpartition(".")[0]
                graph.imports.append(Import(name, target, node.lineno, in_function, reason, True))
                parts = target.split(".")
                for k in range(2, len(parts)):  # the packages on the way, unless the importer is inside them
                    parent = ".".join(parts[:k])
                    if not (name == parent or name.startswith(parent + ".")):
                        graph.imports.append(Import(name, parent, node.lineno, in_function, reason, True, True))
    return graph


def upward_arrows(graph: Graph) -> list[Import]:
    """Internal imports whose target sits in a higher layer than the importer (modules in no layer: see
    :func:`unlayered`)."""
    out = []
    for i in graph.imports:
        if not i.internal:
            continue
        a, b = layer_of(i.source), layer_of(i.target)
        if a is not None and b is not None and b > a:
            out.append(i)
    return out


def unlayered(graph: Graph) -> list[str]:
    return [m for m in graph.modules if layer_of(m) is None]


def component(module: str) -> str:
    """The top-level module or subpackage ``module`` belongs to (diffusekit.training.loop -> diffusekit.training)."""
    return ".".join(module.split(".")[:2])


def component_graph(graph: Graph) -> Graph:
    """The graph with each subpackage folded into one node: a cycle here is two packages needing each other
    (training -> generate -> training.build) even when no single module is in a loop."""
    folded = Graph(graph.src, {component(m): graph.modules[m] for m in graph.modules})
    for i in graph.imports:
        if i.internal and component(i.source) != component(i.target):
            folded.imports.append(Import(component(i.source), component(i.target), i.line, i.function_level,
                                         i.reason, True, i.implicit))
    return folded


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each as one cycle through all its
    members where the group is a simple ring, else sorted; modules in no cycle are left out."""
    edges = graph.edges
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return sorted(groups)


def shortest_cycle(graph: Graph, group: list[str]) -> list[str]:
    """One shortest cycle inside a strongly connected group, from its first member back to it."""
    edges, members, start = graph.edges, set(group), group[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    return group


def function_level(graph: Graph) -> list[Import]:
    """Each function-level import statement once (not its implicit package arrows)."""
    seen, out = set(), []
    for i in graph.imports:
        if i.function_level and not i.implicit and (i.source, i.line, i.target) not in seen:
            seen.add((i.source, i.line, i.target))
            out.append(i)
    return out


def report(graph: Graph) -> str:
    def tag(module: str) -> str:
        layer = layer_of(module)
        return f"{module} [{'?' if layer is None else f'{layer} {LAYERS[layer][0]}'}]"

    edges = graph.edges
    up = upward_arrows(graph)
    groups = cycles(graph)
    folded = component_graph(graph)
    package_groups = cycles(folded)
    lazy = function_level(graph)
    internal_lazy = [i for i in lazy if i.internal]
    unexplained = [i for i in lazy if i.reason is None]
    arrows = {(i.source, i.target) for i in up}
    lines = [f"modules: {len(graph.modules)}  edges: {sum(map(len, edges.values()))}  upward arrows: {len(arrows)}  "
             f"cycles: {len(groups)} between modules, {len(package_groups)} between packages  "
             f"unlayered modules: {len(unlayered(graph))}  function-level imports: {len(lazy)} "
             f"({len(internal_lazy)} of diffusekit modules; {len(unexplained)} without a '# lazy:' reason)",
             "", "== layers (lowest first)"]
    lines += [f"{k:2d} {name}: {', '.join(members)}" for k, (name, members) in enumerate(LAYERS)]
    lines += ["", "== modules"]
    lines += [f"{tag(m)} -> {', '.join(sorted(edges[m])) or '-'}" for m in sorted(graph.modules)]
    lines += ["", f"== upward arrows ({len(arrows)})"]
    for source, target in sorted(arrows):
        where = sorted({(i.line, i.function_level) for i in up if (i.source, i.target) == (source, target)})
        at = ", ".join(f"{n}{'f' if f else ''}" for n, f in where)  # f: function-level
        lines.append(f"{tag(source)} -> {tag(target)}  (line {at})")
    lines += ["", f"== cycles ({len(groups)} strongly connected groups)"]
    for group in groups:
        lines.append(f"{len(group)} modules: {', '.join(group)}")
        lines.append("   e.g. " + " -> ".join(shortest_cycle(graph, group)))
    lines += ["", f"== cycles between packages ({len(package_groups)} strongly connected groups)"]
    for group in package_groups:
        lines.append(f"{len(group)} packages: {', '.join(group)}")
        lines.append("   e.g. " + " -> ".join(shortest_cycle(folded, group)))
    lines += ["", f"== unlayered modules ({len(unlayered(graph))})", *unlayered(graph)]
    lines += ["", f"== function-level imports ({len(lazy)})"]
    for i in lazy:
        path = graph.modules[i.source].relative_to(graph.src).as_posix()
        lines.append(f"{path}:{i.line}  {i.target}  {('lazy: ' + i.reason) if i.reason else 'NO REASON'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "src"
    print(report(build_graph(src)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
