"""Benchmark: one LoRA layer, our LoRALinear vs PEFT's lora.Linear vs the bare frozen linear.

All variants wrap the same frozen bare ``nn.Linear`` (fp32, CPU, no bias, 512 tokens, the
input requires grad as inside a model, so the bare layer's backward computes the input
gradient too). Three measurements per cell of the grid (shapes 4096x4096 and 2048x8192,
ranks 8/16/64, dropout 0 and 0.05):

- **time**, forward+backward: each round runs one step of every variant in turn (bare,
  ours, ours on its general path, PEFT, and with dropout ours with the ``"bits"`` mask), so
  load from other processes hits all alike; the overhead is the median over rounds of
  ``time(variant) / time(bare) - 1``, with the 10th/90th percentile of that ratio as spread.
- **peak memory**, forward+backward: the highest total of bytes the CPU allocator holds during
  one step above what it held when the step started, from ``torch.profiler`` allocation and
  free events (``profile_memory=True``; every tensor the step allocates: activations saved
  for backward, temporaries, gradients). Deterministic, so one step per variant.
- **inference** (forward only, ``no_grad``, eval mode): ours unmerged and PEFT unmerged against
  ours merged (``W' = W + s·B A``) and the bare layer, interleaved the same way.

With ``--cpu-time`` the steps run on one thread and are timed by that thread's CPU time
(``time.thread_time``): time spent descheduled by other processes does not count, so the
ratios hold on a busy machine (cache and memory-bandwidth sharing still do).

Run: ``.venv/bin/python -m benchmarks.lora_layer [--repeats N] [--warmup N] [--quick] [--profile] [--cpu-time]``.
Prints the tables and writes ``benchmarks/results/lora_layer.json`` (``benchmarks.common``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import machine, percentile, summary, table, write_result
from lora_engine.lora import LoRALinear

NAME = "lora_layer"
TOKENS = 512
SHAPES = [(4096, 4096), (2048, 8192)]
RANKS = [8, 16, 64]
DROPOUTS = [0.0, 0.05]
QUICK_SHAPE = (1024, 1024)  # smoke run only: small enough for a test
TARGETS = {8: 0.04, 16: 0.04, 64: 0.08}  # overhead over the bare linear (issue 15; r=8: as r=16)
TRAIN_VARIANTS = ("ours", "ours_general", "ours_bits", "peft")  # each against "bare"
INFER_VARIANTS = ("ours", "peft", "merged")


def _peft_linear(base: nn.Linear, rank: int, alpha: float, dropout: float) -> nn.Module:
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout)
    return PeftLinear(base, "default", config=config, r=rank, lora_alpha=alpha)


def _layers(d_in: int, d_out: int, rank: int, dropout: float) -> dict[str, nn.Module]:
    """The bare frozen linear and every wrapper of it, all with the same (non-zero) A and B."""
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    ours = LoRALinear(base, rank=rank, alpha=2 * rank, dropout=dropout)
    with torch.no_grad():  # non-zero B so the update is real work everywhere
        nn.init.normal_(ours.lora_B.weight, std=0.01)

    def twin(**kwargs: Any) -> LoRALinear:
        layer = LoRALinear(base, rank=rank, alpha=2 * rank, dropout=dropout, **kwargs)
        layer.load_state_dict(ours.state_dict())
        return layer

    # Our general (unfused) path, as taken for quantized or hooked bases: a no-op hook on
    # lora_A is enough to route the layer there.
    general = twin()
    general.lora_A.register_forward_hook(lambda *_: None)
    peft = _peft_linear(base, rank, 2 * rank, dropout)
    with torch.no_grad():
        peft.lora_A["default"].weight.copy_(ours.lora_A.weight)
        peft.lora_B["default"].weight.copy_(ours.lora_B.weight)
    layers: dict[str, nn.Module] = {"bare": base, "ours": ours, "ours_general": general, "peft": peft}
    if dropout > 0:
        layers["ours_bits"] = twin(dropout_mask="bits")
    return layers


def _clear_grads(module: nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    for p in module.parameters():
        p.grad = None


def _train_step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        _clear_grads(module, x)
        module(x).backward(grad_out)  # (1, T, out)

    return step


def _infer_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def interleaved(
    steps: dict[str, Callable[[], None]], *, warmup: int, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per call of every step, the steps run in turn inside each round (A, B, C, A, B, C, ...)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = clock()
            step()
            times[name].append(clock() - started)
    return times


def ratio_summary(times: list[float], reference: list[float]) -> dict[str, float]:
    """Per-round ratio ``time / reference``: median, 10th and 90th percentile."""
    ratios = [t / r for t, r in zip(times, reference, strict=True)]
    return {"median": statistics.median(ratios), "p10": percentile(ratios, 10), "p90": percentile(ratios, 90)}


def peak_step_bytes(step: Callable[[], None], before: Callable[[], None] = lambda: None) -> int:
    """Highest bytes held by the CPU allocator during ``step`` above the level at its start.

    From the profiler's allocation (+bytes) and free (-bytes) events in time order; tensors
    alive before the step (weights, the input) do not count, its outputs (gradients) do.
    ``before`` runs just before the profiled step, outside it (e.g. dropping the previous
    step's gradients, whose frees would otherwise lower the starting level).
    """
    step()  # warm: lazily created state is not the step's
    before()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def bench_train(
    d_in: int, d_out: int, rank: int, dropout: float, *, warmup: int, repeats: int, clock: Callable[[], float]
) -> dict[str, Any]:
    layers = _layers(d_in, d_out, rank, dropout)
    for layer in layers.values():
        layer.train()
    x = torch.randn(1, TOKENS, d_in, requires_grad=True)
    grad_out = torch.randn(1, TOKENS, d_out)
    steps = {name: _train_step(layer, x, grad_out) for name, layer in layers.items()}

    times = interleaved(steps, warmup=warmup, repeats=repeats, clock=clock)
    peak = {name: peak_step_bytes(steps[name], lambda m=layer: _clear_grads(m, x)) for name, layer in layers.items()}
    ratios = {name: ratio_summary(times[name], times["bare"]) for name in steps if name != "bare"}
    # LoRA FLOPs over forward+backward: 6·N·r·(in+out) (2 GEMMs forward, 4 backward) against
    # the bare layer's 4·N·in·out (forward and input gradient)
    return {
        "shape": f"{d_in}x{d_out}",
        "rank": rank,
        "dropout": dropout,
        "times_s": times,
        "time": {name: summary(ts) for name, ts in times.items()},
        "time_ratio": ratios,
        "overhead": {name: r["median"] - 1.0 for name, r in ratios.items()},
        "peak_bytes": peak,
        "peak_ratio": {name: peak[name] / peak["bare"] for name in peak if name != "bare"},
        "peak_ratio_ours_vs_peft": peak["ours"] / peak["peft"],
        "target": TARGETS[rank],
        "lora_flops_fraction": 1.5 * rank * (d_in + d_out) / (d_in * d_out),
    }


def bench_infer(
    d_in: int, d_out: int, rank: int, *, warmup: int, repeats: int, clock: Callable[[], float]
) -> dict[str, Any]:
    layers = _layers(d_in, d_out, rank, 0.0)
    merged = copy.deepcopy(layers["ours"])
    merged.merge()
    modules = {"bare": layers["bare"], "ours": layers["ours"], "peft": layers["peft"], "merged": merged}
    for module in modules.values():
        module.eval()
    x = torch.randn(1, TOKENS, d_in)
    with torch.no_grad():
        max_diff = (merged(x) - layers["ours"](x)).abs().max().item()  # merge changes no output
    steps = {name: _infer_step(m, x) for name, m in modules.items()}
    times = interleaved(steps, warmup=warmup, repeats=repeats, clock=clock)
    ratios = {name: ratio_summary(times[name], times["bare"]) for name in INFER_VARIANTS}
    return {
        "shape": f"{d_in}x{d_out}",
        "rank": rank,
        "times_s": times,
        "time": {name: summary(ts) for name, ts in times.items()},
        "time_ratio": ratios,
        "overhead": {name: r["median"] - 1.0 for name, r in ratios.items()},
        "unmerged_vs_merged": ratio_summary(times["ours"], times["merged"])["median"],
        "merged_max_abs_diff": max_diff,
    }


def profile_gap(d_in: int, d_out: int, rank: int, dropout: float, *, steps: int = 5) -> dict[str, str]:
    """torch.profiler op tables (self CPU time) of the bare step and ours, for the docs."""
    layers = _layers(d_in, d_out, rank, dropout)
    x = torch.randn(1, TOKENS, d_in, requires_grad=True)
    grad_out = torch.randn(1, TOKENS, d_out)
    tables = {}
    for name in ("bare", "ours", "peft"):
        step = _train_step(layers[name].train(), x, grad_out)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
    return tables


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per cell (medians over rounds)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per cell first")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SHAPE}, r=16, 3 rounds")
    parser.add_argument("--profile", action="store_true", help="also print profiler op tables of one cell")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="1 thread, CPU time of that thread (time.thread_time) instead of wall time: robust to other load",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)

    info = machine()
    torch.set_num_threads(1 if args.cpu_time else os.cpu_count() or 1)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    shapes, ranks, repeats, warmup = SHAPES, RANKS, args.repeats, args.warmup
    if args.quick:
        shapes, ranks, repeats, warmup = [QUICK_SHAPE], [16], 3, 1
    started = time.perf_counter()
    print(
        f"{torch.get_num_threads()} threads, {'thread CPU' if args.cpu_time else 'wall'} time, "
        f"load average {info['load_average_before']:.2f}, {TOKENS} tokens, fp32; "
        f"{warmup} warm-up + {repeats} interleaved rounds per cell"
    )

    train_rows = []
    for d_in, d_out in shapes:
        for rank in ranks:
            for dropout in DROPOUTS:
                row = bench_train(d_in, d_out, rank, dropout, warmup=warmup, repeats=repeats, clock=clock)
                train_rows.append(row)
                over, mem = row["overhead"], row["peak_ratio"]
                print(
                    f"  train {row['shape']} r={rank} p={dropout}: bare {1000 * row['time']['bare']['median']:.1f} ms, "
                    f"ours {_pct(over['ours'])}, general {_pct(over['ours_general'])}, "
                    + (f"bits {_pct(over['ours_bits'])}, " if "ours_bits" in over else "")
                    + f"peft {_pct(over['peft'])}; peak mem ours {mem['ours']:.2f}x, peft {mem['peft']:.2f}x bare",
                    flush=True,
                )
    infer_rows = []
    for d_in, d_out in shapes:
        for rank in ranks:
            row = bench_infer(d_in, d_out, rank, warmup=warmup, repeats=repeats, clock=clock)
            infer_rows.append(row)
            print(
                f"  infer {row['shape']} r={rank}: bare {1000 * row['time']['bare']['median']:.1f} ms, "
                f"ours unmerged {_pct(row['overhead']['ours'])}, merged {_pct(row['overhead']['merged'])}, "
                f"peft {_pct(row['overhead']['peft'])}",
                flush=True,
            )

    profiles = {}
    if args.profile:
        cell = (*shapes[0], 16 if 16 in ranks else ranks[0], 0.0)
        profiles = {"cell": list(cell), **profile_gap(*cell)}
        for name in ("bare", "ours", "peft"):
            print(f"\nprofile {name} {cell}:\n{profiles[name]}")

    wall = time.perf_counter() - started
    flat_train = [
        {
            "shape": r["shape"],
            "rank": r["rank"],
            "dropout": r["dropout"],
            "bare_ms": 1000 * r["time"]["bare"]["median"],
            "ours": _pct(r["overhead"]["ours"]),
            "spread": f"{_pct(r['time_ratio']['ours']['p10'] - 1)}..{_pct(r['time_ratio']['ours']['p90'] - 1)}",
            "bits": _pct(r["overhead"]["ours_bits"]) if "ours_bits" in r["overhead"] else None,
            "general": _pct(r["overhead"]["ours_general"]),
            "peft": _pct(r["overhead"]["peft"]),
            "target": f"{100 * r['target']:.0f}%",
            "mem_ours": r["peak_ratio"]["ours"],
            "mem_peft": r["peak_ratio"]["peft"],
            "mem_ours_peft": r["peak_ratio_ours_vs_peft"],
        }
        for r in train_rows
    ]
    print("\nforward+backward: overhead over the bare linear (median of per-round ratios; spread p10..p90)")
    print(
        table(
            flat_train,
            [
                ("shape", "shape", ""),
                ("rank", "r", ""),
                ("dropout", "p", ".2f"),
                ("bare_ms", "bare ms", ".1f"),
                ("ours", "ours", ""),
                ("spread", "ours p10..p90", ""),
                ("bits", "ours bits-mask", ""),
                ("general", "ours general", ""),
                ("peft", "PEFT", ""),
                ("target", "target", ""),
                ("mem_ours", "peak mem ours/bare", ".2f"),
                ("mem_peft", "PEFT/bare", ".2f"),
                ("mem_ours_peft", "ours/PEFT", ".2f"),
            ],
        )
    )
    flat_infer = [
        {
            "shape": r["shape"],
            "rank": r["rank"],
            "bare_ms": 1000 * r["time"]["bare"]["median"],
            "ours": _pct(r["overhead"]["ours"]),
            "merged": _pct(r["overhead"]["merged"]),
            "peft": _pct(r["overhead"]["peft"]),
            "unmerged_vs_merged": _pct(r["unmerged_vs_merged"] - 1),
        }
        for r in infer_rows
    ]
    print("\ninference (forward, no_grad): overhead over the bare linear")
    print(
        table(
            flat_infer,
            [
                ("shape", "shape", ""),
                ("rank", "r", ""),
                ("bare_ms", "bare ms", ".1f"),
                ("ours", "ours unmerged", ""),
                ("merged", "ours merged", ""),
                ("peft", "PEFT unmerged", ""),
                ("unmerged_vs_merged", "unmerged vs merged", ""),
            ],
        )
    )
    payload = {
        "config": {
            "tokens": TOKENS,
            "dtype": "float32",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "clock": "thread CPU time (time.thread_time), 1 thread" if args.cpu_time else "wall (time.perf_counter)",
            "shapes": [f"{i}x{o}" for i, o in shapes],
            "ranks": ranks,
            "dropouts": DROPOUTS,
            "alpha": "2 * rank",
            "repeats": repeats,
            "warmup": warmup,
            "quick": args.quick,
        },
        "method": {
            "time": "interleaved rounds; overhead = median over rounds of time(variant)/time(bare) - 1",
            "memory": "torch.profiler profile_memory=True: peak of allocated-minus-freed CPU bytes during one step",
            "variants": {
                "bare": "the frozen nn.Linear alone",
                "ours": "LoRALinear, fused path, default 'bernoulli' mask (PEFT's mask under the same seed)",
                "ours_general": "LoRALinear forced onto its general (unfused) path by a no-op hook",
                "ours_bits": "LoRALinear, fused path, dropout_mask='bits' (same distribution, cheaper)",
                "peft": "peft.tuners.lora.layer.Linear",
                "merged": "LoRALinear after merge() (W' = W + s B A)",
            },
        },
        "targets": {"r<=16": 0.04, "r=64": 0.08},
        "wall_s": wall,
        "train": train_rows,
        "inference": infer_rows,
        "profile": profiles,
    }
    path = write_result(NAME, payload, machine_info=info, out=args.out)
    print(f"\nwall {wall:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
