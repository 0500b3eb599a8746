"""One rank's side of a distributed run: process group, wrapping, collectives, sharded state.

`Parallel` hides the four strategies of `lora_engine.distributed` behind the few calls the
recipe makes; with strategy "none" every call is the single-process operation (no process
group, no collectives), so the recipe has one code path.

* ``ddp``: `torch.nn.parallel.DistributedDataParallel` over the model (only trainable
  parameters are registered); gradients are all-reduced in backward (``no_sync`` on all but
  the step's last micro-batch). Checkpoints are written by rank 0 alone (every rank holds the
  same state).
* ``fsdp``: FSDP2 ``fully_shard`` on every transformer block (the wrap unit) and on the root;
  the optimizer is built on the sharded (DTensor) parameters. Checkpoints are sharded with
  ``torch.distributed.checkpoint`` (each rank writes its shard of the trainable weights and
  optimizer states); the adapter is gathered to rank 0.
* ``deepspeed``: ``deepspeed.initialize`` with `launchers.deepspeed_config` and our AdamW and LR
  schedule as client optimizer and scheduler; DeepSpeed owns backward (``scale_wrt_gas=False``:
  the recipe already normalises the loss over the whole step), clipping and the step.
  Checkpoints are DeepSpeed's (ZeRO partitions per rank, ``exclude_frozen_parameters``).

Loss scaling across ranks: each rank's micro-batch loss is its *sum* of token losses divided by
the label tokens of the whole global step, times the world size; every engine averages
gradients over ranks, so the result is the gradient of the token mean over the global step —
the single-process recipe's gradient.

Backend by device: NCCL on GPUs, gloo on CPU (and DeepSpeed's CPU accelerator, selected by
``DS_ACCELERATOR=cpu`` in the launcher's environment); the code path is the same.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import importlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from lora_engine.config import TrainConfig
from lora_engine.distributed import DistributedSpec
from lora_engine.errors import INVALID_CONFIG, EngineError
from lora_engine.launchers import deepspeed_config

# A rank that waits longer than this in a collective gives up (a lost peer): the launcher then
# ends the run and the worker resumes it from the last checkpoint.
COLLECTIVE_TIMEOUT = dt.timedelta(seconds=int(os.environ.get("LORA_ENGINE_COLLECTIVE_TIMEOUT_S", "300")))
DS_TAG = "zero"
# DeepSpeed's shared-memory collectives op (never built on CPU: see `Parallel.init`).
SHM_COMM_OP = "deepspeed_shm_comm"


def _deepspeed() -> Any:
    """The deepspeed package, imported by the runs that use it (the one import not at the top).

    Importing deepspeed detects the accelerator and logs it to stdout at once, before the
    recipe has moved stdout aside for the JSON-line protocol (`progress.claim_stdout`), and
    costs every run ~0.7 s; transformers defers it the same way. A missing or broken install
    raises here, at the run's start, as an error line.
    """
    return importlib.import_module("deepspeed")


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this rank when its parent (the launcher's agent) dies.

    The worker kills the launcher's process group, but torchrun starts each rank in a session
    of its own: a rank orphaned by a killed launcher would keep training and hold its peers in
    their collectives. Elsewhere the collective timeout ends such a rank.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


# What gloo / NCCL / the c10d store say when the other side of a collective went away.
PEER_LOSS_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")


def is_peer_loss(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank is gone (not this rank's own fault)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in PEER_LOSS_MARKERS)


def launched_rank() -> int:
    """This process's global rank as the launcher set it (0 when not launched by one)."""
    return int(os.environ.get("RANK", "0"))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Hugging Face causal LM (FSDP's wrap unit)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise EngineError(INVALID_CONFIG, f"cannot find the transformer blocks of {type(model).__name__} to shard")
    return list(layers)


class Parallel:
    """The process layout of this rank and the strategy-specific operations of the recipe."""

    def __init__(self, spec: DistributedSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.rank = launched_rank() if spec.is_distributed else 0
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if spec.is_distributed else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if spec.is_distributed else 0
        self.engine: Any = None  # the DeepSpeed engine
        self.ddp: DistributedDataParallel | None = None
        self._initialised = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def strategy(self) -> str:
        return self.spec.strategy

    @property
    def shards_state(self) -> bool:
        return self.spec.shards_state

    @property
    def is_distributed(self) -> bool:
        return self.spec.is_distributed

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    # ------------------------------------------------------------------ process group

    def init(self) -> None:
        if not self.spec.is_distributed:
            return
        if "WORLD_SIZE" not in os.environ:
            raise EngineError(
                INVALID_CONFIG,
                f"strategy {self.strategy!r} runs under a launcher (torchrun / deepspeed), which sets WORLD_SIZE",
                param="distributed.strategy",
                suggestion="start the run with the argv lora_engine.launchers.launch_plan builds",
            )
        if self.world != self.spec.world_size:
            raise EngineError(
                INVALID_CONFIG,
                f"the launcher started {self.world} processes; the config asks for {self.spec.world_size}",
                param="distributed.nproc_per_node",
            )
        die_with_launcher()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        if self.strategy == "deepspeed":
            deepspeed = _deepspeed()
            if self.device.type != "cuda":
                # On CPU, DeepSpeed's backend JIT-compiles its shared-memory collectives (a C++
                # build of 1-2 minutes per install and path, needing a compiler on every worker)
                # that serve only tensor-parallel inference's all-reduce: ZeRO's collectives go
                # through torch.distributed (gloo) either way. Marked unavailable, nothing builds.
                deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
            deepspeed.init_distributed(dist_backend=self.backend, timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group(backend=self.backend, timeout=COLLECTIVE_TIMEOUT)
        self._initialised = True

    def abandon(self) -> None:
        """After a lost peer: no more collectives from this rank (they would wait on the dead
        connection). The process group is never destroyed: each rank ends with `train.exit_now`
        once the run's files are on disk (see there why)."""
        self._initialised = False

    def barrier(self) -> None:
        if self._initialised:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64), the same list on every rank."""
        if not self._initialised:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self._initialised:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------ data

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's contiguous share of one global micro-batch (a distributed sampler over
        the seeded order every rank computes alike).

        Every example goes to exactly one rank. An epoch's last micro-batch can be smaller than
        the world: the first ranks then take one example more, and a rank may get none (it still
        runs an idle forward and backward, see `train`, because the engines' collectives need
        every rank).
        """
        if self.world == 1:
            return list(indices)
        base, extra = divmod(len(indices), self.world)
        start = self.rank * base + min(self.rank, extra)
        return list(indices[start : start + base + (1 if self.rank < extra else 0)])

    @property
    def loss_scale(self) -> float:
        """Engines average gradients over ranks; scaling each rank's loss by the world size
        makes the average a sum (see the module docstring)."""
        return float(self.world)

    # ------------------------------------------------------------------ wrapping

    def wrap(self, model: nn.Module, make_optimizer: Any, make_scheduler: Any, cfg: TrainConfig) -> tuple[Any, Any]:
        """Wrap ``model`` for the strategy and build the optimizer and scheduler on what it trains.

        Returns ``(optimizer, scheduler)``; ``self.forward(**inputs)`` runs the wrapped model.
        FSDP2 needs the optimizer built on the sharded parameters, DeepSpeed takes both as
        its client optimizer and scheduler.
        """
        self.model = model
        if self.strategy == "fsdp":
            for block in transformer_blocks(model):
                fully_shard(block)
            fully_shard(model)
        if self.strategy == "ddp":
            self.ddp = DistributedDataParallel(
                model, device_ids=[self.local_rank] if self.device.type == "cuda" else None
            )
        optimizer = make_optimizer(self.trainable_parameters())
        scheduler = make_scheduler(optimizer)
        if self.strategy == "deepspeed":
            self.engine, _opt, _, _sched = _deepspeed().initialize(
                model=model,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                config=self.deepspeed_config(cfg),
                dist_init_required=False,
            )
        return optimizer, scheduler

    def deepspeed_config(self, cfg: TrainConfig) -> dict[str, Any] | None:
        """The DeepSpeed config this rank runs with (None for the other strategies)."""
        if self.strategy != "deepspeed":
            return None
        return deepspeed_config(cfg, cuda=self.device.type == "cuda")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward(self, **inputs: Any) -> Any:
        runner = self.engine if self.engine is not None else (self.ddp if self.ddp is not None else self.model)
        return runner(**inputs)

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """DDP syncs gradients only in the step's last micro-batch."""
        with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
            yield

    def backward(self, loss: torch.Tensor, scaler: Any) -> None:
        if self.engine is not None:
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()  # DeepSpeed steps only at the accumulation boundary
        else:
            scaler.scale(loss).backward()

    def step(self, optimizer: Any, scheduler: Any, scaler: Any, max_norm: float) -> float:
        """Clip, step the optimizer and the schedule, zero the gradients; return the gradient norm
        before clipping (the same number on every rank)."""
        if self.engine is not None:
            # engine.step() ran at the boundary in backward(); it clipped and stepped the schedule.
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # ------------------------------------------------------------------ state

    def full_trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by parameter name, whole, on CPU: on the main rank (other ranks
        may get an empty dict). Every rank must call it (FSDP and ZeRO-3 gather)."""
        if self.strategy == "fsdp":
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
            state = get_model_state_dict(self.model, options=opts)
            return {n: t.contiguous() for n, t in state.items()} if self.is_main else {}
        if self.strategy == "deepspeed" and self.spec.zero_stage == 3:
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            with _deepspeed().zero.GatheredParameters([p for _, p in named], modifier_rank=None):
                return {n: p.detach().cpu().clone().contiguous() for n, p in named} if self.is_main else {}
        return {n: p.detach().cpu().clone().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The whole model's state dict on CPU, on the main rank (full fine-tuning's final save);
        every rank must call it."""
        if self.strategy == "fsdp":
            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return dict(state) if self.is_main else {}
        if self.strategy == "deepspeed" and self.spec.zero_stage == 3:
            params = list(self.model.parameters())
            with _deepspeed().zero.GatheredParameters(params, modifier_rank=None):
                state = {n: t.detach().cpu().clone() for n, t in self.model.state_dict().items()}
            return state if self.is_main else {}
        return {n: t.detach().cpu() for n, t in self.model.state_dict().items()}

    def save_sharded(self, directory: Path) -> None:
        """Every rank writes its shard of the trainable weights and optimizer state into ``directory``."""
        if self.strategy == "fsdp":
            model_state, optim_state = get_state_dict(
                self.model, self._optimizer, options=StateDictOptions(ignore_frozen_params=True)
            )
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))
        elif self.strategy == "deepspeed":
            self.engine.save_checkpoint(str(directory), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True)

    def load_sharded(self, directory: Path) -> None:
        if self.strategy == "fsdp":
            opts = StateDictOptions(ignore_frozen_params=True, strict=False)
            model_state, optim_state = get_state_dict(self.model, self._optimizer, options=opts)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=str(directory))
            set_state_dict(
                self.model,
                self._optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optim"],
                options=opts,
            )
        elif self.strategy == "deepspeed":
            path, _ = self.engine.load_checkpoint(
                str(directory),
                tag=DS_TAG,
                load_module_strict=False,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
            if path is None:
                raise EngineError(INVALID_CONFIG, f"DeepSpeed found no checkpoint in {directory}", param="resume")

    def attach_optimizer(self, optimizer: Any) -> None:
        self._optimizer = optimizer


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "Parallel",
    "die_with_launcher",
    "is_peer_loss",
    "launched_rank",
    "transformer_blocks",
]
