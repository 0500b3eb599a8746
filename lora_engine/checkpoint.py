"""Crash-safe, resumable checkpoints: temp dir -> fsync -> rename -> manifest.

Layout of `output_dir/checkpoints/`:

    manifest.json          {"version": 1, "checkpoints": [{"step", "dir", "created_at", "metrics"}, ...]}
    step-000010/
        adapter/           PEFT-format adapter (what the registry / a user would load)
        trainable.safetensors  every trainable tensor by parameter name (exact resume, also "full")
        optimizer.pt       optimizer state_dict
        scheduler.pt       LR scheduler state_dict
        rng.pt             python / numpy / torch CPU / CUDA RNG states at the step boundary
        state.json         data position (epoch, index in epoch order, step), counters, metrics

A checkpoint exists only once it is listed in the manifest. Its dir is published with
`fsio.atomic_dir` (written into a temp dir, every file and dir fsynced, renamed into
place, the parent fsynced), and only then the manifest is replaced atomically
(`fsio.atomic_write_text`). A crash at any point leaves either the old manifest or the
new one; stray temp dirs or unlisted step dirs are ignored by `latest_checkpoint`.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lora_engine.errors import DISK_FULL, EngineError
from lora_engine.fsio import atomic_dir, atomic_write_text

MANIFEST = "manifest.json"
STATE_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def disk_errors_as_engine_errors(exc: OSError, what: str) -> EngineError | OSError:
    """ENOSPC / EDQUOT become `disk_full`; other OS errors pass through unchanged."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return EngineError(DISK_FULL, f"no space left on device while writing {what}: {exc}", param="output_dir")
    return exc


def rng_state() -> dict[str, Any]:
    """All RNG streams a training step can consume (dropout uses torch's global generator)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch_cpu": torch.get_rng_state()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # torch.load returns lists where python saved tuples; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch_cpu"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def read_manifest(ckpt_root: Path) -> dict[str, Any]:
    path = ckpt_root / MANIFEST
    if not path.exists():
        return {"version": 1, "checkpoints": []}
    return json.loads(path.read_text(encoding="utf-8"))


def save_checkpoint(
    ckpt_root: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: dict[str, Any],
    state: dict[str, Any],
    metrics: dict[str, Any],
    keep: int,
    write_adapter: Callable[[Path], Any] | None,
) -> Path:
    """Write one complete checkpoint for optimizer step `step` and prune to the newest `keep`.

    Args:
        write_adapter: callback writing the PEFT adapter into the given dir (None for full FT).

    Returns:
        The final checkpoint directory.

    Raises:
        EngineError(disk_full): on ENOSPC; the temp dir is removed and the manifest untouched.
    """
    final = ckpt_root / step_dir_name(step)
    try:
        # A `final` that already exists was left by a run that crashed between rename and
        # manifest update: it was never listed, so it is not a checkpoint; atomic_dir replaces it.
        with atomic_dir(final) as tmp:
            if write_adapter is not None:
                write_adapter(tmp / "adapter")
            save_file(trainable_state_dict(model), str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng, tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps({**state, "step": step, "metrics": metrics}, indent=2))

        manifest = read_manifest(ckpt_root)
        entries = [e for e in manifest["checkpoints"] if e["step"] != step]
        entries.append({"step": step, "dir": final.name, "created_at": time.time(), "metrics": metrics})
        entries.sort(key=lambda e: e["step"])
        dropped, entries = entries[:-keep], entries[-keep:]
        manifest["checkpoints"] = entries
        atomic_write_text(ckpt_root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        raise disk_errors_as_engine_errors(exc, f"checkpoint {final}") from exc
    # Delete only after the manifest stopped listing them, so it never names a missing dir.
    for e in dropped:
        shutil.rmtree(ckpt_root / e["dir"], ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """Newest checkpoint listed in the manifest whose files are all present, else None."""
    try:
        manifest = read_manifest(ckpt_root)
    except (OSError, json.JSONDecodeError):
        return None
    for entry in sorted(manifest.get("checkpoints", []), key=lambda e: e["step"], reverse=True):
        path = ckpt_root / entry["dir"]
        if all((path / f).exists() for f in STATE_FILES):
            return path
    return None


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore trainable weights, optimizer and scheduler from `path`.

    Returns:
        (state, rng): the saved state.json dict and the RNG states; the caller restores
        the RNG last, after everything else that might draw random numbers.
    """
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    unknown += [n for n, t in tensors.items() if n in params and t.shape != params[n].shape]
    if missing or unknown:
        raise ValueError(
            f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected or reshaped {unknown[:3]})"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file; holds python tuples
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return state, rng
