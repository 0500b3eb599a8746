"""Training data: JSONL records -> chat template -> token ids with assistant-only labels.

Pipeline:
  1. `read_jsonl` parses each non-blank line (1-based line numbers kept for errors).
  2. `lora_engine.formats.to_messages` turns any supported format into canonical
     `{"role", "content"}` messages.
  3. `encode_conversation` renders the tokenizer's own chat template and labels only
     the assistant turns: content tokens plus the template's end-of-turn token. Every
     other position gets -100 so it never contributes to the loss.
  4. Truncation to `max_seq_len` (counted, reported as a warning), optional packing,
     a seeded validation split, and `batch_schedule`, which maps an optimizer step to
     its micro-batches as a pure function of (seed, epoch) so a resumed run sees
     exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_engine.errors import DataError
from lora_engine.formats import FormatError, iter_lines, loads_json, to_messages

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized training row. `labels[t]` is the target for position t (unshifted)."""

    input_ids: list[int]
    labels: list[int]
    line: int  # source line in the JSONL file (first one for packed rows)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass(frozen=True)
class EncodedDataset:
    """The result of `load_examples`: rows plus what the user should hear about them."""

    examples: list[Example]
    num_records: int
    num_truncated: int
    num_skipped: int  # rows left with no assistant token after truncation

    def warnings(self, max_seq_len: int, source: str) -> list[str]:
        out = []
        if self.num_truncated:
            out.append(
                f"{self.num_truncated} of {self.num_records} examples in {source} were longer than "
                f"max_seq_len={max_seq_len} tokens and were truncated"
            )
        if self.num_skipped:
            out.append(
                f"{self.num_skipped} examples in {source} had no assistant tokens left after truncation "
                "and were skipped"
            )
        return out


def read_jsonl(path: str | Path, *, param: str = "train_file") -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSONL file into (line_number, record) pairs; blank lines are skipped.

    Lines and JSON are read by `formats.iter_lines` / `formats.loads_json`, as upload
    validation reads them, so a file that passed validation has the same lines here.

    Raises:
        DataError: unreadable file, invalid JSON, JSON nested too deep or a non-object line
            (with the line number).
    """
    records = []
    try:
        with open(path, "rb") as stream:
            for number, content, _size in iter_lines(stream):
                if content is None or not content.strip():
                    continue
                where = f"{param}:{number}"
                try:
                    record = loads_json(content.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise DataError(f"{param} line {number}: not valid UTF-8 ({exc.reason})", param=where) from exc
                except FormatError as exc:
                    raise DataError(f"{param} line {number}: {exc.message}", param=where) from exc
                except json.JSONDecodeError as exc:
                    raise DataError(f"{param} line {number}: invalid JSON ({exc.msg})", param=where) from exc
                if not isinstance(record, dict):
                    raise DataError(f"{param} line {number}: expected a JSON object", param=where)
                records.append((number, record))
    except FileNotFoundError as exc:
        raise DataError(f"{param} {path} does not exist", param=param) from exc
    except OSError as exc:
        raise DataError(f"cannot read {param} {path}: {exc}", param=param) from exc
    if not records:
        raise DataError(f"{param} {path} has no examples", param=param)
    return records


def record_to_messages(record: dict[str, Any], *, line: int, param: str = "train_file") -> list[dict[str, str]]:
    """Canonical messages for one record via `formats.to_messages`, errors tagged with the line."""
    try:
        messages = to_messages(record)
    except FormatError as exc:
        msg = getattr(exc, "message", None) or str(exc)
        raise DataError(f"{param} line {line}: {msg}", param=f"{param}:{line}") from exc
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{param} line {line}: the example has no assistant message to learn", param=f"{param}:{line}")
    return messages


def _render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and locate each assistant turn in the text.

    The span of assistant turn i starts where the prompt for it ends (render of the
    messages before it with `add_generation_prompt=True`) and ends where the render
    through it ends, minus trailing whitespace: so it covers the content and the
    template's end-of-turn marker, not the newline that separates turns.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(prompt) and full.startswith(through) and len(prompt) <= len(through)):
            # A template whose earlier turns depend on later ones cannot be labelled by
            # prefixes; fail loudly rather than train on the wrong tokens.
            raise ValueError("the chat template does not render conversations prefix-stably")
        end = len(through.rstrip())
        spans.append((len(prompt), end))
    return full, spans


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int
) -> tuple[list[int], list[int], bool]:
    """Token ids and assistant-only labels for one conversation.

    Returns:
        (input_ids, labels, truncated) with len(input_ids) <= max_seq_len.
    """
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        if end <= start:
            continue
        # A token belongs to an assistant turn when it starts inside the span; tokens
        # never straddle the span start because the template puts a special token or
        # newline right before the content.
        if any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_seq_len
    return ids[:max_seq_len], labels[:max_seq_len], truncated


def load_examples(path: str | Path, tokenizer: Any, *, max_seq_len: int, param: str = "train_file") -> EncodedDataset:
    """Read, convert and tokenize a JSONL file (see the module docstring)."""
    records = read_jsonl(path, param=param)
    examples = []
    truncated = skipped = 0
    for line, record in records:
        messages = record_to_messages(record, line=line, param=param)
        try:
            ids, labels, was_truncated = encode_conversation(tokenizer, messages, max_seq_len)
        except Exception as exc:  # template errors (unknown role, ...) are data errors here
            raise DataError(
                f"{param} line {line}: cannot apply the chat template: {exc}", param=f"{param}:{line}"
            ) from exc
        truncated += was_truncated
        ex = Example(ids, labels, line)
        if ex.num_label_tokens == 0:
            skipped += 1
            continue
        examples.append(ex)
    if not examples:
        raise DataError(f"{param} has no example with assistant tokens within max_seq_len={max_seq_len}", param=param)
    return EncodedDataset(examples, len(records), truncated, skipped)


def split_validation(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out round(fraction * n) examples (at least 1 when fraction > 0), chosen by `seed`."""
    if fraction <= 0:
        return list(examples), []
    n = len(examples)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise DataError(f"validation_split={fraction} leaves no training examples out of {n}", param="validation_split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    val_idx = set(perm[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


def pack_examples(examples: Sequence[Example], max_seq_len: int) -> list[Example]:
    """Greedily concatenate examples (in file order) into rows of at most max_seq_len tokens.

    Labels stay per example: each example's own prompt tokens remain -100, and the
    boundary target (first token of the next example, a BOS / role token) is not an
    assistant token, so no loss crosses examples. Attention does cross them inside a
    row (plain "naive" packing); use packing=false when that matters.
    """
    rows: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    line = 0
    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_seq_len:
            rows.append(Example(ids, labels, line))
            ids, labels = [], []
        if not ids:
            line = ex.line
        ids = ids + ex.input_ids
        # The first label of an example must not be learned as the continuation of the
        # previous example.
        labels = [*labels, IGNORE_INDEX, *ex.labels[1:]]
    if ids:
        rows.append(Example(ids, labels, line))
    return rows


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


@dataclass(frozen=True)
class BatchSchedule:
    """Which example indices each optimizer step uses. Pure: step -> micro-batches."""

    num_examples: int
    batch_size: int
    grad_accum_steps: int
    seed: int

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.grad_accum_steps)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index of the step within the epoch) for 0-based optimizer step `step`."""
        return divmod(step, self.steps_per_epoch)

    def micro_batches(self, step: int) -> list[list[int]]:
        epoch, k = self.position(step)
        order = epoch_order(self.num_examples, self.seed, epoch)
        first = k * self.grad_accum_steps
        last = min(first + self.grad_accum_steps, self.micro_batches_per_epoch)
        return [order[m * self.batch_size : (m + 1) * self.batch_size] for m in range(first, last)]


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch. Returns input_ids, attention_mask, labels: each (B, T)."""
    width = max(len(e.input_ids) for e in examples)
    b = len(examples)
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((b, width), dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of the model's forward for a collated batch (labels excluded:
    the recipe computes its own loss)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def pad_token_id_of(tokenizer: Any) -> int:
    """Pad id to use: the tokenizer's pad, else its EOS (positions are masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
