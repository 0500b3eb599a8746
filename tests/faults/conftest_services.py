"""Private services for the fault tests: a Redis, a PostgreSQL cluster and API servers a test may kill.

The machine's shared PostgreSQL and Redis are never stopped: a test that restarts a service
starts its own copy on a free loopback port and removes it afterwards, even when it fails.
Import the fixtures explicitly (``from tests.faults.conftest_services import private_redis``).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from benchmarks.load_test import Process, free_port, manage, stack_env, start_gunicorn, start_redis
from lora_engine.fsio import atomic_dir
from tests.conftest import CACHE_DIR, REPO_ROOT

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_DATABASE = "tl_services"
PG_START_TIMEOUT_S = 30

# Knobs every process of a fault test's stack gets: short leases and sweeps (seconds, not a
# minute), no MLflow or automatic evaluation to wait for, and the step-delay test hook.
SERVICE_ENV = {
    "TUNINGLAB_LEASE_SECONDS": "5",
    "TUNINGLAB_HEARTBEAT_SECONDS": "1",
    "TUNINGLAB_SWEEP_SECONDS": "1",
    "TUNINGLAB_MLFLOW_ENABLED": "false",
    "TUNINGLAB_AUTO_EVALUATE": "false",
    "TUNINGLAB_ALLOW_TEST_HOOKS": "true",
}


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value. AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- Redis --------------------------------------------------------------------------------


class PrivateRedis:
    """A diskless ``redis-server`` on a fixed port: ``kill()`` loses every message, ``start()`` comes back empty."""

    def __init__(self, log_dir: Path) -> None:
        self.process, self.url = start_redis(log_dir)

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        self.process.kill()
        assert not self.ping()

    def start(self) -> None:
        self.process.start()
        wait_for(self.ping, timeout=30, what="the private Redis to answer")


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    yield server
    server.process.kill()


# --- API servers --------------------------------------------------------------------------


@dataclass
class ApiServer:
    process: Process
    base_url: str
    client: httpx.Client


@pytest.fixture
def api_server(tmp_path, settings) -> Iterator[Callable[..., ApiServer]]:
    """``api_server(database_url=..., redis_url=..., api_key=..., threads=...)`` → a gunicorn on
    ``tuninglab.settings_production`` with a client authenticated by ``api_key``; killed at teardown."""
    servers: list[ApiServer] = []

    def start(*, database_url: str, redis_url: str, api_key: str, threads: int = 2) -> ApiServer:
        env = stack_env(database_url=database_url, redis_url=redis_url, data_dir=settings.DATA_DIR, extra=SERVICE_ENV)
        process, base_url = start_gunicorn(env, tmp_path, workers=1, threads=threads)
        client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        servers.append(ApiServer(process, base_url, client))
        return servers[-1]

    yield start

    for server in servers:
        server.client.close()
        server.process.kill()


# --- PostgreSQL ---------------------------------------------------------------------------


def _as_postgres(*argv: str, timeout: float = 60) -> str:
    """Run a PostgreSQL binary as the ``postgres`` user (initdb and the server refuse root)."""
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def _migrations_hash() -> str:
    """Changes whenever a migration does: the cached cluster must hold today's schema."""
    digest = hashlib.sha256()
    for path in sorted(REPO_ROOT.glob("*/migrations/*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own under a temp dir: ``stop()`` (immediate, like a crash) and ``start()``."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = root / "postgres.log"
        self.server_url = f"postgres://postgres@127.0.0.1:{self.port}"
        self.database_url = f"{self.server_url}/{PG_DATABASE}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off"
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", str(PG_START_TIMEOUT_S), "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)


def _new_root() -> Path:
    # Not under pytest's tmp_path: that is root-only (0700) and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    shutil.chown(root, "postgres", "postgres")
    return root


def _build_template(target: Path) -> None:
    """initdb + ``migrate`` once; later tests copy the stopped cluster (a second, not ~20)."""
    root = _new_root()
    try:
        server = PrivatePostgres(root, root / "data")
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(server.data_dir), "-A", "trust", "-U", "postgres", "--no-sync")
        server.start()
        try:
            with psycopg.connect(f"{server.server_url}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
            env = stack_env(database_url=server.database_url, redis_url="", data_dir=root, extra=SERVICE_ENV)
            manage({**env, "DJANGO_SETTINGS_MODULE": "tuninglab.settings"}, "migrate", "--noinput")
        finally:
            server.stop(mode="fast")
        with atomic_dir(target) as staging:
            staging.rmdir()
            shutil.copytree(server.data_dir, staging, symlinks=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private cluster with database ``tl_services`` migrated; stopped and removed after the test."""
    if not (PG_BIN / "pg_ctl").exists() or shutil.which("runuser") is None:
        pytest.skip(f"needs PostgreSQL 15 binaries in {PG_BIN} and runuser")
    template = CACHE_DIR / f"pg15-template-{_migrations_hash()}"
    if not (template / "PG_VERSION").exists():
        _build_template(template)
        # Templates of older schemas are never used again (~40 MB each).
        for stale in CACHE_DIR.glob("pg15-template-*"):
            if stale != template:
                shutil.rmtree(stale, ignore_errors=True)
    root = _new_root()
    server = PrivatePostgres(root, root / "data")
    try:
        subprocess.run(["cp", "-a", str(template), str(server.data_dir)], check=True, timeout=120)
        subprocess.run(["chown", "-R", "postgres:postgres", str(server.data_dir)], check=True, timeout=60)
        server.data_dir.chmod(0o700)
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            if server.running():
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
