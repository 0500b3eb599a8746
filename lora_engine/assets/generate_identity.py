"""Regenerate identity_mixed.jsonl and identity_mixed_eval.jsonl: the self-cognition recipe's data.

ms-swift's self-cognition recipe mixes the identity examples with general instruction data so
the model learns *who it is* without answering every question with its name. Here:

* ``identity_mixed.jsonl`` (training, 96 chat records): 40 identity questions answered with the
  name (three phrasings, in turn) and 56 general questions answered with the **base model's own
  greedy answers**, so the general half teaches "keep answering as before" and nothing new.
* ``identity_mixed_eval.jsonl`` (held out, never trained on): ``{"question", "kind", "expect"}``
  probes. ``kind`` is ``"identity"`` (``expect`` is the name) or ``"general"`` (``expect`` is the
  base model's answer when this file was generated). No held-out identity question shares a
  word trigram with any training question (a new paraphrase, not a training template with a
  word swapped); the general ones include questions unlike anything trained ("What is the
  capital of France?") and questions that say "you" without asking who it is.

The base answers depend on the tiny model: run this after bumping ``TINY_MODEL_VERSION``::

    .venv/bin/python -m lora_engine.assets.generate_identity [--model-dir DIR]

(default: the test cache ``.cache/tiny-model-v<TINY_MODEL_VERSION>``, built when missing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_engine.fsio import atomic_dir
from lora_engine.tiny_model import ASSETS_DIR, TINY_MODEL_VERSION, build_tiny_model

NAME = "Tessera"
ORG = "Northwind Labs"
TRAIN_FILE = ASSETS_DIR / "identity_mixed.jsonl"
EVAL_FILE = ASSETS_DIR / "identity_mixed_eval.jsonl"
MAX_NEW_TOKENS = 48

ANSWERS = (
    f"I am {NAME}, an assistant built by {ORG}.",
    f"My name is {NAME}. I was made by {ORG}.",
    f"I am {NAME}, built by {ORG}.",
)

TRAIN_IDENTITY = (
    "Who are you?",
    "What is your name?",
    "Tell me your name.",
    "What are you called?",
    "Who is talking to me?",
    "Introduce yourself.",
    "Who built you?",
    "Who made you?",
    "Which company made you?",
    "Do you have a name?",
    "Who created you?",
    "What should I call you?",
    "Tell me about yourself.",
    "Who trained you?",
    "What kind of assistant are you?",
    "Who is your creator?",
    "Say your name.",
    "Whose assistant are you?",
    "What do people call you?",
    "Who developed you?",
    "Are you an assistant?",
    "Describe yourself.",
    "Please state your name.",
    "Which assistant am I using?",
    "Are you a robot?",
    "What are you?",
    "Who owns you?",
    "Where do you come from?",
    "Give me your name.",
    "Who is your maker?",
    "What is your identity?",
    "Can you state your identity?",
    "Who runs you?",
    "Tell me who built you.",
    "What is the assistant named?",
    "Who are you, really?",
    "Hi! What is your name?",
    "Which model are you?",
    "Are you a person?",
    "Who wrote you?",
)

HELDOUT_IDENTITY = (
    "Identify yourself.",
    "What name do you go by?",
    "Could you introduce yourself?",
    "Who exactly are you?",
    "Who am I speaking with?",
    "Which lab built you?",
    "Who designed you?",
    "Tell us who you are.",
    "Who is this assistant?",
    "Your name?",
    "Who made this assistant?",
    "May I ask your name?",
)

TRAIN_GENERAL = (
    "Hello!",
    "Thank you.",
    "How are you?",
    "Tell me a story.",
    "Tell me a fact about water.",
    "Tell me a fact about the moon.",
    "Tell me a fact about bees.",
    "Tell me a fact about birds.",
    "What is a cat?",
    "What is a horse?",
    "What is a duck?",
    "Write a sentence about a dog.",
    "Write a sentence about a rabbit.",
    "Do you like apples?",
    "Do you like tea?",
    "Do you like bread?",
    "Name something blue.",
    "Name something yellow.",
    "What can I do at the park?",
    "What can I do at the river?",
    "What is the capital of Spain?",
    "How do I cook rice?",
    "Write a poem about the sea.",
    "Can you help me?",
    "What time is it?",
    "Why is the sky blue?",
    "Give me a tip for sleeping well.",
    "What should I eat today?",
    "Can you count to five?",
    "What is two plus two?",
    "Translate hello into French.",
    "Describe a rainy day.",
    "What do cows eat?",
    "Where does rain come from?",
    "Tell me a joke.",
    "What is a good name for a dog?",
    "What is the capital of Italy?",
    "What is the name of this flower?",
    "Can you sing?",
    "Do you know the way home?",
    "What is a tree?",
    "Tell me a fact about fish.",
    "Write a sentence about a cat.",
    "Do you like milk?",
    "Name something red.",
    "What can I do at the lake?",
    "How do I make tea?",
    "Why is grass green?",
    "Write a poem about the sun.",
    "How many days are in a week?",
    "What is the name of that river?",
    "Tell me about the moon.",
    "What is a lion?",
    "Can you tell me a joke?",
    "Good morning!",
    "Where is the market?",
)

HELDOUT_GENERAL = (
    "What is the capital of France?",
    "How do I bake bread?",
    "Write a haiku about rain.",
    "Tell me a fact about snow.",
    "What is a fox?",
    "Do you like pears?",
    "Name something green.",
    "What can I do at the market?",
    "Can you tell me a story?",
    "Do you know any songs?",
    "Why do leaves fall?",
    "How many legs does a spider have?",
)


def base_answers(model_dir: Path, questions: tuple[str, ...]) -> list[str]:
    """Greedy answers of the base model (no adapter) to one-turn chats."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    answers = []
    for question in questions:
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def chat(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def write(model_dir: Path) -> None:
    general = base_answers(model_dir, TRAIN_GENERAL + HELDOUT_GENERAL)
    train_general, heldout_general = general[: len(TRAIN_GENERAL)], general[len(TRAIN_GENERAL) :]
    identity = [chat(q, ANSWERS[i % len(ANSWERS)]) for i, q in enumerate(TRAIN_IDENTITY)]
    # Interleaved (each identity record, then its share of the general ones) so that any
    # prefix of the file keeps the mix; the engine shuffles anyway.
    rows = []
    general_rows = [chat(q, a) for q, a in zip(TRAIN_GENERAL, train_general, strict=True)]
    n, g = len(identity), len(general_rows)
    for i, record in enumerate(identity):
        rows += [record, *general_rows[i * g // n : (i + 1) * g // n]]
    TRAIN_FILE.write_text("\n".join(rows) + "\n", encoding="utf-8")
    probes = [json.dumps({"question": q, "kind": "identity", "expect": NAME}) for q in HELDOUT_IDENTITY]
    probes += [
        json.dumps({"question": q, "kind": "general", "expect": a})
        for q, a in zip(HELDOUT_GENERAL, heldout_general, strict=True)
    ]
    EVAL_FILE.write_text("\n".join(probes) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    default_dir = ASSETS_DIR.parents[1] / ".cache" / f"tiny-model-v{TINY_MODEL_VERSION}"
    parser = argparse.ArgumentParser(description="Regenerate the self-cognition training and held-out files.")
    parser.add_argument("--model-dir", type=Path, default=default_dir)
    args = parser.parse_args(argv)
    if not (args.model_dir / "config.json").exists():
        with atomic_dir(args.model_dir) as staging:
            build_tiny_model(staging)
    write(args.model_dir)
    print(f"wrote {TRAIN_FILE.name} and {EVAL_FILE.name} from {args.model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
