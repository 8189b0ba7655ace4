"""The package's layers: no import cycle (function-level imports count), nothing imported from a higher layer,
and every function-level import says why it is not at the top (``# lazy: <reason>``); see tools/import_graph.py."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault("import_graph", import_graph)  # dataclasses look their module up there
SPEC.loader.exec_module(import_graph)


@pytest.fixture(scope="module")
def graph():
    return import_graph.build_graph(ROOT / "src")


def test_no_cycles_between_modules(graph):
    cycles = [import_graph.shortest_cycle(graph, group) for group in import_graph.cycles(graph)]
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_cycles_between_packages(graph):
    folded = import_graph.component_graph(graph)
    cycles = [import_graph.shortest_cycle(folded, group) for group in import_graph.cycles(folded)]
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones(graph):
    assert not import_graph.unlayered(graph), "add these modules to LAYERS in tools/import_graph.py"
    upward = [f"{i.source}:{i.line} -> {i.target}" for i in import_graph.upward_arrows(graph)]
    assert not upward, "\n".join(upward)


def test_every_function_level_import_gives_its_reason(graph):
    bare = [f"{graph.modules[i.source]}:{i.line} imports {i.target}" for i in import_graph.function_level(graph)
            if i.reason is None]
    assert not bare, "add '# lazy: <reason>' or move the import to the top:\n" + "\n".join(bare)


def _package(tmp_path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "diffusekit" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_tool_counts_function_level_imports_as_arrows_and_finds_the_cycle(tmp_path):
    src = _package(tmp_path, {
        "__init__.py": "",
        "generate.py": "from .training.build import build\n",
        "training/__init__.py": "",
        "training/build.py": "X = 1\n",
        "training/rundir.py": "def grid():\n    from ..generate import sample  # lazy: cold start\n",
        "schedules.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .generate import x\n"
                        "def f():\n    import json\n",
    })
    graph = import_graph.build_graph(src)
    assert graph.edges["diffusekit.training.rundir"] == {"diffusekit.generate"}
    # generate -> training.build also runs training/__init__.py: the packages need each other
    assert graph.edges["diffusekit.generate"] == {"diffusekit.training", "diffusekit.training.build"}
    assert graph.edges["diffusekit.schedules"] == set()  # TYPE_CHECKING imports never run
    assert import_graph.cycles(graph) == []  # no loop between single modules ...
    folded = import_graph.component_graph(graph)
    assert import_graph.cycles(folded) == [["diffusekit.generate", "diffusekit.training"]]  # ... but between packages
    assert [(i.source, i.reason) for i in import_graph.function_level(graph)] == [
        ("diffusekit.schedules", None), ("diffusekit.training.rundir", "cold start")]
    upward = {(i.source, i.target) for i in import_graph.upward_arrows(graph)}
    assert ("diffusekit.generate", "diffusekit.training.build") in upward  # generate sits below training
    assert ("diffusekit.training.rundir", "diffusekit.generate") not in upward
