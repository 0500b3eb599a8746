"""Control plane: job create through the API (latency, creates/s) and create → training child started.

The stack is ``benchmarks.load_test``'s, started here and killed at the end: a private
``redis-server`` (Celery broker + rate-limit counters), ``gunicorn tuninglab.wsgi`` with the
documented production worker and thread counts (``-w 4 --threads 16``, deploy/gunicorn.conf.py)
on ``tuninglab.settings_production``, and a PostgreSQL database dropped, created and migrated at
each run.

Three parts, in this order:

1. **Queue latency** (a real ``celery worker -Q cpu``, idle): create a job, then read when it was
   claimed (``started_at``), when the runner had the child spawned (the "Training process
   started" event, written right after ``Popen`` returned, i.e. after ``exec``) and, with the
   scripted fake engine (``tests/workers/data/fake_engine.py``, swapped in through
   ``TUNINGLAB_PYTHON``), when the child's own first line ran (the mtime of the ``fake.pid`` it
   writes). Every time is measured from the moment the create's response reached the client;
   all clocks are this machine's. Then the real engine, a few times: child spawned and its first
   training step (the first metrics event; the worker writes progress at once,
   ``TUNINGLAB_PROGRESS_WRITE_SECONDS=0``). The worker is stopped before part 2.
2. **Create latency and throughput** (no worker consumes: created jobs stay queued):
   ``POST /v1/fine_tuning/jobs`` naming an uploaded, validated file. p50/p99 at concurrency 1
   (one keep-alive client, sequential) after a warm-up, then creates/s with ``--threads``
   keep-alive clients, one user each. The per-key rate limit and the queued-jobs cap are raised
   for the run (``TUNINGLAB_RATE_LIMIT``, ``TUNINGLAB_MAX_QUEUED_JOBS_PER_USER``): the defaults
   (600/min, 50 waiting) would answer most creates with 429.
3. **Profile** (``manage.py shell`` on the same database, Django's test client, no HTTP): SQL
   statements per create (``CaptureQueriesContext``) and a cProfile of creates, summarised as
   milliseconds per create in the stages of the request.

Run: ``.venv/bin/python -m benchmarks.control_plane [--quick]``. Prints the table and writes
``benchmarks/results/control_plane.json``. Needs PostgreSQL at ``--pg`` and ``redis-server``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.common import machine, percentile, summary, table, write_result
from benchmarks.load_test import (
    Process,
    fresh_database,
    group_cpu_seconds,
    load_limits_env,
    machine_busy_seconds,
    manage,
    seed_users,
    stack_env,
    start_celery_worker,
    start_gunicorn,
    start_redis,
    upload_training_file,
)
from benchmarks.models import tiny_model

NAME = "control_plane"
REPO = Path(__file__).resolve().parent.parent
FAKE_ENGINE = REPO / "tests" / "workers" / "data" / "fake_engine.py"
CREATE_PATH = "/v1/fine_tuning/jobs"
MODEL_NAME = "tiny-llama"
# Small runs: the queue-latency jobs really train (fake or real engine); the create jobs never run.
JOB_HYPERPARAMETERS = {"max_steps": 2, "batch_size": 2}
# The fake child: two instant steps, an adapter, done (what a successful run prints).
FAKE_SCRIPT = [{"train": {"steps": 2}}, {"adapter": True}, {"done": True}]
TERMINAL = ("succeeded", "failed", "cancelled")
SPAWN_EVENT = "Training process started%"
TARGETS = {"create_p50_ms": 10.0, "create_p99_ms": 50.0, "creates_per_s": 200.0, "create_to_child_s": 1.0}

# Runs inside ``manage.py shell`` on the stack's database: SQL per create and a cProfile of
# creates through Django's test client (the whole middleware + view stack, no HTTP, no gunicorn).
PROFILE_SNIPPET = r"""
import cProfile, json, pstats, sys, time
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
spec = json.load(sys.stdin)
client = Client(HTTP_AUTHORIZATION="Bearer " + spec["key"], SERVER_NAME="127.0.0.1")
body = json.dumps(spec["body"])

def create():
    resp = client.post(spec["path"], body, content_type="application/json")
    if resp.status_code != 200:
        raise SystemExit(f"create answered {resp.status_code}: {resp.content[:300]!r}")

for _ in range(spec["warmup"]):
    create()
with CaptureQueriesContext(connection) as ctx:
    create()
queries = [q["sql"] for q in ctx.captured_queries]
started = time.perf_counter()
for _ in range(spec["repeats"]):
    create()
plain_ms = 1000 * (time.perf_counter() - started) / spec["repeats"]
profile = cProfile.Profile()
profile.enable()
for _ in range(spec["repeats"]):
    create()
profile.disable()
stats = pstats.Stats(profile)
stages = {}
for (filename, _line, func), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
    for stage, (file_part, name) in spec["stages"].items():
        if file_part in filename and func == name:
            stages[stage] = stages.get(stage, 0.0) + 1000 * cumulative / spec["repeats"]
top = sorted(
    (
        (1000 * tt / spec["repeats"], f"{filename.rsplit('/site-packages/', 1)[-1].replace(spec['repo'], '')}:{func}")
        for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items()
    ),
    reverse=True,
)[:15]
print(json.dumps({
    "queries": queries,
    "in_process_ms_per_create": plain_ms,
    "stages_ms_per_create": stages,
    "top_self_ms_per_create": [[round(ms, 3), name] for ms, name in top],
}))
"""

# Stage → (part of the file name, function name) whose cumulative time the profile reports.
PROFILE_STAGES = {
    "request (middleware + view)": ("django/core/handlers/base.py", "_get_response"),
    "authentication (API key)": ("tuninglab/auth.py", "authenticate"),
    "rate limit (throttle)": ("rest_framework/views.py", "check_throttles"),
    "body parse + validation": ("tunings/serializers/job_request.py", "job_spec_from_payload"),
    "tuning_job_create (service)": ("tunings/services/jobs.py", "tuning_job_create"),
    "  queued-job quota check": ("tunings/services/jobs.py", "_check_queued_quota"),
    "  file row locks": ("tunings/services/jobs.py", "_lock_live_files"),
    "  job events": ("tunings/services/state.py", "job_event_add"),
    "  move to queued": ("tunings/services/state.py", "tuning_job_queue"),
    "dispatch after commit (Redis send)": ("tuninglab/dispatch.py", "send_task"),
    "response body (job + queue info)": ("tunings/apis/jobs.py", "_job_body"),
    "  queue position": ("tunings/selectors/jobs.py", "tuning_job_queue_info"),
    "SQL execute (all statements)": ("psycopg/cursor.py", "execute"),
}


# --- the fake engine through the worker's environment --------------------------------------


def fake_engine_env(directory: Path) -> dict[str, str]:
    """Worker environment that makes its training child the scripted fake engine.

    The runner starts ``$TUNINGLAB_PYTHON -m lora_engine.train CONFIG``; a wrapper named as that
    Python runs ``fake_engine.py CONFIG`` instead (the way an operator's interpreter would be named).
    """
    script = directory / "fake-script.json"
    script.write_text(json.dumps(FAKE_SCRIPT))
    wrapper = directory / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENGINE}" "$3"\n')
    wrapper.chmod(0o755)
    return {"TUNINGLAB_PYTHON": str(wrapper), "FAKE_ENGINE_SCRIPT": str(script)}


# --- creates --------------------------------------------------------------------------------


def _create_body(file_id: str) -> dict[str, Any]:
    return {"model": MODEL_NAME, "training_file": file_id, "hyperparameters": JOB_HYPERPARAMETERS}


def create_job(client: httpx.Client, file_id: str) -> tuple[int, float, str]:
    """One ``POST /v1/fine_tuning/jobs`` → (status, seconds, job id or error text)."""
    started = time.perf_counter()
    resp = client.post(CREATE_PATH, json=_create_body(file_id))
    seconds = time.perf_counter() - started
    return resp.status_code, seconds, resp.json()["id"] if resp.status_code == 200 else resp.text[:300]


def _client(base_url: str, api_key: str) -> httpx.Client:
    # One connection per client, kept alive between requests.
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)


def measure_sequential(base_url: str, api_key: str, file_id: str, *, warmup: int, repeats: int) -> list[float]:
    """Seconds per create at concurrency 1 (one keep-alive client), after ``warmup`` untimed ones."""
    times: list[float] = []
    with _client(base_url, api_key) as client:
        for i in range(warmup + repeats):
            status, seconds, detail = create_job(client, file_id)
            if status != 200:
                raise RuntimeError(f"create answered {status}: {detail}")
            if i >= warmup:
                times.append(seconds)
    return times


@dataclass
class Concurrent:
    """What ``threads`` clients creating for ``duration`` seconds got."""

    threads: int
    elapsed_s: float
    created: int
    statuses: dict[str, int]
    latencies_s: list[float]
    errors: list[str]


def measure_concurrent(
    base_url: str, api_keys: list[str], file_ids: list[str], *, threads: int, duration: float, warmup: int = 3
) -> Concurrent:
    """``threads`` keep-alive clients (client i as user i) creating back to back for ``duration`` s.

    Each client first makes ``warmup`` untimed creates (connection set-up, worker warm-up), then
    all start together at a barrier.
    """
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    window: dict[str, float] = {}

    def loop(i: int) -> None:
        with _client(base_url, api_keys[i]) as client:
            for _ in range(warmup):
                create_job(client, file_ids[i])
            ready.wait()
            go.wait()
            deadline = window["deadline"]
            while time.monotonic() < deadline:
                try:
                    status, seconds, detail = create_job(client, file_ids[i])
                except httpx.HTTPError as exc:
                    status, seconds, detail = 0, 0.0, f"{type(exc).__name__}: {exc}"
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200:
                        latencies.append(seconds)
                    elif len(errors) < 20:
                        errors.append(f"{status}: {detail}")

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()  # every client warmed up
    started = time.monotonic()
    window["deadline"] = started + duration
    go.set()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    return Concurrent(threads, elapsed, len(latencies), statuses, latencies, errors)


# --- create → child started -------------------------------------------------------------------


def _job_timestamps(database_url: str, job_id: str) -> dict[str, Any]:
    """The job's status and, as Unix times, its claim, its child's spawn and its first metrics event."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, extract(epoch from started_at) FROM tunings_tuningjob WHERE id = %s", [job_id]
        ).fetchone()
        spawn = conn.execute(
            "SELECT min(extract(epoch from created_at)) FROM tunings_jobevent WHERE job_id = %s AND message LIKE %s",
            [job_id, SPAWN_EVENT],
        ).fetchone()
        first_step = conn.execute(
            "SELECT min(extract(epoch from created_at)) FROM tunings_jobevent WHERE job_id = %s AND type = 'metrics'",
            [job_id],
        ).fetchone()
    status, claimed = row if row else (None, None)
    return {
        "status": status,
        "claimed": float(claimed) if claimed is not None else None,
        "spawned": float(spawn[0]) if spawn and spawn[0] is not None else None,
        "first_step": float(first_step[0]) if first_step and first_step[0] is not None else None,
    }


def wait_for_job(database_url: str, job_id: str, *, timeout: float) -> dict[str, Any]:
    """Poll until ``job_id`` is finished; its timestamps (raises on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = _job_timestamps(database_url, job_id)
        if stamps["status"] in TERMINAL:
            return stamps
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not finish within {timeout}s: {_job_timestamps(database_url, job_id)}")


def measure_queue_latency(
    *, base_url: str, api_key: str, file_id: str, database_url: str, data_dir: Path, runs: int, timeout: float
) -> list[dict[str, Any]]:
    """``runs`` times: create a job on an idle worker, wait until it is done; seconds from the
    create's response to claim, spawn, the child's first line (fake engine) and first step."""
    rows = []
    with _client(base_url, api_key) as client:
        for _ in range(runs):
            status, _, job_id = create_job(client, file_id)
            answered = time.time()
            if status != 200:
                raise RuntimeError(f"create answered {status}: {job_id}")
            stamps = wait_for_job(database_url, job_id, timeout=timeout)
            pid_file = data_dir / "jobs" / job_id / "fake.pid"
            child_ran = pid_file.stat().st_mtime_ns / 1e9 if pid_file.exists() else None
            rows.append(
                {
                    "job": job_id,
                    "status": stamps["status"],
                    "to_claim_s": _since(stamps["claimed"], answered),
                    "to_spawn_s": _since(stamps["spawned"], answered),
                    "to_child_first_line_s": _since(child_ran, answered),
                    "to_first_step_s": _since(stamps["first_step"], answered),
                }
            )
            # Let the worker finish the task (ack, the slot's re-dispatch) and wait idle again.
            time.sleep(0.5)
    return rows


def _since(stamp: float | None, origin: float) -> float | None:
    return None if stamp is None else stamp - origin


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    gunicorn_workers: int
    gunicorn_threads: int
    users: int
    threads: int
    warmup: int
    sequential: int
    duration_s: float
    fake_runs: int
    real_runs: int
    profile_repeats: int


DEFAULT = Config(4, 16, 16, 16, 30, 400, 15.0, 12, 3, 40)
QUICK = Config(4, 16, 4, 4, 10, 60, 4.0, 3, 1, 10)


@contextmanager
def _stack(
    database_url: str, tmp: Path, config: Config, limits: dict[str, str]
) -> Iterator[tuple[str, dict[str, str], set[int]]]:
    """Redis + gunicorn on the benchmark's database → (base URL, env, their process groups); killed on exit."""
    procs: list[Process] = []
    try:
        redis_proc, redis_url = start_redis(tmp)
        procs.append(redis_proc)
        env = stack_env(database_url=database_url, redis_url=redis_url, data_dir=tmp / "data", extra=limits)
        web, base_url = start_gunicorn(env, tmp, workers=config.gunicorn_workers, threads=config.gunicorn_threads)
        procs.append(web)
        yield base_url, env, {p.proc.pid for p in procs if p.proc is not None}
    finally:
        for proc in reversed(procs):
            proc.kill()


@contextmanager
def _worker(env: dict[str, str], tmp: Path, name: str, extra: dict[str, str]) -> Iterator[None]:
    proc = start_celery_worker({**env, **extra}, tmp, name=name, queues="cpu")
    try:
        yield
    finally:
        proc.kill()


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": 1000 * percentile(values, 50),
        "p99": 1000 * percentile(values, 99),
        "mean": 1000 * statistics.fmean(values),
    }


def _latency_stats(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    values = [r[key] for r in rows if r[key] is not None]
    return summary(values) if values else None


def run(config: Config, *, pg: str, database: str) -> dict[str, Any]:
    """Start the stack, run the three parts, stop everything; the result's payload."""
    database_url = fresh_database(pg, database)
    run_id = uuid.uuid4().hex[:6]
    users = [f"cp-{run_id}-seq", f"cp-{run_id}-queue", *(f"cp-{run_id}-{i}" for i in range(config.users))]
    limits = load_limits_env(rate_limit="1000000/min", queued_cap=1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="tl-cp-"))
    try:
        (tmp / "data").mkdir()
        manage(stack_env(database_url=database_url, redis_url="", data_dir=tmp / "data"), "migrate", "--noinput")
        with _stack(database_url, tmp, config, limits) as (base_url, env, pgids):
            keys = seed_users(env, users, model_path=str(tiny_model()))
            files = [upload_training_file(base_url, key) for key in keys]
            seq_key, queue_key, load_keys = keys[0], keys[1], keys[2:]
            seq_file, queue_file, load_files = files[0], files[1], files[2:]

            # 1. create → child started, on an idle worker (fake engine, then the real one).
            queue_env = {"TUNINGLAB_PROGRESS_WRITE_SECONDS": "0"}
            with _worker(env, tmp, "cp-fake", {**queue_env, **fake_engine_env(tmp)}):
                fake_rows = measure_queue_latency(
                    base_url=base_url,
                    api_key=queue_key,
                    file_id=queue_file,
                    database_url=database_url,
                    data_dir=tmp / "data",
                    runs=config.fake_runs,
                    timeout=60,
                )
            with _worker(env, tmp, "cp-real", queue_env):
                real_rows = measure_queue_latency(
                    base_url=base_url,
                    api_key=queue_key,
                    file_id=queue_file,
                    database_url=database_url,
                    data_dir=tmp / "data",
                    runs=config.real_runs,
                    timeout=180,
                )

            # 2. creates: sequential, then concurrent (no worker on the training queues any more).
            load_before = os.getloadavg()[0]
            sequential = measure_sequential(
                base_url, seq_key, seq_file, warmup=config.warmup, repeats=config.sequential
            )
            # CPU the stack (gunicorn, Redis, this database's PostgreSQL backends) and the whole
            # machine spent meanwhile: what one create costs, and what other tenants took.
            stack_cpu = group_cpu_seconds(pgids, database=database)
            web_cpu = group_cpu_seconds(pgids)
            busy_before = machine_busy_seconds()
            client_cpu = time.process_time()
            concurrent = measure_concurrent(
                base_url, load_keys, load_files, threads=config.threads, duration=config.duration_s
            )
            client_cpu = time.process_time() - client_cpu
            stack_cpu = group_cpu_seconds(pgids, database=database) - stack_cpu
            web_cpu = group_cpu_seconds(pgids) - web_cpu
            busy_after = machine_busy_seconds()
            machine_busy_pct = 100 * (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1e-9)

            # 3. profile one create in-process on the same database.
            profile_spec = {
                "key": seq_key,
                "path": CREATE_PATH,
                "body": _create_body(seq_file),
                "warmup": 5,
                "repeats": config.profile_repeats,
                "stages": PROFILE_STAGES,
                "repo": str(REPO) + "/",
            }
            out = manage(env, "shell", "-c", PROFILE_SNIPPET, stdin=json.dumps(profile_spec))
            profile = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    seq_ms = _ms(sequential)
    conc_ms = _ms(concurrent.latencies_s) if concurrent.latencies_s else None
    creates_per_s = concurrent.created / concurrent.elapsed_s
    fake_spawn = _latency_stats(fake_rows, "to_spawn_s")
    fake_child = _latency_stats(fake_rows, "to_child_first_line_s")
    return {
        "config": {
            **config.__dict__,
            "settings": "tuninglab.settings_production (DEBUG off)",
            "database": "PostgreSQL, fresh database, migrated",
            "broker": "private redis-server",
            "limits_raised": limits,
            "create": f"POST {CREATE_PATH} {json.dumps(_create_body('<uploaded file>'))}",
            "queue_latency_worker": "celery -A tuninglab worker -Q cpu --pool solo --concurrency 1, idle; "
            "TUNINGLAB_PROGRESS_WRITE_SECONDS=0",
            "fake_engine": f"{FAKE_ENGINE.relative_to(REPO)} via TUNINGLAB_PYTHON, script {json.dumps(FAKE_SCRIPT)}",
            "targets": TARGETS,
        },
        "create": {
            "sequential": {"n": len(sequential), "ms": seq_ms, "raw_s": sequential, "load_average_before": load_before},
            "concurrent": {
                "threads": concurrent.threads,
                "elapsed_s": concurrent.elapsed_s,
                "created": concurrent.created,
                "creates_per_s": creates_per_s,
                "statuses": concurrent.statuses,
                "ms": conc_ms,
                "client_cpu_cores": client_cpu / concurrent.elapsed_s,
                "stack_cpu_cores": stack_cpu / concurrent.elapsed_s,
                "stack_cpu_ms_per_create": 1000 * stack_cpu / max(concurrent.created, 1),
                # Of which gunicorn + Redis; the rest is PostgreSQL's backends for this database.
                "web_cpu_ms_per_create": 1000 * web_cpu / max(concurrent.created, 1),
                # Both cores: 100 % = the machine saturated (by us, the client and other tenants).
                "machine_busy_pct": machine_busy_pct,
                "cores": os.cpu_count(),
                "errors_sample": concurrent.errors,
                "raw_s": concurrent.latencies_s,
            },
        },
        "queue_latency": {
            "fake_engine": {
                "runs": fake_rows,
                "to_claim_s": _latency_stats(fake_rows, "to_claim_s"),
                "to_spawn_s": fake_spawn,
                "to_child_first_line_s": fake_child,
            },
            "real_engine": {
                "runs": real_rows,
                "to_spawn_s": _latency_stats(real_rows, "to_spawn_s"),
                "to_first_step_s": _latency_stats(real_rows, "to_first_step_s"),
            },
        },
        "profile": {**profile, "queries_per_create": len(profile["queries"])},
        "verdict": {
            "create_p50_ms": seq_ms["p50"] <= TARGETS["create_p50_ms"],
            "create_p99_ms": seq_ms["p99"] <= TARGETS["create_p99_ms"],
            "creates_per_s": creates_per_s >= TARGETS["creates_per_s"],
            "create_to_child_s": fake_child is not None and fake_child["median"] <= TARGETS["create_to_child_s"],
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """The headline numbers against their targets, then the profile's stages."""
    seq = result["create"]["sequential"]
    conc = result["create"]["concurrent"]
    queue = result["queue_latency"]
    rows: list[dict[str, Any]] = [
        {"what": "create p50, concurrency 1 (ms)", "value": seq["ms"]["p50"], "target": "<= 10"},
        {"what": "create p99, concurrency 1 (ms)", "value": seq["ms"]["p99"], "target": "<= 50"},
        {"what": f"creates/s, {conc['threads']} clients", "value": conc["creates_per_s"], "target": ">= 200"},
    ]
    rows.append(
        {
            "what": "stack CPU per create (ms), concurrent",
            "value": conc["stack_cpu_ms_per_create"],
            "spread": f"web+redis {conc['web_cpu_ms_per_create']:.1f}, machine busy {conc['machine_busy_pct']:.0f} %",
        }
    )
    if conc["ms"]:
        rows.append(
            {
                "what": f"create p50 / p99 at {conc['threads']} clients (ms)",
                "value": conc["ms"]["p50"],
                "spread": f"p99 {conc['ms']['p99']:.1f}",
            }
        )
    for label, stats in (
        ("create -> claimed (s), fake engine", queue["fake_engine"]["to_claim_s"]),
        ("create -> child spawned (s), fake engine", queue["fake_engine"]["to_spawn_s"]),
        ("create -> child first line (s), fake engine", queue["fake_engine"]["to_child_first_line_s"]),
        ("create -> child spawned (s), real engine", queue["real_engine"]["to_spawn_s"]),
        ("create -> first step (s), real engine", queue["real_engine"]["to_first_step_s"]),
    ):
        if stats:
            rows.append(
                {
                    "what": label,
                    "value": stats["median"],
                    "spread": f"{stats['min']:.3f}..{stats['max']:.3f} (n={stats['n']})",
                    "target": "<= 1" if "first line" in label else "",
                }
            )
    profile = result["profile"]
    rows.append({"what": "SQL statements per create", "value": profile["queries_per_create"]})
    rows.append({"what": "in-process create, test client (ms)", "value": profile["in_process_ms_per_create"]})
    lines = [
        table(
            rows,
            [("what", "measure", ""), ("value", "median", ".3f"), ("spread", "spread", ""), ("target", "target", "")],
        )
    ]
    stage_rows = [{"stage": k, "ms": v} for k, v in profile["stages_ms_per_create"].items()]
    lines += [
        "",
        "profile (cProfile, ms per create, cumulative; cProfile inflates pure-Python parts):",
        table(stage_rows, [("stage", "stage", ""), ("ms", "ms", ".2f")]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of < 60 s")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--database", default="tl_control_plane", help="dropped and created afresh for the run")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/)")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: the documented 4)")
    parser.add_argument("--threads", type=int, default=None, help="gunicorn threads per worker (default: 16)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    config = replace(
        config,
        gunicorn_workers=args.workers or config.gunicorn_workers,
        gunicorn_threads=args.threads or config.gunicorn_threads,
    )
    tiny_model()  # the real engine's runs train it (built once, cached)
    info = machine()
    started = time.monotonic()
    payload = run(config, pg=args.pg, database=args.database)
    payload["wall_time_s"] = time.monotonic() - started
    print(format_table(payload))
    out = args.out / f"{NAME}.json" if args.out is not None and args.out.suffix != ".json" else args.out
    path = write_result(NAME, payload, machine_info=info, out=out)
    print(f"wrote {path} in {payload['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
