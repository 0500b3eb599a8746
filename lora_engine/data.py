"""Training data: JSONL records -> chat template -> token ids with assistant-only labels.

Pipeline:
  1. `read_jsonl` parses each non-blank line (1-based line numbers kept for errors).
  2. `lora_engine.formats.to_messages` turns any supported format into canonical
     `{"role", "content"}` messages.
  3. `encode_messages` renders the tokenizer's own chat template and labels only the
     assistant turns as the template renders them: content tokens plus the template's
     end-of-turn token. Every other position gets -100 so it never contributes to the
     loss. A conversation longer than `max_seq_len` loses its oldest turns first
     (system messages stay), so the final assistant turn is never the part cut.
  4. Optional packing (several examples per row, each attending only to itself: see
     `collate` and `model_inputs`), a seeded validation split, and `BatchSchedule`,
     which maps an optimizer step to its micro-batches as a pure function of
     (seed, epoch) so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    lengths: tuple[int, ...] = ()
    """Token counts of the examples packed into this row, in order; () for a single example."""

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass(frozen=True)
class EncodedDataset:
    """The result of `load_examples`: rows plus what the user should hear about them."""

    examples: list[Example]
    num_records: int
    num_truncated: int  # examples longer than max_seq_len, cut to fit (see `encode_messages`)
    num_skipped: int  # rows left with no assistant token after truncation
    num_tokens_cut: int = 0  # truncated examples that still lost tokens after dropping whole turns
    num_answers_cut: int = 0  # examples whose final assistant turn alone did not fit
    num_context_turns: int = 0  # earlier assistant turns kept as context only (see `assistant_char_spans`)

    def warnings(self, max_seq_len: int, source: str) -> list[str]:
        out = []
        if self.num_truncated:
            text = (
                f"{self.num_truncated} of {self.num_records} examples in {source} were longer than "
                f"max_seq_len={max_seq_len} tokens and were truncated from the front: their oldest turns "
                "were dropped (system messages kept) so the final assistant turn stays whole"
            )
            if self.num_tokens_cut:
                text += (
                    f"; {self.num_tokens_cut} still did not fit with only their last exchange and lost prompt "
                    "tokens from the front"
                )
            if self.num_answers_cut:
                text += (
                    f"; in {self.num_answers_cut} the final assistant turn alone is too long and only its "
                    "first tokens are learned"
                )
            out.append(text)
        if self.num_skipped:
            out.append(
                f"{self.num_skipped} examples in {source} had no assistant tokens left after truncation "
                "and were skipped"
            )
        if self.num_context_turns:
            out.append(
                f"{self.num_context_turns} earlier assistant turns in {source} are context, not learned: the "
                "chat template renders them differently once later turns follow (e.g. it removes reasoning "
                "from the history); every final assistant turn is learned as the template renders it"
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
    """Render the conversation and locate the assistant turns to learn in the text.

    The span of assistant turn i starts where the prompt for it ends (render of the
    messages before it with `add_generation_prompt=True`) and ends where the render
    through it ends, minus trailing whitespace: so it covers the content and the
    template's end-of-turn marker, not the newline that separates turns.

    Some templates render a turn differently once later turns follow it (Qwen3 removes
    the `<think>` block from assistant turns in the history and puts one on the final
    turn). Such an earlier turn is not the text the model generated at that point, so
    it is left out of the spans (context, not a target); the final assistant turn is
    always located, exactly as the template renders it.

    Returns:
        (rendered text, [(start, end) character span per learned assistant turn]); the
        last span is the last assistant message.

    Raises:
        ValueError: the final assistant turn cannot be located (the prompt before it is
            not a prefix of the whole render).
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = full if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(prompt) and full.startswith(through) and len(prompt) <= len(through)):
            if i == last:
                # Labelling by prefixes would train on the wrong tokens: fail loudly.
                raise ValueError("the chat template does not render the final assistant turn after its prompt")
            continue
        spans.append((len(prompt), len(through.rstrip())))
    return full, spans


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids and assistant-only labels of one conversation, and what fitting it cost."""

    input_ids: list[int]
    labels: list[int]
    dropped_messages: int = 0
    """Messages removed to fit max_seq_len: oldest history turns, and turns after the final assistant turn."""
    cut_tokens: int = 0
    """Tokens cut after dropping whole turns was not enough (prompt front first, then the answer's end)."""
    cut_answer_tokens: int = 0
    """Of `cut_tokens`, tokens of the final assistant turn itself (it is longer than the window)."""
    context_turns: int = 0
    """Earlier assistant turns the template renders differently once later turns follow: not learned."""

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_messages or self.cut_tokens)


def _encode_rendered(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[EncodedConversation, int, int]:
    """Encode without any length limit.

    Returns:
        (encoding, first token index, end token index) of the final assistant turn.
    """
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    final_start, final_end = spans[-1]
    answer: list[int] = []
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        if end <= start:
            continue
        # A token belongs to an assistant turn when it starts inside the span; tokens
        # never straddle the span start because the template puts a special token or
        # newline right before the content.
        if any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
        if final_start <= start < final_end:
            answer.append(t)
    context = sum(m["role"] == "assistant" for m in messages) - len(spans)
    first, stop = (answer[0], answer[-1] + 1) if answer else (len(ids), len(ids))
    return EncodedConversation(ids, labels, context_turns=context), first, stop


def encode_messages(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int) -> EncodedConversation:
    """Token ids and assistant-only labels for one conversation, at most max_seq_len tokens.

    A conversation that is too long is truncated from the front of its history, never
    from its end: the system messages at the start stay, then whole turns are dropped
    oldest first, each shorter history starting at a user turn, until the rest fits (the
    longest history that fits is kept). If even the system messages plus the last
    exchange do not fit, tokens are cut: the prompt keeps its last tokens (at least half
    the window when the final answer is longer than that) and the final answer keeps
    its first tokens only when it alone does not fit in the rest.
    """
    enc = _encode_rendered(tokenizer, messages)[0]
    if len(enc.input_ids) <= max_seq_len:
        return enc
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    # History starts to try, fewest dropped first; messages after the final assistant
    # turn teach nothing and go in every candidate.
    starts = [head] + [s for s in range(head + 1, last) if messages[s]["role"] == "user"]
    tried: dict[int, tuple[EncodedConversation, int, int]] = {}

    def attempt(k: int) -> tuple[EncodedConversation, int, int]:
        if k not in tried:
            tried[k] = _encode_rendered(tokenizer, [*messages[:head], *messages[starts[k] : last + 1]])
        return tried[k]

    def fits(k: int) -> bool:
        return len(attempt(k)[0].input_ids) <= max_seq_len

    lo, hi = 0, len(starts) - 1
    if fits(hi):
        # Dropping more history never makes the render longer: binary search the first fit.
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        kept = attempt(lo)[0]
        dropped = len(messages) - (head + last + 1 - starts[lo])
        return replace(kept, dropped_messages=dropped)

    enc, first, stop = attempt(hi)
    ids, labels = enc.input_ids[:stop], enc.labels[:stop]  # (tokens after the final turn are unlabelled)
    n_prompt, n_answer = first, stop - first
    keep_prompt = min(n_prompt, max(max_seq_len - n_answer, max_seq_len // 2))
    keep_answer = min(n_answer, max_seq_len - keep_prompt)
    window = slice(n_prompt - keep_prompt, first + keep_answer)
    return replace(
        enc,
        input_ids=ids[window],
        labels=labels[window],
        dropped_messages=len(messages) - (head + last + 1 - starts[hi]),
        cut_tokens=(n_prompt - keep_prompt) + (n_answer - keep_answer),
        cut_answer_tokens=n_answer - keep_answer,
    )


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int
) -> tuple[list[int], list[int], bool]:
    """`encode_messages` as a tuple: (input_ids, labels, truncated), len(input_ids) <= max_seq_len."""
    enc = encode_messages(tokenizer, messages, max_seq_len)
    return enc.input_ids, enc.labels, enc.truncated


def load_examples(path: str | Path, tokenizer: Any, *, max_seq_len: int, param: str = "train_file") -> EncodedDataset:
    """Read, convert and tokenize a JSONL file (see the module docstring)."""
    records = read_jsonl(path, param=param)
    examples = []
    truncated = skipped = tokens_cut = answers_cut = context_turns = 0
    for line, record in records:
        messages = record_to_messages(record, line=line, param=param)
        try:
            enc = encode_messages(tokenizer, messages, max_seq_len)
        except Exception as exc:  # template errors (unknown role, ...) are data errors here
            raise DataError(
                f"{param} line {line}: cannot apply the chat template: {exc}", param=f"{param}:{line}"
            ) from exc
        truncated += enc.truncated
        tokens_cut += enc.cut_tokens > 0
        answers_cut += enc.cut_answer_tokens > 0
        context_turns += enc.context_turns
        ex = Example(enc.input_ids, enc.labels, line)
        if ex.num_label_tokens == 0:
            skipped += 1
            continue
        examples.append(ex)
    if not examples:
        raise DataError(f"{param} has no example with assistant tokens within max_seq_len={max_seq_len}", param=param)
    return EncodedDataset(examples, len(records), truncated, skipped, tokens_cut, answers_cut, context_turns)


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

    Each row records the lengths of its examples (`Example.lengths`), from which
    `collate` restarts the position ids at every example and `model_inputs` has the
    model attend only within each example (a block-diagonal causal mask), so a packed
    row computes exactly what its examples compute one by one.

    Labels stay per example: each example's own prompt tokens remain -100, and the
    first label of every example is masked so no loss crosses examples.
    """
    rows: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    lengths: list[int] = []
    line = 0
    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_seq_len:
            rows.append(Example(ids, labels, line, tuple(lengths)))
            ids, labels, lengths = [], [], []
        if not ids:
            line = ex.line
        ids = ids + ex.input_ids
        # The first label of an example must not be learned as the continuation of the
        # previous example.
        labels = [*labels, IGNORE_INDEX, *ex.labels[1:]]
        lengths.append(len(ex.input_ids))
    if ids:
        rows.append(Example(ids, labels, line, tuple(lengths)))
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
    """Right-pad a micro-batch. Returns input_ids, attention_mask, labels: each (B, T).

    When a row packs several examples, the batch also carries position_ids (B, T) that
    restart at 0 at every example, so each example sees the positions it has alone.
    The padding after a row's last example is one more segment of its own.
    """
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
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if any(len(e.lengths) > 1 for e in examples):
        position_ids = torch.zeros((b, width), dtype=torch.long)  # (B, T)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            segments = [*(e.lengths or (n,)), width - n]
            position_ids[i] = torch.cat([torch.arange(k, dtype=torch.long) for k in segments])
        batch["position_ids"] = position_ids
    return batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of the model's forward for a collated batch (labels excluded:
    the recipe computes its own loss).

    A packed batch goes in as input_ids + position_ids and no attention_mask: from the
    position restarts transformers builds a block-diagonal causal mask in the form
    each attention implementation needs (`masking_utils.find_packed_sequence_indices`
    for sdpa and eager, both tested; flash-attention reads the same restarts), so no
    token attends to another example of its row.
    It does so only without a 2D mask and without a KV cache, hence `use_cache=False`.
    Right padding needs no mask under causal attention: real tokens never attend to the
    pads after them, and pad positions carry no label.
    """
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def pad_token_id_of(tokenizer: Any) -> int:
    """Pad id to use: the tokenizer's pad, else its EOS (positions are masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
