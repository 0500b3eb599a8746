"""Benchmark: the memory preflight's per-rank estimate against real runs' measured peaks.

For each strategy (one process; DDP, FSDP, DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks) the
recipe trains the ~27M-parameter Llama of ``benchmarks.train_step`` (hidden 512, MLP 1408, 8
layers, built once and cached in ``.cache/``) for a few LoRA steps, launched exactly as the
worker launches it (``lora_engine.launchers.launch_plan``). Each rank reports, in the run's
``done`` line, its RSS just before ``from_pretrained`` and its peak RSS; their difference is the
model-dependent memory the estimate (``lora_engine.memory_estimate``) predicts. The error is
``(estimate - measured) / measured`` per rank.

Allocator: by default every run sets ``MALLOC_MMAP_THRESHOLD_`` (glibc) to 128 KiB, which turns
off glibc's *dynamic* mmap threshold. Without it, the first free of a large block raises the
threshold (up to 32 MiB), so later activation, all-gather and bucket buffers come from the heap
arenas and stay resident after they are freed: the peak RSS then grows with every step, by an
amount that depends on thread timing (FSDP's two ranks differed by 55 MiB in one run), and no
count of what the engines allocate predicts it. ``--default-malloc`` measures that too.

Run: ``.venv/bin/python -m benchmarks.memory_preflight [--default-malloc] [--out PATH]``; writes
``benchmarks/results/memory_preflight.json`` (the table docs/distributed.md quotes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import machine, table, write_result
from benchmarks.launched import run_launched
from benchmarks.models import bench_model
from benchmarks.train_step import write_sft_data
from lora_engine.config import TrainConfig
from lora_engine.memory_estimate import estimate_rank_memory

REPO = Path(__file__).resolve().parent.parent
NAME = "memory_preflight"
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
RUN_TIMEOUT_S = 300
TOLERANCE = 0.25  # the bound on |estimate - measured| / measured

CASES: dict[str, dict[str, Any]] = {
    "none": {},
    "ddp": {"strategy": "ddp", "nproc_per_node": 2},
    "fsdp": {"strategy": "fsdp", "nproc_per_node": 2},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2, "nproc_per_node": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2},
}


@dataclass(frozen=True)
class Workload:
    """One measured run: LoRA on every linear, fp32 on CPU, a short sequence so it takes seconds."""

    batch_size: int = 4  # global: 2 rows per rank on 2 ranks
    max_seq_len: int = 64  # every example is longer: each row is exactly this long
    steps: int = 3
    rank: int = 16
    target_modules: tuple[str, ...] = ("all-linear",)


WORKLOAD = Workload()


def train_config(name: str, model: Path, data: Path, out: Path, w: Workload = WORKLOAD) -> TrainConfig:
    return TrainConfig(
        base_model_dir=str(model),
        train_file=str(data),
        output_dir=str(out),
        target_modules=w.target_modules,
        rank=w.rank,
        alpha=2.0 * w.rank,
        dropout=0.0,
        batch_size=w.batch_size,
        max_steps=w.steps,
        max_seq_len=w.max_seq_len,
        lr_scheduler="constant",
        seed=0,
        device="cpu",
        distributed=CASES[name],
    )


def training_data(path: Path, w: Workload = WORKLOAD) -> Path:
    """Chat examples 3-4x longer than max_seq_len, so every truncated row has max_seq_len tokens."""
    return write_sft_data(path, n=w.batch_size * w.steps, min_len=3 * w.max_seq_len, max_len=4 * w.max_seq_len)


def measure(cfg: TrainConfig, *, fixed_malloc: bool = True) -> tuple[list[dict[str, float]], int | None]:
    """Run ``cfg`` as the worker launches it: each rank's ``rss_before_model_mb`` and ``peak_rss_mb``,
    and the launcher's exit code (None: it hung after the done line and was killed)."""
    env: dict[str, str | None] = dict(FIXED_MMAP_THRESHOLD) if fixed_malloc else {"MALLOC_MMAP_THRESHOLD_": None}
    run = run_launched(cfg, env=env, timeout_s=RUN_TIMEOUT_S)
    return run.done["rank_memory"], run.exit_code


def estimate(cfg: TrainConfig) -> Any:
    model_config = json.loads((Path(cfg.base_model_dir) / "config.json").read_text())
    return estimate_rank_memory(
        model_config,
        method=cfg.method,
        quant_bits=cfg.quant_bits,
        rank=cfg.rank,
        target_modules=cfg.target_modules,
        batch_size=cfg.batch_size,
        grad_accum_steps=cfg.grad_accum_steps,
        max_seq_len=cfg.max_seq_len,
        gradient_checkpointing=cfg.gradient_checkpointing,
        spec=cfg.distributed,
    )


def compare(name: str, model: Path, work: Path, *, fixed_malloc: bool = True) -> dict[str, Any]:
    """One strategy: its estimate, each rank's measurement and the error."""
    data = training_data(work / "train.jsonl")
    cfg = train_config(name, model, data, work / f"{name}-{'fixed' if fixed_malloc else 'default'}-malloc")
    est = estimate(cfg)
    ranks, exit_code = measure(cfg, fixed_malloc=fixed_malloc)
    measured = [round(r["peak_rss_mb"] - r["rss_before_model_mb"], 1) for r in ranks]
    errors = [round(100 * (est.total_mb - m) / m, 1) for m in measured]
    return {
        "strategy": name,
        "allocator": "fixed mmap threshold" if fixed_malloc else "glibc default",
        "estimate_mb": round(est.total_mb, 1),
        "measured_mb": measured,
        "error_pct": errors,
        "worst_error_pct": max(errors, key=abs),
        "within_tolerance": all(abs(e) <= 100 * TOLERANCE for e in errors),
        "rank_memory": ranks,
        # None: a rank hung in teardown after reporting and the launcher was killed.
        "launcher_exit_code": exit_code,
        "estimate": est.breakdown(),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    shown = [
        {
            **r,
            "measured": " / ".join(f"{m:.0f}" for m in r["measured_mb"]),
            "errors": " / ".join(f"{e:+.0f}%" for e in r["error_pct"]),
        }
        for r in rows
    ]
    print(
        table(
            shown,
            [
                ("strategy", "strategy", "s"),
                ("allocator", "allocator", "s"),
                ("estimate_mb", "estimate MiB", ".0f"),
                ("measured", "measured MiB (rank 0 / 1)", "s"),
                ("errors", "error", "s"),
            ],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default-malloc", action="store_true", help="also measure with glibc's default allocator")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    info = machine()
    started = time.monotonic()
    model = bench_model("default")
    modes = [True, False] if args.default_malloc else [True]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare(name, model, Path(tmp), fixed_malloc=fixed) for fixed in modes for name in CASES]
    print_table(rows)
    result = {
        "config": {**WORKLOAD.__dict__, "model_dir": model.name, "world_size": 2, "tolerance_pct": 100 * TOLERANCE},
        "rows": rows,
        "wall_s": round(time.monotonic() - started, 1),
    }
    path = write_result(NAME, result, machine_info=info, out=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
