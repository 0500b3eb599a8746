"""The control-plane benchmark (``benchmarks/control_plane.py``): a smoke run.

It starts the benchmark's own stack (private Redis, gunicorn on production settings, a real
Celery worker) on a throw-away PostgreSQL database and checks the result file's fields and
counts, never its timings. The create-path savings it measured are pinned in
``tests/tunings/test_create_queries.py``.
"""

from __future__ import annotations

import json
import os
import shutil

import psycopg
import pytest

from benchmarks import control_plane
from tests.helpers import require_postgres
from tests.integration.conftest import live_database_url


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_it_runs_the_quick_benchmark_and_writes_every_figure(db, tmp_path):
    require_postgres()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    # The benchmark's own database, next to the test database on the same server.
    server = live_database_url().rsplit("/", 1)[0]
    database = f"tl_cp_smoke_{os.getpid()}"
    try:
        assert control_plane.main(["--quick", "--out", str(tmp_path), "--pg", server, "--database", database]) == 0
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    result = json.loads((tmp_path / "control_plane.json").read_text())
    quick = control_plane.QUICK
    assert result["benchmark"] == "control_plane"
    assert {"cpu", "cores", "load_average_before", "load_average_after"} <= set(result["machine"])
    sequential = result["create"]["sequential"]
    assert sequential["n"] == len(sequential["raw_s"]) == quick.sequential
    assert 0 < sequential["ms"]["p50"] <= sequential["ms"]["p99"]
    concurrent = result["create"]["concurrent"]
    assert concurrent["threads"] == quick.threads
    assert concurrent["created"] == concurrent["statuses"]["200"] == len(concurrent["raw_s"]) > 0
    assert set(concurrent["statuses"]) == {"200"}  # limits raised: no 429, and no error
    assert concurrent["creates_per_s"] > 0
    fake = result["queue_latency"]["fake_engine"]
    assert [run["status"] for run in fake["runs"]] == ["succeeded"] * quick.fake_runs
    for run in fake["runs"]:
        # Claimed first; then spawned and running (the child may write its pid before the runner's event).
        assert run["to_claim_s"] <= min(run["to_spawn_s"], run["to_child_first_line_s"])
        assert max(run["to_spawn_s"], run["to_child_first_line_s"]) < 60
    assert fake["to_child_first_line_s"]["n"] == quick.fake_runs
    real = result["queue_latency"]["real_engine"]
    assert [run["status"] for run in real["runs"]] == ["succeeded"] * quick.real_runs
    assert all(run["to_spawn_s"] < run["to_first_step_s"] for run in real["runs"])
    profile = result["profile"]
    assert profile["queries_per_create"] == len(profile["queries"]) > 0
    assert profile["in_process_ms_per_create"] > 0
    assert {"tuning_job_create (service)", "SQL execute (all statements)"} <= set(profile["stages_ms_per_create"])
    assert set(result["verdict"]) == set(control_plane.TARGETS)
