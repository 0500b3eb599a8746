"""Self-cognition: a LoRA fine-tune teaches the tiny model who it is, and nothing else.

The training file is ``identity_mixed.jsonl``: identity questions answered with the name, mixed
(as ms-swift's self-cognition recipe does) with general questions answered with the base
model's own greedy answers. The probes in ``identity_mixed_eval.jsonl`` were never trained on:

* held-out identity questions, none sharing a word trigram with any training question (a new
  paraphrase, not a training template with one word swapped): the name in ≥ 90 % of the answers;
* unrelated held-out questions (the negative control): the name in ≤ 10 % (the base: 0 %), and
  the tuned model still agrees with the base model's own answers token by token. A model that
  learned one sentence instead of an identity answers them all with the name and fails here.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from lora_engine.adapter_io import load_adapter
from lora_engine.tiny_model import ASSETS_DIR

from .conftest import by_type, run_inprocess

MIXED_FILE = ASSETS_DIR / "identity_mixed.jsonl"
PROBES_FILE = ASSETS_DIR / "identity_mixed_eval.jsonl"
NAME = "Tessera"
MAX_NEW_TOKENS = 24

# The recipe "auto" resolves for these 96 examples on this 0.56M-parameter model
# (tests/tunings/test_auto_hyperparameters.py) with the API's default LoRA shape.
AUTO_RECIPE = {
    "num_epochs": 17,
    "batch_size": 16,
    "learning_rate": 23.2 * 2e-4,
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def training_questions() -> list[str]:
    return [json.loads(line)["messages"][0]["content"] for line in MIXED_FILE.read_text().splitlines()]


def probes(kind: str) -> list[str]:
    rows = [json.loads(line) for line in PROBES_FILE.read_text().splitlines()]
    return [row["question"] for row in rows if row["kind"] == kind]


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def prompt_ids(tokenizer, question: str) -> torch.Tensor:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def answer(model, tokenizer, question: str) -> str:
    enc = prompt_ids(tokenizer, question)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def name_rate(model, tokenizer, questions: list[str]) -> tuple[float, list[str]]:
    answers = [answer(model, tokenizer, q) for q in questions]
    return sum(NAME in a for a in answers) / len(answers), answers


@dataclass(frozen=True)
class Agreement:
    """How close a model stays to the base model's own greedy answers (teacher-forced)."""

    token_agreement: float
    """Share of answer tokens where the model's top token is the base model's token."""
    loss: float
    """Mean cross-entropy of the base answers' tokens (the base model's own: its floor)."""


def agreement(model, base, tokenizer, questions: list[str]) -> Agreement:
    """Teacher-force each base answer (up to and including its end token) through ``model``."""
    hits, total, nll = 0, 0, 0.0
    for question in questions:
        enc = prompt_ids(tokenizer, question)
        prompt_len = enc["input_ids"].shape[1]
        with torch.no_grad():
            full = base.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)  # (1, P + A)
            logits = model(input_ids=full).logits[0, prompt_len - 1 : -1]  # (A, V): predicts tokens P..P+A-1
        target = full[0, prompt_len:]  # (A,)
        hits += int((logits.argmax(-1) == target).sum())
        total += target.numel()
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
    return Agreement(token_agreement=hits / total, loss=nll / total)


def load_tuned(model_dir, adapter_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    load_adapter(model, adapter_dir)
    return model.eval()


def test_it_holds_out_identity_questions_that_share_no_template_with_training():
    trained = training_questions()
    held_out = probes("identity") + probes("general")
    assert not set(held_out) & set(trained)
    seen = set().union(*(trigrams(q) for q in trained))
    for question in probes("identity"):
        assert not trigrams(question) & seen, question
    assert len(probes("identity")) >= 10 and len(probes("general")) >= 10


@pytest.mark.slow
def test_it_learns_its_identity_and_keeps_answering_other_questions_as_before(make_config, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    identity, general = probes("identity"), probes("general")
    base_identity, _ = name_rate(base, tokenizer, identity)
    base_general, _ = name_rate(base, tokenizer, general)

    cfg = make_config(train_file=str(MIXED_FILE), seed=0, max_steps=None, **AUTO_RECIPE)
    started = time.monotonic()
    code, lines = run_inprocess(cfg)
    seconds = time.monotonic() - started
    assert code == 0, lines[-1]
    metrics = by_type(lines, "metrics")
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 2

    tuned = load_tuned(tiny_model_dir, lines[-1]["adapter_dir"])
    tuned_identity, identity_answers = name_rate(tuned, tokenizer, identity)
    tuned_general, general_answers = name_rate(tuned, tokenizer, general)
    kept = agreement(tuned, base, tokenizer, general)
    floor = agreement(base, base, tokenizer, general)

    result = {
        "identity": {"base": base_identity, "tuned": tuned_identity, "answers": identity_answers},
        "general": {"base": base_general, "tuned": tuned_general, "answers": general_answers},
        "general_agreement": {"base": floor.__dict__, "tuned": kept.__dict__},
        "train_seconds": round(seconds, 1),
        "steps": lines[-1]["steps"],
    }
    (tmp_path / "identity_result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    assert base_identity == 0 and base_general == 0
    assert tuned_identity >= 0.9, identity_answers
    assert tuned_general <= 0.1, general_answers  # the negative control
    assert floor.token_agreement >= 0.99  # greedy: the base model's top token is its own answer
    assert kept.token_agreement >= 0.8, kept
