"""What a version records about where it came from: environment, code version, file hashes, metrics.

Plain reads (package metadata, ``git``, file bytes), no torch import: the web process and
the registry's migrations may import this module.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine import protocol

# Packages whose versions decide what a trained adapter means (or how it was made).
ENVIRONMENT_PACKAGES = ("torch", "transformers", "bitsandbytes", "peft", "accelerate", "deepspeed")
HASH_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    """sha256 of one file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(root: Path, names: Iterable[str]) -> str:
    """One sha256 over several files of ``root``: name, size and bytes of each, in sorted order.

    With a single file this is *not* that file's own sha256 (the name is hashed too), so a
    rename of a weight file changes the hash as it changes the model.
    """
    digest = hashlib.sha256()
    for name in sorted(names):
        path = root / name
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def code_version() -> str:
    """The git commit of the running code (``TUNINGLAB_CODE_VERSION`` wins); "" when unknown."""
    pinned = os.environ.get("TUNINGLAB_CODE_VERSION", "")
    if pinned:
        return pinned
    try:
        result = subprocess.run(
            ["git", "-C", str(settings.BASE_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def environment(*, device: str | None) -> dict[str, Any]:
    """Python, the ML packages that matter, the device the run trained on, the host's platform."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device or "unknown",
        "packages": {name: package_version(name) for name in ENVIRONMENT_PACKAGES},
    }


def finite(value: Any) -> float | None:
    """A finite JSON number as a float; None for anything else (null, NaN, booleans, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def metrics_lines(path: Path | None) -> Iterator[dict[str, Any]]:
    """The ``metrics`` protocol lines of a run's ``metrics.jsonl`` (every attempt appends to it)."""
    if path is None or not path.is_file():
        return
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = protocol.parse_line(raw).obj
        if line is not None and line["type"] == protocol.METRICS:
            yield line


def metrics_from_log(path: Path | None) -> dict[str, Any]:
    """Final and best train/eval loss from a run's ``metrics.jsonl`` (every attempt appends to it)."""
    losses: list[float] = []
    eval_losses: list[float] = []
    for line in metrics_lines(path):
        if (loss := finite(line.get("loss"))) is not None:
            losses.append(loss)
        if (eval_loss := finite(line.get("eval_loss"))) is not None:
            eval_losses.append(eval_loss)
    return {
        "best_train_loss": min(losses) if losses else None,
        "best_eval_loss": min(eval_losses) if eval_losses else None,
        "logged_steps": len(losses),
    }
