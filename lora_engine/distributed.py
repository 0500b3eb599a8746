"""`DistributedSpec`: how many processes train one run, and with which engine.

A job's ``distributed`` field, validated here (torch-free: the API imports it) so the API
cannot accept what the engine refuses:

    {"strategy": "none" | "ddp" | "fsdp" | "deepspeed",
     "zero_stage": 2 | 3,                       # deepspeed only (default 2)
     "offload_optimizer": false,                # deepspeed only: optimizer states in host memory
     "offload_params": false,                   # deepspeed ZeRO-3 only: parameters in host memory
     "nproc_per_node": 2, "nnodes": 1,
     "rdzv_endpoint": "host:port"}              # multi-node rendezvous (default: node 0's host)

* ``ddp`` and ``fsdp`` run under ``torchrun`` (PyTorch DDP; FSDP2 ``fully_shard`` with each
  transformer block as the wrap unit); ``deepspeed`` under the ``deepspeed`` launcher with the
  JSON config `deepspeed_config` generates. ``lora_engine.launchers`` builds the argv.
* The job's ``batch_size`` stays the *global* micro-batch: each of the ``world_size`` ranks
  takes ``batch_size / world_size`` examples of it (a distributed sampler over the same
  seeded order), so a run with the same hyperparameters follows the single-process run's
  loss curve. ``batch_size`` must therefore be a multiple of the world size.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from lora_engine.errors import ConfigError

STRATEGIES = ("none", "ddp", "fsdp", "deepspeed")
ZERO_STAGES = (2, 3)
DEFAULT_ZERO_STAGE = 2
MAX_NPROC_PER_NODE = 64
MAX_NNODES = 64
# host:port, host a DNS name or IPv4 address (no user info, no path, nothing a shell would read).
ENDPOINT_RE = re.compile(r"^(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?):(?P<port>[0-9]{1,5})\Z")


@dataclass(frozen=True)
class DistributedSpec:
    """The process layout and sharding engine of one run (see the module docstring)."""

    strategy: str = "none"
    """"none" (one process), "ddp", "fsdp" or "deepspeed"."""

    zero_stage: int | None = None
    """DeepSpeed ZeRO stage, 2 (optimizer states + gradients sharded) or 3 (+ parameters)."""

    offload_optimizer: bool = False
    """DeepSpeed: keep optimizer states (and the step) in host memory."""

    offload_params: bool = False
    """DeepSpeed ZeRO-3: keep parameters in host memory between uses."""

    nproc_per_node: int = 1
    """Training processes (ranks) per node: one per GPU on GPU hosts."""

    nnodes: int = 1
    """Nodes (machines) the run spans."""

    rdzv_endpoint: str | None = None
    """Multi-node rendezvous ``host:port`` every node reaches (node 0 hosts it)."""

    def __post_init__(self) -> None:
        if self.strategy == "deepspeed" and self.zero_stage is None:
            object.__setattr__(self, "zero_stage", DEFAULT_ZERO_STAGE)
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ConfigError(message, param=f"distributed.{field}")

        need(self.strategy in STRATEGIES, "strategy", f"strategy must be one of {', '.join(STRATEGIES)}")
        need(
            _is_int(self.nproc_per_node) and 1 <= self.nproc_per_node <= MAX_NPROC_PER_NODE,
            "nproc_per_node",
            f"nproc_per_node must be an integer in 1..{MAX_NPROC_PER_NODE}",
        )
        need(
            _is_int(self.nnodes) and 1 <= self.nnodes <= MAX_NNODES,
            "nnodes",
            f"nnodes must be an integer in 1..{MAX_NNODES}",
        )
        for flag in ("offload_optimizer", "offload_params"):
            need(isinstance(getattr(self, flag), bool), flag, f"{flag} must be true or false")
        if self.strategy == "deepspeed":
            need(
                self.zero_stage in ZERO_STAGES,
                "zero_stage",
                f"zero_stage must be one of {', '.join(map(str, ZERO_STAGES))}",
            )
            need(
                not self.offload_params or self.zero_stage == 3,
                "offload_params",
                "offload_params needs zero_stage 3: ZeRO-2 keeps every parameter on each rank",
            )
        else:
            need(self.zero_stage is None, "zero_stage", "zero_stage is only used with strategy 'deepspeed'")
            for flag in ("offload_optimizer", "offload_params"):
                need(not getattr(self, flag), flag, f"{flag} is only available with strategy 'deepspeed'")
        if self.strategy == "none":
            need(
                self.world_size == 1,
                "strategy",
                f"{self.world_size} processes need a strategy: 'ddp', 'fsdp' or 'deepspeed'",
            )
        if self.rdzv_endpoint is not None:
            need(
                isinstance(self.rdzv_endpoint, str)
                and (m := ENDPOINT_RE.match(self.rdzv_endpoint)) is not None
                and 1 <= int(m["port"]) <= 65535,
                "rdzv_endpoint",
                "rdzv_endpoint must be host:port (a DNS name or IPv4 address and a port in 1..65535)",
            )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def is_distributed(self) -> bool:
        return self.strategy != "none"

    @property
    def launcher(self) -> str:
        """ "single", "torchrun" or "deepspeed"."""
        return {"none": "single", "deepspeed": "deepspeed"}.get(self.strategy, "torchrun")

    @property
    def shards_state(self) -> bool:
        """Whether checkpoints are written per rank (FSDP, DeepSpeed) rather than by rank 0 alone (DDP)."""
        return self.strategy in ("fsdp", "deepspeed")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DistributedSpec:
        """Build from a plain dict (None or {} → one process); unknown keys are an error."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError("distributed must be an object", param="distributed")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown distributed field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                param=f"distributed.{unknown[0]}",
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_compatible(
    spec: DistributedSpec, *, method: str, batch_size: int, select: str = "last", precision: str = "fp32"
) -> None:
    """Refuse (``ConfigError`` naming the field) what this spec cannot train with the run's settings."""
    if not spec.is_distributed:
        return
    if method == "qlora" and spec.strategy == "fsdp":
        raise ConfigError(
            "QLoRA cannot be trained with FSDP here: FSDP shards every parameter, and the 4-bit base's "
            "packed uint8 weights with their quantization state cannot be split and gathered as plain tensors; "
            "use strategy 'ddp' or 'deepspeed' with zero_stage 2",
            param="distributed.strategy",
        )
    if method == "qlora" and spec.strategy == "deepspeed" and spec.zero_stage == 3:
        raise ConfigError(
            "QLoRA cannot be trained with ZeRO-3: ZeRO-3 partitions parameters, and the 4-bit base's packed "
            "weights cannot be partitioned; use zero_stage 2 (only the LoRA weights' optimizer states and "
            "gradients are sharded, which is where ZeRO saves memory for QLoRA) or strategy 'ddp'",
            param="distributed.zero_stage",
        )
    shards_params = spec.strategy == "fsdp" or (spec.strategy == "deepspeed" and spec.zero_stage == 3)
    if select == "best" and shards_params:
        raise ConfigError(
            'select "best" is not available when parameters are sharded (FSDP, ZeRO-3): it would gather '
            'the weights at every evaluation; use select "last" with eval_every, or strategy ddp / ZeRO-2',
            param="select",
        )
    if precision == "fp16" and spec.strategy == "fsdp":
        raise ConfigError(
            "fp16 with FSDP needs a sharded gradient scaler the recipe does not use; train in bf16",
            param="precision",
        )
    if batch_size % spec.world_size:
        raise ConfigError(
            f"batch_size {batch_size} must be a multiple of the {spec.world_size} processes "
            f"(nproc_per_node x nnodes): each process takes an equal share of every batch",
            param="batch_size",
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


__all__ = ["STRATEGIES", "ZERO_STAGES", "DistributedSpec", "check_compatible"]
