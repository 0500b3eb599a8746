"""lora_engine stays plain PyTorch: no Django, Celery, DRF or project package, at import time or in the source.

import-linter's `engine-standalone` contract (pyproject.toml) checks the import graph
statically; this test imports every engine module in a fresh interpreter and looks at what
really got loaded, so it also catches a third-party package that pulls in Django.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import lora_engine

PACKAGE_DIR = Path(lora_engine.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
PROJECT_PACKAGES = ("tuninglab", "registry", "tunings", "workers", "inference", "observability", "webui", "playground")
FORBIDDEN = (*PROJECT_PACKAGES, "django", "rest_framework", "drf_spectacular", "celery", "kombu")


def _module_names() -> list[str]:
    names = []
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("lora_engine", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _loaded_forbidden_modules(extra_code: str = "") -> list[str]:
    """Import every engine module in a fresh interpreter and list forbidden packages it loaded."""
    code = (
        "import importlib, json, os, sys\n"
        "os.environ.pop('DJANGO_SETTINGS_MODULE', None)\n"
        f"for name in {_module_names()!r}:\n"
        "    importlib.import_module(name)\n"
        f"{extra_code}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _forbidden_imports(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        else:
            continue
        found += [f"{filename}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_it_imports_every_engine_module_without_a_forbidden_package() -> None:
    assert {"lora_engine.lora", "lora_engine.adapter_io", "lora_engine.merge"} <= set(_module_names())

    assert _loaded_forbidden_modules() == []
    # The probe does see them: a third-party package and a project package.
    assert _loaded_forbidden_modules("import celery, kombu") == ["celery", "kombu"]
    assert _loaded_forbidden_modules("import workers") == ["workers"]


def test_it_has_no_forbidden_import_statements() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        offenders += _forbidden_imports(path.read_text(), str(path.relative_to(REPO_ROOT)))

    assert offenders == []
    assert _forbidden_imports("from rest_framework import views\nimportlib.import_module('django.db')", "x.py") == [
        "x.py:1 rest_framework",
        "x.py:2 django.db",
    ]


def test_it_forbids_what_the_import_linter_contract_forbids() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "engine-standalone"]

    assert contract["source_modules"] == ["lora_engine"]
    assert sorted(contract["forbidden_modules"]) == sorted(FORBIDDEN)
    assert set(PROJECT_PACKAGES) == set(config["root_packages"]) - {"lora_engine"}
