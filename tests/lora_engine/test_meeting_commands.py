"""The structured task's bundled data (issue 11): reproducible, and the split keeps the task's rule.

``lora_engine/assets/generate_meeting_commands.py`` writes the training and held-out commands and
the bilingual model's pre-training corpus; the opt-in platform test
(``tests/integration/test_structured_task.py``) trains and grades on them.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from types import ModuleType

import pytest

from lora_engine import tiny_model
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


def test_the_bilingual_models_extraction_rows_name_values_that_appear_earlier_in_the_row():
    """Pre-training text of ``tiny-bilingual`` v4 (``tiny_model._extract_row``): a corpus window with
    a person, room and/or time spliced in, then "key<sep>value" lines naming them. The value must
    be in the text above its line (found by what it looks like), and no row is a command or JSON."""
    texts, corpus = tiny_model.bilingual_texts()
    shape = tiny_model.BILINGUAL_MODEL_SHAPE
    tokenizer = tiny_model._train_tokenizer(
        texts, shape["vocab_size"], shape["max_position_embeddings"], tiny_model.COPY_FRIENDLY_SPLITS
    )
    corpus_ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    keys = "|".join(re.escape(k) for names in tiny_model._ENTITY_KEYS.values() for k in names)
    record = re.compile(rf"^({keys})(: | = |：| is )(\S+)$")  # values hold no space  # noqa: RUF001
    rng = random.Random(0)
    kinds_seen: set[str] = set()
    for _ in range(200):
        start = rng.randrange(len(corpus_ids) - 128)
        row = tiny_model._extract_row(tokenizer, corpus_ids[start : start + 128], 128, rng)
        assert len(row) <= 128
        lines = tokenizer.decode(row).split("\n")
        named = []
        while lines and len(named) < 3 and (m := record.match(lines[-1])):
            named.append((m.group(1), m.group(3)))
            lines.pop()
        assert 1 <= len(named) <= 3, tokenizer.decode(row)
        text = "\n".join(lines)
        for key, value in named:
            assert value in text, (key, value, text)
            kinds_seen |= {kind for kind, names in tiny_model._ENTITY_KEYS.items() if key in names}
        assert "{" not in text and '"intent"' not in text
    assert kinds_seen == set(tiny_model._ENTITY_KINDS)
