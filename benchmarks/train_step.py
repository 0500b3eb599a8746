"""Benchmark: training-step throughput of our recipe vs transformers + PEFT, and what it reaches.

All runs use one randomly initialised Llama-style model built locally (default: hidden 512,
8 layers, MLP 1408, the tiny tokenizer's 1024-token vocabulary: 28.0 M parameters; cached in
``.cache/train-step-model-<key>`` keyed by its shape, so re-runs do not rebuild it), fp32 on
CPU, AdamW, LoRA r=16 (alpha 32) on all linear layers but the LM head, max_grad_norm 1.

1. **Realistic SFT**: deterministic chat examples (a user turn and an assistant answer cut
   from the bundled corpus, 32-512 tokens, assistant-only labels), batch 4, one epoch over
   a fixed pool per timing. *ours* is our recipe as it runs (``lora_engine.data`` encoding,
   `BatchSchedule`, `collate`, ``FineTuneRecipe._train_step``), once with its default
   padding to the longest row and once with ``packing=True`` (padding-free rows of up to
   ``max_seq_len`` tokens, each example attending only to itself). *theirs* is
   ``peft.get_peft_model`` on ``AutoModelForCausalLM`` with ``DataCollatorForSeq2Seq``
   (pad to longest, labels padded with -100: what TRL's SFT collator does) and a plain
   loop: ``model(**batch).loss.backward()``, ``clip_grad_norm_``, ``AdamW.step``. Same
   token ids, same batches (ours unpacked and theirs), same optimizer settings.
   Throughput counts real (non-pad) tokens.
2. **Synthetic full-label step**: fixed shape (4 x 256 random tokens, every position a
   label): ours vs PEFT, the step around the same GEMMs.
3. **LoRA vs full fine-tune** and 4. **QLoRA (nf4, bitsandbytes on CPU) vs LoRA**: each a
   fresh ``python -m benchmarks.train_step --child METHOD`` process running our recipe on
   the synthetic step, so peak RSS (``ru_maxrss`` / ``VmHWM``) is that method's alone.
5. **FLOP/s share**: useful FLOPs per timed step over the machine's fp32 matmul ceiling,
   measured in the same rounds (best of a 2048^3 ``torch.mm``). Useful FLOPs, per token:
   forward ``2 * P`` (P: parameters of every matmul, LoRA factors and LM head included,
   embedding excluded) plus attention ``4 * L * d * c`` (c: keys attended, causal);
   backward: the input gradients ``2 * P`` and attention ``8 * L * d * c``, plus the weight
   gradients ``2 * P_trainable``. So ``(4P + 2P_trainable + 12 L d c)`` per token: for
   full fine-tuning the familiar ``6P``. Pad positions are not useful work.

Every comparison is interleaved inside each round (A, B, C, A, B, C ...) so machine load hits
all sides alike; medians over rounds, ratios per round.

Run: ``.venv/bin/python -m benchmarks.train_step [--quick] [--rounds N] [--out PATH]``.
Prints the tables and writes ``benchmarks/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from benchmarks.common import machine, summary, table, write_result
from benchmarks.models import SHAPES, bench_model
from lora_engine.config import TrainConfig
from lora_engine.data import IGNORE_INDEX, BatchSchedule, Example
from lora_engine.progress import ProgressEmitter
from lora_engine.report import memory_report
from lora_engine.tiny_model import ASSETS_DIR
from lora_engine.train import FineTuneRecipe

REPO = Path(__file__).resolve().parent.parent
NAME = "train_step"


@dataclass(frozen=True)
class Settings:
    """One run's workload (the defaults are the documented run; `quick` shrinks everything)."""

    shape: str = "default"
    rounds: int = 3
    warmup: int = 1
    pool: int = 16  # SFT examples per timed epoch
    min_len: int = 32
    max_len: int = 512
    max_seq_len: int = 512  # the recipe's cap (and the packed row length)
    batch_size: int = 4
    synth_seq: int = 256
    synth_steps: int = 2  # synthetic steps per timing
    child_steps: int = 3
    child_rounds: int = 1
    child_dropout: float = 0.0  # LoRA vs full compares the methods' maths, not the CPU dropout mask
    rank: int = 16
    dropout: float = 0.05


DEFAULT = Settings()
QUICK = Settings(
    shape="quick",
    rounds=2,
    warmup=1,
    pool=8,
    min_len=32,
    max_len=128,
    max_seq_len=256,
    synth_seq=64,
    synth_steps=1,
    child_steps=2,
)


# ---------------------------------------------------------------------------- model and data


def write_sft_data(path: Path, *, n: int, min_len: int, max_len: int, seed: int = 0) -> Path:
    """`n` chat examples of roughly `min_len`..`max_len` tokens (uniform), from the bundled corpus.

    A user turn asking about a passage, an assistant answer continuing it: about a third of
    each example is prompt (no labels), the rest the assistant turn. The tiny tokenizer
    spends ~1.3 tokens per word on this text; the recipe caps each at max_seq_len anyway.
    """
    words = (ASSETS_DIR / "corpus.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        n_words = max(8, int(rng.uniform(min_len, max_len) / 1.3) - 8)
        n_prompt = max(3, n_words // 3)
        start = rng.randrange(0, len(words) - n_words - 1)
        prompt = "Continue this passage: " + " ".join(words[start : start + n_prompt])
        answer = " ".join(words[start + n_prompt : start + n_words])
        lines.append(
            json.dumps({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def synthetic_examples(n: int, seq: int, vocab: int, seed: int = 0) -> list[Example]:
    """`n` rows of `seq` random token ids, every position a label (the full-label step)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(8, vocab, (n, seq), generator=gen).tolist()
    return [Example(r, list(r), i + 1) for i, r in enumerate(rows)]


def train_config(model: Path, train_file: Path, work: Path, s: Settings, **overrides: Any) -> TrainConfig:
    """The recipe config both sides mirror (max_steps only bounds the scheduler)."""
    base: dict[str, Any] = {
        "base_model_dir": str(model),
        "train_file": str(train_file),
        "output_dir": str(work / "ours"),
        "target_modules": ("all-linear",),
        "rank": s.rank,
        "alpha": 2.0 * s.rank,
        "dropout": s.dropout,
        "learning_rate": 1e-4,
        "weight_decay": 0.0,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "max_steps": 100_000,
        "batch_size": s.batch_size,
        "grad_accum_steps": 1,
        "max_grad_norm": 1.0,
        "max_seq_len": s.max_seq_len,
        "seed": 0,
        "device": "cpu",
        "precision": "fp32",
    }
    return TrainConfig(**{**base, **overrides})


def make_recipe(cfg: TrainConfig) -> FineTuneRecipe:
    recipe = FineTuneRecipe(cfg, ProgressEmitter(io.StringIO()))
    recipe.setup()
    recipe.cleanup()  # restores the signal handlers; the model and optimizer stay usable
    return recipe


def use_examples(recipe: FineTuneRecipe, examples: list[Example]) -> None:
    """Point a set-up recipe at other rows (the synthetic step): the schedule follows them."""
    recipe.train_examples = examples
    recipe.schedule = BatchSchedule(len(examples), recipe.cfg.batch_size, recipe.cfg.grad_accum_steps, recipe.cfg.seed)


# ---------------------------------------------------------------------------- the two sides


class Ours:
    """Our recipe's step on whole epochs of its own rows (one timing = one epoch)."""

    def __init__(self, recipe: FineTuneRecipe):
        self.recipe = recipe
        self.epoch = 0

    def run_epoch(self) -> int:
        r = self.recipe
        n_steps = r.schedule.steps_per_epoch
        tokens = 0
        for k in range(n_steps):
            tokens += r._train_step(self.epoch * n_steps + k)[2]
        self.epoch += 1
        return tokens


class Theirs:
    """transformers + PEFT: TRL-style padding collator and a plain loop over the same batches."""

    def __init__(self, cfg: TrainConfig, rows: list[Example], pad_id: int):
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model_dir, dtype=torch.float32)
        model.config.use_cache = False
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules="all-linear",
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, lora)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
        )
        self.collator = DataCollatorForSeq2Seq(
            tokenizer=_PadOnly(pad_id), padding="longest", label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
        )
        self.max_norm = cfg.max_grad_norm
        self.set_rows(rows, cfg)
        self.epoch = 0

    def set_rows(self, rows: list[Example], cfg: TrainConfig) -> None:
        self.rows = rows
        self.schedule = BatchSchedule(len(rows), cfg.batch_size, 1, cfg.seed)

    def step(self, indices: Sequence[int]) -> int:
        features = [
            {
                "input_ids": self.rows[i].input_ids,
                "attention_mask": [1] * len(self.rows[i].input_ids),
                "labels": self.rows[i].labels,
            }
            for i in indices
        ]
        batch = self.collator(features)
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    def run_epoch(self) -> int:
        n_steps = self.schedule.steps_per_epoch
        tokens = 0
        for k in range(n_steps):
            for mb in self.schedule.micro_batches(self.epoch * n_steps + k):
                tokens += self.step(mb)
        self.epoch += 1
        return tokens


class _PadOnly:
    """The one thing `DataCollatorForSeq2Seq` needs from a tokenizer: `pad` to the longest row.

    Padding is done here rather than by a tokenizer object so both sides pad with the same
    id and no tokenizer warning ("use __call__") lands in the timed loop.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.padding_side = "right"

    def pad(self, features: list[dict[str, list[int]]], **_: Any) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [self.pad_id] * (width - len(f["input_ids"])) for f in features]
        mask = [f["attention_mask"] + [0] * (width - len(f["attention_mask"])) for f in features]
        out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if "labels" in features[0]:
            out["labels"] = torch.tensor([f["labels"] for f in features])
        return out


# ---------------------------------------------------------------------------- FLOPs


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters that take part in a matmul, trainable ones): all but embeddings and norms."""
    total = trainable = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embed_tokens" in name:
            continue
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # 4-bit packing: two weights per byte
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def attention_context(lengths: Sequence[Sequence[int]]) -> int:
    """Sum over tokens of the keys each attends to (causal, per example): sum n(n+1)/2."""
    return sum(n * (n + 1) // 2 for row in lengths for n in row)


def useful_flops(*, params: int, trainable: int, tokens: int, context: int, layers: int, hidden: int) -> float:
    """Forward + backward FLOPs that do useful work (see the module docstring)."""
    return (4 * params + 2 * trainable) * tokens + 12 * layers * hidden * context


def row_lengths(ex: Example) -> tuple[int, ...]:
    return ex.lengths or (len(ex.input_ids),)


def epoch_context(rows: Sequence[Example]) -> int:
    return attention_context([row_lengths(e) for e in rows])


def matmul_ceiling(n: int, repeats: int = 3) -> float:
    """Best fp32 FLOP/s of an n x n x n `torch.mm` over `repeats` (after one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------- child runs (memory)


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: ``clear_refs`` value 5), so
    the peak read later is the training's, not the imports'. False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child_main(method: str, model: Path, s: Settings, steps: int) -> dict[str, Any]:
    """One method in this (fresh) process: our recipe on the synthetic step, timing and memory."""
    peak_reset = _reset_peak_rss()
    rss_before = _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_sft_data(work / "train.jsonl", n=s.batch_size, min_len=s.min_len, max_len=s.max_len)
        extra: dict[str, Any] = {"method": method}
        if method == "qlora":
            extra["quant_bits"] = 4
        if method == "full":
            extra.update(learning_rate=1e-5)  # rank/alpha/dropout are unused by full fine-tuning
        recipe = make_recipe(train_config(model, data, work, s, dropout=s.child_dropout, **extra))
        rss_loaded = _rss_mb()
        setup_hwm = _vm_hwm_mb()
        _reset_peak_rss()  # from here VmHWM is the training steps' peak
        vocab = recipe.model.config.vocab_size
        use_examples(recipe, synthetic_examples(s.batch_size, s.synth_seq, vocab))
        ours = Ours(recipe)
        ours.run_epoch()  # warm-up (also allocates the optimizer state)
        times, tokens = [], 0
        for _ in range(steps):
            t0 = time.perf_counter()
            tokens = ours.run_epoch()
            times.append(time.perf_counter() - t0)
        params, trainable = matmul_params(recipe.model)
        mem = memory_report(recipe.model, recipe.optimizer)
        cfg = recipe.model.config
        flops = useful_flops(
            params=params,
            trainable=trainable,
            tokens=tokens,
            context=attention_context([[s.synth_seq]] * s.batch_size),
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
        )
    return {
        "method": method,
        "step_times_s": times,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / statistics.median(times),
        "useful_flops_per_step": flops,
        "rss_before_model_mb": rss_before,
        "rss_after_setup_mb": rss_loaded,
        # ru_maxrss survives fork + exec on Linux (it starts at the parent's peak), so the
        # peaks come from VmHWM, reset after the imports and again after setup.
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_peak_mb": setup_hwm,
        "steps_peak_mb": _vm_hwm_mb(),
        "vm_hwm_reset_after_imports": peak_reset,
        "base_weights_mb": mem["base_weights"] / 2**20,
        "base_linear_weights_mb": mem["base_linear_weights"] / 2**20,
        "optimizer_state_mb": mem["optimizer_state"] / 2**20,
        "base_bytes_per_param": mem["base_bytes_per_param"],
        "trainable_params": trainable,
    }


def run_child(method: str, model: Path, quick: bool, steps: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        "--child",
        method,
        "--model",
        str(model),
        "--child-steps",
        str(steps),
    ]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {method} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the benchmark


def interleaved(variants: dict[str, Callable[[], int]], rounds: int, warmup: int) -> dict[str, list[tuple[float, int]]]:
    """Run each variant once per round, rotating the order; returns (seconds, tokens) per round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            tokens = variants[name]()
            out[name].append((time.perf_counter() - t0, tokens))
    return out


def _tps(runs: list[tuple[float, int]]) -> list[float]:
    return [tok / sec for sec, tok in runs]


def _ratios(a: list[tuple[float, int]], b: list[tuple[float, int]]) -> list[float]:
    return [x / y for x, y in zip(_tps(a), _tps(b), strict=True)]


def run_in_process(s: Settings, model: Path, work: Path) -> dict[str, Any]:
    """Sections 1, 2 and 5: SFT and synthetic steps, ours vs theirs, with the matmul ceiling."""
    data = write_sft_data(work / "sft.jsonl", n=s.pool, min_len=s.min_len, max_len=s.max_len)
    padded = make_recipe(train_config(model, data, work, s))
    packed = make_recipe(train_config(model, data, work, s, packing=True))
    theirs = Theirs(padded.cfg, list(padded.train_examples), padded.pad_id)
    cfg = padded.model.config
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    params, trainable = matmul_params(padded.model)
    peft_params, peft_trainable = matmul_params(theirs.model)
    ceiling_n = 2048 if s.shape == "default" else 512
    ceilings: list[float] = []

    def ceiling() -> int:
        ceilings.append(matmul_ceiling(ceiling_n))
        return 0

    sft_rows = list(padded.train_examples)
    sft_tokens = sum(len(e.input_ids) for e in sft_rows)
    sft_context = epoch_context(sft_rows)
    sft = interleaved(
        {
            "ours (padded)": Ours(padded).run_epoch,
            "ours (packed)": Ours(packed).run_epoch,
            "transformers+peft": theirs.run_epoch,
            "matmul ceiling": ceiling,
        },
        s.rounds,
        s.warmup,
    )
    sft.pop("matmul ceiling")

    synth = synthetic_examples(s.batch_size * s.synth_steps, s.synth_seq, cfg.vocab_size)
    use_examples(padded, synth)
    theirs.set_rows(synth, padded.cfg)
    theirs.epoch = 0
    synth_run = interleaved(
        {"ours": Ours(padded).run_epoch, "transformers+peft": theirs.run_epoch, "matmul ceiling": ceiling},
        s.rounds,
        s.warmup,
    )
    synth_run.pop("matmul ceiling")
    synth_tokens = len(synth) * s.synth_seq
    synth_context = attention_context([[s.synth_seq]] * len(synth))

    ceiling_flops = statistics.median(ceilings)

    def flops_share(runs: list[tuple[float, int]], flops: float) -> dict[str, float]:
        per_s = [flops / sec for sec, _ in runs]
        return {
            "useful_flops_per_s": statistics.median(per_s),
            "share_of_ceiling": statistics.median(per_s) / ceiling_flops,
        }

    sft_flops = useful_flops(
        params=params, trainable=trainable, tokens=sft_tokens, context=sft_context, layers=layers, hidden=hidden
    )
    sft_flops_peft = useful_flops(
        params=peft_params,
        trainable=peft_trainable,
        tokens=sft_tokens,
        context=sft_context,
        layers=layers,
        hidden=hidden,
    )
    synth_flops = useful_flops(
        params=params, trainable=trainable, tokens=synth_tokens, context=synth_context, layers=layers, hidden=hidden
    )
    synth_flops_peft = useful_flops(
        params=peft_params,
        trainable=peft_trainable,
        tokens=synth_tokens,
        context=synth_context,
        layers=layers,
        hidden=hidden,
    )
    lengths = [len(e.input_ids) for e in sft_rows]
    sft_schedule = BatchSchedule(len(sft_rows), s.batch_size, 1, 0)  # (padded now runs the synthetic rows)
    padded_widths = [
        max(len(sft_rows[i].input_ids) for i in mb) * len(mb)
        for k in range(sft_schedule.steps_per_epoch)
        for mb in sft_schedule.micro_batches(k)
    ]
    packed_rows = list(packed.train_examples)
    return {
        "model": {
            "params_total": sum(p.numel() for p in padded.model.parameters()),
            "matmul_params": params,
            "trainable_params_ours": trainable,
            "trainable_params_peft": peft_trainable,
            "layers": layers,
            "hidden": hidden,
            "vocab": cfg.vocab_size,
        },
        "matmul_ceiling": {"n": ceiling_n, "flops_per_s": ceilings, "median": ceiling_flops},
        "sft": {
            "examples": len(sft_rows),
            "tokens_per_epoch": sft_tokens,
            "label_tokens_per_epoch": sum(e.num_label_tokens for e in sft_rows),
            "length": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
            "padded_tokens_per_epoch": sum(padded_widths),
            "packed_rows": len(packed_rows),
            "packed_row_tokens": sum(len(e.input_ids) for e in packed_rows),
            "raw": {k: [{"seconds": sec, "tokens": tok} for sec, tok in v] for k, v in sft.items()},
            "tokens_per_s": {k: summary(_tps(v)) for k, v in sft.items()},
            "ratio_vs_peft": {
                "ours (padded)": summary(_ratios(sft["ours (padded)"], sft["transformers+peft"])),
                "ours (packed)": summary(_ratios(sft["ours (packed)"], sft["transformers+peft"])),
            },
            "flops": {
                "ours (padded)": flops_share(sft["ours (padded)"], sft_flops),
                "ours (packed)": flops_share(sft["ours (packed)"], sft_flops),
                "transformers+peft": flops_share(sft["transformers+peft"], sft_flops_peft),
            },
        },
        "synthetic": {
            "shape": [s.batch_size, s.synth_seq],
            "steps_per_timing": s.synth_steps,
            "raw": {k: [{"seconds": sec, "tokens": tok} for sec, tok in v] for k, v in synth_run.items()},
            "tokens_per_s": {k: summary(_tps(v)) for k, v in synth_run.items()},
            "ratio_vs_peft": summary(_ratios(synth_run["ours"], synth_run["transformers+peft"])),
            "flops": {
                "ours": flops_share(synth_run["ours"], synth_flops),
                "transformers+peft": flops_share(synth_run["transformers+peft"], synth_flops_peft),
            },
        },
    }


def run_children(s: Settings, model: Path, quick: bool) -> dict[str, Any]:
    """Sections 3 and 4: LoRA, full fine-tune and QLoRA, each in a fresh process, interleaved."""
    methods = ["lora", "full", "qlora"]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(s.child_rounds):
        for m in methods[r % 3 :] + methods[: r % 3]:
            runs[m].append(run_child(m, model, quick, s.child_steps))
    med: dict[str, dict[str, Any]] = {
        m: {k: statistics.median(x[k] for x in v) for k in ("tokens_per_s", "setup_peak_mb", "steps_peak_mb")}
        for m, v in runs.items()
    }
    for m, v in runs.items():
        keep = ("base_weights_mb", "base_linear_weights_mb", "optimizer_state_mb", "base_bytes_per_param")
        med[m].update({k: v[0][k] for k in keep})
        med[m]["rss_before_model_mb"] = statistics.median(x["rss_before_model_mb"] for x in v)
        med[m]["peak_rss_mb"] = max(med[m]["setup_peak_mb"], med[m]["steps_peak_mb"])
        med[m]["resident_after_setup_mb"] = statistics.median(
            x["rss_after_setup_mb"] - x["rss_before_model_mb"] for x in v
        )
        # Both VmHWM resets leave the imports out: this is the peak the method itself adds.
        med[m]["training_peak_mb"] = med[m]["steps_peak_mb"] - med[m]["rss_before_model_mb"]
        med[m]["useful_flops_per_step"] = v[0]["useful_flops_per_step"]
    return {
        "runs": runs,
        "median": med,
        "lora_vs_full_tokens_per_s": med["lora"]["tokens_per_s"] / med["full"]["tokens_per_s"],
        "lora_vs_full_peak_rss": med["lora"]["peak_rss_mb"] / med["full"]["peak_rss_mb"],
        "lora_vs_full_training_peak": med["lora"]["training_peak_mb"] / med["full"]["training_peak_mb"],
        "qlora_vs_lora_tokens_per_s": med["qlora"]["tokens_per_s"] / med["lora"]["tokens_per_s"],
        "qlora_vs_lora_peak_rss": med["qlora"]["peak_rss_mb"] / med["lora"]["peak_rss_mb"],
        "qlora_vs_lora_training_peak": med["qlora"]["training_peak_mb"] / med["lora"]["training_peak_mb"],
        "qlora_vs_lora_base_weights": med["qlora"]["base_weights_mb"] / med["lora"]["base_weights_mb"],
        "qlora_vs_lora_base_linear_weights": med["qlora"]["base_linear_weights_mb"]
        / med["lora"]["base_linear_weights_mb"],
    }


def print_tables(result: dict[str, Any]) -> None:
    sft, syn, ch = result["sft"], result["synthetic"], result["methods"]
    rows = []
    for name in ("ours (packed)", "ours (padded)", "transformers+peft"):
        tps = sft["tokens_per_s"][name]
        ratio = sft["ratio_vs_peft"].get(name)
        rows.append(
            {
                "workload": "SFT 32-512 tok",
                "variant": name,
                "tps": tps["median"],
                "spread": 100 * tps["relative_spread"],
                "ratio": ratio["median"] if ratio else None,
                "share": 100 * sft["flops"][name]["share_of_ceiling"],
            }
        )
    for name in ("ours", "transformers+peft"):
        tps = syn["tokens_per_s"][name]
        rows.append(
            {
                "workload": f"synthetic {syn['shape'][0]}x{syn['shape'][1]}",
                "variant": name,
                "tps": tps["median"],
                "spread": 100 * tps["relative_spread"],
                "ratio": syn["ratio_vs_peft"]["median"] if name == "ours" else None,
                "share": 100 * syn["flops"][name]["share_of_ceiling"],
            }
        )
    print(
        table(
            rows,
            [
                ("workload", "workload", "s"),
                ("variant", "variant", "s"),
                ("tps", "tokens/s", ".0f"),
                ("spread", "spread %", ".0f"),
                ("ratio", "vs PEFT", ".2f"),
                ("share", "% of ceiling", ".0f"),
            ],
        )
    )
    print(f"fp32 matmul ceiling: {result['matmul_ceiling']['median'] / 1e9:.1f} GFLOP/s")
    mrows = [{"method": m, **v, "base": v["base_weights_mb"]} for m, v in ch["median"].items()]
    print(
        table(
            mrows,
            [
                ("method", "method (synthetic step)", "s"),
                ("tokens_per_s", "tokens/s", ".0f"),
                ("peak_rss_mb", "peak RSS MB", ".0f"),
                ("training_peak_mb", "steps peak over imports MB", ".0f"),
                ("resident_after_setup_mb", "resident after setup MB", ".0f"),
                ("base", "base weights MB", ".1f"),
                ("optimizer_state_mb", "optimizer MB", ".1f"),
            ],
        )
    )
    print(
        f"LoRA vs full: {ch['lora_vs_full_tokens_per_s']:.2f}x tokens/s, {ch['lora_vs_full_peak_rss']:.2f}x peak RSS "
        f"({ch['lora_vs_full_training_peak']:.2f}x over imports); "
        f"QLoRA vs LoRA: {ch['qlora_vs_lora_tokens_per_s']:.2f}x tokens/s, "
        f"{ch['qlora_vs_lora_peak_rss']:.2f}x peak RSS "
        f"({ch['qlora_vs_lora_training_peak']:.2f}x over imports), "
        f"{ch['qlora_vs_lora_base_linear_weights']:.2f}x base linear weights, "
        f"{ch['qlora_vs_lora_base_weights']:.2f}x all base weights"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run on a 2-layer model (< 60 s)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per comparison")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/train_step.json)")
    parser.add_argument("--child", choices=["lora", "full", "qlora"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    s = QUICK if args.quick else DEFAULT
    if args.rounds:
        s = Settings(**{**s.__dict__, "rounds": args.rounds})
    torch.set_num_threads(os.cpu_count() or 1)
    if args.child:
        print(json.dumps(child_main(args.child, args.model, s, args.child_steps or s.child_steps)))
        return 0

    info = machine()
    started = time.monotonic()
    model = bench_model(s.shape)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_in_process(s, model, Path(tmp))
    result["methods"] = run_children(s, model, args.quick)
    result["config"] = {
        **s.__dict__,
        "model_shape": SHAPES[s.shape],
        "model_dir": model.name,
        "optimizer": "AdamW lr 1e-4 (full: 1e-5), wd 0, betas (0.9, 0.999)",
        "lora": f"r={s.rank} alpha={2 * s.rank} dropout={s.dropout} all-linear (no lm_head)",
        "precision": "fp32",
        "threads": torch.get_num_threads(),
    }
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_tables(result)
    path = write_result(NAME, result, machine_info=info, out=args.out)
    print(f"wrote {path} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
