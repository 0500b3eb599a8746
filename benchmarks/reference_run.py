"""Benchmark: a whole run of our recipe against transformers + PEFT on the same run.

Both sides train the tiny Llama (built or reused from ``.cache/``) in fp32 on CPU with the
same data rows, data order, seed, LoRA config, AdamW (betas, eps, weight decay), LR
schedule, clipping, batch, grad accumulation, sequence length and steps:

* **ours**: `lora_engine.train.FineTuneRecipe` (what ``python -m lora_engine.train`` runs),
  its per-step ``loss`` and final ``eval_loss`` read from its metrics lines;
* **reference**: ``peft.get_peft_model`` on ``AutoModelForCausalLM`` and a plain loop:
  the model's own ``labels=`` loss (transformers shifts the labels itself),
  ``torch.optim.AdamW``, ``transformers.get_scheduler``, ``clip_grad_norm_``.

Only the data is shared: the reference trains on the rows our data pipeline produced
(same token ids and assistant-only labels), in the order of our `BatchSchedule` (a sampler
is not what is compared). Everything random is reproduced, not copied: seeded with the same
seed, PEFT draws the same initial ``lora_A`` as our `inject_lora` (both create ``lora_A``
and ``lora_B`` as ``nn.Linear`` and then re-draw ``lora_A`` Kaiming-uniform, layer by layer
in model order; ``lora_B`` is 0), and both draw one dropout mask per adapted layer in the
same order, so the masks are the same too. The results record both facts
(``same_initial_adapter``, ``same_rng_at_step_0``).

Differences by design, each measured as a variant of the reference (see `VARIANTS`):

* loss normalisation over accumulated micro-batches: we divide the summed token loss by
  the label tokens of the whole optimizer step (the exact token mean), as
  ``transformers.Trainer`` does with ``num_items_in_batch``. A plain loop that averages
  each micro-batch's mean loss (``loss / grad_accum_steps``) weights tokens of short
  micro-batches more: variant "per-micro-batch mean".
* warmup: ``transformers`` warms up as ``s / w`` (the first step runs at LR 0); ours as
  ``(s + 1) / w`` (the first step already trains): variant "warmup 10%".
* seed: variant "another seed" (the reference seeded with 1 instead of 0: another initial
  ``lora_A`` and other dropout masks) shows how far two seeds of the same recipe drift
  apart, the scale against which the aligned differences should be read.
* eval loss: ours is the token mean over the whole validation set; ``Trainer.evaluate``
  averages per-batch means. The reference reports both; the comparison uses the token mean.

Run: ``.venv/bin/python -m benchmarks.reference_run [--steps N]``.
Prints the tables and writes ``benchmarks/results/reference_run.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from benchmarks.models import tiny_model
from lora_engine import protocol
from lora_engine.config import TrainConfig
from lora_engine.data import IGNORE_INDEX, BatchSchedule, Example
from lora_engine.fsio import atomic_write_text
from lora_engine.lora import lora_state_dict
from lora_engine.progress import ProgressEmitter
from lora_engine.tiny_model import ASSETS_DIR, TINY_MODEL_VERSION
from lora_engine.train import FineTuneRecipe

REPO = Path(__file__).resolve().parent.parent

# transformers' scheduler name for each of our `lr_scheduler` values.
HF_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}

# Reference variants: name -> (TrainConfig overrides for both sides, reference options).
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "aligned": ({}, {}),
    "per-micro-batch mean": ({}, {"normalisation": "micro_batch"}),
    "another seed": ({}, {"seed": 1}),
    "warmup 10%": ({"warmup_ratio": 0.1}, {}),
}


@dataclass
class RunResult:
    """Per-step training loss (token mean of the step) and the final validation loss."""

    losses: list[float]
    eval_loss: float
    # The reference also reports Trainer.evaluate's number: the mean of per-batch means.
    eval_loss_batch_mean: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- data


def write_data(work: Path, *, n_train: int = 96, n_val: int = 24) -> tuple[Path, Path]:
    """Story requests of 1-3 paragraphs mixed with short dialogues: uneven token counts per
    micro-batch, so the loss normalisation over accumulated micro-batches matters."""
    paras = [p.strip() for p in (ASSETS_DIR / "corpus.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    dialogues = (ASSETS_DIR / "dialogues.jsonl").read_text(encoding="utf-8").splitlines()

    def stories(start: int, n: int) -> list[str]:
        out, p = [], start
        for i in range(n):
            k = 1 + i % 3
            record = {"prompt": f"Tell me a story in {k} paragraph(s).", "completion": "\n\n".join(paras[p : p + k])}
            out.append(json.dumps(record))
            p += k
        return out

    n_dialogue_train, n_dialogue_val = n_train // 3, n_val // 3
    train = stories(0, n_train - n_dialogue_train)
    val = stories(400, n_val - n_dialogue_val)
    # Interleave so every micro-batch mixes long and short rows.
    train = [x for pair in zip(train, dialogues[:n_dialogue_train], strict=False) for x in pair] + train[
        n_dialogue_train:
    ]
    val = val + dialogues[-n_dialogue_val:]
    train_path, val_path = work / "train.jsonl", work / "val.jsonl"
    train_path.write_text("\n".join(train) + "\n", encoding="utf-8")
    val_path.write_text("\n".join(val) + "\n", encoding="utf-8")
    return train_path, val_path


def benchmark_config(*, model: Path, train: Path, val: Path, work: Path, steps: int) -> TrainConfig:
    """The run compared in docs/engine.md."""
    return TrainConfig(
        base_model_dir=str(model),
        train_file=str(train),
        validation_file=str(val),
        output_dir=str(work / "ours"),
        target_modules=("all-linear",),
        rank=8,
        alpha=16.0,
        dropout=0.1,
        learning_rate=1e-3,
        weight_decay=0.01,
        lr_scheduler="cosine",
        warmup_ratio=0.0,
        max_steps=steps,
        batch_size=4,
        grad_accum_steps=2,
        max_grad_norm=1.0,
        max_seq_len=256,
        seed=0,
        device="cpu",
        precision="fp32",
    )


# ---------------------------------------------------------------------------- ours


@dataclass
class OursRun:
    result: RunResult
    init_adapter: dict[str, torch.Tensor]  # our names -> initial lora_A / lora_B
    rng_state: torch.Tensor  # torch's CPU RNG state when the first step starts
    train_rows: list[Example]
    val_rows: list[Example]
    pad_id: int


def run_ours(cfg: TrainConfig) -> OursRun:
    """Our recipe end to end; returns its logged curve and what the reference must share."""
    buf = io.StringIO()
    recipe = FineTuneRecipe(cfg, ProgressEmitter(buf))
    try:
        recipe.setup()
        init = lora_state_dict(recipe.model)
        rng = torch.get_rng_state()
        code = recipe.train()
    finally:
        recipe.cleanup()
    lines = [x.obj for x in map(protocol.parse_line, buf.getvalue().splitlines()) if x.obj is not None]
    if code != protocol.EXIT_DONE:
        raise RuntimeError(f"our recipe failed: {lines[-1] if lines else code}")
    metrics = [m for m in lines if m["type"] == protocol.METRICS]
    losses = [m["loss"] for m in metrics]
    if [m["step"] for m in metrics] != list(range(1, len(losses) + 1)):
        raise RuntimeError("expected one metrics line per step (log_every=1)")
    return OursRun(
        result=RunResult(
            losses=losses,
            # The last step always evaluates when there is validation data.
            eval_loss=float(metrics[-1]["eval_loss"]),
            extra={"grad_norms": [m["grad_norm"] for m in metrics], "lrs": [m["lr"] for m in metrics]},
        ),
        init_adapter=init,
        rng_state=rng,
        train_rows=list(recipe.train_examples),
        val_rows=list(recipe.val_examples),
        pad_id=recipe.pad_id,
    )


# ---------------------------------------------------------------------------- reference


def pad_rows(rows: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into input_ids / attention_mask / labels, each (B, T); labels unshifted."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in rows])  # (B, T)
    labels = torch.tensor([r.labels + [IGNORE_INDEX] * (width - len(r.labels)) for r in rows])  # (B, T)
    attention_mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _label_tokens(batch: dict[str, torch.Tensor]) -> int:
    # transformers shifts inside its loss: position t is scored against labels[t + 1].
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _peft_model(cfg: TrainConfig) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    targets: str | list[str] = (
        "all-linear" if tuple(cfg.target_modules) == ("all-linear",) else list(cfg.target_modules)
    )
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _peft_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's adapter tensors under our names (`x.lora_A.default.weight` -> `x.lora_A.weight`)."""
    prefix = "base_model.model."
    return {
        name.removeprefix(prefix).replace(".default.", "."): p.detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def run_reference(
    cfg: TrainConfig,
    ours: OursRun,
    *,
    normalisation: str = "step",
    seed: int | None = None,
) -> RunResult:
    """transformers + PEFT, a plain loop over our batch order.

    Only the data rows and their order come from our run. The initial adapter and the
    dropout masks come from the reference's own RNG seeded with `seed` (default cfg.seed);
    `extra` records whether they equal ours (same initial tensors, same RNG state at step 0).

    Args:
        normalisation: "step" divides each micro-batch's summed loss by the label tokens of
            the whole optimizer step (Trainer's ``num_items_in_batch``); "micro_batch" backprops
            each micro-batch's mean loss / grad_accum_steps (the classic plain loop).
        seed: seed for PEFT's initialisation and the dropout masks.
    """
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = _peft_model(cfg)
    init = _peft_adapter(model)
    same_init = init.keys() == ours.init_adapter.keys() and all(
        torch.equal(v, ours.init_adapter[k]) for k, v in init.items()
    )
    same_rng = torch.equal(torch.get_rng_state(), ours.rng_state)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
    )
    total = cfg.max_steps
    if total is None:
        raise ValueError("the comparison runs a fixed number of steps: set max_steps")
    scheduler = transformers.get_scheduler(
        HF_SCHEDULERS[cfg.lr_scheduler],
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
        num_training_steps=total,
    )
    schedule = BatchSchedule(len(ours.train_rows), cfg.batch_size, cfg.grad_accum_steps, cfg.seed)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")

    model.train()
    losses = []
    for step in range(total):
        batches = [pad_rows([ours.train_rows[i] for i in mb], ours.pad_id) for mb in schedule.micro_batches(step)]
        n_step = sum(_label_tokens(b) for b in batches)
        step_loss = 0.0
        for batch in batches:
            if normalisation == "step":
                # Summed token loss / label tokens of the whole step (what Trainer does).
                loss = model(**batch, num_items_in_batch=n_step).loss
                step_loss += loss.item()
            elif normalisation == "micro_batch":
                mean = model(**batch).loss  # mean over this micro-batch's label tokens
                loss = mean / len(batches)
                step_loss += mean.item() * _label_tokens(batch) / n_step  # logged as the token mean
            else:
                raise ValueError(f"unknown normalisation {normalisation!r}")
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)

    model.eval()
    token_sum, batch_means = 0.0, []
    val_batches = [
        pad_rows(ours.val_rows[i : i + cfg.batch_size], ours.pad_id)
        for i in range(0, len(ours.val_rows), cfg.batch_size)
    ]
    n_val = sum(_label_tokens(b) for b in val_batches)
    with torch.no_grad():
        for batch in val_batches:
            token_sum += model(**batch, num_items_in_batch=n_val).loss.item()
            batch_means.append(model(**batch).loss.item())
    return RunResult(
        losses=losses,
        eval_loss=token_sum,
        eval_loss_batch_mean=sum(batch_means) / len(batch_means),
        extra={"same_initial_adapter": same_init, "same_rng_at_step_0": same_rng},
    )


# ---------------------------------------------------------------------------- comparison


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def compare(ours: RunResult, ref: RunResult) -> dict[str, Any]:
    """Per-step and final-eval relative differences |ours - ref| / |ref|."""
    per_step = [rel_diff(a, b) for a, b in zip(ours.losses, ref.losses, strict=True)]
    return {
        "per_step_rel_diff": per_step,
        "max_step_rel_diff": max(per_step),
        "eval_rel_diff": rel_diff(ours.eval_loss, ref.eval_loss),
    }


def compare_variants(cfg: TrainConfig, variants: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Run ours once per distinct config and the reference once per variant."""
    ours_by_cfg: dict[str, OursRun] = {}
    out: dict[str, Any] = {}
    for name, (overrides, ref_options) in variants.items():
        vcfg = cfg.replace(**overrides)
        key = vcfg.to_json()
        if key not in ours_by_cfg:
            t0 = time.monotonic()
            ours_by_cfg[key] = run_ours(vcfg)
            ours_by_cfg[key].result.extra["wall_s"] = round(time.monotonic() - t0, 1)
        ours = ours_by_cfg[key]
        t0 = time.monotonic()
        ref = run_reference(vcfg, ours, **ref_options)
        ref.extra["wall_s"] = round(time.monotonic() - t0, 1)
        out[name] = {
            "overrides": overrides,
            "reference_options": ref_options,
            "ours": {"losses": ours.result.losses, "eval_loss": ours.result.eval_loss, **ours.result.extra},
            "reference": {
                "losses": ref.losses,
                "eval_loss": ref.eval_loss,
                "eval_loss_batch_mean": ref.eval_loss_batch_mean,
                **ref.extra,
            },
            **compare(ours.result, ref),
        }
    return out


def _print_tables(results: dict[str, Any], steps_to_show: Sequence[int]) -> None:
    main = results["aligned"]
    print("aligned run: step | ours | transformers+peft | rel diff")
    for s in steps_to_show:
        i = s - 1
        print(
            f"  {s:4d} | {main['ours']['losses'][i]:.6f} | {main['reference']['losses'][i]:.6f} | "
            f"{main['per_step_rel_diff'][i]:.1e}"
        )
    print(
        f"  final eval loss | {main['ours']['eval_loss']:.6f} | {main['reference']['eval_loss']:.6f} | "
        f"{main['eval_rel_diff']:.1e}   (Trainer-style mean of batch means: "
        f"{main['reference']['eval_loss_batch_mean']:.6f})"
    )
    print(
        f"  same initial adapter: {main['reference']['same_initial_adapter']}, "
        f"same RNG state at step 0: {main['reference']['same_rng_at_step_0']}"
    )
    print("variants: name | max per-step rel diff | final eval ours | final eval ref | eval rel diff")
    for name, r in results.items():
        print(
            f"  {name:22s} | {r['max_step_rel_diff']:.1e} | {r['ours']['eval_loss']:.6f} | "
            f"{r['reference']['eval_loss']:.6f} | {r['eval_rel_diff']:.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    model = tiny_model()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train, val = write_data(work)
        cfg = benchmark_config(model=model, train=train, val=val, work=work, steps=args.steps)
        results = compare_variants(cfg, VARIANTS)
    shown = sorted(s for s in {1, 2, 3, 5, *range(10, args.steps + 1, 10), args.steps} if s <= args.steps)
    _print_tables(results, shown)
    out = REPO / "benchmarks" / "results" / "reference_run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out,
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "peft": peft.__version__,
                },
                "base_model": f"tiny-model-v{TINY_MODEL_VERSION}",
                "config": {
                    k: v
                    for k, v in cfg.to_dict().items()
                    if k not in ("base_model_dir", "train_file", "validation_file", "output_dir")
                },
                "results": results,
            },
            indent=2,
        ),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
