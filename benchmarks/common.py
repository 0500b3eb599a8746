"""What every benchmark script shares: the machine it ran on, robust statistics, the JSON it writes.

Each script (``python -m benchmarks.<name>``) prints a table and writes
``benchmarks/results/<name>.json`` through ``write_result``: the machine (CPU, cores, load
average before and after, package versions), the command, the config, raw timings, medians,
spread and the ratios against the tool users would pick instead. Timings are never asserted in
tests; a result's ``load_average`` says how quiet the machine was.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lora_engine.fsio import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Package versions recorded with every result (the ones a reader needs to re-run it).
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "deepspeed", "vllm", "django", "gunicorn", "psycopg")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` in this interpreter (None: not installed here)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict[str, Any]:
    """The machine as a result records it; call at the start, ``finish`` adds the load after."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_before": os.getloadavg()[0],
        "packages": package_versions(),
    }


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median and spread of repeated measurements: min, p10, median, p90, max, n, and the
    relative spread (p90 - p10) / median a reader can judge the median by."""
    if not values:
        raise ValueError("no measurements")
    ordered = sorted(values)
    median = statistics.median(ordered)
    p10, p90 = percentile(ordered, 10), percentile(ordered, 90)
    return {
        "n": len(ordered),
        "min": ordered[0],
        "p10": p10,
        "median": median,
        "p90": p90,
        "max": ordered[-1],
        "relative_spread": (p90 - p10) / median if median else 0.0,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no measurements")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed(fn: Callable[[], Any], *, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def write_result(name: str, payload: dict[str, Any], *, machine_info: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``out``) atomically and return its path.

    Adds the benchmark name, the command line, the time it finished and the machine (with the
    load average now, after the run) to ``payload``.
    """
    path = out or RESULTS_DIR / f"{name}.json"
    result = {
        "benchmark": name,
        "command": f"python -m benchmarks.{name} " + " ".join(sys.argv[1:]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine_info, "load_average_after": os.getloadavg()[0]},
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    return path


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table: ``columns`` are ``(key, header, format spec)``."""
    cells = [
        [format(row.get(key), spec) if row.get(key) is not None else "-" for key, _, spec in columns] for row in rows
    ]
    widths = [
        max(len(header), *(len(line[i]) for line in cells)) if cells else len(header)
        for i, (_, header, _) in enumerate(columns)
    ]
    lines = ["  ".join(header.rjust(w) for (_, header, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)
