"""The vLLM supervisor: start one vLLM OpenAI server per served base model and keep it serving.

``Supervisor(base).run()`` (what ``manage.py serve_inference`` runs, one thread per base):

1. Claim the base's ``ServingProcess`` row: one live supervisor per base (a second one
   exits with ``SupervisorConflict`` while the first one's heartbeat is fresh).
2. Stop a vLLM left behind by a supervisor that died (its recorded pid, if the process is
   still our vLLM server on our port).
3. Start vLLM from the settings (``inference.config.vllm_argv``: an argument list, its own
   session/process group, output appended to ``DATA_DIR/inference/<base>/vllm.log``).
4. Wait for ``/health``; then load every adapter the registry wants (``adapters.reconcile``)
   and keep reconciling every ``INFERENCE_RECONCILE_SECONDS``.
5. Health-check every ``VLLM_HEALTH_SECONDS``: a process that exits, or stops answering
   ``/health`` ``VLLM_HEALTH_FAILURES`` times in a row (hung), has its whole process group
   killed (vLLM's engine and worker processes too: killing only the API server leaves them
   holding gigabytes and shared memory) and is restarted after a backoff (1 s, doubling, at
   most ``VLLM_MAX_BACKOFF_SECONDS``; reset once a start has stayed healthy a minute).

``stop()`` ends the loop and the process group (SIGTERM, then SIGKILL after 15 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Q
from django.utils import timezone

from inference.adapters import reconcile
from inference.config import VLLM_SERVER_MODULE, ServedBase, vllm_argv, vllm_env
from inference.models import ServingProcess
from inference.vllm_http import healthy
from registry.models import BaseModel
from tuninglab.logfiles import tail_lines

log = logging.getLogger(__name__)
TERM_GRACE_S = 15.0
STABLE_AFTER_S = 60.0  # a start that stayed healthy this long resets the backoff
LOG_ROTATE_BYTES = 20 * 1024 * 1024
WAIT_POLL_S = 1.0  # how often a waiting supervisor looks for its base model / free port again
Status = ServingProcess.Status


class SupervisorConflict(RuntimeError):
    """Another live supervisor already serves this base model."""


def log_file(base_name: str) -> Path:
    return Path(settings.DATA_DIR) / "inference" / base_name / "vllm.log"


def tail(path: str | os.PathLike[str], *, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file, joined ("" when it does not exist)."""
    return "\n".join(tail_lines(path, lines, max_bytes=max_bytes))


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``, by pid."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def _is_our_vllm(pid: int, port: int) -> bool:
    """Whether ``pid`` is a vLLM OpenAI server listening on ``port`` (by its command line)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if VLLM_SERVER_MODULE.encode() not in argv or b"--port" not in argv:
        return False
    at = argv.index(b"--port")
    return at + 1 < len(argv) and argv[at + 1] == str(port).encode()


def kill_group(pid: int, *, grace: float = TERM_GRACE_S) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg(0); only live members matter.
    return bool(group_members(pgid))


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


class Supervisor:
    """Keeps one vLLM server for ``base`` running, healthy and holding the registry's adapters."""

    def __init__(self, base: ServedBase) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.status: str = Status.STOPPED
        self._ready_since: float | None = None
        self._stop = threading.Event()
        self._host = socket.gethostname()
        conf = settings.TUNINGLAB
        self.health_every = conf["VLLM_HEALTH_SECONDS"]
        self.health_failures = conf["VLLM_HEALTH_FAILURES"]
        self.reconcile_every = conf["INFERENCE_RECONCILE_SECONDS"]
        self.startup_timeout = conf["VLLM_STARTUP_TIMEOUT_SECONDS"]
        self.max_backoff = conf["VLLM_MAX_BACKOFF_SECONDS"]

    # --- the row -------------------------------------------------------------------------

    def _save(self, status: str | None = None, **fields: object) -> None:
        # Every write carries the whole state the gateway reads: the row may have been deleted
        # (an operator, a test's flush) and is then recreated complete.
        if status is not None:
            self.status = status
        fields["status"] = self.status
        fields.setdefault("url", self.base.url)
        fields.setdefault("pid", self.proc.pid if self.proc else None)
        fields.setdefault("restarts", self.restarts)
        fields.setdefault("heartbeat_at", timezone.now())
        fields.setdefault("supervisor_pid", os.getpid())
        fields.setdefault("supervisor_host", self._host)
        try:
            # Fenced: only while the row still names this supervisor. Another one took the base
            # (our heartbeat went stale, e.g. through a long database outage): stop, and leave
            # its vLLM alone.
            mine = ServingProcess.objects.filter(
                base_name=self.base.name, supervisor_pid=os.getpid(), supervisor_host=self._host
            )
            if not mine.update(**fields):
                if ServingProcess.objects.filter(base_name=self.base.name).exists():
                    log.error("supervisor of %s lost its claim to another supervisor; stopping", self.base.name)
                    self._stop.set()
                else:  # deleted (by an operator, a test's flush): recreate it complete
                    ServingProcess.objects.create(base_name=self.base.name, **fields)
        except DatabaseError as exc:
            # A database outage must not take serving down: vLLM keeps answering, the row
            # catches up on the next write.
            log.warning("could not record the state of vLLM %s: %s", self.base.name, exc)
            close_old_connections()

    def claim(self) -> ServingProcess:
        """Take the base's row, or raise SupervisorConflict if another supervisor's heartbeat is fresh."""
        row, _ = ServingProcess.objects.get_or_create(base_name=self.base.name)
        stale = timezone.now() - timedelta(seconds=max(30.0, 5 * self.health_every))
        mine = Q(supervisor_pid=os.getpid(), supervisor_host=self._host)
        taken = (
            ServingProcess.objects.filter(pk=row.pk)
            .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale) | Q(supervisor_pid__isnull=True) | mine)
            .update(supervisor_pid=os.getpid(), supervisor_host=self._host, heartbeat_at=timezone.now())
        )
        if not taken:
            raise SupervisorConflict(
                f"another supervisor (pid {row.supervisor_pid} on {row.supervisor_host}) serves {self.base.name}; "
                "stop it first"
            )
        return row

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Supervise until ``stop()``; the vLLM process group is ended on the way out."""
        row = self.claim()
        if row.pid and row.pid != getattr(self.proc, "pid", None) and _is_our_vllm(row.pid, self.base.port):
            log.warning("stopping vLLM pid %s left behind by an earlier supervisor of %s", row.pid, self.base.name)
            kill_group(row.pid)
        backoff = 1.0
        try:
            while not self._stop.is_set():
                close_old_connections()
                self._ready_since = None
                reason = self._serve_once()
                if self._stop.is_set():
                    break
                if reason is None:
                    continue  # nothing was started (waiting for the base model, the port, the database)
                if self._ready_since is not None and time.monotonic() - self._ready_since > STABLE_AFTER_S:
                    backoff = 1.0  # it served a while: this is a new failure, not a crash loop
                self.restarts += 1
                self._save(status=Status.RESTARTING, last_exit=reason, restarts=self.restarts, loaded_adapters=[])
                log.warning("vLLM %s: %s; restarting in %.0fs", self.base.name, reason, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            self._terminate()
            with contextlib.suppress(Exception):
                # Released: the next supervisor (a restart right after this one) claims at once.
                self._save(status=Status.STOPPED, pid=None, loaded_adapters=[], heartbeat_at=None, supervisor_pid=None)

    def stop(self) -> None:
        self._stop.set()

    def _wait(self, why: str) -> None:
        """Nothing to start yet: say why on the row and look again in a second."""
        self._save(status=Status.WAITING, last_exit=why)
        self._stop.wait(WAIT_POLL_S)

    def _serve_once(self) -> str | None:
        """Start vLLM and supervise it until it dies or hangs; return why it ended (None: not started)."""
        try:
            base_row = BaseModel.objects.filter(name=self.base.name).first()
        except DatabaseError as exc:
            close_old_connections()
            self._wait(f"cannot read the base model from the database: {exc}")
            return None
        if base_row is None or not (Path(base_row.path) / "config.json").is_file():
            self._wait(f"base model {self.base.name!r} is not registered (or its directory is unreadable)")
            return None
        if port_in_use(self.base.host, self.base.port):
            self._wait(f"port {self.base.port} is taken by another process")
            return None
        try:
            self._start(base_row.path)
        except OSError as exc:  # a wrong VLLM_PYTHON, no file descriptors or memory to fork
            return self._end(f"could not start vLLM: {exc}")
        if not self._wait_healthy():
            code = self.proc.poll()
            if code is not None:
                return self._end(f"vLLM exited with code {code} while starting")
            return self._end(f"vLLM did not answer /health within {self.startup_timeout} s")
        self._ready_since = time.monotonic()
        self._save(status=Status.READY, ready_at=timezone.now())
        log.info("vLLM %s ready at %s (pid %s)", self.base.name, self.base.url, self.proc.pid)
        failures = 0
        next_reconcile = 0.0
        while not self._stop.is_set():
            code = self.proc.poll()
            if code is not None:
                return self._end(f"vLLM exited with code {code}")
            if healthy(self.base):
                failures = 0
            else:
                failures += 1
                if failures >= self.health_failures:
                    return self._end(f"vLLM did not answer /health {failures} times in a row (hung)")
            if time.monotonic() >= next_reconcile and failures == 0:
                self._reconcile()
                next_reconcile = time.monotonic() + self.reconcile_every
            else:
                self._save()  # heartbeat
            self._stop.wait(min(self.health_every, self.reconcile_every))
        return "stopped"

    def _start(self, model_path: str) -> None:
        path = log_file(self.base.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_suffix(".log.1"))
        argv = vllm_argv(base=self.base, model_path=model_path)
        if self.status == Status.WAITING:
            self._save(last_exit="")  # what it waited for is resolved
        with open(path, "ab") as fh:
            fh.write(f"\n=== {timezone.now().isoformat()} starting: {argv}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(  # an argument list built from settings, no shell
                argv,
                cwd=str(path.parent),
                env=vllm_env(base=self.base),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: one killpg ends engine and workers too
            )
        self._save(
            status=Status.STARTING,
            pid=self.proc.pid,
            url=self.base.url,
            argv=argv,
            started_at=timezone.now(),
            ready_at=None,
            restarts=self.restarts,
            loaded_adapters=[],
            log_path=str(path),
        )

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.proc.poll() is not None:
                return False
            if healthy(self.base):
                return True
            self._save()
            self._stop.wait(0.5)
        return False

    def _reconcile(self) -> None:
        try:
            result = reconcile(self.base)
        except Exception as exc:  # vLLM or the database hiccuped: the next pass tries again
            log.warning("reconcile of %s failed: %s", self.base.name, exc)
            self._save()
            return
        if result.loaded or result.unloaded:
            log.info("vLLM %s: loaded %s, unloaded %s", self.base.name, result.loaded, result.unloaded)
        self._save(loaded_adapters=result.served, reconciled_at=timezone.now())

    def _end(self, reason: str) -> str:
        self._terminate()
        lines = tail(log_file(self.base.name), lines=5)
        return f"{reason}; last log lines:\n{lines}" if lines else reason

    def _terminate(self) -> None:
        if self.proc is None:
            return
        kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
