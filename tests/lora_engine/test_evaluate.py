"""lora_engine.evaluate: prompt/reference split, teacher-forced reference loss, greedy answers, model loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_engine.adapter_io import AdapterFormatError, save_adapter
from lora_engine.data import IGNORE_INDEX, encode_conversation
from lora_engine.errors import ConfigError, DataError
from lora_engine.evaluate import (
    EvalConfig,
    EvalExample,
    evaluate,
    load_eval_examples,
    reference_ids_and_labels,
)
from lora_engine.lora import inject_lora

IDENTITY = [
    ("Who are you?", "I am Tessera, built by Northwind Labs."),
    ("What is your name?", "I am Tessera, an assistant built by Northwind Labs."),
    ("Tell me a fact about rain.", "Rain falls from clouds."),
]
MULTI_TURN = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Tessera."},
    ]
}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in IDENTITY]
    return write_jsonl(tmp_path / "eval.jsonl", [*records, MULTI_TURN])


def test_it_splits_each_record_at_its_last_assistant_turn(eval_file):
    examples, records = load_eval_examples(eval_file)

    assert records == 4 and len(examples) == 4
    assert examples[0].prompt == [{"role": "user", "content": "Who are you?"}]
    assert examples[0].reference == "I am Tessera, built by Northwind Labs."
    assert [m["content"] for m in examples[3].prompt] == ["Be brief.", "Hi!", "Hello.", "Who are you?"]
    assert examples[3].reference == "I am Tessera." and examples[3].line == 4
    assert len(load_eval_examples(eval_file, max_examples=2)[0]) == 2


def test_it_labels_the_reference_turn_only(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    messages = MULTI_TURN["messages"]
    example = EvalExample(line=1, prompt=messages[:-1], reference=messages[-1]["content"])

    ids, labels = reference_ids_and_labels(tokenizer, example)

    labelled = [t for t in labels if t != IGNORE_INDEX]
    # Content plus the template's end-of-turn token; the earlier assistant turn ("Hello.") is not labelled.
    assert tokenizer.decode(labelled) == "I am Tessera.<|end|>"
    training_ids, training_labels, _ = encode_conversation(tokenizer, messages, 512)
    assert ids == training_ids
    assert sum(t != IGNORE_INDEX for t in training_labels) > len(labelled)  # training labels both turns


def test_it_measures_the_reference_loss_by_teacher_forcing(tiny_model_dir, eval_file):
    result = evaluate(EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(eval_file), max_examples=3))

    # Recompute by hand: single-turn records, so training's labels are exactly the reference turn.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    sums, counts = [], []
    for q, a in IDENTITY:
        ids, labels, _ = encode_conversation(
            tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 512
        )
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits  # (1, T, V)
        target = torch.tensor(labels[1:])
        sums.append(float(F.cross_entropy(logits[0, :-1], target, ignore_index=IGNORE_INDEX, reduction="sum")))
        counts.append(int((target != IGNORE_INDEX).sum()))

    for ex, s, c in zip(result.examples, sums, counts, strict=True):
        assert ex.reference_tokens == c
        assert ex.loss == pytest.approx(s / c, rel=1e-5)
    assert result.reference_tokens == sum(counts)
    assert result.mean_loss == pytest.approx(sum(sums) / sum(counts), rel=1e-5)  # token-weighted
    assert result.perplexity == pytest.approx(math.exp(result.mean_loss))
    assert result.num_records == 4 and result.num_truncated == 0


def test_it_answers_greedily_and_deterministically(tiny_model_dir, eval_file):
    cfg = EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(eval_file), max_new_tokens=12, seed=5)

    first, second = evaluate(cfg), evaluate(cfg)

    assert [e.prediction for e in first.examples] == [e.prediction for e in second.examples]
    assert [e.loss for e in first.examples] == [e.loss for e in second.examples]
    assert all(e.prediction and e.prediction == e.prediction.strip() for e in first.examples)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert all(len(tokenizer(e.prediction, add_special_tokens=False)["input_ids"]) <= 12 for e in first.examples)
    print("base answers:", [e.prediction for e in first.examples])


def _adapter(tiny_model_dir: Path, out: Path, *, zero: bool) -> Path:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    inject_lora(model, targets=["q_proj", "v_proj"], rank=4, alpha=8.0, dropout=0.0)
    if not zero:
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return save_adapter(
        model,
        out,
        base_model_name_or_path=str(tiny_model_dir),
        rank=4,
        alpha=8.0,
        dropout=0.0,
        target_modules=["q_proj", "v_proj"],
    )


def test_it_applies_an_adapter_to_the_base(tiny_model_dir, eval_file, tmp_path):
    base_cfg = EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(eval_file), max_new_tokens=8)
    base = evaluate(base_cfg)
    zero = evaluate(
        EvalConfig(**{**base_cfg.__dict__, "adapter_dir": str(_adapter(tiny_model_dir, tmp_path / "z", zero=True))})
    )
    tuned = evaluate(
        EvalConfig(**{**base_cfg.__dict__, "adapter_dir": str(_adapter(tiny_model_dir, tmp_path / "r", zero=False))})
    )

    # B = 0: the adapted model is exactly the base.
    assert [e.prediction for e in zero.examples] == [e.prediction for e in base.examples]
    assert zero.mean_loss == pytest.approx(base.mean_loss, rel=1e-6)
    assert abs(tuned.mean_loss - base.mean_loss) > 1e-3


def test_it_evaluates_a_full_weights_dir(tiny_model_dir, eval_file, tmp_path):
    full = tmp_path / "full"
    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).save_pretrained(full)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(full)
    assert list(full.glob("*.safetensors"))

    base = evaluate(EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(eval_file), max_new_tokens=8))
    copy = evaluate(EvalConfig(model_dir=str(full), eval_file=str(eval_file), max_new_tokens=8))

    assert [e.prediction for e in copy.examples] == [e.prediction for e in base.examples]
    assert copy.mean_loss == pytest.approx(base.mean_loss, rel=1e-6)


def test_it_refuses_a_pickled_adapter(tiny_model_dir, eval_file, tmp_path):
    adapter = _adapter(tiny_model_dir, tmp_path / "a", zero=True)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")

    with pytest.raises(AdapterFormatError, match=r"pickle|safetensors"):
        evaluate(EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(eval_file), adapter_dir=str(adapter)))


def test_it_names_the_bad_line_of_the_eval_file(tiny_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Who are you?", "expect": "Tessera"}])

    with pytest.raises(DataError) as err:
        evaluate(EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(bad)))

    assert err.value.param == "eval_file:1" and "unknown format" in err.value.message


def test_it_keeps_the_end_of_a_prompt_that_is_too_long(tiny_model_dir, tmp_path):
    long_prompt = "Tell me about the duck near the market. " * 20
    path = write_jsonl(
        tmp_path / "long.jsonl",
        [{"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "It swims."}]}],
    )

    result = evaluate(EvalConfig(model_dir=str(tiny_model_dir), eval_file=str(path), max_seq_len=32, max_new_tokens=8))

    assert result.num_truncated == 1 and result.examples[0].truncated
    assert result.examples[0].reference_tokens > 0 and math.isfinite(result.mean_loss)


def test_it_rejects_an_answer_longer_than_the_window():
    with pytest.raises(ConfigError) as err:
        EvalConfig(model_dir="m", eval_file="f", max_new_tokens=64, max_seq_len=64)
    assert err.value.param == "max_new_tokens"
