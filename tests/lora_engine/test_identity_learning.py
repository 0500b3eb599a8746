"""Identity learning: a LoRA fine-tune teaches the tiny model who it is, on unseen questions.

The base model never says the name (it never saw it); after 60 LoRA steps on a few dozen
"Who are you?"-style examples, greedy answers to *held-out paraphrases* contain it.
"""

from __future__ import annotations

import json

import pytest
import torch

from lora_engine.adapter_io import load_adapter
from lora_engine.tiny_model import ASSETS_DIR

from .conftest import IDENTITY_FILE, by_type, run_inprocess

NAME = "Tessera"


def name_rate(model, tokenizer, questions: list[str]) -> tuple[float, list[str]]:
    answers = []
    for q in questions:
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False)
        answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return sum(NAME in a for a in answers) / len(answers), answers


@pytest.mark.slow
def test_it_learns_its_identity_and_answers_held_out_questions(make_config, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    held_out = [json.loads(line)["question"] for line in (ASSETS_DIR / "identity_eval.jsonl").read_text().splitlines()]
    trained = {json.loads(line)["messages"][0]["content"] for line in IDENTITY_FILE.read_text().splitlines()}
    assert len(held_out) == 20 and not set(held_out) & trained

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    before, _ = name_rate(base, tokenizer, held_out)

    cfg = make_config(
        target_modules=["all-linear"],
        rank=8,
        alpha=16.0,
        dropout=0.0,
        learning_rate=1e-2,
        warmup_ratio=0.1,
        batch_size=8,
        max_steps=60,
        seed=0,
    )
    code, lines = run_inprocess(cfg)
    assert code == 0, lines[-1]
    metrics = by_type(lines, "metrics")
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 2

    tuned = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    load_adapter(tuned, lines[-1]["adapter_dir"])
    after, answers = name_rate(tuned.eval(), tokenizer, held_out)

    (tmp_path / "identity_result.json").write_text(json.dumps({"before": before, "after": after, "answers": answers}))
    print(f"identity: base {before:.0%} -> tuned {after:.0%}; e.g. {answers[:3]}")
    assert before <= 0.05
    assert after >= 0.9, answers
