"""Benchmark: end-to-end training throughput and peak memory of the recipe, per method.

Each variant is a real ``python -m lora_engine.train CONFIG.json`` child process on the
tiny Llama (built or reused from ``.cache/``), on longer examples than the tests use
(story completions, 128-256 tokens), batch 8. Throughput is the recipe's own
``tokens_per_s`` of the last metrics line (setup excluded); peak memory is the child's
max RSS (includes Python, torch and transformers: ~0.5 GB before any model).

Run: ``.venv/bin/python -m benchmarks.train_recipe [--steps N]``.
Prints a table and writes ``benchmarks/results/train_recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.models import tiny_model
from lora_engine import protocol
from lora_engine.fsio import atomic_write_text

REPO = Path(__file__).resolve().parent.parent

VARIANTS = {
    "lora r8 q,v": {"method": "lora", "target_modules": ["q_proj", "v_proj"]},
    "lora r8 all-linear": {"method": "lora", "target_modules": ["all-linear"]},
    "lora r8 all-linear + grad ckpt": {
        "method": "lora",
        "target_modules": ["all-linear"],
        "gradient_checkpointing": True,
    },
    "qlora nf4 r8 all-linear": {"method": "qlora", "quant_bits": 4, "target_modules": ["all-linear"]},
    "qlora int8 r8 all-linear": {"method": "qlora", "quant_bits": 8, "target_modules": ["all-linear"]},
    "full fine-tune": {"method": "full", "learning_rate": 1e-4},
}


def story_file(path: Path) -> Path:
    paras = (REPO / "lora_engine" / "assets" / "corpus.txt").read_text().split("\n\n")
    with open(path, "w") as fh:
        for i in range(0, 160, 2):
            fh.write(json.dumps({"prompt": "Tell me a story.", "completion": paras[i] + " " + paras[i + 1]}) + "\n")
    return path


def run_variant(name: str, extra: dict, *, model: Path, data: Path, work: Path, steps: int) -> dict:
    cfg = {
        "base_model_dir": str(model),
        "train_file": str(data),
        "output_dir": str(work / name.replace(" ", "_").replace(",", "")),
        "rank": 8,
        "alpha": 16,
        "learning_rate": 1e-3,
        "batch_size": 8,
        "max_steps": steps,
        "max_seq_len": 256,
        "seed": 0,
        **extra,
    }
    cfg_path = work / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lora_engine.train", str(cfg_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    wall = time.monotonic() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = [x.obj for x in map(protocol.parse_line, proc.stdout.splitlines()) if x.obj is not None]
    metrics = [x for x in lines if x["type"] == protocol.METRICS]
    if proc.returncode != protocol.EXIT_DONE or not metrics:
        raise RuntimeError(f"{name} failed: {lines[-1] if lines else proc.stderr[-1000:]}")
    params = next(
        (m["message"] for m in lines if m["type"] == protocol.MESSAGE and m["message"].startswith("parameters")), ""
    )
    return {
        "variant": name,
        "tokens_per_s": metrics[-1]["tokens_per_s"],
        "first_loss": metrics[0]["loss"],
        "last_loss": metrics[-1]["loss"],
        # ru_maxrss of children is the max over all children so far: only meaningful when it grows.
        "peak_rss_mb": round(peak_kb / 1024, 1) if peak_kb > before else None,
        "wall_s": round(wall, 1),
        "parameters": params,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    model = tiny_model()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = story_file(work / "stories.jsonl")
        for name, extra in VARIANTS.items():
            res = run_variant(name, extra, model=model, data=data, work=work, steps=args.steps)
            results.append(res)
            print(
                f"{name:34s} {res['tokens_per_s']:>9.0f} tok/s  loss {res['first_loss']:.2f} -> {res['last_loss']:.2f}"
                f"  wall {res['wall_s']:5.1f}s  {res['parameters']}"
            )
    out = REPO / "benchmarks" / "results" / "train_recipe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out,
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
                "steps": args.steps,
                "results": results,
            },
            indent=2,
        ),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
