"""The structured task's bundled data (issue 11): reproducible, and the split keeps the task's rule.

``lora_engine/assets/generate_meeting_commands.py`` writes the training and held-out commands and
the bilingual model's pre-training corpus; the opt-in platform test
(``tests/integration/test_structured_task.py``) trains and grades on them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType

import pytest

from lora_engine.tiny_model import ASSETS_DIR

FILES = ("meeting_commands_train.jsonl", "meeting_commands_heldout.jsonl", "meeting_corpus.txt")


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_meeting_commands", ASSETS_DIR / "generate_meeting_commands.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ASSETS_DIR / name).read_text(encoding="utf-8").splitlines()]


def test_the_generator_writes_the_committed_files_byte_for_byte(tmp_path, monkeypatch):
    gen = generator()
    monkeypatch.setattr(gen, "HERE", tmp_path)
    gen.main()
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (ASSETS_DIR / name).read_bytes(), name


def test_the_committed_split_keeps_the_rule_and_covers_every_intent_in_both_languages():
    train, heldout = rows(FILES[0]), rows(FILES[1])
    assert len(train) <= 500 and len(heldout) == 160
    generator().check_rule(train, heldout)  # no held-out template or slot value in training

    def cover(split: list[dict]) -> set[tuple[str, str]]:
        return {
            (
                json.loads(r["messages"][-1]["content"])["intent"],
                "zh" if re.search(r"[\u4e00-\u9fff]", r["messages"][0]["content"]) else "en",
            )
            for r in split
        }

    assert cover(train) == cover(heldout) and len(cover(train)) == 16  # 8 intents x 2 languages
    corpus = (ASSETS_DIR / FILES[2]).read_text(encoding="utf-8")
    assert '"intent"' not in corpus and not any(r["messages"][0]["content"] in corpus for r in train + heldout)


def test_the_rule_check_refuses_a_held_out_value_inside_a_training_row():
    train, heldout = rows(FILES[0]), rows(FILES[1])
    value = next(v for r in heldout for v in json.loads(r["messages"][-1]["content"])["slots"].values())
    leaked = {
        "messages": [
            {"role": "user", "content": f"Note {value}."},
            {"role": "assistant", "content": '{"intent": "x", "slots": {}}'},
        ]
    }
    with pytest.raises(ValueError, match="held-out value occurs inside a training row"):
        generator().check_rule([*train, leaked], heldout)
