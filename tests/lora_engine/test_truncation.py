"""Truncation keeps the final assistant turn: long conversations lose their oldest turns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lora_engine.data import IGNORE_INDEX, encode_messages, load_examples

from .conftest import by_type, run_inprocess

SYSTEM = {"role": "system", "content": "You are a patient tutor."}
TOPICS = ["rivers", "mountains", "clouds", "forests", "deserts", "oceans", "islands", "valleys"]


def long_chat() -> list[dict[str, str]]:
    messages = [SYSTEM]
    for topic in TOPICS:
        messages.append({"role": "user", "content": f"Tell me one fact about {topic}."})
        messages.append({"role": "assistant", "content": f"Here is a fact about {topic}: they are old."})
    messages[-1] = {"role": "assistant", "content": "The final answer is about valleys."}
    return messages


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def encode_plain(tokenizer, messages) -> list[int]:
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


def learned_text(tokenizer, ids, labels) -> list[str]:
    """Decode each maximal run of labelled positions."""
    runs, current = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def test_it_drops_the_oldest_turns_and_keeps_the_system_message_and_final_answer(tokenizer):
    messages = long_chat()
    full = len(encode_plain(tokenizer, messages))
    max_seq_len = full // 2

    enc = encode_messages(tokenizer, messages, max_seq_len)

    assert enc.truncated and enc.dropped_messages > 0 and enc.cut_tokens == 0
    kept = [SYSTEM, *messages[1 + enc.dropped_messages :]]
    assert kept[1]["role"] == "user"  # the shorter history starts at a user turn
    # The result is the template's own rendering of that shorter conversation, whole.
    assert enc.input_ids == encode_plain(tokenizer, kept) and len(enc.input_ids) <= max_seq_len
    assert learned_text(tokenizer, enc.input_ids, enc.labels)[-1] == "The final answer is about valleys.<|end|>"
    assert "You are a patient tutor." in tokenizer.decode(enc.input_ids)
    assert "rivers" not in tokenizer.decode(enc.input_ids)
    # The longest history that fits: one more exchange would not.
    longer = [SYSTEM, *messages[1 + enc.dropped_messages - 2 :]]
    assert len(encode_plain(tokenizer, longer)) > max_seq_len


def test_it_leaves_a_conversation_that_fits_untouched(tokenizer):
    messages = long_chat()
    ids = encode_plain(tokenizer, messages)

    enc = encode_messages(tokenizer, messages, len(ids))

    assert enc.input_ids == ids and not enc.truncated and enc.dropped_messages == 0


def test_it_cuts_the_front_of_a_prompt_too_long_for_any_history(tokenizer):
    question = " ".join(f"Question part {i} about foxes." for i in range(30))
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "Foxes swim well."}]
    full = encode_plain(tokenizer, messages)

    enc = encode_messages(tokenizer, messages, 40)

    assert len(enc.input_ids) == 40 and enc.cut_tokens > 0 and enc.cut_answer_tokens == 0
    assert learned_text(tokenizer, enc.input_ids, enc.labels) == ["Foxes swim well.<|end|>"]
    # What is kept is the end of the conversation: the question's last words and the
    # whole answer (the newline after the final turn carries no label and goes first).
    assert enc.input_ids == full[:-1][-40:]
    assert "part 29 about foxes." in tokenizer.decode(enc.input_ids)


def test_it_keeps_the_head_of_an_answer_longer_than_the_window(tokenizer):
    answer = " ".join(f"Sentence {i} of a long story." for i in range(40))
    messages = [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": answer}]
    full = encode_plain(tokenizer, messages)

    enc = encode_messages(tokenizer, messages, 48)

    assert len(enc.input_ids) == 48 and enc.cut_answer_tokens > 0
    # The short prompt stays whole (it is under half the window); the answer keeps its start.
    assert enc.input_ids == full[:48]
    (learned,) = learned_text(tokenizer, enc.input_ids, enc.labels)
    assert answer.startswith(learned) and learned.startswith("Sentence 0 of a long story.")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_it_counts_the_examples_cut_in_its_warning(tokenizer, tmp_path):
    short = {"prompt": "Hi", "completion": "Hello."}
    chat = {"messages": long_chat()}
    long_prompt = {"prompt": " ".join(["A long question about foxes."] * 30), "completion": "Yes."}
    long_answer = {"prompt": "Tell me a story.", "completion": " ".join(["The small fox ran to the river."] * 20)}
    path = write_jsonl(tmp_path / "train.jsonl", [short, chat, long_prompt, long_answer])

    ds = load_examples(path, tokenizer, max_seq_len=64)

    assert (ds.num_records, ds.num_truncated, ds.num_tokens_cut, ds.num_answers_cut) == (4, 3, 2, 1)
    assert ds.num_skipped == 0 and len(ds.examples) == 4
    (warning,) = ds.warnings(64, "train_file")
    assert warning.startswith("3 of 4 examples in train_file were longer than max_seq_len=64 tokens")
    assert "2 still did not fit" in warning and "in 1 the final assistant turn alone is too long" in warning
    # Every example still ends in its own final answer (the long answer in its first tokens).
    finals = [learned_text(tokenizer, e.input_ids, e.labels)[-1] for e in ds.examples]
    assert finals[:3] == ["Hello.<|end|>", "The final answer is about valleys.<|end|>", "Yes.<|end|>"]
    assert finals[3].startswith("The small fox ran to the river.")


def test_it_reports_the_cut_examples_in_the_training_run(make_config, tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": long_chat()}] * 4)

    code, lines = run_inprocess(make_config(train_file=str(path), max_seq_len=64, max_steps=1, batch_size=2))

    assert code == 0
    warnings = [m["message"] for m in by_type(lines, "message") if m.get("level") == "warning"]
    assert any(w.startswith("4 of 4 examples in train_file were longer than max_seq_len=64") for w in warnings)
