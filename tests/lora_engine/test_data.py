"""Data pipeline: assistant-only labels for every format, truncation, packing, order, split.

More in test_truncation.py (what is cut), test_packing.py (attention stays inside each
example) and test_chat_template.py (labels from real templates).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_engine.data import (
    IGNORE_INDEX,
    BatchSchedule,
    Example,
    collate,
    encode_conversation,
    epoch_order,
    load_examples,
    pack_examples,
    record_to_messages,
    split_validation,
)
from lora_engine.errors import INVALID_TRAINING_DATA, DataError
from tests.lora_engine.conftest import by_type, run_inprocess

TOOLS = [{"name": "get_weather", "description": "Weather for a city", "parameters": {"city": "string"}}]

RECORDS = {
    "openai_chat": {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "Green, like grass."},
        ]
    },
    "alpaca": {"instruction": "Write a sentence about a fox.", "input": "Make it short.", "output": "The fox ran."},
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "Hello!"},
            {"from": "gpt", "value": "Hello! How can I help?"},
            {"from": "human", "value": "Tell me a fact."},
            {"from": "gpt", "value": "Ice is frozen water."},
        ]
    },
    "chatglm3": {
        "conversations": [
            {"role": "system", "content": "You can call tools.", "tools": TOOLS},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "I will check the weather."},
            {"role": "observation", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "It is 21 degrees in Paris."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You are welcome."},
        ]
    },
    "prompt_completion": {"prompt": "What is ice?", "completion": "Ice is frozen water."},
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def labelled_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each maximal run of labelled positions."""
    spans, current = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_it_labels_only_assistant_content_and_end_token(tokenizer, fmt):
    messages = record_to_messages(RECORDS[fmt], line=1)
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]

    ids, labels, truncated = encode_conversation(tokenizer, messages, max_seq_len=512)

    assert not truncated
    assert labelled_spans(tokenizer, ids, labels) == [c + tokenizer.eos_token for c in assistant]
    # The ids are the tokenizer's own encoding of the rendered template, unchanged.
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_it_keeps_tool_definitions_and_observations_out_of_the_labels(tokenizer):
    messages = record_to_messages(RECORDS["chatglm3"], line=1)
    ids, labels, _ = encode_conversation(tokenizer, messages, max_seq_len=512)
    learned = "".join(labelled_spans(tokenizer, ids, labels))
    prompt_side = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])

    assert "get_weather" in prompt_side and '{"temp": 21}' in prompt_side
    assert "get_weather" not in learned and "temp" not in learned
    assert len([m for m in messages if m["role"] == "assistant"]) == 3


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_it_truncates_long_examples_and_counts_them(tokenizer, tmp_path):
    short = {"prompt": "Hi", "completion": "Hello."}
    long = {"prompt": "Tell me a story.", "completion": " ".join(["The small fox ran to the river."] * 20)}
    path = write_jsonl(tmp_path / "train.jsonl", [short, long, long])

    ds = load_examples(path, tokenizer, max_seq_len=48)

    assert ds.num_records == 3 and ds.num_truncated == 2 and ds.num_skipped == 0
    assert max(len(e.input_ids) for e in ds.examples) == 48
    (warning,) = ds.warnings(48, "train_file")
    assert "2 of 3 examples" in warning and "max_seq_len=48" in warning


def test_it_reports_the_line_number_of_bad_data(tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps(RECORDS["alpaca"]) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
    )

    with pytest.raises(DataError) as err:
        load_examples(path, tokenizer, max_seq_len=64)

    assert err.value.code == INVALID_TRAINING_DATA
    assert err.value.param == "train_file:3" and "line 3" in err.value.message

    path.write_text(json.dumps(RECORDS["alpaca"]) + "\n{not json\n")
    with pytest.raises(DataError) as err:
        load_examples(path, tokenizer, max_seq_len=64)
    assert err.value.param == "train_file:2"


def test_it_packs_examples_into_rows_without_learning_across_examples():
    a = Example([1, 10, 11, 12], [IGNORE_INDEX, IGNORE_INDEX, 11, 12], line=1)
    b = Example([1, 20, 21], [1, IGNORE_INDEX, 21], line=2)  # a labelled first token must not survive packing
    c = Example([1, 30, 31, 32, 33], [IGNORE_INDEX, 30, 31, 32, 33], line=3)

    rows = pack_examples([a, b, c], max_seq_len=8)

    assert [r.input_ids for r in rows] == [[1, 10, 11, 12, 1, 20, 21], [1, 30, 31, 32, 33]]
    assert rows[0].labels == [IGNORE_INDEX, IGNORE_INDEX, 11, 12, IGNORE_INDEX, IGNORE_INDEX, 21]
    assert [r.line for r in rows] == [1, 3]
    assert [r.lengths for r in rows] == [(4, 3), (5,)]  # example boundaries, for positions and the mask
    assert all(len(r.input_ids) <= 8 for r in rows)


def test_it_shuffles_deterministically_from_seed_and_epoch():
    assert epoch_order(50, seed=1, epoch=0) == epoch_order(50, seed=1, epoch=0)
    assert epoch_order(50, seed=1, epoch=0) != epoch_order(50, seed=1, epoch=1)
    assert epoch_order(50, seed=1, epoch=0) != epoch_order(50, seed=2, epoch=0)
    assert sorted(epoch_order(50, seed=1, epoch=3)) == list(range(50))


def test_it_schedules_every_example_once_per_epoch_with_accumulation():
    sched = BatchSchedule(num_examples=10, batch_size=3, grad_accum_steps=2, seed=0)

    assert sched.micro_batches_per_epoch == 4 and sched.steps_per_epoch == 2
    epoch0 = [i for step in range(2) for mb in sched.micro_batches(step) for i in mb]
    assert sorted(epoch0) == list(range(10))
    assert [len(mb) for mb in sched.micro_batches(1)] == [3, 1]
    assert sched.position(5) == (2, 1)
    # Steps are a pure function of the step number: what a resumed run relies on.
    assert sched.micro_batches(5) == BatchSchedule(10, 3, 2, 0).micro_batches(5)


def test_it_splits_validation_deterministically():
    examples = [Example([1, i], [IGNORE_INDEX, i], line=i) for i in range(20)]

    train, val = split_validation(examples, 0.2, seed=5)
    _, val2 = split_validation(examples, 0.2, seed=5)
    _, val3 = split_validation(examples, 0.2, seed=6)

    assert len(val) == 4 and len(train) == 16
    assert {e.line for e in train} | {e.line for e in val} == set(range(20))
    assert [e.line for e in val] == [e.line for e in val2]
    assert [e.line for e in val] != [e.line for e in val3]
    assert split_validation(examples, 0.0, seed=5) == (examples, [])


def test_it_pads_batches_with_masked_labels():
    batch = collate([Example([5, 6, 7], [IGNORE_INDEX, 6, 7], 1), Example([5, 8], [IGNORE_INDEX, 8], 2)], 0)

    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 8, IGNORE_INDEX]]
    assert batch["input_ids"].dtype == torch.long


def test_it_reads_lines_like_the_upload_validator(tokenizer, tmp_path):
    from tunings.datasets import validate_jsonl

    records = [{"prompt": f"first\u2028second {i}", "completion": f"third\u2029fourth\x85fifth {i}"} for i in range(10)]
    body = b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode() + b"\r\n"
    path = tmp_path / "train.jsonl"
    path.write_bytes(body)

    report = validate_jsonl(path, max_line_bytes=1024, min_examples=10)
    ds = load_examples(path, tokenizer, max_seq_len=256)

    assert report.ok, report.errors
    assert report.example_count == ds.num_records == len(ds.examples) == 10
    for example, record in zip(ds.examples, records, strict=True):
        messages = record_to_messages(record, line=example.line)
        ids, _, _ = encode_conversation(tokenizer, messages, max_seq_len=256)
        assert example.input_ids == ids
    assert [e.line for e in ds.examples] == list(range(1, 11))


def test_it_trains_on_a_file_with_a_bom_crlf_and_raw_line_separators(tmp_path, make_config):
    """The file the upload validator accepts (BOM, CRLF, U+2028/U+2029/U+0085 inside strings) trains."""
    records = [{"prompt": f"first\u2028second {i}", "completion": f"third\u2029fourth\x85fifth {i}"} for i in range(8)]
    path = tmp_path / "train.jsonl"
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())

    code, lines = run_inprocess(make_config(train_file=str(path), max_steps=2))

    assert code == 0, lines[-2:]
    done = by_type(lines, "done")[0]
    assert done["steps"] == 2 and done["trained_tokens"] > 0
    assert len(by_type(lines, "metrics")) == 2


def test_it_refuses_a_deeply_nested_line_with_its_line_number(tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps(RECORDS["prompt_completion"])
    path.write_text(good + "\n" + '{"prompt": "p", "completion": "c", "tools": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    with pytest.raises(DataError) as err:
        load_examples(path, tokenizer, max_seq_len=64)
    assert err.value.param == "train_file:2" and "nest" in err.value.message
