"""The tiny base model: an ordinary HF Llama dir with a chat template, that writes words."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lora_engine.tiny_model import ASSETS_DIR, build_tiny_model

from .conftest import engine_env


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval(), AutoTokenizer.from_pretrained(
        str(tiny_model_dir)
    )


def test_it_is_a_standard_hf_llama_directory(tiny_model_dir, loaded):
    model, tokenizer = loaded
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_model_dir / name).is_file(), name
    assert (tiny_model_dir / "model.safetensors").is_file()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["max_position_embeddings"] == 512
    assert 1024 <= config["vocab_size"] <= 2048 and len(tokenizer) <= config["vocab_size"]
    # vLLM's LoRA support needs the usual projection names.
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    tok_cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in tok_cfg["chat_template"]
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|end|>")


def test_it_renders_every_role_and_the_generation_prompt(loaded):
    _, tokenizer = loaded
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": '{"temp": 20}'},
    ]

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert text == (
        "<|begin|><|system|>\nBe brief.<|end|>\n<|user|>\nWeather?<|end|>\n"
        '<|assistant|>\nLet me check.<|end|>\n<|tool|>\n{"temp": 20}<|end|>\n<|assistant|>\n'
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for special in ("<|begin|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"):
        assert tokenizer.convert_tokens_to_ids(special) in ids
    with pytest.raises(Exception, match="Unknown role"):
        tokenizer.apply_chat_template([{"role": "wizard", "content": "hi"}], tokenize=False)


def test_it_writes_english_words_and_ends_its_turn(loaded):
    model, tokenizer = loaded
    corpus_words = set(re.findall(r"[a-z]+", (ASSETS_DIR / "corpus.txt").read_text().lower()))

    enc = tokenizer("The small dog", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    words = re.findall(r"[a-z]+", tokenizer.decode(out[0, enc["input_ids"].shape[1] :]).lower())
    assert len(words) >= 10
    assert sum(w in corpus_words for w in words) / len(words) >= 0.9

    question = [{"role": "user", "content": "What is a fox?"}]
    chat = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reply = model.generate(**chat, max_new_tokens=40, do_sample=False)[0, chat["input_ids"].shape[1] :]
    assert tokenizer.eos_token_id in reply.tolist()  # it stops by itself
    assert len(re.findall(r"[a-z]+", tokenizer.decode(reply, skip_special_tokens=True).lower())) >= 3


def test_it_builds_deterministically_from_the_seed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lora_engine.tiny_model", str(tmp_path / "cli"), "--steps", "3"],
        capture_output=True,
        text=True,
        env=engine_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["type"] == "message"
    build_tiny_model(tmp_path / "fn", seed=0, steps=3)
    build_tiny_model(tmp_path / "other", seed=1, steps=3)

    a, b, c = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("cli", "fn", "other"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "cli" / "tokenizer.json").read_text() == (tmp_path / "fn" / "tokenizer.json").read_text()
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path / "fn", seed=0, steps=1)
