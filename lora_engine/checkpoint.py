"""Crash-safe, resumable checkpoints: temp dir -> fsync -> rename -> manifest.

Layout of `output_dir/checkpoints/`:

    manifest.json          {"version": 1, "checkpoints": [{"step", "dir", "created_at", "metrics"}, ...]}
    step-000010/
        adapter/           PEFT-format adapter (what the registry / a user would load)
        trainable.safetensors  every trainable tensor by parameter name (exact resume, also "full")
        optimizer.pt       optimizer state_dict
        scheduler.pt       LR scheduler state_dict
        rng.safetensors    python / numpy / torch CPU / CUDA RNG states at the step boundary
                           (tensors + string metadata: no pickle, like every other artefact)
        best.safetensors   select="best" only: the trainable tensors of the best evaluated step so far,
                           its step and eval loss in the metadata
        state.json         data position (epoch, index in epoch order, step), counters, metrics
        sharded/           distributed runs only: what each rank wrote — FSDP's
                           torch.distributed.checkpoint shards or DeepSpeed's ZeRO partitions of
                           the trainable weights and optimizer states (then no optimizer.pt), and
                           rng-rank<r>.safetensors for every rank r > 0

A distributed run writes `sharded/` into a staging dir (`.step-000010.shards`) from every rank,
then rank 0 writes the rest and publishes the step dir with the staging dir moved inside it, so
a checkpoint is still listed only once every rank's part is on disk.

A checkpoint exists only once it is listed in the manifest. Its dir is published with
`fsio.atomic_dir` (written into a temp dir, every file and dir fsynced, renamed into
place, the parent fsynced), and only then the manifest is replaced atomically
(`fsio.atomic_write_text`). A crash at any point leaves either the old manifest or the
new one; stray temp dirs or unlisted step dirs are ignored by `latest_checkpoint`.

Each attempt of a job writes its own `output_dir` (the worker starts it from an earlier
attempt's checkpoint with `manifest.adopt_checkpoint`); pruning here removes only entries of
this run's own manifest, inside this run's own `checkpoints/`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_engine.errors import DISK_FULL, EngineError
from lora_engine.fsio import DISK_FULL_ERRNOS, atomic_dir, atomic_write_text

# The manifest's reading side lives in `manifest` (no torch: the worker uses it too); the
# recipe and its tests reach it through this module as before.
from lora_engine.manifest import LEGACY_RNG_FILE as LEGACY_RNG_FILE
from lora_engine.manifest import MANIFEST, RNG_FILE, SHARDED_DIR, is_plain_name, read_manifest, step_dir_name
from lora_engine.manifest import latest_checkpoint as latest_checkpoint

RNG_FORMAT = "lora_engine.rng/1"
BEST_FILE = "best.safetensors"
# torch and safetensors write in native code and raise RuntimeError / SafetensorError that only
# name the OS error in their message ("... (os error 28)").
DISK_FULL_MARKERS = tuple(f"(os error {n})" for n in sorted(DISK_FULL_ERRNOS))


def _is_disk_full(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the exception and its causes
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(marker in str(current) for marker in DISK_FULL_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_errors_as_engine_errors(exc: BaseException, what: str) -> BaseException:
    """A full disk (see `DISK_FULL_ERRNOS`, also wrapped by torch/safetensors) becomes `disk_full`;
    anything else is returned unchanged."""
    if _is_disk_full(exc):
        return EngineError(DISK_FULL, f"no space left on device while writing {what}: {exc}", param="output_dir")
    return exc


def rng_state() -> dict[str, Any]:
    """All RNG streams a training step can consume (dropout uses torch's global generator)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch_cpu": torch.get_rng_state()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch_cpu"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss_np = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def save_rng_state(state: dict[str, Any], path: Path) -> None:
    """Write an `rng_state()` dict as safetensors: the state vectors as tensors, the scalars
    as JSON in the string metadata (JSON floats round-trip exactly)."""
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    # Mersenne Twister words are < 2**32: int64 holds them exactly (safetensors has no uint32 in torch).
    tensors = {
        "torch_cpu": state["torch_cpu"].contiguous(),
        "python_internal": torch.tensor(internal, dtype=torch.int64),
        "numpy_keys": keys.to(torch.int64).contiguous(),
    }
    for i, t in enumerate(state.get("torch_cuda", [])):
        tensors[f"torch_cuda.{i}"] = t.contiguous()
    scalars = {
        "python_version": version,
        "python_gauss": gauss,
        "numpy_kind": kind,
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(gauss_np),
        "cuda_devices": len(state.get("torch_cuda", [])),
    }
    save_file(tensors, str(path), metadata={"format": RNG_FORMAT, "scalars": json.dumps(scalars)})


def load_rng_state(path: Path) -> dict[str, Any]:
    """Read a file written by `save_rng_state` back into an `rng_state()` dict."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != RNG_FORMAT:
            raise ValueError(f"{path} is not an RNG state file (format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    sc = json.loads(meta["scalars"])
    state: dict[str, Any] = {
        "python": (sc["python_version"], tuple(tensors["python_internal"].tolist()), sc["python_gauss"]),
        "torch_cpu": tensors["torch_cpu"],
        "numpy": (sc["numpy_kind"], tensors["numpy_keys"], sc["numpy_pos"], sc["numpy_has_gauss"], sc["numpy_gauss"]),
    }
    if sc["cuda_devices"]:
        state["torch_cuda"] = [tensors[f"torch_cuda.{i}"] for i in range(sc["cuda_devices"])]
    return state


@dataclass(frozen=True)
class BestWeights:
    """The trainable tensors after optimizer step `step`, whose validation loss was `eval_loss`."""

    step: int
    eval_loss: float
    tensors: dict[str, torch.Tensor]


def load_best_weights(path: Path) -> BestWeights | None:
    """The best weights saved in checkpoint `path`, or None if it holds none."""
    if not (path / BEST_FILE).exists():
        return None
    with safe_open(str(path / BEST_FILE), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return BestWeights(step=int(meta["step"]), eval_loss=float(json.loads(meta["eval_loss"])), tensors=tensors)


def rank_rng_file(rank: int) -> str:
    """Where rank ``rank`` (> 0) keeps its RNG state inside ``sharded/``."""
    return f"rng-rank{rank}.safetensors"


def staging_dir(ckpt_root: Path, step: int) -> Path:
    """The dir every rank of a distributed run writes its part of checkpoint ``step`` into."""
    return ckpt_root / f".{step_dir_name(step)}.shards"


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    ckpt_root: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    rng: dict[str, Any],
    state: dict[str, Any],
    metrics: dict[str, Any],
    keep: int,
    write_adapter: Callable[[Path], Any] | None,
    best: BestWeights | None = None,
    trainable: dict[str, torch.Tensor] | None = None,
    sharded: Path | None = None,
) -> Path:
    """Write one complete checkpoint for optimizer step `step` and prune to the newest `keep`.

    Args:
        write_adapter: callback writing the PEFT adapter into the given dir (None for full FT).
        best: the best evaluated weights so far (select="best"), saved with the checkpoint so
            a resumed run selects among all steps, those before the checkpoint included.
        optimizer: None when ``sharded`` holds the optimizer state (FSDP, DeepSpeed).
        trainable: the trainable tensors, whole (a distributed run gathers them); default: the
            model's own.
        sharded: a staging dir the ranks wrote (see the module docstring); it moves into the
            checkpoint as ``sharded/``.

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
            tensors = trainable if trainable is not None else trainable_state_dict(model)
            save_file(tensors, str(tmp / "trainable.safetensors"))
            if sharded is not None:
                sharded.rename(tmp / SHARDED_DIR)  # the same filesystem: a rename, fsynced with the tree
            # Through a Python file object: a failed write then carries its OSError (ENOSPC)
            # as the context of torch's RuntimeError instead of an opaque "unexpected pos".
            if optimizer is not None:
                with open(tmp / "optimizer.pt", "wb") as fh:
                    torch.save(optimizer.state_dict(), fh)
            with open(tmp / "scheduler.pt", "wb") as fh:
                torch.save(scheduler.state_dict(), fh)
            save_rng_state(rng, tmp / RNG_FILE)
            if best is not None:
                meta = {"step": str(best.step), "eval_loss": json.dumps(best.eval_loss)}
                save_file(best.tensors, str(tmp / BEST_FILE), metadata=meta)
            (tmp / "state.json").write_text(json.dumps({**state, "step": step, "metrics": metrics}, indent=2))

        manifest = read_manifest(ckpt_root)
        entries = [e for e in manifest["checkpoints"] if e["step"] != step]
        entries.append({"step": step, "dir": final.name, "created_at": time.time(), "metrics": metrics})
        entries.sort(key=lambda e: e["step"])
        dropped, entries = entries[:-keep], entries[-keep:]
        manifest["checkpoints"] = entries
        atomic_write_text(ckpt_root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    except Exception as exc:  # native writers wrap the OSError; anything but a full disk passes through
        converted = disk_errors_as_engine_errors(exc, f"checkpoint {final}")
        if converted is exc:
            raise
        raise converted from exc
    # Delete only after the manifest stopped listing them, so it never names a missing dir; and
    # only plain names of this root (a manifest is data, not a licence to delete elsewhere).
    for e in dropped:
        if is_plain_name(e.get("dir")):
            shutil.rmtree(ckpt_root / e["dir"], ignore_errors=True)
    return final


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sharded: bool = False,
    rank: int = 0,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore trainable weights, optimizer and scheduler from `path`.

    With ``sharded`` the weights and optimizer state are left to the strategy (they live in
    ``sharded/``, see ``parallel.Parallel.load_sharded``); only the schedule, state and RNG
    are read here. Rank ``rank`` > 0 gets its own RNG state from ``sharded/``.

    Returns:
        (state, rng): the saved state.json dict and the RNG states; the caller restores
        the RNG last, after everything else that might draw random numbers. rng is None
        for a checkpoint with only a legacy pickled rng.pt, which is never loaded.
    """
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_path = path / RNG_FILE if rank == 0 else path / SHARDED_DIR / rank_rng_file(rank)
    rng = load_rng_state(rng_path) if rng_path.exists() else None
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if sharded:
        return state, rng
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
    # weights_only=True: torch's restricted unpickler (tensors and plain containers only).
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return state, rng
