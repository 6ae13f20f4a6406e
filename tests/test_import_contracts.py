"""The import contracts in pyproject.toml hold for the tree and catch a core module doing I/O."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router", "edges", "switchboard")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def copy_of_the_tree(destination: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", destination)
    return destination


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "complaint"),
    [
        ("edges/core/hub.py", "import zmq", "edges.core is not allowed to import zmq"),
        ("edges/core/session.py", "import asyncio", "edges.core is not allowed to import asyncio"),
        ("router/core/manager.py", "import time", "router.core is not allowed to import time"),
        ("router/wire.py", "import socket", "router.wire is not allowed to import socket"),
        ("router/server.py", "import edges.core.hub", "router is not allowed to import edges"),
        ("edges/shell.py", "import switchboard.cli", "edges is not allowed to import switchboard"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, complaint: str) -> None:
    tree = copy_of_the_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert complaint in result.stdout
