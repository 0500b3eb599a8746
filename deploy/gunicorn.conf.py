"""gunicorn settings for a web process with several workers and Prometheus (docs/observability.md).

    PROMETHEUS_MULTIPROC_DIR=/run/tuninglab-metrics gunicorn -c deploy/gunicorn.conf.py tuninglab.wsgi

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes its request counters and latency
histograms to files there and ``/metrics`` (whichever worker answers) merges them. The
directory must exist and be empty when gunicorn starts (files of an earlier run would be
counted again); ``on_starting`` empties it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

bind = "127.0.0.1:8000"
workers = 4
threads = 16  # inference requests in flight per worker
keepalive = 75  # above a load balancer's 60 s idle timeout (docs/operations.md)


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        Path(directory).mkdir(parents=True)


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's live gauges leave the merged answer; its counters and histograms stay.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
