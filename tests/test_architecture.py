"""The package's layers (pyproject.toml `[tool.importlinter]`) hold: an import that points up, a command module
imported by anything but cli.py, or an import cycle inside a package fails here, and so fails CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root`, in a fresh interpreter so it analyses that copy."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """The package's Python sources and the contracts, copied so a test can plant a bad import."""
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(REPO / "affectclip", root / "affectclip", ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("module, line, contract", [
    ("models/registry.py", "import affectclip.data.transforms", "affectclip.models is not allowed to import affectclip.data"),
    ("eval/metrics.py", "from affectclip.train import config", "affectclip.eval is not allowed to import affectclip.train"),
    ("core/io.py", "import affectclip.cli", "affectclip.core is not allowed to import affectclip.cli"),
    ("eval/zeroshot.py", "import affectclip.eval.commands", "protected package affectclip.eval.commands"),
    ("losses/contrastive.py", "import affectclip.losses.mining", "No cycles are allowed in affectclip.losses"),
])
def test_a_planted_bad_import_breaks_a_contract(package_copy: Path, module: str, line: str, contract: str):
    path = package_copy / "affectclip" / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}\n")
        result = _lint(package_copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert contract in result.stdout, result.stdout
