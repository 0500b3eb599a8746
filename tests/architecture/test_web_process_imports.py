"""What a web process loads at startup: no torch, no transformers, no mlflow.

Every Django process (web, admin, commands) runs ``django.setup()``, which imports every
app, the in-process worker's task table included. The heavy libraries belong to the
processes that train, evaluate or mirror to MLflow; a web worker that loaded them would
start seconds slower and carry hundreds of MB it never uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "bitsandbytes", "peft", "deepspeed", "mlflow", "pandas", "rouge_score", "sacrebleu")


def test_it_starts_django_and_imports_every_api_without_heavy_libraries() -> None:
    probe = (
        "import json, sys, django; django.setup(); "
        "import tuninglab.urls, registry.apis, tunings.apis.jobs, tunings.apis.files, workers.inprocess; "
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tuninglab.settings"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
