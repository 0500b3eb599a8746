"""Service faults: Redis restarted, PostgreSQL connections killed, PostgreSQL restarted.

Each scenario runs the API in gunicorn (production settings) and a real ``celery worker``
(beat included: the sweeper) as separate processes, then breaks a service under them:

* Redis killed and started again empty (it keeps nothing on disk): creates are still accepted
  (the job row is the truth; the lost wake-ups are re-sent by the sweeper), the worker
  reconnects, every job runs once.
* ``pg_terminate_backend`` on every connection of the app: the API answers 503
  ``database_unavailable`` with ``Retry-After`` (never a 500), the next request reconnects, the
  running job finishes, a create retried with its key exists once.
* A private PostgreSQL cluster stopped ``-m immediate`` (a crash) for longer than a lease and
  started again: 503 during the outage, recovery after; the job finishes (the same attempt, or a
  new one resuming from its checkpoint when the sweeper re-queued it first), and a write with the
  previous attempt's fencing token is refused on the recovered server.

The measured recovery times are printed (``-s``) and recorded as test properties.

Covered elsewhere: a redelivered message is a no-op
(``tests/integration/test_job_execution.py::test_it_ignores_a_redelivery_after_the_visibility_timeout``,
``tests/workers/test_runner.py::test_it_does_not_run_a_job_twice_for_duplicate_messages``); a
wake-up lost between commit and send (broker down) is sent by the sweeper
(``tests/workers/test_sweeper_and_dispatch.py::test_it_survives_a_broker_that_is_down``,
``::test_it_requeues_an_expired_lease_and_sends_a_wakeup``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import InterfaceError, OperationalError, connection

from benchmarks.load_test import manage, seed_users, stack_env
from registry.models import ModelVersion
from tests.faults.conftest_services import (  # noqa: F401 - fixtures
    SERVICE_ENV,
    PrivatePostgres,
    api_server,
    private_postgres,
    private_redis,
    wait_for,
)
from tests.integration.conftest import live_database_url, live_stack, start_worker  # noqa: F401 - fixtures
from tunings.models import TuningJob

Status = TuningJob.Status
DATASET = (Path(__file__).resolve().parents[2] / "lora_engine" / "assets" / "identity.jsonl").read_bytes()
TERMINAL = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
# Slow enough steps that the fault lands while the job runs; checkpoints so a new attempt resumes.
LONG_JOB = {"max_steps": 16, "batch_size": 4, "checkpoint_every": 4, "step_delay_s": 0.5}
SHORT_JOB = {"max_steps": 4, "batch_size": 4}
PG_OUTAGE_S = 7.0

# Runs in the stack's database through the real fencing code: which tokens may still write the job?
FENCE_SNIPPET = """
import json, sys
from tunings.models import TuningJob
from workers.fencing import FencedWriter, LeaseLost
spec = json.load(sys.stdin)
out = {}
for name, token in spec["tokens"].items():
    writer = FencedWriter(job_id=spec["job"], token=token, on_lost=lambda: None)
    try:
        with writer.fenced():
            out[name] = "may write"
            if name == "stale":
                TuningJob.objects.filter(id=spec["job"]).update(current_step=0)
    except LeaseLost:
        out[name] = "fenced out"
print(json.dumps(out))
"""


def upload(client: httpx.Client) -> str:
    resp = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("id.jsonl", DATASET)})
    assert resp.status_code in (200, 201), resp.text
    return str(resp.json()["id"])


def create(client: httpx.Client, file_id: str, hp: dict[str, Any], key: str | None = None) -> httpx.Response:
    body = {"model": "tiny-llama", "training_file": file_id, "hyperparameters": hp}
    return client.post("/v1/tunings", json=body, headers={"Idempotency-Key": key} if key else {})


def assert_database_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "database_unavailable"
    assert resp.json()["error"]["type"] == "server_error"
    assert int(resp.headers["Retry-After"]) > 0


def db_job(job_id: str) -> TuningJob:
    return TuningJob.objects.get(id=job_id)


def terminate_app_connections() -> int:
    """``pg_terminate_backend`` on every other connection to the test database (API, worker)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cur.fetchone()[0])


def report(record_property: Any, name: str, seconds: float) -> None:
    record_property(name, round(seconds, 2))
    print(f"\n{name}: {seconds:.2f} s")


# --- the error mapping (any database) ------------------------------------------------------


@pytest.mark.parametrize("error", [OperationalError("server closed the connection"), InterfaceError("closed")])
def test_it_answers_503_in_the_error_shape_when_the_database_is_unreachable(api_client, monkeypatch, error):
    def unreachable(**_: Any) -> Any:
        raise error

    monkeypatch.setattr("tunings.apis.jobs.tuning_job_list", unreachable)
    resp = api_client.get("/v1/tunings")
    assert resp.status_code == 503
    assert resp.json()["error"] == {
        "message": "The database is unavailable; retry shortly (a create: with the same Idempotency-Key).",
        "type": "server_error",
        "param": None,
        "code": "database_unavailable",
    }
    assert resp["Retry-After"] == "5"


# --- Redis restarted ----------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_it_accepts_jobs_while_redis_is_down_and_runs_each_once_after_it_restarts(
    live_stack,  # noqa: F811
    base_model,
    api_client,
    start_worker,  # noqa: F811
    private_redis,  # noqa: F811 - the fixture imported above
    api_server,  # noqa: F811
    record_property,
):
    worker = start_worker("w-redis", env={**SERVICE_ENV, "REDIS_URL": private_redis.url}, beat=True)
    api = api_server(database_url=live_database_url(), redis_url=private_redis.url, api_key=api_client.raw_api_key)
    file_id = upload(api.client)

    private_redis.kill()
    down_at = time.monotonic()
    created = [create(api.client, file_id, SHORT_JOB, key=f"redis-down-{i}") for i in range(2)]
    report(record_property, "create_while_redis_down_s", max(r.elapsed.total_seconds() for r in created))
    assert [r.status_code for r in created] == [201, 201], [r.text for r in created]
    job_ids = [r.json()["id"] for r in created]
    assert {r.json()["status"] for r in created} == {"queued"}
    assert api.client.get(f"/v1/tunings/{job_ids[0]}").status_code == 200
    assert api.client.get("/v1/tunings").status_code == 200
    health = httpx.get(f"{api.base_url}/healthz", timeout=30)
    assert (health.status_code, health.json()["status"], health.json()["redis"]) == (200, "degraded", "error")
    # Let sweeps fire (and fail to publish) while Redis is away: the worker must survive them.
    time.sleep(max(0.0, 3 - (time.monotonic() - down_at)))
    assert {db_job(j).status for j in job_ids} == {Status.QUEUED}

    private_redis.start()
    restarted_at = time.monotonic()
    wait_for(
        lambda: any(db_job(j).status != Status.QUEUED for j in job_ids),
        timeout=90,
        what="a job to start after Redis came back",
    )
    report(record_property, "redis_restart_to_job_running_s", time.monotonic() - restarted_at)
    assert httpx.get(f"{api.base_url}/healthz", timeout=30).status_code == 200

    for job_id in job_ids:
        final = wait_for(lambda j=job_id: db_job(j) if db_job(j).status in TERMINAL else None, timeout=180, what=job_id)
        assert final.status == Status.SUCCEEDED, final.error
        assert final.attempt == 1  # ran once: the re-sent wake-ups did not start it twice
        assert ModelVersion.objects.filter(job_id=job_id).count() == 1
    assert "Connection to broker lost" in worker.log()  # the same worker lost Redis and came back
    assert re.search(r"sweep: .*dispatched=[1-9]", worker.log())  # the lost wake-ups were re-sent
    # A key used while Redis was down still names exactly one job.
    assert TuningJob.objects.filter(idempotency_key__startswith="redis-down-").count() == 2


# --- PostgreSQL connections killed --------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_it_answers_503_while_its_database_connections_are_killed_and_recovers(
    live_stack,  # noqa: F811
    base_model,
    api_client,
    start_worker,  # noqa: F811
    private_redis,  # noqa: F811 - the fixture imported above
    api_server,  # noqa: F811
    record_property,
):
    start_worker("w-pgkill", env={**SERVICE_ENV, "REDIS_URL": private_redis.url}, beat=True)
    # One thread: the request after the kill is served on the connection that was killed.
    api = api_server(
        database_url=live_database_url(), redis_url=private_redis.url, api_key=api_client.raw_api_key, threads=1
    )
    file_id = upload(api.client)
    job_id = create(api.client, file_id, LONG_JOB).json()["id"]
    wait_for(lambda: db_job(job_id).current_step >= 2, timeout=120, what="the job to train")
    assert api.client.get(f"/v1/tunings/{job_id}").status_code == 200

    assert terminate_app_connections() >= 2  # at least the API's and the worker's
    killed_at = time.monotonic()
    assert_database_unavailable(api.client.get(f"/v1/tunings/{job_id}"))
    assert api.client.get(f"/v1/tunings/{job_id}").status_code == 200  # the next request reconnects
    report(record_property, "pg_terminate_to_api_answering_s", time.monotonic() - killed_at)

    # A create that meets a killed connection is a 503 and leaves nothing; its retry creates one job.
    terminate_app_connections()
    assert_database_unavailable(create(api.client, file_id, SHORT_JOB, key="pg-kill"))
    retried = create(api.client, file_id, SHORT_JOB, key="pg-kill")
    assert retried.status_code == 201, retried.text
    assert TuningJob.objects.filter(idempotency_key="pg-kill").count() == 1
    assert api.client.post(f"/v1/tunings/{retried.json()['id']}/cancel").status_code == 200

    final = wait_for(lambda: db_job(job_id) if db_job(job_id).status in TERMINAL else None, timeout=180, what=job_id)
    assert final.status == Status.SUCCEEDED, final.error
    assert (final.current_step, final.progress) == (16, 100.0)
    record_property("pg_kill_job_attempts", final.attempt)  # 1: kept going; 2: resumed from a checkpoint
    print(f"pg_kill_job_attempts: {final.attempt}")
    assert ModelVersion.objects.filter(job_id=job_id).count() == 1


# --- PostgreSQL restarted (a private cluster) ---------------------------------------------


def private_job(server: PrivatePostgres, job_id: str) -> dict[str, Any]:
    with server.connect() as conn:
        row = conn.execute(
            "SELECT status, current_step, attempt, fencing_token, progress FROM tunings_tuningjob WHERE id = %s",
            [job_id],
        ).fetchone()
    return dict(zip(("status", "current_step", "attempt", "fencing_token", "progress"), row, strict=True))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_it_answers_503_while_postgres_restarts_and_refuses_a_fenced_out_write_after(
    live_stack,  # noqa: F811 - the fixtures imported above
    private_postgres,  # noqa: F811
    private_redis,  # noqa: F811
    api_server,  # noqa: F811
    start_worker,  # noqa: F811
    tiny_model_dir,
    settings,
    record_property,
):
    env = stack_env(
        database_url=private_postgres.database_url,
        redis_url=private_redis.url,
        data_dir=settings.DATA_DIR,
        extra=SERVICE_ENV,
    )
    (key,) = seed_users(env, ["restart"], model_path=str(tiny_model_dir))
    start_worker(
        "w-pgrestart",
        env={**SERVICE_ENV, "REDIS_URL": private_redis.url, "DATABASE_URL": private_postgres.database_url},
        beat=True,
    )
    api = api_server(database_url=private_postgres.database_url, redis_url=private_redis.url, api_key=key)
    file_id = upload(api.client)
    job_id = create(api.client, file_id, {**LONG_JOB, "max_steps": 24}).json()["id"]
    wait_for(lambda: private_job(private_postgres, job_id)["current_step"] >= 2, timeout=120, what="the job to train")

    private_postgres.stop()  # -m immediate: every connection drops, no shutdown checkpoint
    stopped_at = time.monotonic()
    outage = [api.client.get(f"/v1/tunings/{job_id}") for _ in range(3)]
    outage.append(create(api.client, file_id, SHORT_JOB, key="pg-restart"))
    for resp in outage:
        assert_database_unavailable(resp)
    # On its own connection, as a load balancer probes it (not on the API client's keep-alive pool).
    health = httpx.get(f"{api.base_url}/healthz", timeout=30)
    assert (health.status_code, health.json()["database"]) == (503, "error")
    # Longer than the 5 s lease: the running attempt's lease expires during the outage.
    time.sleep(max(0.0, PG_OUTAGE_S - (time.monotonic() - stopped_at)))

    private_postgres.start()
    started_at = time.monotonic()
    wait_for(
        lambda: api.client.get(f"/v1/tunings/{job_id}").status_code == 200,
        timeout=60,
        what="the API to answer again",
        interval=0.05,
    )
    report(record_property, "pg_restart_to_api_answering_s", time.monotonic() - started_at)
    retried = create(api.client, file_id, SHORT_JOB, key="pg-restart")
    assert retried.status_code == 201, retried.text
    assert api.client.post(f"/v1/tunings/{retried.json()['id']}/cancel").status_code == 200

    step_at_restart = private_job(private_postgres, job_id)["current_step"]
    wait_for(
        lambda: (
            (row := private_job(private_postgres, job_id))["current_step"] > step_at_restart
            or row["status"] in TERMINAL
        ),
        timeout=120,
        what="the job to make progress after the restart",
    )
    report(record_property, "pg_restart_to_job_progress_s", time.monotonic() - started_at)

    # Whichever attempt owns the job now (the same one, or a new one if the lease ran out), the
    # token before it is fenced out on the recovered server, and the current one is not.
    row = wait_for(
        lambda: (r := private_job(private_postgres, job_id)) and r["status"] == Status.RUNNING and r,
        timeout=60,
        what="the job to be running after the restart",
    )
    tokens = {"current": row["fencing_token"], "stale": row["fencing_token"] - 1}
    out = manage(env, "shell", "-c", FENCE_SNIPPET, stdin=json.dumps({"job": job_id, "tokens": tokens}))
    assert json.loads(out.strip().splitlines()[-1]) == {"current": "may write", "stale": "fenced out"}

    final = wait_for(
        lambda: private_job(private_postgres, job_id)["status"] in TERMINAL, timeout=180, what="the job to finish"
    ) and private_job(private_postgres, job_id)
    assert final["status"] == Status.SUCCEEDED, final
    assert (final["current_step"], final["progress"]) == (24, 100.0)  # no stale write rewound it
    record_property("pg_restart_job_attempts", final["attempt"])
    print(f"pg_restart_job_attempts: {final['attempt']}")
    with private_postgres.connect() as conn:
        assert conn.execute("SELECT count(*) FROM registry_modelversion WHERE job_id = %s", [job_id]).fetchone() == (1,)
        assert conn.execute(
            "SELECT count(*) FROM tunings_tuningjob WHERE idempotency_key = 'pg-restart'"
        ).fetchone() == (1,)
