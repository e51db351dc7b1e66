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
