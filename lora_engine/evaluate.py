"""Evaluate a model on a chat JSONL: greedy answers to every prompt, and the loss on the references.

The eval file holds the same records as a training file (any format of
``lora_engine.formats``). For each record, the **reference** is the last assistant turn and
the **prompt** is every message before it. Two things are measured per example:

1. **Prediction**: the prompt rendered with the tokenizer's chat template
   (``add_generation_prompt=True``), then greedy decoding (``do_sample=False``, one beam) of at
   most ``max_new_tokens`` tokens, stopping at the EOS token; decoded without special tokens
   and stripped.
2. **Reference loss** (teacher forcing): the prompt and the reference rendered together, the
   labels set on the reference turn only (its content tokens plus the template's end-of-turn
   token, exactly as ``lora_engine.data`` labels assistant turns for training), and the mean
   next-token cross-entropy over those labels. ``perplexity = exp(mean loss)``, the mean taken
   over every reference token of the file (token-weighted, as the training eval loss is).

The model is the base HF model dir, optionally with a PEFT LoRA adapter
(``lora_engine.adapter_io``, safetensors only), or a full-weights model dir (safetensors only).
Deterministic: fixed seed, eval mode, greedy decoding, fp32. Plain PyTorch and
``transformers``; no project package above ``lora_engine``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lora_engine.adapter_io import load_adapter
from lora_engine.data import IGNORE_INDEX, assistant_char_spans, pad_token_id_of, read_jsonl, record_to_messages
from lora_engine.errors import BASE_MODEL_MISSING, INVALID_CONFIG, ConfigError, DataError, EngineError

EVAL_PARAM = "eval_file"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: which model, which file, how long the answers may be."""

    model_dir: str
    """HF model dir to load: the base model, or a full-weights version (safetensors only)."""
    eval_file: str
    """JSONL in any supported dataset format; the last assistant turn of each record is the reference."""
    adapter_dir: str | None = None
    """PEFT LoRA adapter dir applied on top of ``model_dir`` (None: the model as it is)."""
    tokenizer_dir: str | None = None
    """Where the tokenizer and chat template come from (default: ``model_dir``)."""
    max_examples: int | None = None
    """Evaluate the first N records of the file only (None: all)."""
    max_new_tokens: int = 64
    """Upper bound on each generated answer, in tokens."""
    max_seq_len: int = 1024
    """Longest sequence fed to the model (also capped by the model's ``max_position_embeddings``).
    Longer inputs lose their *first* tokens, so the reference and the end of the prompt survive."""
    seed: int = 0
    """Seeds python and torch before the run (greedy decoding needs no randomness; dropout is off)."""
    device: str = "auto"
    """``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``."""

    def __post_init__(self) -> None:
        if self.max_examples is not None and (isinstance(self.max_examples, bool) or self.max_examples < 1):
            raise ConfigError("max_examples must be an integer >= 1 or null", param="max_examples")
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be an integer >= 1", param="max_new_tokens")
        if isinstance(self.max_seq_len, bool) or self.max_seq_len < 8:
            raise ConfigError("max_seq_len must be an integer >= 8", param="max_seq_len")
        if self.max_new_tokens >= self.max_seq_len:
            raise ConfigError("max_new_tokens must be smaller than max_seq_len", param="max_new_tokens")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device must be 'auto', 'cpu' or 'cuda'", param="device")
        if isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("seed must be an integer >= 0", param="seed")


@dataclass(frozen=True)
class EvalExample:
    """One record of the eval file, split into what the model sees and what it should say."""

    line: int
    prompt: list[dict[str, str]]
    reference: str


@dataclass(frozen=True)
class ExampleResult:
    """The model's answer to one example and its loss on the reference."""

    line: int
    prompt: list[dict[str, str]]
    reference: str
    prediction: str
    loss: float
    """Mean token loss on this example's reference tokens."""
    reference_tokens: int
    truncated: bool
    """The prompt (for generation) or prompt + reference (for the loss) lost its first tokens."""


@dataclass(frozen=True)
class EvalResult:
    """Every example's result plus the file-level loss."""

    examples: list[ExampleResult]
    mean_loss: float
    """Token-weighted mean loss over every reference token of the evaluated examples."""
    perplexity: float
    """``exp(mean_loss)`` (``inf`` when that overflows)."""
    reference_tokens: int
    num_records: int
    """Records in the file (the first ``max_examples`` of them were evaluated)."""
    num_truncated: int
    device: str
    seconds: float


def split_record(messages: list[dict[str, str]], *, line: int) -> EvalExample:
    """Prompt = every message before the last assistant turn; reference = that turn's content.

    Raises:
        DataError: the last assistant turn has nothing before it to answer.
    """
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if last == 0:
        raise DataError(
            f"{EVAL_PARAM} line {line}: the last assistant turn has no prompt before it", param=f"{EVAL_PARAM}:{line}"
        )
    return EvalExample(line=line, prompt=messages[:last], reference=messages[last]["content"])


def load_eval_examples(path: str | Path, *, max_examples: int | None = None) -> tuple[list[EvalExample], int]:
    """Read an eval JSONL into examples (the first ``max_examples``) and the file's record count.

    Raises:
        DataError: unreadable file, bad JSON, unknown format, a record with no assistant turn.
    """
    records = read_jsonl(path, param=EVAL_PARAM)
    chosen = records if max_examples is None else records[:max_examples]
    examples = [
        split_record(record_to_messages(record, line=line, param=EVAL_PARAM), line=line) for line, record in chosen
    ]
    return examples, len(records)


def load_model(cfg: EvalConfig) -> tuple[Any, Any, torch.device]:
    """The model (eval mode, on its device, adapter applied) and its tokenizer.

    Raises:
        EngineError: ``base_model_missing`` (no config.json, tokenizer or weights fail to load),
            ``invalid_config`` (no chat template, CUDA asked for but absent), or
            ``AdapterFormatError`` for an adapter that is missing, pickled or does not fit.
    """
    model_dir = Path(cfg.model_dir)
    tokenizer_dir = Path(cfg.tokenizer_dir or cfg.model_dir)
    if not (model_dir / "config.json").is_file():
        raise EngineError(BASE_MODEL_MISSING, f"model directory {model_dir} has no config.json", param="model_dir")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:
        raise EngineError(
            BASE_MODEL_MISSING, f"cannot load the tokenizer of {tokenizer_dir}: {exc}", param="tokenizer_dir"
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError(
            INVALID_CONFIG, f"the tokenizer of {tokenizer_dir} has no chat template", param="tokenizer_dir"
        )
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise EngineError(INVALID_CONFIG, "device 'cuda' requested but CUDA is not available", param="device")
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        # fp32 so the reference loss is not rounded; safetensors only (pickles run code on load).
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
    except Exception as exc:
        raise EngineError(
            BASE_MODEL_MISSING, f"cannot load the model from {model_dir}: {exc}", param="model_dir"
        ) from exc
    if cfg.adapter_dir is not None:
        load_adapter(model, cfg.adapter_dir)
    model.to(device).eval()
    return model, tokenizer, device


def reference_ids_and_labels(tokenizer: Any, example: EvalExample) -> tuple[list[int], list[int]]:
    """Token ids of prompt + reference, labels on the reference turn only (unshifted, -100 elsewhere).

    The same rule as ``lora_engine.data.encode_conversation``, restricted to the last
    assistant span: a token is labelled when it starts inside the span (content + end-of-turn).
    """
    text, spans = assistant_char_spans(
        tokenizer, [*example.prompt, {"role": "assistant", "content": example.reference}]
    )
    start, end = spans[-1]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        tid if (b > a and start <= a < end) else IGNORE_INDEX
        for tid, (a, b) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


def prompt_ids(tokenizer: Any, example: EvalExample) -> list[int]:
    """The prompt as the model sees it at inference: chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(example.prompt, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def reference_loss(model: Any, ids: list[int], labels: list[int], device: torch.device) -> tuple[float, int]:
    """Summed next-token cross-entropy over the labelled positions, and their count."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    target = torch.tensor([labels], dtype=torch.long, device=device)  # (1, T)
    logits = model(input_ids=input_ids).logits.float()  # (1, T, V)
    # Position t predicts token t+1: compare logits[:, :-1] with labels[:, 1:].
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        target[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = int((target[:, 1:] != IGNORE_INDEX).sum())
    return float(loss), count


@torch.no_grad()
def generate_answer(model: Any, tokenizer: Any, ids: list[int], gen: GenerationConfig, device: torch.device) -> str:
    """Greedy answer to one prompt, decoded without special tokens and stripped."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, P)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gen)
    return tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True).strip()  # new tokens only


def evaluate(cfg: EvalConfig, *, progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Generate an answer for every example and measure the loss on the references.

    Args:
        progress: called as ``progress(done, total)`` after each example.

    Raises:
        DataError: the eval file cannot be read, or no example has a reference token left.
        EngineError: the model, tokenizer or adapter cannot be loaded (see ``load_model``).
    """
    started = time.monotonic()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    examples, num_records = load_eval_examples(cfg.eval_file, max_examples=cfg.max_examples)
    model, tokenizer, device = load_model(cfg)

    max_len = min(cfg.max_seq_len, int(getattr(model.config, "max_position_embeddings", None) or cfg.max_seq_len))
    if cfg.max_new_tokens >= max_len:
        raise ConfigError(
            f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in {max_len} positions",
            param="max_new_tokens",
        )
    pad_id = pad_token_id_of(tokenizer)
    eos_id = model.generation_config.eos_token_id
    gen = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id if eos_id is not None else tokenizer.eos_token_id,
        pad_token_id=pad_id,
    )

    results: list[ExampleResult] = []
    total_loss = 0.0
    total_tokens = 0
    for i, example in enumerate(examples):
        try:
            ids, labels = reference_ids_and_labels(tokenizer, example)
            prompt = prompt_ids(tokenizer, example)
        except Exception as exc:  # a template that rejects the record is a data problem
            raise DataError(
                f"{EVAL_PARAM} line {example.line}: cannot apply the chat template: {exc}",
                param=f"{EVAL_PARAM}:{example.line}",
            ) from exc
        # Keep the *last* tokens: the reference (for the loss) and the end of the prompt
        # (for generation, leaving room for the answer) are what we measure.
        truncated = len(ids) > max_len or len(prompt) > max_len - cfg.max_new_tokens
        ids, labels = ids[-max_len:], labels[-max_len:]
        prompt = prompt[-(max_len - cfg.max_new_tokens) :]

        loss_sum, count = reference_loss(model, ids, labels, device)
        prediction = generate_answer(model, tokenizer, prompt, gen, device)
        total_loss += loss_sum
        total_tokens += count
        results.append(
            ExampleResult(
                line=example.line,
                prompt=example.prompt,
                reference=example.reference,
                prediction=prediction,
                loss=loss_sum / count if count else math.nan,
                reference_tokens=count,
                truncated=truncated,
            )
        )
        if progress is not None:
            progress(i + 1, len(examples))

    if total_tokens == 0:
        raise DataError(f"{EVAL_PARAM} has no reference token to score", param=EVAL_PARAM)
    mean_loss = total_loss / total_tokens
    return EvalResult(
        examples=results,
        mean_loss=mean_loss,
        perplexity=math.exp(mean_loss) if mean_loss < 700 else math.inf,
        reference_tokens=total_tokens,
        num_records=num_records,
        num_truncated=sum(r.truncated for r in results),
        device=device.type,
        seconds=time.monotonic() - started,
    )
