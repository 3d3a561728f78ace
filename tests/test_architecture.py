"""The layers only point down, and stages talk through typed values.

Layers, bottom up (docs/architecture.md):
- `aggregation/` and `emulator/`: libraries; nothing of the pipeline, Prefect or toloka-kit.
- `tasks/params.py`, `tasks/stages.py`, `tasks/settings.py`, `tasks/dataset_file.py`: the pipeline's
  vocabulary (and how the dataset file is read, which the run key needs); nothing of the project
  above them, no Prefect, no toloka-kit. `tasks/atomic_file.py` (files replaced whole) is there too,
  so that every layer that may import `tasks` can use it.
- `tasks/`: the stages; may import `aggregation`, never `flows`, `crowdclust` or `emulator`.
- `flows/`: wiring; may import `tasks`, never `crowdclust` or `emulator`.
- `crowdclust/`: the command line and the service, on top.

Imports are read from the source (every `import`, also inside functions), so a lazy import
cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"aggregation", "emulator", "tasks", "flows", "crowdclust", "tests", "bench"}
BOTTOM = {"tasks.params", "tasks.stages", "tasks.settings", "tasks.dataset_file", "tasks.atomic_file"}
FORBIDDEN = {
    "aggregation": {"tasks", "flows", "crowdclust", "emulator", "prefect", "toloka"},
    "emulator": {"tasks", "flows", "crowdclust", "prefect", "toloka", "aggregation"},
    "tasks": {"flows", "crowdclust", "emulator"},
    "flows": {"crowdclust", "emulator"},
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Dotted names of every module `path` imports (absolute imports; the project uses no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(layer: str) -> None:
    wrong = [
        f"{_dotted(path)} imports {name}"
        for path in _modules(layer)
        for name in sorted(_imports(path))
        if name.split(".")[0] in FORBIDDEN[layer]
    ]
    assert not wrong, wrong


def test_parameters_and_stage_types_sit_at_the_bottom() -> None:
    for name in sorted(BOTTOM):
        path = ROOT / Path(*name.split(".")).with_suffix(".py")
        project = {i for i in _imports(path) if i.split(".")[0] in PROJECT | {"prefect", "toloka"}}
        assert project <= BOTTOM, f"{name} imports {project - BOTTOM}"


def test_toloka_kit_is_imported_in_one_module_only() -> None:
    importers = {
        _dotted(path)
        for package in ("tasks", "flows", "crowdclust")
        for path in _modules(package)
        if any(name.split(".")[0] == "toloka" for name in _imports(path))
    }
    assert importers == {"tasks.toloka_api"}


def _code_strings(path: Path) -> list[str]:
    """String literals of a module's code (docstrings left out: they may name what they explain)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


RUN_FILES = ("summary.json", "report.html", "clusters.csv", "hits.json", "intruders.png")
# The exports' names, whole or as the f-string part before `{kind}`; not Toloka's
# `assignments_accepted_count`, a quality-control key.
RUN_EXPORTS = re.compile(r"assignments_(?:\w*\.tsv|$)")


def test_the_tag_format_and_the_run_folder_files_are_spelt_in_one_module_each() -> None:
    for package in ("tasks", "flows"):
        for path in _modules(package):
            where = path.relative_to(ROOT).as_posix()
            strings = _code_strings(path)
            if where != "tasks/toloka_api.py":
                assert not [s for s in strings if s.startswith("crowdclust:") and s != "crowdclust: "], where
            if where != "tasks/run_folder.py":
                assert not [s for s in strings for name in RUN_FILES if name in s], where
                assert not [s for s in strings if RUN_EXPORTS.search(s)], where


def _stage_objects() -> list[typing.Any]:
    from prefect import Flow, Task

    found = {}
    for package in ("tasks", "flows"):
        for path in _modules(package):
            module = importlib.import_module(_dotted(path))
            for value in vars(module).values():
                if isinstance(value, Task | Flow):
                    found[value.fn.__module__, value.fn.__qualname__] = value
    return list(found.values())


def _mentions_untyped_dict(hint: typing.Any) -> bool:
    if typing.get_origin(hint) is dict and typing.get_args(hint)[1:] == (typing.Any,):
        return True
    return any(_mentions_untyped_dict(arg) for arg in typing.get_args(hint))


def test_no_task_or_flow_signature_uses_an_untyped_dict_or_a_code_version() -> None:
    objects = _stage_objects()
    assert len(objects) >= 14, [o.name for o in objects]
    for obj in objects:
        hints = typing.get_type_hints(obj.fn)
        assert "code_version" not in inspect.signature(obj.fn).parameters, obj.name
        for name, hint in hints.items():
            assert not _mentions_untyped_dict(hint), f"{obj.name}: {name} is {hint}"
