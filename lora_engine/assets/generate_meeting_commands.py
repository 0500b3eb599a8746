"""Regenerate meeting_commands_train.jsonl and meeting_commands_heldout.jsonl (seed 2024).

A meeting voice assistant's commands, in English and Chinese, each answered with one JSON
object ``{"intent": ..., "slots": {...}}``: the structured task a fine-tuned model must learn
(``tests/integration/test_structured_task.py``).

- 8 intents; slots ``time`` ("HH:MM", 24 h), ``room`` (a room code such as "B204") and
  ``name`` (an English first name in English commands, a Chinese full name in Chinese ones).
  Slot values are copied verbatim from the command, so the answer never needs a conversion
  a 2-layer model cannot learn (such as "三点半" → "15:30").
- The held-out split shares neither templates nor slot values with the training split:
  every intent has its own training templates and its own held-out templates (per language),
  and times, rooms and names come from disjoint pools. Chinese held-out names are new
  combinations of surnames and given names (the characters themselves appear in training;
  the names do not).
- The answer is ``json.dumps(..., ensure_ascii=False)`` with keys in a fixed order, so the
  text is canonical; graders compare the parsed objects anyway.

Run ``python lora_engine/assets/generate_meeting_commands.py``; it writes beside itself and
is deterministic (one ``random.Random(SEED)``).
"""

# ruff: noqa: RUF001 - the Chinese commands use Chinese punctuation on purpose

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 2024
TRAIN_PER_INTENT_LANG = 30  # 8 intents x 2 languages x 30 = 480 training examples (the task allows <= 500)
HELDOUT_PER_INTENT_LANG = 10  # 160 held-out examples

# Per intent: the slots it takes, then templates per language as (train, held-out). A
# template names its slots as {time}, {room}, {name}.
INTENTS: dict[str, dict] = {
    "start_recording": {
        "slots": (),
        "en": (
            [
                "Start recording.",
                "Please start recording the meeting.",
                "Start recording now.",
                "Can you start recording?",
            ],
            ["Could you start the recording for us?", "Go ahead and start recording this call."],
        ),
        "zh": (
            ["开始录音。", "请开始录音。", "现在开始录音。", "帮我开始录音。"],
            ["麻烦开始录音吧。", "会议现在开始录音。"],
        ),
    },
    "stop_recording": {
        "slots": (),
        "en": (
            [
                "Stop recording.",
                "Please stop recording the meeting.",
                "Stop recording now.",
                "Can you stop recording?",
            ],
            ["Could you stop the recording for us?", "Go ahead and stop recording this call."],
        ),
        "zh": (
            ["停止录音。", "请停止录音。", "现在停止录音。", "帮我停止录音。"],
            ["麻烦停止录音吧。", "会议现在停止录音。"],
        ),
    },
    "schedule_meeting": {
        "slots": ("time", "room"),
        "en": (
            [
                "Schedule a meeting at {time} in room {room}.",
                "Book a meeting in room {room} at {time}.",
                "Please schedule a meeting for {time} in room {room}.",
                "Set up a meeting at {time}, room {room}.",
            ],
            [
                "I need a meeting scheduled in room {room} for {time}.",
                "Can you schedule us a meeting at {time} in room {room}?",
            ],
        ),
        "zh": (
            [
                "在{room}会议室安排{time}的会议。",
                "安排一个{time}的会议，地点{room}会议室。",
                "请预约{time}在{room}会议室开会。",
                "{time}在{room}会议室安排会议。",
            ],
            ["帮我安排会议，时间{time}，地点{room}会议室。", "请在{time}给我们安排一个会议，在{room}会议室。"],
        ),
    },
    "cancel_meeting": {
        "slots": ("time",),
        "en": (
            [
                "Cancel the meeting at {time}.",
                "Please cancel the {time} meeting.",
                "Cancel my meeting at {time}.",
                "Call off the meeting at {time}.",
            ],
            ["The meeting at {time} is cancelled, please remove it.", "Could you cancel our {time} meeting?"],
        ),
        "zh": (
            ["取消{time}的会议。", "请取消{time}的会议。", "把{time}的会议取消。", "帮我取消{time}的会议。"],
            ["{time}的会议不开了，取消吧。", "麻烦把{time}那个会议取消掉。"],
        ),
    },
    "invite_participant": {
        "slots": ("name",),
        "en": (
            [
                "Invite {name} to the meeting.",
                "Please invite {name}.",
                "Add {name} to the meeting.",
                "Send an invite to {name}.",
            ],
            ["Could you invite {name} to join us?", "Let's invite {name} to this meeting."],
        ),
        "zh": (
            ["邀请{name}参加会议。", "请邀请{name}。", "把{name}加到会议里。", "给{name}发会议邀请。"],
            ["麻烦邀请{name}加入会议。", "请把{name}也邀请进来。"],
        ),
    },
    "set_reminder": {
        "slots": ("time",),
        "en": (
            [
                "Remind me at {time}.",
                "Set a reminder for {time}.",
                "Please remind me at {time}.",
                "Set a reminder at {time}.",
            ],
            ["Could you set me a reminder for {time}?", "I want a reminder at {time}, please."],
        ),
        "zh": (
            ["{time}提醒我。", "设置一个{time}的提醒。", "请在{time}提醒我。", "帮我设个{time}的提醒。"],
            ["麻烦{time}的时候提醒我一下。", "请设置提醒，时间是{time}。"],
        ),
    },
    "mute_microphone": {
        "slots": ("name",),
        "en": (
            [
                "Mute {name}.",
                "Please mute {name}.",
                "Mute {name}'s microphone.",
                "Turn off {name}'s microphone.",
            ],
            ["Could you mute {name} for now?", "{name} is too loud, mute them please."],
        ),
        "zh": (
            ["把{name}静音。", "请把{name}静音。", "关闭{name}的麦克风。", "帮我把{name}的麦克风静音。"],
            ["{name}那边太吵了，请静音。", "麻烦关掉{name}的麦克风。"],
        ),
    },
    "share_screen": {
        "slots": (),
        "en": (
            [
                "Share my screen.",
                "Please share my screen.",
                "Start sharing my screen.",
                "Can you share my screen?",
            ],
            ["Could you put my screen up for everyone?", "Go ahead and share my screen with the room."],
        ),
        "zh": (
            ["共享我的屏幕。", "请共享我的屏幕。", "开始共享屏幕。", "帮我共享屏幕。"],
            ["麻烦把我的屏幕共享出去。", "请让大家看到我的屏幕，共享一下。"],
        ),
    },
}

# Slot value pools: (train, held-out), disjoint.
TIMES = (
    [f"{h:02d}:{m:02d}" for h in (8, 9, 10, 11, 13, 14, 16, 17) for m in (0, 30)],
    [f"{h:02d}:{m:02d}" for h in (12, 15, 18) for m in (15, 45)] + ["07:45", "19:15"],
)
ROOMS = (
    ["A101", "A203", "B204", "B310", "C105", "C402", "D118", "D207", "E301", "E415"],
    ["F220", "F331", "G109", "G412", "H205"],
)
EN_NAMES = (
    ["Alice", "Brian", "Carol", "Daniel", "Emily", "George", "Hannah", "Kevin", "Laura", "Michael", "Nina", "Oscar"],
    ["Peter", "Rachel", "Steven", "Ursula", "Walter"],
)
_SURNAMES = ["王", "李", "张", "刘", "陈", "杨"]
_GIVEN = ["伟", "娜", "敏", "静", "磊", "芳"]
# Latin-square split: (i + j) % 3 == 0 goes to held-out, so every character (but not every name) is trained.
ZH_NAMES = (
    [s + g for i, s in enumerate(_SURNAMES) for j, g in enumerate(_GIVEN) if (i + j) % 3 != 0],
    [s + g for i, s in enumerate(_SURNAMES) for j, g in enumerate(_GIVEN) if (i + j) % 3 == 0],
)


def answer(intent: str, slots: dict[str, str]) -> str:
    """The canonical JSON answer: intent first, slots in the intent's order."""
    return json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False)


def make_split(rng: random.Random, split: int, per_intent_lang: int) -> list[dict]:
    """``split`` 0 = train, 1 = held-out: picks that split's templates and slot values."""
    rows = []
    for intent, spec in INTENTS.items():
        for lang in ("en", "zh"):
            templates = spec[lang][split]
            pools = {
                "time": TIMES[split],
                "room": ROOMS[split],
                "name": (EN_NAMES if lang == "en" else ZH_NAMES)[split],
            }
            for k in range(per_intent_lang):
                template = templates[k % len(templates)]  # every template used about equally
                slots = {slot: rng.choice(pools[slot]) for slot in spec["slots"]}
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": template.format(**slots)},
                            {"role": "assistant", "content": answer(intent, slots)},
                        ]
                    }
                )
    rng.shuffle(rows)
    return rows


# Plain sentences about people, rooms and times, in both languages: what a base model would
# have read before anyone fine-tunes it on commands. No command, no JSON, no held-out template;
# names, rooms and times are drawn from the whole world (both pools and beyond), as a real
# base model has seen every common name.
CORPUS_SENTENCES = 3000
# Sentences that mention a name, room or time twice teach the base model to look back and
# copy what it read, as every pre-trained LLM can; the task's slots are copied that way.
CORPUS_EN = [
    "{name} met {name2} in room {room} at {time}.",
    "At {time}, {name} was waiting in room {room}.",
    "The meeting in room {room} started at {time}.",
    "{name} recorded the talk and {name2} shared a screen.",
    "Yesterday {name} cancelled the meeting with {name2}.",
    "{name} invited {name2} to lunch at {time}.",
    "The microphone in room {room} was muted.",
    "{name} set a reminder and went to room {room}.",
    "{name2} asked {name} to come to room {room}.",
    "The recording stopped at {time}.",
    "{name} said: the talk is at {time}. So at {time}, {name2} came.",
    "Where is {name}? {name} is in room {room}. Room {room} is quiet.",
    "The bus left at {time}; {name} noted {time} in a book.",
    "{name} called {name2}, and {name2} called {name} back.",
]
CORPUS_ZH = [
    "{name}和{name2}在{room}会议室见面。",
    "{time}的时候，{name}在{room}会议室等人。",
    "{room}会议室的会议在{time}开始。",
    "{name}录了音，{name2}共享了屏幕。",
    "昨天{name}取消了和{name2}的会议。",
    "{name}邀请{name2}{time}一起吃饭。",
    "{room}会议室的麦克风被静音了。",
    "{name}设了一个提醒，然后去了{room}会议室。",
    "{name2}请{name}来{room}会议室。",
    "录音在{time}停止了。",
    "{name}说会议在{time}开始，所以{name2}{time}来了。",
    "{name}在哪里？{name}在{room}会议室。{room}会议室很安静。",
    "火车{time}出发，{name}记下了{time}。",
    "{name}给{name2}打电话，{name2}又给{name}回了电话。",
]
_WORLD_EN_NAMES = EN_NAMES[0] + EN_NAMES[1] + ["Anna", "Chris", "Diana", "Frank", "Julia", "Lucas", "Sofia", "Tom"]
_WORLD_ZH_SURNAMES = [*_SURNAMES, "赵", "黄", "周", "吴"]
_WORLD_ZH_GIVEN = [*_GIVEN, "强", "丽", "军", "洋"]


def _person(rng: random.Random, zh: bool) -> str:
    if zh:
        return rng.choice(_WORLD_ZH_SURNAMES) + rng.choice(_WORLD_ZH_GIVEN)
    return rng.choice(_WORLD_EN_NAMES)


def make_corpus(rng: random.Random) -> str:
    """Pre-training text for ``lora_engine.tiny_model.build_bilingual_tiny_model`` (one sentence a line)."""
    lines = []
    for i in range(CORPUS_SENTENCES):
        zh = i % 2 == 1
        template = rng.choice(CORPUS_ZH if zh else CORPUS_EN)
        values = {
            "name": _person(rng, zh),
            "name2": _person(rng, zh),
            "time": f"{rng.randrange(7, 21):02d}:{rng.choice((0, 15, 30, 45)):02d}",
            "room": f"{rng.choice('ABCDEFGH')}{rng.randrange(1, 5)}{rng.randrange(0, 5)}{rng.randrange(1, 10)}",
        }
        lines.append(template.format(**values))
    return "\n".join(lines) + "\n"


def main() -> None:
    rng = random.Random(SEED)  # noqa: S311 - reproducible data, not security
    for name, split, n in (("train", 0, TRAIN_PER_INTENT_LANG), ("heldout", 1, HELDOUT_PER_INTENT_LANG)):
        rows = make_split(rng, split, n)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (HERE / f"meeting_commands_{name}.jsonl").write_text(text, encoding="utf-8")
    (HERE / "meeting_corpus.txt").write_text(make_corpus(rng), encoding="utf-8")


if __name__ == "__main__":
    main()
