"""The LoRA / QLoRA / full fine-tuning recipe: ``python -m lora_engine.train CONFIG.json``.

A recipe, not a trainer framework (torchtune style): `setup` loads everything,
`train` is the loop written out, `save_checkpoint` writes a resumable checkpoint,
`cleanup` releases resources. stdout carries only JSON lines (`progress.py` writes the
lines `protocol.py` defines); the exit code is `EXIT_DONE`, `EXIT_STOPPED` (stop_file /
SIGTERM), `EXIT_ERROR` (after an error line) or, in a distributed run whose peer rank went
away, `EXIT_PEER_LOST` (no error line: the job resumes). Under a launcher every rank runs this
file; `parallel.Parallel` holds what differs per strategy, and only rank 0 reports.

This file stays whole although it is past the ~500-line mark where we split modules:
it is one recipe, read top to bottom (setup, the step, the loop, checkpoint, final
save). Split by phase it would scatter the loop over several modules and hide the
state they share on `self`. What is not the recipe lives elsewhere: checkpoint files
in `checkpoint.py`, adapter files in `adapter_io.py`, report formatting in `report.py`.

One optimizer step:
    for each micro-batch of the step (grad accumulation):
        loss_sum = CE(logits[:, :-1], labels[:, 1:], sum) / label tokens of the whole step
        loss_sum.backward()            # so the step's gradient is the exact token mean
    clip_grad_norm_(trainable, max_grad_norm)  -> grad_norm (NaN/Inf -> nan_detected)
    AdamW step, LR scheduler step (warmup + cosine/linear/constant)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_engine import checkpoint as ckpt
from lora_engine.adapter_io import save_adapter
from lora_engine.config import TrainConfig
from lora_engine.data import (
    IGNORE_INDEX,
    BatchSchedule,
    Example,
    collate,
    load_examples,
    model_inputs,
    pack_examples,
    pad_token_id_of,
    split_validation,
)
from lora_engine.errors import (
    BASE_MODEL_MISSING,
    DEFAULT_SUGGESTIONS,
    INTERNAL_ERROR,
    INVALID_CONFIG,
    NAN_DETECTED,
    OUT_OF_MEMORY,
    EngineError,
)
from lora_engine.fsio import atomic_dir
from lora_engine.lora import inject_lora
from lora_engine.parallel import Parallel, is_peer_loss, launched_rank
from lora_engine.progress import ProgressEmitter, claim_stdout
from lora_engine.protocol import ERROR, EXIT_DONE, EXIT_ERROR, EXIT_PEER_LOST, EXIT_STOPPED
from lora_engine.quantize import quantize_base_linears
from lora_engine.report import format_report, memory_report, parameter_report

log = logging.getLogger("lora_engine.train")


def lr_lambda_for(*, scheduler: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak LR for scheduler step s (0-based, the step about to run)."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if scheduler == "constant":
            return 1.0
        p = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        p = min(max(p, 0.0), 1.0)
        if scheduler == "linear":
            return 1.0 - p
        return 0.5 * (1.0 + math.cos(math.pi * p))

    return factor


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB.

    Linux's VmHWM (the high-water mark of this address space), not getrusage's ru_maxrss: Linux
    keeps ru_maxrss across fork and exec, so a child started by a large parent (a worker, a test
    runner at 1.3 GB) reports the parent's size as its own peak. ru_maxrss (KiB) only where /proc
    has no VmHWM.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class FineTuneRecipe:
    """One fine-tuning run (LoRA, QLoRA or full) described by a `TrainConfig`."""

    def __init__(self, cfg: TrainConfig, emitter: ProgressEmitter):
        self.cfg = cfg
        self.out = emitter
        self.output_dir = Path(cfg.output_dir)
        self.ckpt_root = self.output_dir / "checkpoints"
        self.step = 0  # optimizer steps completed
        self.trained_tokens = 0
        self.last_loss = float("nan")
        self.last_eval_loss: float | None = None
        # Lowest validation loss so far and its step; with select="best" also its weights.
        self.best_eval_loss: float | None = None
        self.best_step: int | None = None
        self.best: ckpt.BestWeights | None = None
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step = -1
        self.stop_requested = False
        self.rng_at_boundary: dict[str, Any] | None = None
        self._old_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.cfg
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)

        self.device = self._pick_device()
        self.parallel = Parallel(cfg.distributed, self.device)
        self.parallel.init()
        self.device = self.parallel.device  # cuda:<local_rank> on GPU ranks
        self.autocast_dtype = self._pick_autocast()
        self._install_signal_handlers()

        base = Path(cfg.base_model_dir).expanduser()
        # A hub id ("org/name") is allowed where there is network; anything that looks
        # like a path must be a local HF model directory.
        looks_local = (
            base.exists() or cfg.base_model_dir.startswith(("/", ".", "~")) or cfg.base_model_dir.count("/") > 1
        )
        if looks_local and not (base / "config.json").is_file():
            raise EngineError(
                BASE_MODEL_MISSING, f"base model directory {base} has no config.json", param="base_model_dir"
            )

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(base))
        except Exception as exc:
            raise EngineError(
                BASE_MODEL_MISSING, f"cannot load the tokenizer of {base}: {exc}", param="base_model_dir"
            ) from exc
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(
                INVALID_CONFIG,
                f"the tokenizer of {base} has no chat template; the engine trains on chat-formatted data",
                param="base_model_dir",
                suggestion="use an instruct/chat base model or add a chat_template to its tokenizer_config.json",
            )
        self.pad_id = pad_token_id_of(self.tokenizer)
        self._load_data()

        dtype = torch.float32
        if self.device.type == "cuda" and cfg.precision in ("bf16", "fp16") and cfg.method != "full":
            # The frozen base can live in half precision; LoRA weights stay fp32.
            dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
        # What this rank holds before the model (interpreter, libraries, data): the memory
        # preflight estimates what comes on top (`rank_memory` in the done line).
        self.rss_before_model_mb = _rss_mb()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
        except Exception as exc:
            raise EngineError(
                BASE_MODEL_MISSING, f"cannot load the base model from {base}: {exc}", param="base_model_dir"
            ) from exc
        model.config.use_cache = False

        self.lora_targets: list[str] = []
        if cfg.method == "qlora":
            quantize_base_linears(model, bits=cfg.quant_bits, compute_dtype=getattr(torch, cfg.compute_dtype))
        if cfg.method in ("lora", "qlora"):
            try:
                self.lora_targets = inject_lora(
                    model,
                    targets=list(cfg.target_modules),
                    rank=cfg.rank,
                    alpha=cfg.alpha,
                    dropout=cfg.dropout,
                    use_rslora=cfg.use_rslora,
                )
            except ValueError as exc:
                raise EngineError(INVALID_CONFIG, str(exc), param="target_modules") from exc
        else:
            for p in model.parameters():
                p.requires_grad_(p.is_floating_point())
        model.to(self.device)
        if cfg.gradient_checkpointing:
            # Non-reentrant checkpointing works with a frozen embedding layer (no need
            # for enable_input_require_grads).
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model

        self.schedule = BatchSchedule(len(self.train_examples), cfg.batch_size, cfg.grad_accum_steps, cfg.seed)
        self.total_steps = cfg.max_steps or cfg.num_epochs * self.schedule.steps_per_epoch
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        if self.parallel.is_main:
            # Before the strategy shards the parameters (ZeRO-3 and FSDP leave each rank a slice);
            # AdamW's state does not exist before the first step either way.
            self._emit_reports()
        # Built by the strategy: FSDP2 needs the optimizer on the sharded parameters, DeepSpeed
        # takes both as its client optimizer and schedule.
        self.optimizer, self.scheduler = self.parallel.wrap(
            model,
            lambda params: torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay),
            lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, lr_lambda_for(scheduler=cfg.lr_scheduler, warmup_steps=warmup, total_steps=self.total_steps)
            ),
            cfg,
        )
        self.parallel.attach_optimizer(self.optimizer)
        if self.parallel.world > 1:
            # Every rank built the same initial weights from the seed; from here each rank
            # draws its own dropout masks (saved per rank in checkpoints).
            torch.manual_seed(cfg.seed + self.parallel.rank)
        # fp16 needs loss scaling (bf16 and fp32 do not): a disabled scaler is a no-op.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16 and self.device.type == "cuda"
        )
        if self.parallel.is_main and self.parallel.is_distributed:
            layout = f"{self.parallel.strategy}, {self.parallel.world} processes, backend {self.parallel.backend}"
            ds = self.parallel.deepspeed_config(cfg)
            self.out.message(f"distributed: {layout}" + (f"; DeepSpeed config {json.dumps(ds)}" if ds else ""))
        self._check_memory()

        if cfg.resume:
            self._resume()
        self.rng_at_boundary = ckpt.rng_state()

    def _pick_device(self) -> torch.device:
        if self.cfg.device == "cuda" or (self.cfg.device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise EngineError(INVALID_CONFIG, "device 'cuda' requested but CUDA is not available", param="device")
            return torch.device("cuda")
        return torch.device("cpu")

    def _pick_autocast(self) -> torch.dtype | None:
        if self.cfg.precision == "fp32":
            return None
        if self.device.type != "cuda":
            # bf16/fp16 are emulated on this class of CPU and far slower than fp32.
            self.out.message(f"precision {self.cfg.precision} needs CUDA; training in fp32 on CPU", level="warning")
            return None
        return torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16

    def _load_data(self) -> None:
        cfg = self.cfg
        train = load_examples(cfg.train_file, self.tokenizer, max_seq_len=cfg.max_seq_len, param="train_file")
        for w in train.warnings(cfg.max_seq_len, "train_file"):
            self.out.message(w, level="warning")
        train_examples, val_examples = split_validation(train.examples, cfg.validation_split, cfg.seed)
        if cfg.validation_file:
            val = load_examples(
                cfg.validation_file, self.tokenizer, max_seq_len=cfg.max_seq_len, param="validation_file"
            )
            for w in val.warnings(cfg.max_seq_len, "validation_file"):
                self.out.message(w, level="warning")
            val_examples = val.examples
        if cfg.packing:
            n = len(train_examples)
            train_examples = pack_examples(train_examples, cfg.max_seq_len)
            self.out.message(f"packing: {n} examples into {len(train_examples)} rows of <= {cfg.max_seq_len} tokens")
        self.train_examples: list[Example] = train_examples
        self.val_examples: list[Example] = val_examples
        self.out.message(
            f"data: {len(train_examples)} training rows, {len(val_examples)} validation examples "
            f"({sum(e.num_label_tokens for e in train_examples)} assistant tokens to learn)"
        )

    def _emit_reports(self) -> None:
        for rep in (parameter_report(self.model), memory_report(self.model)):
            self.out.message(format_report(rep))

    def _install_signal_handlers(self) -> None:
        def on_term(signum: int, _frame: Any) -> None:
            log.info("signal %s received: stopping at the next step boundary", signum)
            self.stop_requested = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            # ValueError: not the main thread (e.g. a test calling run() from a thread).
            with contextlib.suppress(ValueError):
                self._old_handlers[sig] = signal.signal(sig, on_term)

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.ckpt_root)
        if path is None:
            self.out.message("resume requested but no complete checkpoint found; starting from step 0")
            return
        try:
            state, rng = ckpt.load_checkpoint(
                path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                sharded=self.parallel.shards_state,
                rank=self.parallel.rank,
            )
            layout = state.get("distributed") or {"strategy": "none", "world_size": 1}
            if self.parallel.shards_state and (
                layout.get("strategy") != self.parallel.strategy or layout.get("world_size") != self.parallel.world
            ):
                raise ValueError(
                    f"it was written by strategy {layout.get('strategy')!r} with {layout.get('world_size')} "
                    f"processes; sharded state resumes only with the same strategy and process count"
                )
            if self.parallel.shards_state:
                self.parallel.load_sharded(path / ckpt.SHARDED_DIR)
        except ValueError as exc:
            raise EngineError(
                INVALID_CONFIG,
                f"cannot resume from {path}: {exc}",
                param="resume",
                suggestion="resume with the config the checkpoint was written with, or set resume=false",
            ) from exc
        if state.get("train_rows") not in (None, len(self.train_examples)):
            self.out.message(
                f"the training data changed since {path} ({state['train_rows']} rows then, "
                f"{len(self.train_examples)} now): the resumed run will not match an uninterrupted one",
                level="warning",
            )
        if self.scaler.is_enabled() and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])
        self.trained_tokens = int(state["trained_tokens"])
        self.last_loss = float(state.get("last_loss", float("nan")))
        self.last_eval_loss = state.get("last_eval_loss")
        self.best_eval_loss = state.get("best_eval_loss")
        self.best_step = state.get("best_step")
        self.best = ckpt.load_best_weights(path)
        if self.cfg.select == "best" and self.best_step is not None and self.best is None:
            raise EngineError(
                INVALID_CONFIG,
                f"cannot resume from {path} with select='best': it holds no best weights",
                param="resume",
                suggestion="resume with the config the checkpoint was written with, or set resume=false",
            )
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        if rng is None:
            self.out.message(
                f"checkpoint {path.name} is from an older engine that pickled its RNG state ({ckpt.LEGACY_RNG_FILE}); "
                "pickles are not loaded, so the random streams (dropout) restart from the seed and the "
                "resumed run will not match an uninterrupted one exactly",
                level="warning",
            )
        else:
            # Last, so nothing else consumes random numbers after the restore.
            ckpt.set_rng_state(rng)
        # The checkpoint's name, not its path: messages become events the job's owner reads.
        self.out.message(
            f"resumed from checkpoint {path.name} at step {self.step} (epoch {state['epoch']}, index {state['index']})"
        )

    # ------------------------------------------------------------------ train

    def train(self) -> int:
        cfg = self.cfg
        self.model.train()
        t_start = time.monotonic()
        tokens_at_start, step_at_start = self.trained_tokens, self.step
        while self.step < self.total_steps:
            step_index = self.step  # 0-based index of the step being run
            lr = self.scheduler.get_last_lr()[0]
            loss, grad_norm, n_tokens = self._train_step(step_index)
            self.step += 1
            self.trained_tokens += n_tokens
            self.last_loss = loss
            self.rng_at_boundary = ckpt.rng_state()

            eval_loss = None
            if self.val_examples and (
                (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == self.total_steps
            ):
                eval_loss = self.evaluate()
                self.last_eval_loss = eval_loss
                self._track_best(eval_loss)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps or eval_loss is not None:
                elapsed = time.monotonic() - t_start
                done_here = self.step - step_at_start
                tps = (self.trained_tokens - tokens_at_start) / elapsed if elapsed > 0 else 0.0
                self.out.metrics(
                    step=self.step,
                    total_steps=self.total_steps,
                    epoch=round(self.step / self.schedule.steps_per_epoch, 4),
                    loss=loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens_per_s=round(tps, 1),
                    trained_tokens=self.trained_tokens,
                    progress=round(100.0 * self.step / self.total_steps, 2),
                    eta_s=round(elapsed / max(1, done_here) * (self.total_steps - self.step), 1),
                    eval_loss=eval_loss,
                )
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
            if cfg.step_delay_s:
                time.sleep(cfg.step_delay_s)
            if self.step < self.total_steps and self._should_stop():
                path = self.last_checkpoint if self.last_checkpoint_step == self.step else self.save_checkpoint()
                self.out.stopped(step=self.step, checkpoint=str(path) if path else None)
                return EXIT_STOPPED

        selected_eval_loss = self.last_eval_loss
        if cfg.select == "best" and self.best is not None:
            self._load_trainable(self.best.tensors)
            selected_eval_loss = self.best.eval_loss
            self.out.message(
                f"select=best: writing the weights of step {self.best.step} "
                f"(eval_loss {self.best.eval_loss:.4f}; last step {self.step}: {self.last_eval_loss})"
            )
        adapter_dir = self._save_final()
        # Collective: every rank's memory, reported by rank 0 (the memory preflight's yardstick).
        rank_memory = self.parallel.all_gather(
            {
                "rank": self.parallel.rank,
                "rss_before_model_mb": round(self.rss_before_model_mb, 1),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
            }
        )
        self.parallel.barrier()  # no rank exits (closing the group) before rank 0 has published
        self.out.done(
            strategy=self.parallel.strategy,
            world_size=self.parallel.world,
            rank_memory=rank_memory,
            adapter_dir=str(adapter_dir),
            steps=self.step,
            trained_tokens=self.trained_tokens,
            final_loss=self.last_loss,
            eval_loss=selected_eval_loss,
            device=self.device.type,
            select=cfg.select,
            last_eval_loss=self.last_eval_loss,
            best_eval_loss=self.best_eval_loss,
            best_step=self.best_step,
        )
        return EXIT_DONE

    def _track_best(self, eval_loss: float) -> None:
        """Remember the lowest validation loss (the earliest step on a tie); with select="best"
        keep a CPU copy of its weights, which the final save writes instead of the last ones."""
        if not math.isfinite(eval_loss) or (self.best_eval_loss is not None and eval_loss >= self.best_eval_loss):
            return
        self.best_eval_loss, self.best_step = eval_loss, self.step
        if self.cfg.select == "best":
            self.best = ckpt.BestWeights(self.step, eval_loss, self.parallel.full_trainable_state())  # copies

    @torch.no_grad()
    def _load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)

    def _should_stop(self) -> bool:
        mine = self.stop_requested or bool(self.cfg.stop_file and os.path.exists(self.cfg.stop_file))
        # Every rank must stop at the same step boundary (the checkpoint is collective).
        (votes,) = self.parallel.all_sum([1.0 if mine else 0.0])
        return votes > 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _token_loss_sum(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of next-token CE over labelled positions of one micro-batch."""
        with self._autocast():
            logits = self.parallel.forward(**model_inputs(batch)).logits  # (B, T, V)
        targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),  # (B*(T-1), V)
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    def _train_step(self, step_index: int) -> tuple[float, float, int]:
        par = self.parallel
        # Each rank takes its share of every micro-batch of the global step (one rank: all of it).
        micro = [par.shard(mb) for mb in self.schedule.micro_batches(step_index)]
        batches = [
            {
                k: v.to(self.device)
                for k, v in (
                    collate([self.train_examples[i] for i in mb], self.pad_id) if mb else self._idle_batch()
                ).items()
            }
            for mb in micro
        ]
        # Normalise by the label tokens of the whole (global) step, not per micro-batch or rank,
        # so the accumulated gradient equals the gradient of the mean over all its tokens.
        n_label, n_tokens = par.all_sum(
            [
                sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches),
                sum(int(b["attention_mask"].sum()) for b, mb in zip(batches, micro, strict=True) if mb),
            ]
        )
        total = 0.0
        for i, batch in enumerate(batches):
            with par.micro_batch(last=i == len(batches) - 1):
                loss_sum = self._token_loss_sum(batch)
                loss = loss_sum / max(1.0, n_label)
                if not torch.isfinite(loss):
                    raise self._nan_error(f"the training loss became {loss.item()} at step {step_index + 1}")
                par.backward(loss * par.loss_scale, self.scaler)
            total += loss.item()
            self._check_memory()
        (total,) = par.all_sum([total])
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm else float("inf")
        # Clips and logs the true (unscaled) gradient norm, steps optimizer and schedule.
        grad_norm = par.step(self.optimizer, self.scheduler, self.scaler, max_norm)
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            # With fp16 loss scaling an overflow is expected now and then: the scaler
            # skips that step and lowers the scale. Without it, Inf/NaN is divergence.
            raise self._nan_error(f"the gradient norm became {grad_norm} at step {step_index + 1}")
        return total, grad_norm, int(n_tokens)

    def _idle_batch(self) -> dict[str, torch.Tensor]:
        """What a rank trains on when the epoch's last micro-batch left it no example: two pad
        tokens with no label. Its loss is exactly 0 and so is its gradient, but the rank runs the
        forward and backward every other rank runs (FSDP and ZeRO-3 gather parameters there, DDP
        reduces gradients)."""
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.full_like(ids, IGNORE_INDEX),
        }

    def _nan_error(self, message: str) -> EngineError:
        return EngineError(
            NAN_DETECTED,
            message + f" (learning_rate={self.cfg.learning_rate})",
            param="learning_rate",
            suggestion=DEFAULT_SUGGESTIONS[NAN_DETECTED],
        )

    def _check_memory(self) -> None:
        limit = self.cfg.memory_limit_mb
        if limit is not None and _rss_mb() > limit:
            raise EngineError(
                OUT_OF_MEMORY,
                f"process memory {_rss_mb():.0f} MB exceeded memory_limit_mb={limit}",
                param="memory_limit_mb",
            )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean token loss over the validation examples (dropout off)."""
        self.model.eval()
        loss_sum, n = 0.0, 0
        bs = self.cfg.batch_size
        for i in range(0, len(self.val_examples), bs):
            chunk = self.val_examples[i : i + bs]
            batch = {k: v.to(self.device) for k, v in collate(chunk, self.pad_id).items()}
            loss_sum += float(self._token_loss_sum(batch))
            n += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.model.train()
        return loss_sum / max(1, n)

    # ------------------------------------------------------------------ output

    def _adapter_writer(self, tensors: dict[str, torch.Tensor]) -> Any:
        """A callback writing the PEFT adapter of ``tensors`` (the whole trainable weights) into a dir."""
        return lambda out_dir: self._write_adapter(out_dir, tensors)

    def _write_adapter(self, out_dir: Path, tensors: dict[str, torch.Tensor]) -> Path:
        # PEFT lists module suffixes, e.g. ["q_proj", "v_proj"], even for "all-linear".
        modules = sorted({n.rsplit(".", 1)[-1] for n in self.lora_targets})
        return save_adapter(
            self.model,
            out_dir,
            tensors=tensors,
            base_model_name_or_path=self.cfg.base_model_name or self.cfg.base_model_dir,
            rank=self.cfg.rank,
            alpha=self.cfg.alpha,
            dropout=self.cfg.dropout,
            target_modules=modules,
            use_rslora=self.cfg.use_rslora,
        )

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint of the state after `self.step` optimizer steps.

        Collective in a distributed run: every rank writes its part (sharded state, its RNG)
        into the staging dir, then rank 0 publishes the checkpoint (see `checkpoint`).
        """
        par = self.parallel
        trainable = par.full_trainable_state()  # gathered onto rank 0 where the engine shards
        staging = None
        if par.world > 1:
            staging = ckpt.staging_dir(self.ckpt_root, self.step)
            if par.is_main:
                shutil.rmtree(staging, ignore_errors=True)  # a crashed run's leftover
                staging.mkdir(parents=True)
            par.barrier()
            par.save_sharded(staging)
            if not par.is_main:
                ckpt.save_rng_state(self.rng_at_boundary or ckpt.rng_state(), staging / ckpt.rank_rng_file(par.rank))
            par.barrier()
        path = self.ckpt_root / ckpt.step_dir_name(self.step)
        if par.is_main:
            path = self._publish_checkpoint(trainable, staging)
        par.barrier()  # published before any rank moves on (or exits after a stop)
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        return path

    def _publish_checkpoint(self, trainable: dict[str, torch.Tensor], staging: Path | None) -> Path:
        epoch, index = self.schedule.position(self.step)
        # Next example in this epoch's order (the order is epoch_order(n, seed, epoch)).
        example_index = min(index * self.cfg.grad_accum_steps * self.cfg.batch_size, len(self.train_examples))
        path = ckpt.save_checkpoint(
            self.ckpt_root,
            step=self.step,
            model=self.model,
            optimizer=None if self.parallel.shards_state else self.optimizer,
            scheduler=self.scheduler,
            rng=self.rng_at_boundary or ckpt.rng_state(),
            state={
                "epoch": epoch,
                "index": index,
                "example_index": example_index,
                "trained_tokens": self.trained_tokens,
                "last_loss": self.last_loss,
                "last_eval_loss": self.last_eval_loss,
                "best_eval_loss": self.best_eval_loss,
                "best_step": self.best_step,
                "total_steps": self.total_steps,
                "seed": self.cfg.seed,
                "train_rows": len(self.train_examples),
                "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "distributed": {"strategy": self.parallel.strategy, "world_size": self.parallel.world},
            },
            metrics={"loss": self.last_loss, "eval_loss": self.last_eval_loss, "trained_tokens": self.trained_tokens},
            keep=self.cfg.keep_checkpoints,
            write_adapter=self._adapter_writer(trainable) if self.cfg.method != "full" else None,
            best=self.best,
            trainable=trainable,
            sharded=staging,
        )
        self.out.checkpoint(
            step=self.step,
            path=str(path),
            metrics={"loss": self.last_loss, "eval_loss": self.last_eval_loss, "trained_tokens": self.trained_tokens},
        )
        return path

    def save_emergency_checkpoint(self) -> None:
        """After a fatal error: keep the last completed step if it is not saved yet (best effort)."""
        if not hasattr(self, "optimizer") or self.step == 0 or self.last_checkpoint_step == self.step:
            return
        if self.parallel.world > 1:
            # Writing it is collective, and the ranks that did not fail are not listening.
            return
        try:
            self.optimizer.zero_grad(set_to_none=True)
            self.save_checkpoint()
        except Exception as exc:  # we are already failing; report the original error
            log.warning("emergency checkpoint failed: %s", exc)

    def _save_final(self) -> Path:
        """Write output_dir/adapter (output_dir/model for full FT): readers see the old dir or the new one whole."""
        full = self.cfg.method == "full"
        final = self.output_dir / ("model" if full else "adapter")
        par = self.parallel
        # Collective: the whole weights, gathered onto rank 0 where the engine shards them.
        weights = par.full_model_state() if full else par.full_trainable_state()
        if not par.is_main:
            return final
        try:
            if not full:
                return self._write_adapter(final, weights)  # save_adapter publishes through fsio.atomic_dir
            # A save_pretrained model + tokenizer dir; an existing model/ is removed only
            # after the new one is renamed in, so a crash never leaves neither.
            with atomic_dir(final) as tmp:
                self.model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
        except Exception as exc:  # safetensors/torch wrap the OSError of a full disk in their own types
            converted = ckpt.disk_errors_as_engine_errors(exc, str(final))
            if converted is exc:
                raise
            raise converted from exc
        return final

    def cleanup(self) -> None:
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._old_handlers.clear()


def _setup_logging(output_dir: Path, rank: int = 0) -> None:
    root = logging.getLogger("lora_engine")
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    with contextlib.suppress(OSError):
        output_dir.mkdir(parents=True, exist_ok=True)
        name = "train.log" if rank == 0 else f"train-rank{rank}.log"
        handlers.append(logging.FileHandler(output_dir / name, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


def run(cfg: TrainConfig, emitter: ProgressEmitter) -> int:
    """Run one training job end to end; every failure becomes one error line and EXIT_ERROR."""
    recipe = FineTuneRecipe(cfg, emitter)

    def fail(code: str, message: str, param: str | None = None, suggestion: str | None = None) -> int:
        recipe.save_emergency_checkpoint()
        step = recipe.step if hasattr(recipe, "total_steps") else None
        emitter.error(
            code=code,
            message=message,
            param=param,
            suggestion=suggestion if suggestion is not None else DEFAULT_SUGGESTIONS[code],
            step=step,
        )
        return EXIT_ERROR

    try:
        recipe.setup()
        return recipe.train()
    except EngineError as exc:
        log.error("training failed: %s", exc)
        if exc.code == NAN_DETECTED:
            # The weights are already poisoned: do not checkpoint them.
            recipe.last_checkpoint_step = recipe.step
        return fail(exc.code, exc.message, exc.param, exc.suggestion)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        log.error("out of memory: %s", exc)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return fail(OUT_OF_MEMORY, f"out of memory at step {recipe.step + 1}: {str(exc)[:300]}", "batch_size")
    except OSError as exc:
        converted = ckpt.disk_errors_as_engine_errors(exc, cfg.output_dir)
        log.exception("I/O error")
        if isinstance(converted, EngineError):
            return fail(converted.code, converted.message, converted.param)
        return fail(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        if cfg.distributed.is_distributed and is_peer_loss(exc):
            # Another rank died (killed, node lost): not this run's error to report. No error line,
            # so the worker resumes the job from its last checkpoint in a new attempt.
            log.error("a peer rank went away: %s", exc)
            recipe.parallel.abandon()
            emitter.message(f"a training process of this run went away: {str(exc)[:300]}", level="warning")
            return EXIT_PEER_LOST
        log.exception("internal error")
        return fail(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    finally:
        recipe.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stream = claim_stdout()
    emitter = ProgressEmitter(stream)
    if len(args) != 1:
        emitter.error(
            code=INVALID_CONFIG,
            message="usage: python -m lora_engine.train CONFIG.json",
            param=None,
            suggestion=DEFAULT_SUGGESTIONS[INVALID_CONFIG],
            step=None,
        )
        return EXIT_ERROR
    try:
        cfg = TrainConfig.from_json(args[0])
    except EngineError as exc:
        emitter.error(code=exc.code, message=exc.message, param=exc.param, suggestion=exc.suggestion, step=None)
        return EXIT_ERROR
    rank = launched_rank() if cfg.distributed.is_distributed else 0
    if rank == 0:
        emitter = ProgressEmitter(stream, cfg.metrics_file)
    else:  # rank 0 reports the run; the others only their own failures
        emitter = ProgressEmitter(stream, only=frozenset({ERROR}))
    _setup_logging(Path(cfg.output_dir), rank)
    try:
        code = run(cfg, emitter)
    finally:
        emitter.close()
    if cfg.distributed.is_distributed:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End a distributed rank without the interpreter's teardown.

    Everything the run promised is on disk by now (checkpoints and the adapter are fsynced and
    renamed into place; the JSON lines are flushed). What is left is destroying DDP's reducer
    and gloo's process group, and that can deadlock: the reducer's destructor holds the GIL
    while it joins gloo's thread, which waits for the GIL to release a finished all-gather
    (seen in ~1 of 10 DDP runs here); after a lost peer the teardown can block on the dead
    connection for good. Either way the launcher would wait on a rank that never exits.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
