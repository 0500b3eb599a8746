"""Packing keeps attention inside each example: a packed row computes what its examples compute alone."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from lora_engine.data import IGNORE_INDEX, Example, collate, model_inputs, pack_examples

from .conftest import IDENTITY_FILE, build_tiny_llama, by_type, run_inprocess

VOCAB = 64
PAD = 0
LENGTHS = [7, 12, 5, 9, 6]  # packs into rows of 7+12+5 = 24 and 9+6 = 15 tokens (then 9 pads)


def make_examples() -> list[Example]:
    gen = torch.Generator().manual_seed(0)
    examples = []
    for line, n in enumerate(LENGTHS, start=1):
        ids = torch.randint(1, VOCAB, (n,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]  # a prompt half and an answer half
        examples.append(Example(ids, labels, line))
    return examples


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The recipe's loss: summed next-token CE over labelled positions (logits (B, T, V), labels (B, T))."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def test_it_restarts_positions_at_every_packed_example():
    rows = pack_examples(make_examples(), max_seq_len=24)

    batch = collate(rows, PAD)

    assert [r.lengths for r in rows] == [(7, 12, 5), (9, 6)]
    assert batch["position_ids"].tolist() == [
        [*range(7), *range(12), *range(5)],
        [*range(9), *range(6), *range(9)],  # the padding is a segment of its own
    ]
    assert batch["attention_mask"].sum().item() == sum(LENGTHS)  # still counts real tokens only
    assert "position_ids" not in collate(make_examples()[:2], PAD)  # unpacked batches are unchanged


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_it_computes_each_packed_example_as_if_it_were_alone(attn_implementation):
    model = build_tiny_llama(vocab_size=VOCAB, attn_implementation=attn_implementation).eval()
    examples = make_examples()
    batch = collate(pack_examples(examples, max_seq_len=24), PAD)

    with torch.no_grad():
        packed = model(**model_inputs(batch)).logits  # (2, 24, V)
        naive = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (2, 24, V)
        alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples]  # [(n, V)]

    offsets = [(0, 0), (0, 7), (0, 19), (1, 0), (1, 9)]
    for (row, start), example, expected in zip(offsets, examples, alone, strict=True):
        n = len(example.input_ids)
        torch.testing.assert_close(packed[row, start : start + n], expected, rtol=1e-5, atol=1e-5)
    # The check can fail: with plain concatenation the later examples see the earlier ones.
    assert (naive[0, 7:19] - alone[1]).abs().max() > 1e-2
    # And so the recipe's loss over a packed batch is the sum of the examples' own losses.
    separate = sum(loss_sum(a[None], torch.tensor([e.labels])) for a, e in zip(alone, examples, strict=True))
    torch.testing.assert_close(loss_sum(packed, batch["labels"]), separate, rtol=1e-5, atol=1e-5)


def test_it_trains_on_packed_rows_with_the_loss_and_gradient_of_unpacked_examples(make_config, tmp_path):
    # One step over the whole file, no dropout: the step's token-mean loss and gradient do
    # not depend on how examples are grouped into rows, only on what each token attends to.
    n = sum(1 for line in IDENTITY_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    common = {"dropout": 0.0, "max_steps": 1, "batch_size": n, "max_seq_len": 256}

    first = []
    for packing, checkpointing in ((False, False), (True, False), (True, True)):
        cfg = make_config(
            packing=packing,
            gradient_checkpointing=checkpointing,
            output_dir=str(tmp_path / f"run-{packing}-{checkpointing}"),
            **common,
        )
        code, lines = run_inprocess(cfg)
        assert code == 0
        first.append(by_type(lines, "metrics")[0])
    (rows,) = [
        re.match(rf"packing: {n} examples into (\d+) rows", m["message"])
        for m in by_type(lines, "message")
        if m["message"].startswith("packing:")
    ]
    assert rows and int(rows[1]) < n // 2  # rows really hold several examples

    unpacked = first[0]
    for packed in first[1:]:  # plain, then with gradient checkpointing (recomputed forwards)
        assert packed["loss"] == pytest.approx(unpacked["loss"], rel=1e-5)
        assert packed["grad_norm"] == pytest.approx(unpacked["grad_norm"], rel=1e-4)
