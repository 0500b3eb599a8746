"""Run one training config the way the worker launches it and read its JSON lines.

``run_launched`` builds the argv with ``lora_engine.launchers.launch_plan`` (one process,
torchrun or DeepSpeed), reads the metrics lines (with their arrival times) and the done line
from stdout, and ends the launcher's whole process group afterwards: a rank that hangs in
teardown after its done line does not change what it reported, and a run that hangs before it
is killed by a watchdog. Used by ``benchmarks.distributed`` and ``benchmarks.memory_preflight``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_engine.config import TrainConfig
from lora_engine.launchers import launch_plan

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600
# After its done line a run only tears down; past this it is killed.
EXIT_GRACE_S = 30


@dataclass(frozen=True)
class LaunchedRun:
    arrivals: list[tuple[float, dict[str, Any]]]  # (perf_counter at arrival, metrics line)
    done: dict[str, Any]
    exit_code: int | None  # None: it hung after its done line and was killed


def run_launched(
    cfg: TrainConfig, *, env: dict[str, str | None] | None = None, timeout_s: float = RUN_TIMEOUT_S
) -> LaunchedRun:
    """Run ``cfg`` under its launcher with ``env`` on top of ours (a value None removes the variable).

    Raises:
        RuntimeError: a rank printed an error line, or the run ended (or was killed) without a done line.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    cfg.to_json(config_path)
    plan = launch_plan(cfg, str(config_path), python=sys.executable, cuda=False)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **plan.env}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    arrivals: list[tuple[float, dict[str, Any]]] = []
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    with open(out / "launcher.log", "wb") as log:
        proc = subprocess.Popen(
            plan.argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=full_env, start_new_session=True
        )
        stdout = proc.stdout
        assert stdout is not None
        watchdog = threading.Timer(timeout_s, _kill, args=(proc,))
        watchdog.start()
        try:
            for raw in stdout:  # launchers print their own log lines between the JSON ones
                line = _json_line(raw)
                kind = line.get("type") if line else None
                if kind == "metrics":
                    arrivals.append((time.perf_counter(), line))
                elif kind == "error":
                    error = line
                    break
                elif kind == "done":
                    done = line
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=EXIT_GRACE_S)
            exit_code = proc.poll()
        finally:
            watchdog.cancel()
            _kill(proc)
            stdout.close()
    if error is not None:
        raise RuntimeError(f"{out}: {error.get('code')}: {error.get('message')}")
    if done is None:
        tail = (out / "launcher.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{out}: no done line (exit {proc.returncode}): {tail}")
    return LaunchedRun(arrivals=arrivals, done=done, exit_code=exit_code)


def _json_line(raw: str) -> dict[str, Any] | None:
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group (its ranks die with it: ``parallel.die_with_launcher``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
