"""The training child process: spawn it, read its JSON lines, stop it.

``python -m lora_engine.train CONFIG.json`` runs as a *spawned* process (CUDA and fork do
not mix, and a crash or OOM kill of the child must not take the worker with it):

* argument list, no shell; ``stdin`` closed; stdout is a pipe carrying one JSON object per
  line; stderr goes to ``attempt-<n>.log`` (its tail is attached to failures);
* its own session / process group, so a Ctrl-C or group signal aimed at the worker does not
  reach it and we can signal the child *and its descendants* with ``killpg``;
* ``PR_SET_PDEATHSIG = SIGKILL`` (Linux): if the worker process dies (``kill -9``, OOM), the
  kernel kills the child too. Without it an orphaned child would keep training and writing
  checkpoints next to the attempt that resumes the job.

A reader thread turns stdout into parsed lines on a queue so the runner's loop never blocks
on the pipe and can poll the cancel flag between lines.

A distributed job's child is its launcher (``torchrun`` or ``deepspeed``, argv from
``lora_engine.launchers.launch_plan``, see `launch_command`); the ranks are the launcher's
children and rank 0 writes the protocol lines on the shared stdout. torchrun starts each rank
in a session of its own, so signals go to the process group of every descendant, not only the
launcher's (a SIGKILLed launcher cannot pass the signal on).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine.config import TrainConfig
from lora_engine.launchers import deepspeed_config, launch_plan, rendezvous
from lora_engine.protocol import Line, parse_line
from tuninglab.logfiles import tail_lines

log = logging.getLogger(__name__)

# Never hand the child the worker's secrets: the engine reads only its config file.
SCRUBBED_ENV = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
EOF = object()

_PR_SET_PDEATHSIG = 1
try:  # Linux only; elsewhere an orphaned child is stopped by the lease/stop file instead.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - exotic libc
    _prctl = None


def _die_with_parent() -> None:  # runs in the child between fork and exec: keep it tiny
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def python_executable() -> str:
    return settings.TUNINGLAB.get("PYTHON_EXECUTABLE") or sys.executable


def train_command(config_path: str | Path) -> list[str]:
    """The child's argv: ``python -m lora_engine.train CONFIG.json`` (tests swap in a scripted fake engine)."""
    return [python_executable(), "-m", "lora_engine.train", str(config_path)]


def worker_has_cuda() -> bool:
    """Whether this worker's ranks train on GPUs (NCCL; DeepSpeed's CUDA accelerator): ``TUNINGLAB["CUDA"]``.

    A setting rather than ``torch.cuda.is_available()``: the worker does not import torch.
    """
    return bool(settings.TUNINGLAB.get("CUDA", False))


def node_address() -> str:
    """The address other nodes reach this worker's host at (``TUNINGLAB["NODE_ADDRESS"]``): node 0's
    rendezvous host when the job names none."""
    return str(settings.TUNINGLAB.get("NODE_ADDRESS") or "127.0.0.1")


@dataclass(frozen=True)
class ChildLaunch:
    """What one attempt starts, and what the job row records about it (``TuningJob.launch_config``)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Added to ``child_env()`` for this child (e.g. ``DS_ACCELERATOR=cpu``)."""
    launch_config: dict[str, Any] = field(default_factory=dict)


def launch_command(cfg: TrainConfig, config_path: Path, *, job_dir: Path) -> ChildLaunch:
    """The argv, extra environment and recorded launch config of the attempt whose config is ``config_path``.

    One process: `train_command`. Distributed: the launcher ``launch_plan`` builds for node 0
    (a multi-node run's rendezvous: the job's ``rdzv_endpoint``, else a free port on
    `node_address`; the runner sends the other nodes' starts to their workers,
    ``workers.followers``). Every element comes from the config and the settings, never from a
    request string.
    """
    spec = cfg.distributed
    cuda = worker_has_cuda()
    record: dict[str, Any] = {"launcher": spec.launcher, "world_size": spec.world_size}
    if not spec.is_distributed:
        argv, env = train_command(config_path), {}
    else:
        rdzv: dict[str, Any] = {}
        if spec.nnodes > 1:
            master_addr, master_port = rendezvous(cfg, default_host=node_address())
            rdzv = {"node_rank": 0, "master_addr": master_addr, "master_port": master_port}
            record.update(nnodes=spec.nnodes, **rdzv)
        plan = launch_plan(cfg, str(config_path), python=python_executable(), cuda=cuda, **rdzv)
        argv, env = list(plan.argv), dict(plan.env)
        if spec.strategy == "deepspeed":
            record["deepspeed_config"] = deepspeed_config(cfg, cuda=cuda)
    # The row shows the config file as the job dir names it (the child runs there): no server path.
    shown = str(Path(config_path).relative_to(job_dir)) if Path(config_path).is_relative_to(job_dir) else None
    record["argv"] = [shown if shown is not None and a == str(config_path) else a for a in argv]
    record["env"] = env
    return ChildLaunch(argv=argv, env=env, launch_config=record)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    # The child runs in the job dir; `-m lora_engine.train` must still find the project.
    paths = [str(settings.BASE_DIR), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class TrainingChild:
    """One running child process and the thread draining its stdout."""

    def __init__(
        self, argv: list[str], *, log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.signals_sent: set[int] = set()
        self._lines: queue.Queue[Any] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_fh:
            # The child inherits its own copy of the log fd; ours closes with the block.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_fh,
                cwd=str(self.cwd) if self.cwd else None,
                env={**child_env(), **self.extra_env},
                close_fds=True,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # one prctl() call between fork and exec: takes no locks
            )
        self._reader = threading.Thread(target=self._read, name=f"child-reader-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                self._lines.put(parse_line(raw))
        finally:
            self._lines.put(EOF)

    def next_line(self, timeout: float) -> Line | object | None:
        """The next parsed line, ``EOF`` once stdout closed, or None when nothing came in ``timeout``."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        """Signal the child's process group and the group of every process it started.

        Descendants are listed before any signal goes out: once a launcher dies its ranks are
        re-parented and could no longer be found.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signals_sent.add(signum)
        groups = [self.proc.pid]
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                groups.append(os.getpgid(pid))
        for pgid in dict.fromkeys(groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM (the engine checkpoints and exits 3), then SIGKILL after ``grace_s``."""
        self.signal(signal.SIGTERM)
        rc = self.wait(grace_s)
        if rc is None:
            self.kill()
            rc = self.wait(10)
        return rc

    def close(self) -> None:
        """Make sure nothing is left running and the pipe is closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill()
            self.wait(10)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def log_tail(self, lines: int = 20) -> list[str]:
        return log_tail(self.log_path, lines)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``; elsewhere none, and the group signal alone applies)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def log_tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a log file (reads at most ``max_bytes`` from its end), each cut at 500 characters."""
    return [line[:500] for line in tail_lines(path, lines, max_bytes=max_bytes)]
