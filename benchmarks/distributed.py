"""Distributed strategies side by side: ``python -m benchmarks.distributed [--quick] [--steps N]``.

Runs the same job (the ~28M-parameter Llama of `train_step`, SFT chat data, the same global
batch and seed, dropout 0) in one process and under each strategy with 2 ranks on this CPU
(gloo; DeepSpeed's CPU accelerator), LoRA and full fine-tuning, each started exactly as the
worker starts it (`lora_engine.launchers.launch_plan`). Reports per run:

* ``step_s``: median wall time between consecutive steps' metrics lines, after WARMUP_STEPS;
* ``tokens_per_s``: tokens of those steps / their time (the global batch: all ranks);
* ``rank_mb``: per rank, peak RSS minus RSS before the model loaded (what the memory preflight
  estimates), and ``peak_rss_mb``;
* ``max_loss_diff``: the largest |per-step loss - the one-process run's| (the equivalence).

Writes ``benchmarks/results/distributed.json`` and prints a table. Two ranks share this machine's
cores with each other, so the times say what the engines' bookkeeping and communication cost on
one host, not what N GPUs gain.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import machine, table, write_result
from benchmarks.launched import LaunchedRun, run_launched
from benchmarks.models import bench_model
from benchmarks.train_step import write_sft_data
from lora_engine.config import TrainConfig

NAME = "distributed"
REPO = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 2
LAYOUTS: dict[str, dict[str, Any]] = {
    "none": {},
    "ddp": {"strategy": "ddp", "nproc_per_node": 2},
    "fsdp": {"strategy": "fsdp", "nproc_per_node": 2},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2, "nproc_per_node": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2},
}


def run_config(model: Path, data: Path, out: Path, layout: str, method: str, steps: int, seq: int) -> TrainConfig:
    return TrainConfig(
        base_model_dir=str(model),
        train_file=str(data),
        output_dir=str(out),
        method=method,
        target_modules=("all-linear",),
        rank=16,
        alpha=32.0,
        dropout=0.0,
        learning_rate=2e-4 if method == "lora" else 2e-5,
        batch_size=4,
        max_steps=steps,
        max_seq_len=seq,
        seed=0,
        distributed=LAYOUTS[layout],
    )


def launch(cfg: TrainConfig) -> LaunchedRun:
    """Run ``cfg`` under its launcher; the metrics lines' arrival times and the done line."""
    run = run_launched(cfg)
    if run.exit_code != 0:
        raise RuntimeError(f"{cfg.output_dir}: exit {run.exit_code}, see {Path(cfg.output_dir) / 'launcher.log'}")
    return run


def measure(result: LaunchedRun, steps: int) -> dict[str, Any]:
    arrivals = result.arrivals
    times = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)][WARMUP_STEPS - 1 :]
    timed_tokens = arrivals[-1][1]["trained_tokens"] - arrivals[WARMUP_STEPS - 1][1]["trained_tokens"]
    memory = result.done["rank_memory"]
    return {
        "losses": [line["loss"] for _, line in arrivals],
        "step_s_all": times,
        "step_s": statistics.median(times) if times else None,
        "tokens_per_s": timed_tokens / sum(times) if times else None,
        "rank_mb": [round(m["peak_rss_mb"] - m["rss_before_model_mb"], 1) for m in memory],
        "peak_rss_mb": [m["peak_rss_mb"] for m in memory],
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small shape, 2 layouts, LoRA only (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 10, quick 4)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/)")
    args = parser.parse_args(argv)
    info = machine()
    shape = "quick" if args.quick else "default"
    steps = args.steps or (4 if args.quick else 10)
    seq = 64 if args.quick else 256
    layouts = ["none", "ddp"] if args.quick else list(LAYOUTS)
    methods = ["lora"] if args.quick else ["lora", "full"]
    model = bench_model(shape)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        data = write_sft_data(Path(tmp) / "sft.jsonl", n=64, min_len=32, max_len=seq)
        for method in methods:
            reference: list[float] | None = None
            for layout in layouts:
                cfg = run_config(model, data, Path(tmp) / f"{method}-{layout}", layout, method, steps, seq)
                row = {"method": method, "layout": layout, **measure(launch(cfg), steps)}
                if reference is None:
                    reference = row["losses"]
                row["max_loss_diff"] = max(abs(a - b) for a, b in zip(reference, row["losses"], strict=True))
                row["rank_mb_max"] = max(row["rank_mb"])
                rows.append(row)
                print(f"{method:5s} {layout:6s} step {row['step_s']:.3f}s  rank MB {row['rank_mb']}", flush=True)
    columns = [
        ("method", "method", "s"),
        ("layout", "layout", "s"),
        ("step_s", "step s", ".3f"),
        ("tokens_per_s", "tokens/s", ".0f"),
        ("rank_mb_max", "MB/rank", ".0f"),
        ("max_loss_diff", "max |dloss|", ".1e"),
    ]
    print(table(rows, columns))
    payload = {"config": {"shape": shape, "steps": steps, "max_seq_len": seq, "batch_size": 4}, "runs": rows}
    path = write_result(NAME, payload, machine_info=info, out=args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
