"""STYLE rules 1 and 9: layer boundaries and an import with no side effects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_TORCH = ["rest_lightning/models", "rest_lightning/diffusion", "rest_lightning/streaming"]
FORBIDDEN = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "wandb", "webdataset"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PURE_TORCH)
def test_pure_torch_packages_import_no_framework(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN)
        for path in (ROOT / package).rglob("*.py")
        if _imports(path) & FORBIDDEN
    }
    assert not offenders, f"{package} must stay plain torch (STYLE rule 1): {offenders}"


def test_import_has_no_side_effects(tmp_path):
    packages = sorted(
        "rest_lightning." + p.parent.name for p in (ROOT / "rest_lightning").glob("*/__init__.py")
    )
    code = (
        f"import importlib, torch\n"
        f"for name in {packages!r}:\n"
        f"    importlib.import_module(name)\n"
        "assert not torch.cuda.is_initialized(), 'importing rest_lightning initialised CUDA'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == [], "importing rest_lightning wrote files into the working directory"


# --- the import graph (issue 13): every import, function-level ones included -----------------------------

PACKAGES = ("rest_lightning", "eval", "data_prep")


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (``pkg.mod`` names; a package is its
    ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {r for t in targets if (r := resolve(t)) and r != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
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
    graph = _import_graph()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds
    assert not _cycles(graph), f"import cycles (break them: keymaps import models, never the reverse): {_cycles(graph)}"


# (importer prefix, imported prefixes it must not reach): library layers never reach up.
LAYERS = [
    ("rest_lightning.models", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training",
                               "rest_lightning.streaming", "rest_lightning.diffusion", "eval", "data_prep")),
    ("rest_lightning.diffusion", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training",
                                  "rest_lightning.streaming", "eval", "data_prep")),
    ("rest_lightning.streaming", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training", "eval")),
    ("rest_lightning.config", ("rest_lightning.stages", "rest_lightning.models", "rest_lightning.training")),
    ("rest_lightning.stored_models", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training")),
    ("rest_lightning.conditioning", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training")),
    ("rest_lightning.frozen_teacher", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training")),
    ("rest_lightning.distillation", ("rest_lightning.stages", "rest_lightning.cli", "rest_lightning.training")),
    ("eval", ("rest_lightning.cli", "rest_lightning.stages", "rest_lightning.training")),
    ("data_prep", ("rest_lightning.cli", "rest_lightning.stages", "rest_lightning.training")),
]


@pytest.mark.parametrize(("importer", "forbidden"), LAYERS)
def test_layers_never_reach_up(importer, forbidden):
    graph = _import_graph()
    reach = {
        module: sorted(t for t in targets if t.startswith(forbidden))
        for module, targets in graph.items()
        if (module == importer or module.startswith(importer + ".")) and any(t.startswith(forbidden) for t in targets)
    }
    assert not reach, f"{importer} must not import {', '.join(forbidden)}: {reach}"
