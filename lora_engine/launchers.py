"""The command lines that start a distributed run, and DeepSpeed's generated config.

`launch_plan` turns a `TrainConfig` (its `distributed` spec) into the argv of one node's
launcher plus the environment it needs, always as an argument list (never a shell string):

* ``ddp`` / ``fsdp``: ``python -m torch.distributed.run`` (torchrun) — ``--standalone`` on one
  node (a private rendezvous on a free port), a static rendezvous at ``master_addr:master_port``
  with ``--node-rank`` across nodes (node 0 holds ranks 0..nproc_per_node-1, so rank 0 — the
  one that reports — runs where the worker reads stdout);
* ``deepspeed``: ``python -m deepspeed.launcher.runner`` with ``--no_ssh`` and the node rank
  across nodes (each node's worker, or the launcher node, starts its own; no pdsh/ssh fan-out);
* ``none``: ``python -m lora_engine.train CONFIG``.

Every launcher runs ``-m lora_engine.train CONFIG`` in each rank; the recipe reads the rank and
world size from the environment the launcher sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).
``--max-restarts 0``: a lost rank ends the launch; the worker resumes the job from its last
(sharded) checkpoint in a new attempt instead of restarting ranks in place.

`deepspeed_config` is the one function that writes DeepSpeed's JSON config from a run's
config: the recipe passes it to ``deepspeed.initialize`` and the worker saves the same dict with
the job, so what the admin shows is what ran.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from lora_engine.config import TrainConfig

TRAIN_MODULE = "lora_engine.train"
# DeepSpeed's buckets (elements); small enough for CPU hosts, DeepSpeed's defaults are 5e8.
DS_BUCKET_ELEMENTS = 50_000_000


@dataclass(frozen=True)
class LaunchPlan:
    """One node's launcher: the argv to run and the environment variables to add."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the launcher binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch_plan(
    cfg: TrainConfig,
    config_path: str,
    *,
    python: str,
    cuda: bool,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> LaunchPlan:
    """The launcher for node ``node_rank`` of the run ``cfg`` describes (config at ``config_path``).

    Args:
        cuda: the node trains on GPUs (NCCL); otherwise gloo, and DeepSpeed's CPU accelerator.
        master_addr, master_port: node 0's rendezvous address; across nodes both are required
            (``cfg.distributed.rdzv_endpoint`` when set, see `rendezvous`), on one node the port
            of a DeepSpeed launch defaults to a free one.
    """
    spec = cfg.distributed
    run = ["-m", TRAIN_MODULE, str(config_path)]
    env = {} if cuda else {"DS_ACCELERATOR": "cpu"}
    if spec.strategy == "none":
        return LaunchPlan([python, *run], env)
    if not 0 <= node_rank < spec.nnodes:
        raise ValueError(f"node_rank {node_rank} is outside 0..{spec.nnodes - 1}")
    multi = spec.nnodes > 1
    if multi and master_port is None:
        raise ValueError("a multi-node launch needs master_addr and master_port (the rendezvous)")
    if spec.launcher == "torchrun":
        argv = [python, "-m", "torch.distributed.run", f"--nproc-per-node={spec.nproc_per_node}"]
        if multi:
            argv += [
                f"--nnodes={spec.nnodes}",
                f"--node-rank={node_rank}",
                "--rdzv-backend=static",
                f"--master-addr={master_addr}",
                f"--master-port={master_port}",
            ]
        else:
            argv += ["--nnodes=1", "--standalone"]
        argv += ["--max-restarts=0", "--monitor-interval=1", *run]
        return LaunchPlan(argv, env)
    port = master_port if master_port is not None else free_port()
    argv = [python, "-m", "deepspeed.launcher.runner", f"--num_gpus={spec.nproc_per_node}", f"--master_port={port}"]
    if multi:
        argv += [
            "--no_ssh",
            f"--num_nodes={spec.nnodes}",
            f"--node_rank={node_rank}",
            f"--master_addr={master_addr}",
        ]
    # --no_local_rank: LOCAL_RANK comes in the environment, as under torchrun.
    argv += ["--no_local_rank", "--module", TRAIN_MODULE, str(config_path)]
    return LaunchPlan(argv, env)


def rendezvous(cfg: TrainConfig, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``(master_addr, master_port)`` for a multi-node run: its ``rdzv_endpoint``, else a free
    port on ``default_host`` (node 0)."""
    endpoint = cfg.distributed.rdzv_endpoint
    if endpoint:
        host, port = endpoint.rsplit(":", 1)
        return host, int(port)
    return default_host, free_port(default_host if default_host != "localhost" else "127.0.0.1")


def deepspeed_config(cfg: TrainConfig, *, cuda: bool) -> dict[str, Any]:
    """DeepSpeed's JSON config for ``cfg`` (strategy "deepspeed").

    The micro-batch per rank is ``batch_size / world_size`` and gradient accumulation is the
    run's, so DeepSpeed's train batch equals the single-process run's ``batch_size x
    grad_accum_steps``. Clipping is DeepSpeed's (it owns the partitioned gradients). Half
    precision only on GPUs (as the single-process recipe: bf16/fp16 fall back to fp32 on CPU).
    """
    spec = cfg.distributed
    if spec.strategy != "deepspeed":
        raise ValueError(f"strategy {spec.strategy!r} has no DeepSpeed config")
    micro = cfg.batch_size // spec.world_size
    zero: dict[str, Any] = {
        "stage": spec.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": cuda,
        "reduce_bucket_size": DS_BUCKET_ELEMENTS,
        "allgather_bucket_size": DS_BUCKET_ELEMENTS,
    }
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if spec.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if spec.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    return {
        "train_batch_size": micro * cfg.grad_accum_steps * spec.world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": float(cfg.max_grad_norm or 0.0),
        "zero_optimization": zero,
        "bf16": {"enabled": cuda and cfg.precision == "bf16"},
        "fp16": {"enabled": cuda and cfg.precision == "fp16"},
        # Our AdamW (torch.optim) is the client optimizer, so the run matches the others — with
        # offload too, where DeepSpeed would rather have its own DeepSpeedCPUAdam (faster on GPU
        # hosts; a JIT-built op): torch's AdamW then steps the host-resident fp32 partitions.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "seed": cfg.seed,
    }


__all__ = ["LaunchPlan", "deepspeed_config", "free_port", "launch_plan", "rendezvous"]
