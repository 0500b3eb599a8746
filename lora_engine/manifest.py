"""Which checkpoints of a run are complete, and how a new run takes one over — without torch.

The manifest (``checkpoints/manifest.json``) is the only record of what exists: a checkpoint
counts once it is listed there and its files are all present (``checkpoint.py`` writes both,
crash-safely). The worker reads it too, before it spawns an attempt, hence no torch here.

Each attempt of a job trains in a directory of its own. ``adopt_checkpoint`` starts a new
attempt's directory from the newest complete checkpoint of earlier attempts by *hard-linking*
its files (a copy where the filesystem has no links). That never writes into the earlier
directory, and it is safe although an earlier attempt's child may still be running (fenced out
but not yet killed): checkpoint files are write-once (written into a temp dir and renamed in,
never opened for writing again), so a link shares bytes that cannot change, and the old run
pruning its own copy only removes its own names.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_engine.fsio import atomic_dir, atomic_write_text

MANIFEST = "manifest.json"
RNG_FILE = "rng.safetensors"
# Engines before this one pickled the RNG state into rng.pt. Such a checkpoint still
# resumes (weights, optimizer, scheduler, data position) but its rng.pt is never
# unpickled: loading a pickle can run arbitrary code.
LEGACY_RNG_FILE = "rng.pt"
# A distributed run's per-rank part of a checkpoint (see lora_engine.checkpoint).
SHARDED_DIR = "sharded"
STATE_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", RNG_FILE, "state.json")
# Rounds of "read the manifests, link the newest" before giving up: a source run that is still
# saving may prune the checkpoint we are linking (we then look again).
ADOPT_ROUNDS = 3


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def read_manifest(ckpt_root: Path) -> dict[str, Any]:
    path = ckpt_root / MANIFEST
    if not path.exists():
        return {"version": 1, "checkpoints": []}
    return json.loads(path.read_text(encoding="utf-8"))


def is_plain_name(name: Any) -> bool:
    """A manifest's ``dir`` must name an entry of its own root: no separators, no ``..``."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def is_complete(path: Path) -> bool:
    """Every state file is present (an old engine's pickled ``rng.pt`` counts for the RNG; a
    distributed run's ``sharded/`` dir for the optimizer state)."""
    rng_ok = (path / RNG_FILE).exists() or (path / LEGACY_RNG_FILE).exists()
    optimizer_ok = (path / "optimizer.pt").exists() or (path / SHARDED_DIR).is_dir()
    return (
        rng_ok and optimizer_ok and all((path / f).exists() for f in STATE_FILES if f not in (RNG_FILE, "optimizer.pt"))
    )


def _listed(ckpt_root: Path) -> list[dict[str, Any]]:
    try:
        entries = read_manifest(ckpt_root).get("checkpoints", [])
    except (OSError, json.JSONDecodeError):
        return []
    return [e for e in entries if isinstance(e.get("step"), int) and is_plain_name(e.get("dir"))]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """Newest checkpoint listed in the manifest whose files are all present, else None.

    A checkpoint of an older engine (pickled `rng.pt` instead of `rng.safetensors`) counts
    as complete; `load_checkpoint` then restores everything but the RNG streams.
    """
    for entry in sorted(_listed(ckpt_root), key=lambda e: e["step"], reverse=True):
        path = ckpt_root / entry["dir"]
        if is_complete(path):
            return path
    return None


@dataclass(frozen=True)
class Adopted:
    """The checkpoint a new run dir starts from: ``path`` (its own copy), ``source`` (where it came from)."""

    step: int
    path: Path
    source: Path


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file under ``src`` into ``dst`` (copy where linking fails); dirs are created."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in dirnames:
            (dst / rel / name).mkdir()
        for name in filenames:
            source, target = Path(dirpath) / name, dst / rel / name
            try:
                os.link(source, target)
            except FileNotFoundError:
                raise
            except OSError:  # another filesystem, or one without hard links: a copy is as good
                shutil.copy2(source, target)


def adopt_checkpoint(sources: Iterable[Path], ckpt_root: Path) -> Adopted | None:
    """Start ``ckpt_root`` (a new run's, with no manifest yet) from the newest complete checkpoint in ``sources``.

    Args:
        sources: checkpoint roots of earlier runs (attempts), oldest first; on equal steps the
            later root wins. They are only read.

    Returns:
        The adopted checkpoint, listed as the only entry of ``ckpt_root``'s new manifest, or
        None when no source holds a complete checkpoint (the new run starts from step 0).

    Raises:
        OSError: the new dir or manifest cannot be written (ENOSPC: the caller's disk_full).
    """
    roots = [Path(s) for s in sources]
    for _ in range(ADOPT_ROUNDS):
        candidates = [(e["step"], order, root, e) for order, root in enumerate(roots) for e in _listed(root)]
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        raced = False
        for step, _order, root, entry in candidates:
            src = root / entry["dir"]
            if not is_complete(src):
                continue
            final = ckpt_root / step_dir_name(step)
            try:
                with atomic_dir(final) as tmp:
                    _link_tree(src, tmp)
                    if not is_complete(tmp):
                        raise FileNotFoundError(f"{src} lost files while being linked")
            except FileNotFoundError:
                raced = True  # the source's own run pruned it meanwhile: a newer one exists
                continue
            listed = {
                "step": step,
                "dir": final.name,
                "created_at": entry.get("created_at", time.time()),
                "metrics": entry.get("metrics", {}),
            }
            manifest = {"version": 1, "checkpoints": [listed]}
            atomic_write_text(ckpt_root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            return Adopted(step=step, path=final, source=src)
        if not raced:
            return None
    return None
