"""A short run of ``benchmarks/load_test.py`` (the same code): no 5xx and every accepted create exists once.

The stack is the benchmark's (private Redis, gunicorn on production settings, the maintenance
worker) on pytest-django's test database. The queued-job cap is set low so that creates also
meet 429s under concurrency: a refused create must leave nothing behind. No timing assertions:
the figures live in ``benchmarks/results/load_test.json``.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.load_test import (
    check_exactly_once,
    exactly_once_violations,
    load_limits_env,
    load_stack,
    run_load,
    seed_users,
    summarise,
    upload_training_file,
)
from tests.helpers import require_postgres
from tests.integration.conftest import live_database_url

USERS = ["load-a", "load-b", "load-c", "load-d"]
QUEUED_CAP = 10
DURATION_S = 10.0


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_it_answers_a_short_load_without_5xx_and_creates_every_accepted_job_exactly_once(transactional_db, tmp_path):
    require_postgres()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    database_url = live_database_url()
    data_dir = tmp_path / "stack-data"
    data_dir.mkdir()
    with load_stack(
        database_url=database_url,
        log_dir=tmp_path,
        data_dir=data_dir,
        workers=2,
        threads=4,
        env_extra=load_limits_env(rate_limit="100000/min", queued_cap=QUEUED_CAP),
    ) as (base_url, env, _):
        keys = seed_users(env, USERS, model_path=str(tmp_path / "unused-weights"))
        file_ids = [upload_training_file(base_url, key) for key in keys]
        state = run_load(base_url=base_url, api_keys=keys, file_ids=file_ids, clients=20, duration=DURATION_S)

    summary = summarise(state, DURATION_S)
    assert summary["status_5xx"] == 0, state.errors[:5]
    assert summary["transport_errors"] == 0, state.errors[:5]
    check = check_exactly_once(state, database_url=database_url, usernames=USERS)
    assert exactly_once_violations(check) == [], check
    # Every user reached the cap: the creates past it were refused, and refused creates left no row.
    assert check["job_rows"] == check["accepted_creates"] == QUEUED_CAP * len(USERS)
    assert summary["status_429"] > 0
    # The mix ran: keyed creates were retried (replayed) and files were uploaded.
    assert summary["routes"]["POST /v1/tunings +key retry"]["requests"] > 0
    assert check["keys_used"] > 0
    assert summary["routes"]["POST /v1/files"]["statuses"].get("200", 0) > 0
