"""Load test: concurrent API clients against a production-like stack on loopback.

The stack, started here and always killed at the end:

* a private ``redis-server`` on a free loopback port (Celery broker + throttle counters; it keeps
  nothing on disk);
* ``gunicorn`` (``--workers`` processes, ``--threads`` each) serving ``tuninglab.settings_production`` (DEBUG
  off, the deploy checks) on PostgreSQL database ``tl_load`` (dropped, created and migrated at each run);
* one real ``celery worker`` with beat on the ``maintenance`` queue: the lease sweeper, which
  tops up the wake-ups of queued jobs every 2 s.

No worker consumes the training queues, so every created job stays ``queued``: hundreds of real
trainings would swamp a small machine and measure the engine, not the API. What is measured is
the web tier: authentication, throttling, idempotency, the create transaction (quota check, file
locks, job + events + dispatch to Redis after commit), reads, lists and streamed uploads.

Each client loops over a weighted mix of operations (``MIX``) for ``--duration`` seconds:

* ``create``: ``POST /v1/tunings`` without a key;
* ``create+key``: the same with a fresh ``Idempotency-Key``; half of them are then retried with
  the same key (``create retry``), a quarter as two requests at once, the way a client that timed
  out and retried would race its own first attempt;
* ``get``: ``GET /v1/tunings/{id}`` of a job this client created; ``list``: ``GET /v1/tunings``;
* ``upload``: ``POST /v1/files`` (multipart, a 6 KB JSONL validated on the way in).

Checks: no 5xx and no transport error; every accepted create exists exactly once (the set of job
rows of the load users equals the set of ids the API answered with, every key owns exactly one
row, and every answer for one key names the same job). 429s (per-key rate limit, queued-job cap)
are counted apart: they are the API doing its job, not errors.

Run: ``.venv/bin/python -m benchmarks.load_test [--clients 50 --duration 60]``.
Prints the table and writes ``benchmarks/results/load_test.json``. Needs PostgreSQL at
``--pg`` (default ``postgres://postgres@127.0.0.1:5432``) and ``redis-server`` on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "load_test.json"
DATASET = (REPO / "lora_engine" / "assets" / "identity.jsonl").read_bytes()
MODEL_NAME = "tiny-llama"
JOB_HYPERPARAMETERS = {"max_steps": 6, "batch_size": 4}
READY_TIMEOUT_S = 120.0

# Operation → weight in each client's random mix.
MIX = {"create": 2, "create+key": 2, "get": 3, "list": 2, "upload": 1}
# Operation → the route it calls, as the results name it ("create retry": the same key again).
ROUTES = {
    "create": "POST /v1/tunings",
    "create+key": "POST /v1/tunings +key",
    "create retry": "POST /v1/tunings +key retry",
    "get": "GET /v1/tunings/{id}",
    "list": "GET /v1/tunings",
    "upload": "POST /v1/files",
}

# Seeds the load users (one API key each) and the base model row the creates name, in the stack's
# database, through the services the API itself uses. Run with ``manage.py shell``: the load
# client stays a plain HTTP client that imports no Django.
SEED_SNIPPET = """
import json, sys
from registry.models import BaseModel
from tuninglab.services import api_key_create, user_get_or_create
spec = json.load(sys.stdin)
BaseModel.objects.get_or_create(
    name=spec["model"], defaults={"path": spec["model_path"], "architecture": "LlamaForCausalLM"}
)
print(json.dumps([api_key_create(owner=user_get_or_create(username=u), name="load")[1] for u in spec["users"]]))
"""


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child in its own process group, logging to a file; ``kill()`` takes the whole group."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {text!r} after {timeout}s:\n{self.log()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def wait_until_answers(url: str, timeout: float = READY_TIMEOUT_S, proc: Process | None = None) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-4000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def start_redis(log_dir: Path) -> tuple[Process, str]:
    """A private, diskless ``redis-server`` on a free loopback port → (process, REDIS_URL)."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = Process("redis", argv, env=dict(os.environ), log_path=log_dir / "redis.log")
    proc.wait_for_log("Ready to accept connections", timeout=30)
    return proc, f"redis://127.0.0.1:{port}/0"


def stack_env(
    *, database_url: str, redis_url: str, data_dir: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of the web and worker processes: production settings on loopback, short timers."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tuninglab.settings_production",
        # Random per run: production settings refuse a missing or development secret.
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Plain HTTP on loopback, no proxy in front.
        "SECURE_SSL_REDIRECT": "false",
        "TRUST_X_FORWARDED_PROTO": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TUNINGLAB_DATA_DIR": str(data_dir),
        "TUNINGLAB_INPROCESS_WORKER": "false",
        "TUNINGLAB_MLFLOW_ENABLED": "false",
        "TUNINGLAB_AUTO_EVALUATE": "false",
        "TUNINGLAB_LEASE_SECONDS": "5",
        "TUNINGLAB_HEARTBEAT_SECONDS": "1",
        "TUNINGLAB_SWEEP_SECONDS": "2",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


def start_gunicorn(env: dict[str, str], log_dir: Path, *, workers: int = 3, threads: int = 4) -> tuple[Process, str]:
    """``gunicorn tuninglab.wsgi`` on a free loopback port → (process, base URL), once /healthz answers."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "tuninglab.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        # gunicorn's default (2 s) closes an idle keep-alive connection just as a client may reuse
        # it: the client then reads a reset instead of an answer. Upstream of a load balancer the
        # server's idle timeout must outlast the balancer's (60 s on the common ones); so here.
        "--keep-alive",
        "75",
    ]
    proc = Process("gunicorn", argv, env=env, log_path=log_dir / "gunicorn.log")
    base_url = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{base_url}/healthz", proc=proc)
    return proc, base_url


def start_celery_worker(
    env: dict[str, str], log_dir: Path, *, name: str, queues: str, beat: bool = False, pool: str = "solo"
) -> Process:
    """A real ``celery -A tuninglab worker`` (with beat when asked), once it logs ``ready.``."""
    argv = [sys.executable, "-m", "celery", "-A", "tuninglab", "worker", "-Q", queues, "--pool", pool]
    argv += ["--concurrency", "1", "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]
    if beat:
        argv += ["-B", "-s", str(log_dir / f"beat-{name}")]
    proc = Process(f"worker {name}", argv, env=env, log_path=log_dir / f"worker-{name}.log")
    proc.wait_for_log(" ready.")
    return proc


def manage(env: dict[str, str], *args: str, stdin: str = "", timeout: float = 300) -> str:
    """Run ``manage.py`` with the stack's environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def seed_users(env: dict[str, str], usernames: list[str], model_path: str) -> list[str]:
    """Create the users (one API key each) and the base model row; the raw keys, in order."""
    spec = {"users": usernames, "model": MODEL_NAME, "model_path": model_path}
    out = manage(env, "shell", "-c", SEED_SNIPPET, stdin=json.dumps(spec))
    return list(json.loads(out.strip().splitlines()[-1]))


# --- the load -----------------------------------------------------------------------------


@dataclass
class Sample:
    op: str
    status: int  # 0: transport error (timeout, connection reset)
    seconds: float
    at: float  # when it finished (time.monotonic())


@dataclass
class LoadState:
    samples: list[Sample] = field(default_factory=list)
    accepted_ids: set[str] = field(default_factory=set)
    # Idempotency-Key → every job id a 2xx answer for that key named.
    ids_by_key: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    uploaded_ids: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


async def _call(state: LoadState, client: httpx.AsyncClient, op: str, method: str, url: str, **kw: Any) -> Any:
    started = time.perf_counter()
    try:
        resp = await client.request(method, url, **kw)
    except httpx.HTTPError as exc:
        state.samples.append(Sample(op, 0, time.perf_counter() - started, time.monotonic()))
        state.errors.append(f"{op} {url}: {type(exc).__name__}: {exc}")
        return None
    state.samples.append(Sample(op, resp.status_code, time.perf_counter() - started, time.monotonic()))
    if resp.status_code >= 500:
        state.errors.append(f"{op} {url}: {resp.status_code} {resp.text[:300]}")
    return resp


async def _client_loop(
    state: LoadState, base_url: str, api_key: str, file_id: str, deadline: float, rng: random.Random
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    body = {"model": MODEL_NAME, "training_file": file_id, "hyperparameters": JOB_HYPERPARAMETERS}
    mine: list[str] = []
    ops, weights = list(MIX), list(MIX.values())
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            if op == "create":
                resp = await _call(state, client, op, "POST", "/v1/tunings", json=body)
                if resp is not None and resp.status_code == 201:
                    state.accepted_ids.add(resp.json()["id"])
                    mine.append(resp.json()["id"])
            elif op == "create+key":
                key = str(uuid.uuid4())
                key_headers = {"Idempotency-Key": key}
                first = [_call(state, client, op, "POST", "/v1/tunings", json=body, headers=key_headers)]
                roll = rng.random()
                if roll < 0.25:  # a retry racing its own first attempt
                    first.append(
                        _call(state, client, "create retry", "POST", "/v1/tunings", json=body, headers=key_headers)
                    )
                answers = list(await asyncio.gather(*first))
                if 0.25 <= roll < 0.75:  # a retry after the first answer (or its loss)
                    answers.append(
                        await _call(
                            state, client, "create retry", "POST", "/v1/tunings", json=body, headers=key_headers
                        )
                    )
                for resp in answers:
                    if resp is not None and resp.status_code in (200, 201):
                        job_id = resp.json()["id"]
                        state.ids_by_key[key].add(job_id)
                        state.accepted_ids.add(job_id)
                        mine.append(job_id)
            elif op == "get" and mine:
                await _call(state, client, op, "GET", f"/v1/tunings/{rng.choice(mine)}")
            elif op in {"get", "list"}:
                await _call(state, client, "list", "GET", "/v1/tunings", params={"limit": 20})
            else:
                # Same content, another name: the blob is stored once, every upload is its own file row.
                files = {"file": (f"load-{uuid.uuid4().hex[:8]}.jsonl", DATASET, "application/jsonl")}
                resp = await _call(state, client, op, "POST", "/v1/files", data={"purpose": "fine-tune"}, files=files)
                if resp is not None and resp.status_code in (200, 201):
                    state.uploaded_ids.add(resp.json()["id"])


def upload_training_file(base_url: str, api_key: str) -> str:
    """One fine-tune file per user (set-up, not measured): the file every create of that user names."""
    files = {"file": ("load.jsonl", DATASET, "application/jsonl")}
    resp = httpx.post(
        f"{base_url}/v1/files",
        headers={"Authorization": f"Bearer {api_key}"},
        data={"purpose": "fine-tune"},
        files=files,
        timeout=60,
    )
    resp.raise_for_status()
    return str(resp.json()["id"])


def run_load(
    *, base_url: str, api_keys: list[str], file_ids: list[str], clients: int, duration: float, seed: int = 0
) -> LoadState:
    """``clients`` concurrent loops for ``duration`` seconds; client i uses key ``i % len(api_keys)``
    and that user's training file ``file_ids[i % len(api_keys)]`` (``upload_training_file``)."""
    state = LoadState()

    async def main() -> None:
        deadline = time.monotonic() + duration
        await asyncio.gather(
            *(
                _client_loop(
                    state,
                    base_url,
                    api_keys[i % len(api_keys)],
                    file_ids[i % len(api_keys)],
                    deadline,
                    random.Random(seed * 1000 + i),
                )
                for i in range(clients)
            )
        )

    asyncio.run(main())
    return state


# --- checks and figures -------------------------------------------------------------------


def check_exactly_once(state: LoadState, *, database_url: str, usernames: list[str]) -> dict[str, Any]:
    """Compare what the API answered with the rows in the database.

    Returns counts and lists of violations (empty lists when every accepted create exists exactly
    once and nothing else was created).
    """
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT j.id, j.idempotency_key FROM tunings_tuningjob j JOIN auth_user u ON u.id = j.owner_id "
            "WHERE u.username = ANY(%s)",
            [usernames],
        ).fetchall()
        files = {
            r[0]
            for r in conn.execute(
                "SELECT f.id FROM tunings_trainingfile f JOIN auth_user u ON u.id = f.owner_id "
                "WHERE u.username = ANY(%s)",
                [usernames],
            ).fetchall()
        }
    db_ids = Counter(r[0] for r in rows)
    per_key = Counter(r[1] for r in rows if r[1] is not None)
    return {
        "accepted_creates": len(state.accepted_ids),
        "job_rows": len(rows),
        "keys_used": len(state.ids_by_key),
        "accepted_missing_in_db": sorted(state.accepted_ids - set(db_ids)),
        "rows_never_accepted": sorted(set(db_ids) - state.accepted_ids),
        "keys_with_several_rows": sorted(k for k, n in per_key.items() if n != 1),
        "keys_answered_with_several_ids": sorted(k for k, ids in state.ids_by_key.items() if len(ids) != 1),
        "accepted_keys_without_row": sorted(k for k in state.ids_by_key if per_key.get(k, 0) != 1),
        "uploads_missing_in_db": sorted(state.uploaded_ids - files),
    }


def exactly_once_violations(check: dict[str, Any]) -> list[str]:
    """The names of the non-empty violation lists of ``check_exactly_once``."""
    return [name for name, value in check.items() if isinstance(value, list) and value]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(state: LoadState, duration: float) -> dict[str, Any]:
    """Per-operation counts, status classes and latency percentiles (ms); totals."""
    by_op: dict[str, list[Sample]] = defaultdict(list)
    for s in state.samples:
        by_op[s.op].append(s)
    routes = {}
    for op, samples in sorted(by_op.items(), key=lambda item: ROUTES[item[0]]):
        ok = [s.seconds * 1000 for s in samples if 200 <= s.status < 300]
        statuses = Counter(s.status for s in samples)
        routes[ROUTES[op]] = {
            "requests": len(samples),
            "per_s": round(len(samples) / duration, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "p50_ms": round(_percentile(ok, 0.50), 1) if ok else None,
            "p99_ms": round(_percentile(ok, 0.99), 1) if ok else None,
            "mean_ms": round(statistics.fmean(ok), 1) if ok else None,
        }
    statuses = Counter(s.status for s in state.samples)
    # Latency drift over the run (the queue grows with every create): all 2xx, first vs last 10 s.
    first_at = min((s.at for s in state.samples), default=0.0)
    last_at = max((s.at for s in state.samples), default=0.0)
    early = [s.seconds * 1000 for s in state.samples if 200 <= s.status < 300 and s.at - first_at <= 10]
    late = [s.seconds * 1000 for s in state.samples if 200 <= s.status < 300 and last_at - s.at <= 10]
    return {
        "routes": routes,
        "p50_ms_first_10s": round(_percentile(early, 0.5), 1) if early else None,
        "p50_ms_last_10s": round(_percentile(late, 0.5), 1) if late else None,
        "requests": len(state.samples),
        "requests_per_s": round(len(state.samples) / duration, 1),
        "status_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "status_429": statuses.get(429, 0),
        "status_409": statuses.get(409, 0),
        "transport_errors": statuses.get(0, 0),
    }


def format_table(summary: dict[str, Any]) -> str:
    head = f"{'route':<28} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses"
    lines = [head, "-" * len(head)]
    for op, r in summary["routes"].items():
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
        lines.append(f"{op:<28} {r['requests']:>8} {r['per_s']:>7} {p50:>8} {p99:>8}  {r['statuses']}")
    lines.append(
        f"total {summary['requests']} requests, {summary['requests_per_s']} req/s; "
        f"5xx {summary['status_5xx']}, 429 {summary['status_429']}, 409 {summary['status_409']}, "
        f"transport errors {summary['transport_errors']}; "
        f"p50 first 10 s {summary['p50_ms_first_10s']} ms, last 10 s {summary['p50_ms_last_10s']} ms"
    )
    return "\n".join(lines)


def group_cpu_seconds(pgids: set[int], *, database: str | None = None) -> float:
    """CPU seconds (user + system) used so far by the live processes of the process groups ``pgids``,
    plus the PostgreSQL backends serving ``database`` (titled ``postgres: [cluster:] user db host``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
            serves_db = database is not None and title[:1] == ["postgres:"] and database in title[1:5]
            if int(fields[2]) in pgids or serves_db:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / tick, sum(values) / tick


# --- the stand-alone run ------------------------------------------------------------------


def fresh_database(admin_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``admin_url``; its URL.

    Every run starts empty: job reads cost more as the queue grows (a job's queue position is
    counted over the queued jobs ahead of it), so figures are comparable only from the same start.
    """
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url}/{name}"


def queued_job_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM tunings_tuningjob WHERE status = 'queued'").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def load_stack(
    *,
    database_url: str,
    log_dir: Path,
    data_dir: Path,
    workers: int,
    threads: int,
    env_extra: dict[str, str] | None = None,
) -> Iterator[tuple[str, dict[str, str], set[int]]]:
    """Private Redis + gunicorn + the maintenance worker (sweeper) → (base URL, env, process groups);
    all killed on exit."""
    procs: list[Process] = []
    try:
        redis_proc, redis_url = start_redis(log_dir)
        procs.append(redis_proc)
        env = stack_env(database_url=database_url, redis_url=redis_url, data_dir=data_dir, extra=env_extra)
        procs.append(start_celery_worker(env, log_dir, name="load-maintenance", queues="maintenance", beat=True))
        web, base_url = start_gunicorn(env, log_dir, workers=workers, threads=threads)
        procs.append(web)
        yield base_url, env, {p.proc.pid for p in procs if p.proc is not None}
    finally:
        for proc in reversed(procs):
            proc.kill()


def load_limits_env(*, rate_limit: str, queued_cap: int) -> dict[str, str]:
    """The limits of the load run (the defaults would answer most creates with 429 within a minute)."""
    return {"TUNINGLAB_RATE_LIMIT": rate_limit, "TUNINGLAB_MAX_QUEUED_JOBS_PER_USER": str(queued_cap)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--users", type=int, default=10, help="users (one API key each) the clients share")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--rate-limit", default="3000/min", help="TUNINGLAB_RATE_LIMIT per API key")
    parser.add_argument("--queued-cap", type=int, default=2000, help="TUNINGLAB_MAX_QUEUED_JOBS_PER_USER")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--database", default="tl_load", help="dropped and created afresh for the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    database_url = fresh_database(args.pg, args.database)
    run_id = uuid.uuid4().hex[:8]
    usernames = [f"load-{run_id}-{i}" for i in range(args.users)]
    tmp = Path(tempfile.mkdtemp(prefix="tl-load-"))
    try:
        data_dir = tmp / "data"
        data_dir.mkdir()
        extra = load_limits_env(rate_limit=args.rate_limit, queued_cap=args.queued_cap)
        env = stack_env(database_url=database_url, redis_url="", data_dir=data_dir, extra=extra)
        manage(env, "migrate", "--noinput")
        with load_stack(
            database_url=database_url,
            log_dir=tmp,
            data_dir=data_dir,
            workers=args.workers,
            threads=args.threads,
            env_extra=extra,
        ) as (base_url, stack, pgids):
            # Jobs never run here, so the row only has to name a base model (no weights are read).
            keys = seed_users(stack, usernames, model_path=str(REPO / ".cache" / "tiny-model-v3"))
            file_ids = [upload_training_file(base_url, key) for key in keys]
            stack_cpu_before = group_cpu_seconds(pgids, database=args.database)
            machine_before = machine_busy_seconds()
            client_cpu_before = time.process_time()
            started = time.monotonic()
            state = run_load(
                base_url=base_url,
                api_keys=keys,
                file_ids=file_ids,
                clients=args.clients,
                duration=args.duration,
                seed=args.seed,
            )
            elapsed = time.monotonic() - started
            client_cpu = time.process_time() - client_cpu_before
            stack_cpu = group_cpu_seconds(pgids, database=args.database) - stack_cpu_before
            machine_after = machine_busy_seconds()
            loadavg = os.getloadavg()
            check = check_exactly_once(state, database_url=database_url, usernames=usernames)
            queued_at_end = queued_job_count(database_url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = summarise(state, elapsed)
    violations = exactly_once_violations(check)
    print(format_table(summary))
    print(
        f"exactly once: {'ok' if not violations else 'VIOLATED: ' + ', '.join(violations)}",
        {k: v for k, v in check.items() if not isinstance(v, list)},
    )
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "clients": args.clients,
            "duration_s": args.duration,
            "elapsed_s": round(elapsed, 1),
            "users": args.users,
            "gunicorn": {"workers": args.workers, "threads": args.threads},
            "settings": "tuninglab.settings_production (DEBUG off)",
            "database": "PostgreSQL (own database, migrated)",
            "broker": "private redis-server",
            "celery": "one worker with beat on the maintenance queue (sweeper); none on the training queues: "
            "created jobs stay queued",
            "limits": extra,
            "mix": {ROUTES[op]: weight for op, weight in MIX.items()},
        },
        "summary": summary,
        "queued_jobs_at_end": queued_at_end,
        "exactly_once": {k: (v if not isinstance(v, list) else len(v)) for k, v in check.items()},
        "machine_load": {
            # Cores' worth of CPU over the run (2.0 = both cores of a 2-core machine busy): gunicorn,
            # Redis, the worker and the PostgreSQL backends of the load database.
            "stack_cpu_cores": round(stack_cpu / elapsed, 2),
            "client_cpu_cores": round(client_cpu / elapsed, 2),
            # The whole machine, other tenants included.
            "machine_busy_pct": round(
                100 * (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1e-9), 1
            ),
            "loadavg_1m_at_end": round(loadavg[0], 2),
        },
        "errors_sample": state.errors[:20],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if summary["status_5xx"] or summary["transport_errors"] or violations else 0


if __name__ == "__main__":
    sys.exit(main())
