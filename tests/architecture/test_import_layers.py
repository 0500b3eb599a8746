"""The import-layer contracts (`lint-imports`, configured in pyproject.toml) hold, and they bite.

`make lint` runs the same check on the real tree; these tests also prove that a forbidden
import *would* fail it, on a scratch copy of the packages, so a contract that silently
stopped matching anything (a renamed package, a typo in a layer) cannot pass unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "lora_engine",
    "tuninglab",
    "registry",
    "tunings",
    "workers",
    "inference",
    "observability",
    "webui",
    "playground",
)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _scratch_copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "assets", "*.pyc")
        )
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_keeps_every_contract_on_the_real_tree() -> None:
    result = _lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("tunings/services/jobs.py", "import workers.runner", "tunings is not allowed to import workers"),
        ("registry/services/versions.py", "import tunings.models", "registry is not allowed to import tunings"),
        ("tuninglab/errors.py", "import registry.models", "tuninglab is not allowed to import registry"),
        ("workers/sweeper.py", "import inference.apis", "workers is not allowed to import inference"),
        ("inference/gateway.py", "import observability.collectors", "inference is not allowed to import observability"),
        ("observability/views.py", "import webui.urls", "observability is not allowed to import webui"),
        ("webui/urls.py", "import playground.urls", "webui is not allowed to import playground"),
        ("lora_engine/lora.py", "import tuninglab.env", "lora_engine is not allowed to import tuninglab"),
        ("lora_engine/data.py", "import django.conf", "lora_engine is not allowed to import django"),
        ("lora_engine/protocol.py", "import torch", "lora_engine.protocol is not allowed to import torch"),
    ],
)
def test_it_fails_lint_on_a_forbidden_import(tmp_path: Path, module: str, line: str, expected: str) -> None:
    root = _scratch_copy(tmp_path)
    assert _lint(root).returncode == 0  # the untouched copy is clean
    target = root / module
    target.write_text(target.read_text() + f"\n{line}  # a forbidden import\n")
    result = _lint(root)
    assert result.returncode != 0
    assert expected in " ".join(result.stdout.split()), result.stdout
