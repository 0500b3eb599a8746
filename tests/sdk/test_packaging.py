"""The SDK package stays installable on its own: every subpackage is listed, httpx is the only dependency."""

from __future__ import annotations

import tomllib
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk"


def test_it_packages_every_subpackage_and_depends_on_httpx_only():
    project = tomllib.loads((SDK_DIR / "pyproject.toml").read_text())
    packages = set(project["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(SDK_DIR).parts) for init in (SDK_DIR / "tuninglab_sdk").rglob("__init__.py")
    }
    assert on_disk == packages
    assert [dep.split(">")[0].split("=")[0] for dep in project["project"]["dependencies"]] == ["httpx"]
    assert project["project"]["scripts"] == {"tuninglab": "tuninglab_sdk.cli:main"}


def test_it_imports_no_django_or_server_code():
    for source in (SDK_DIR / "tuninglab_sdk").rglob("*.py"):
        text = source.read_text()
        for forbidden in ("import django", "from django", "from tunings", "from tuninglab.", "from workers"):
            assert forbidden not in text, f"{source.name} contains {forbidden!r}"
