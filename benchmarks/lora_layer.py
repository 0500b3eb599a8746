"""Benchmark: forward+backward overhead of our LoRALinear vs PEFT's lora.Linear.

Both wrap the same frozen bare ``nn.Linear`` (fp32, no bias, 512 tokens). Each round
times one forward+backward of the bare linear, ours (fused path), ours on its general
path (the one quantized or hooked bases take) and PEFT's, interleaved so machine noise
from other processes hits all of them alike; the reported overhead is the median over
rounds of ``time(variant) / time(bare) - 1``. The input requires grad, as inside a
model, so the bare linear's backward computes the input gradient.

Run: ``.venv/bin/python -m benchmarks.lora_layer [--repeats N] [--warmup N] [--quick]``.
Prints a table and writes ``benchmarks/results/lora_layer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

from lora_engine.fsio import atomic_write_text
from lora_engine.lora import LoRALinear

RESULTS = Path(__file__).resolve().parent / "results" / "lora_layer.json"
TOKENS = 512
SHAPES = [(2048, 2048), (2048, 8192)]
RANKS = [16, 64]
DROPOUTS = [0.0, 0.05]


def _peft_linear(base: nn.Linear, rank: int, alpha: float, dropout: float) -> nn.Module:
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout)
    return PeftLinear(base, "default", config=config, r=rank, lora_alpha=alpha)


def _step_fn(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        for p in module.parameters():
            p.grad = None
        y = module(x)  # (1, T, out)
        y.backward(grad_out)

    return step


def _time(step: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def bench_config(d_in: int, d_out: int, rank: int, dropout: float, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    ours = LoRALinear(base, rank=rank, alpha=2 * rank, dropout=dropout).train()
    peft = _peft_linear(base, rank, 2 * rank, dropout).train()
    with torch.no_grad():  # non-zero B so the update is real work in both
        nn.init.normal_(ours.lora_B.weight, std=0.01)
        peft.lora_B["default"].weight.copy_(ours.lora_B.weight)
    x = torch.randn(1, TOKENS, d_in, requires_grad=True)
    grad_out = torch.randn(1, TOKENS, d_out)

    # Our general (unfused) path, as taken for quantized or hooked bases: a no-op hook on
    # lora_A is enough to route the layer there.
    ours_general = LoRALinear(base, rank=rank, alpha=2 * rank, dropout=dropout).train()
    with torch.no_grad():
        ours_general.lora_A.weight.copy_(ours.lora_A.weight)
        ours_general.lora_B.weight.copy_(ours.lora_B.weight)
    ours_general.lora_A.register_forward_hook(lambda *_: None)
    steps = {
        "bare": _step_fn(base, x, grad_out),
        "ours": _step_fn(ours, x, grad_out),
        "ours_general": _step_fn(ours_general, x, grad_out),
        "peft": _step_fn(peft, x, grad_out),
    }
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_time(step))

    def overhead(name: str) -> float:
        return statistics.median(t / b for t, b in zip(times[name], times["bare"], strict=True)) - 1.0

    def overhead_best(name: str) -> float:
        # timeit-style: the fastest run of each is the one least disturbed by other processes
        return min(times[name]) / min(times["bare"]) - 1.0

    lora_flops = 2 * TOKENS * rank * (d_in + d_out)  # forward of the LoRA branch
    base_flops = 2 * TOKENS * d_in * d_out
    return {
        "shape": f"{d_in}x{d_out}",
        "rank": rank,
        "dropout": dropout,
        "median_ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "best_ms": {k: 1000 * min(v) for k, v in times.items()},
        "overhead_best": {k: overhead_best(k) for k in ("ours", "ours_general", "peft")},
        "overhead_ours": overhead("ours"),
        "overhead_ours_general": overhead("ours_general"),
        "overhead_peft": overhead("peft"),
        "lora_flops_fraction": lora_flops / base_flops,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per config (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only 2048x2048, r=16 (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    configs = [(i, o, r, d) for (i, o) in SHAPES for r in RANKS for d in DROPOUTS]
    if args.quick:
        configs = [(2048, 2048, 16, 0.0), (2048, 2048, 16, 0.05)]

    rows = []
    load_before = os.getloadavg()[0]
    print(f"{threads} threads, load average {load_before:.2f}; overhead vs the bare linear (forward+backward)")
    print(
        "median: median over rounds of the per-round ratio; best: fastest run vs fastest bare run (*bare ms: fastest)"
    )
    print(
        f"{'shape':>10} {'rank':>4} {'drop':>5} {'bare ms*':>8} | {'median: ours':>12} {'general':>8} {'peft':>7} "
        f"| {'best: ours':>10} {'general':>8} {'peft':>7}"
    )
    for d_in, d_out, rank, dropout in configs:
        row = bench_config(d_in, d_out, rank, dropout, args.repeats, args.warmup)
        rows.append(row)
        best = row["overhead_best"]
        print(
            f"{row['shape']:>10} {rank:>4} {dropout:>5.2f} {row['best_ms']['bare']:>8.1f} | "
            f"{100 * row['overhead_ours']:>+11.1f}% {100 * row['overhead_ours_general']:>+7.1f}% "
            f"{100 * row['overhead_peft']:>+6.1f}% | {100 * best['ours']:>+9.1f}% "
            f"{100 * best['ours_general']:>+7.1f}% {100 * best['peft']:>+6.1f}%",
            flush=True,
        )

    result = {
        "benchmark": "lora_layer",
        "command": "python -m benchmarks.lora_layer " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tokens": TOKENS,
        "dtype": "float32",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "threads": threads,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count()},
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "overhead": "median over rounds of time(variant)/time(bare linear) - 1, forward+backward",
        "overhead_best": "min time(variant) / min time(bare linear) - 1 (timeit-style, least disturbed runs)",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
