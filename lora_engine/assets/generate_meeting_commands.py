"""Regenerate meeting_commands_train.jsonl and meeting_commands_heldout.jsonl (seed 2024).

A meeting voice assistant's commands, in English and Chinese, each answered with one JSON
object ``{"intent": ..., "slots": {...}}``: the structured task a fine-tuned model must learn
(``tests/integration/test_structured_task.py``).

- 8 intents; slots ``time`` ("HH:MM", 24 h), ``room`` (a room code: a letter A-H and three
  digits, such as "B204") and ``name`` (an English first name in English commands, a Chinese
  full name in Chinese ones). Slot values are copied verbatim from the command, so the answer
  never needs a conversion a small model cannot learn (such as "三点半" → "15:30").
- The held-out split shares neither templates nor slot values with the training split (the
  task's rule): every intent has 12 training templates (14 with slots) and 2 other held-out
  templates per language; per slot, the held-out values (40 times, 30 rooms, 16 of the 80 English names) are
  drawn first and the training split draws from every other value. The training values cover
  the whole range (any hour 07-20, any minute, every room letter), so the only rule that carries
  over to an unseen value is to copy it. Chinese held-out names are new combinations of
  surnames and given names (every character appears in training; the names do not).
  ``check_rule`` checks all this (ValueError) before anything is written.
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
# Training examples per intent and language: 8 x 2 x 30 = 480 (the task allows <= 500), weighted
# towards the intents with slots, since copying an unseen value is the hard part (a room only
# occurs in schedule_meeting): 40 slot-less, 48 schedule_meeting, 40 x 2 name, 36 x 2 time.
TRAIN_PER_INTENT_LANG = {
    "start_recording": 13,
    "stop_recording": 13,
    "schedule_meeting": 48,
    "cancel_meeting": 36,
    "invite_participant": 40,
    "set_reminder": 36,
    "mute_microphone": 40,
    "share_screen": 14,
}
HELDOUT_PER_INTENT_LANG = 10  # 8 x 2 x 10 = 160 held-out examples

# Per intent: the slots it takes, then templates per language as (train, held-out). A
# template names its slots as {time}, {room}, {name}. Training has 12 paraphrases per intent and
# language (14 with slots), the fillers ("Could you", "Go ahead and", "Let's", "麻烦", "吧") spread
# over every intent, so the intent is learned from the words that matter ("start", "静音", ...)
# and the 2 held-out paraphrases, phrased otherwise, can be recognised.
INTENTS: dict[str, dict] = {
    "start_recording": {
        "slots": (),
        "en": (
            [
                "Start recording.",
                "Please start recording the meeting.",
                "Start recording now.",
                "Can you start recording?",
                "Start the recording, please.",
                "I'd like to start recording.",
                "Let's start recording the meeting.",
                "Begin recording now, please.",
                "Could you begin recording?",
                "Go ahead and record the meeting.",
                "Recording on, please.",
                "Let's get the recording going.",
            ],
            ["Could you start the recording for us?", "Go ahead and start recording this call."],
        ),
        "zh": (
            [
                "开始录音。",
                "请开始录音。",
                "现在开始录音。",
                "帮我开始录音。",
                "我们开始录音。",
                "可以开始录音了。",
                "开始录音，谢谢。",
                "马上开始录音。",
                "请打开录音。",
                "录音开始吧。",
                "会议开始了，请录音。",
                "需要录音，请开始。",
            ],
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
                "Stop the recording, please.",
                "I'd like to stop recording.",
                "Let's stop recording the meeting.",
                "End the recording now, please.",
                "Could you end the recording?",
                "Go ahead and end the recording.",
                "Recording off, please.",
                "Let's stop the recording here.",
            ],
            ["Could you stop the recording for us?", "Go ahead and stop recording this call."],
        ),
        "zh": (
            [
                "停止录音。",
                "请停止录音。",
                "现在停止录音。",
                "帮我停止录音。",
                "我们停止录音。",
                "可以停止录音了。",
                "停止录音，谢谢。",
                "马上停止录音。",
                "请关闭录音。",
                "录音停止吧。",
                "会议结束了，请停止录音。",
                "不用录音了，请停止。",
            ],
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
                "Book room {room} for a meeting at {time}.",
                "Arrange a meeting in room {room} at {time}, please.",
                "We need room {room} for a meeting at {time}.",
                "Put a meeting in room {room} at {time}.",
                "Reserve room {room} for a meeting at {time}.",
                "At {time} we meet in room {room}, please schedule it.",
                "Could you set up a meeting in room {room} at {time}?",
                "Go ahead and book room {room} at {time} for a meeting.",
                "Let's meet in room {room} at {time}, book it.",
                "A meeting at {time} in room {room}, please.",
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
                "预订{room}会议室，{time}开会。",
                "我们{time}要在{room}会议室开会，请安排。",
                "请帮我在{room}会议室订一个{time}的会议。",
                "约个会议，{time}，{room}会议室。",
                "{time}开会，地点{room}会议室。",
                "请在{room}会议室预约{time}的会议。",
                "麻烦在{room}会议室安排{time}的会议。",
                "会议定在{time}，{room}会议室。",
                "{room}会议室{time}开会，帮我预约。",
                "请安排会议：{time}，{room}会议室。",
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
                "Drop the {time} meeting from the calendar.",
                "I won't make the {time} meeting, cancel it.",
                "Please call off our meeting at {time}.",
                "Delete the meeting at {time}.",
                "Remove the {time} meeting, please.",
                "Our meeting at {time} won't happen, call it off.",
                "Could you call off the {time} meeting?",
                "Go ahead and cancel the meeting at {time}.",
                "Let's cancel the {time} meeting.",
                "The {time} meeting is off, delete it.",
            ],
            ["The meeting at {time} is cancelled, please remove it.", "Could you cancel our {time} meeting?"],
        ),
        "zh": (
            [
                "取消{time}的会议。",
                "请取消{time}的会议。",
                "把{time}的会议取消。",
                "帮我取消{time}的会议。",
                "{time}的会议取消了。",
                "请把{time}的会议删掉。",
                "我要取消{time}的会议。",
                "撤销{time}的会议。",
                "{time}那场会议请取消。",
                "会议改了，{time}的取消。",
                "麻烦取消{time}的会议。",
                "{time}的会议不要了。",
                "{time}的会议请撤销吧。",
                "会议取消：{time}。",
            ],
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
                "Bring {name} into the meeting.",
                "Can you add {name} to the call?",
                "Invite {name}, please.",
                "I want {name} in this meeting, send an invite.",
                "Let {name} join the meeting.",
                "{name} should join us, send an invite.",
                "Could you add {name} to the meeting?",
                "Go ahead and invite {name}.",
                "Let's add {name} to the call.",
                "{name} needs an invite to the meeting.",
            ],
            ["Could you invite {name} to join us?", "Let's invite {name} to this meeting."],
        ),
        "zh": (
            [
                "邀请{name}参加会议。",
                "请邀请{name}。",
                "把{name}加到会议里。",
                "给{name}发会议邀请。",
                "让{name}参加会议。",
                "帮我邀请{name}。",
                "我想邀请{name}开会。",
                "给{name}发一个邀请。",
                "{name}也要参加，请发邀请。",
                "请让{name}加入会议。",
                "麻烦给{name}发个邀请。",
                "{name}也来开会，请邀请。",
                "邀请一下{name}吧。",
                "会议要加上{name}，请邀请。",
            ],
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
                "Give me a reminder at {time}.",
                "Can you remind me at {time}?",
                "Add a reminder for {time}, please.",
                "At {time}, remind me.",
                "Ping me at {time} as a reminder.",
                "Reminder at {time}, please.",
                "Could you remind me at {time}?",
                "Go ahead and set a reminder for {time}.",
                "Let's set a reminder at {time}.",
                "{time} is when I need a reminder.",
            ],
            ["Could you set me a reminder for {time}?", "I want a reminder at {time}, please."],
        ),
        "zh": (
            [
                "{time}提醒我。",
                "设置一个{time}的提醒。",
                "请在{time}提醒我。",
                "帮我设个{time}的提醒。",
                "记得{time}提醒我。",
                "定一个{time}的提醒。",
                "添加{time}的提醒。",
                "{time}给我提个醒。",
                "提醒时间设为{time}。",
                "到了{time}请提醒我。",
                "请{time}提醒我一下。",
                "{time}记得提醒我吧。",
                "会议前提醒我，{time}。",
                "帮我定{time}的提醒吧。",
            ],
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
                "Can you mute {name}?",
                "Switch off {name}'s mic, please.",
                "Silence {name}'s microphone.",
                "Mute the microphone of {name}.",
                "{name}'s microphone is noisy, mute it.",
                "Mute {name} right now.",
                "Could you silence {name}?",
                "Go ahead and mute {name}.",
                "Let's mute {name} for a while.",
                "{name} is noisy, turn the mic off.",
            ],
            ["Could you mute {name} for now?", "{name} is too loud, mute them please."],
        ),
        "zh": (
            [
                "把{name}静音。",
                "请把{name}静音。",
                "关闭{name}的麦克风。",
                "帮我把{name}的麦克风静音。",
                "给{name}静音。",
                "{name}的麦克风请关掉。",
                "请关闭{name}的麦克风。",
                "让{name}静音。",
                "{name}的声音太大，请静音。",
                "请让{name}静音一下。",
                "麻烦把{name}静音。",
                "{name}那里有杂音，请关掉麦克风。",
                "{name}太吵，静音一下吧。",
                "会议里把{name}静音。",
            ],
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
                "Share my screen with everyone.",
                "Show my screen to the team.",
                "I want to share my screen.",
                "Turn on screen sharing.",
                "Could you show my screen?",
                "Go ahead and show my screen.",
                "Let's share my screen now.",
                "My screen should be shared, please.",
            ],
            ["Could you put my screen up for everyone?", "Go ahead and share my screen with the room."],
        ),
        "zh": (
            [
                "共享我的屏幕。",
                "请共享我的屏幕。",
                "开始共享屏幕。",
                "帮我共享屏幕。",
                "把我的屏幕共享给大家。",
                "我要共享屏幕。",
                "打开屏幕共享。",
                "请让我共享屏幕。",
                "请打开我的屏幕共享。",
                "屏幕共享一下吧。",
                "我想给大家看我的屏幕。",
                "现在共享我的屏幕。",
            ],
            ["麻烦把我的屏幕共享出去。", "请让大家看到我的屏幕，共享一下。"],
        ),
    },
}

# Slot values. Each slot has a world of values; the held-out values are drawn from it first
# and the training split draws from the rest, so the two splits never share a full value (they
# share digits, letters and characters, which is what copying needs). The training values are
# spread over the whole world (any hour 07-20 and any minute, every room letter, 64 English
# names): a model that learned "minutes are 00 or 30" would fail, only copying carries over.
WORLD_TIMES = [f"{h:02d}:{m:02d}" for h in range(7, 21) for m in range(60)]  # 840 "HH:MM"
WORLD_ROOMS = [f"{letter}{floor}{n:02d}" for letter in "ABCDEFGH" for floor in range(1, 10) for n in range(100)]
HELDOUT_TIMES = 40
HELDOUT_ROOMS = 30
HELDOUT_EN_NAMES = 16
# 80 common English first names: 16 held-out, 64 for training.
WORLD_EN_NAMES = [
    "Aaron", "Adam", "Alice", "Amanda", "Amy", "Andrew", "Angela", "Anthony", "Barbara", "Benjamin",
    "Brandon", "Brian", "Carol", "Catherine", "Charles", "Christine", "Daniel", "David", "Deborah", "Dennis",
    "Donald", "Dorothy", "Edward", "Elizabeth", "Emily", "Eric", "Frances", "Gary", "George", "Gregory",
    "Hannah", "Helen", "Henry", "Jacob", "James", "Janet", "Jason", "Jennifer", "Jessica", "Jonathan",
    "Joseph", "Joshua", "Karen", "Kathleen", "Kenneth", "Kevin", "Kimberly", "Larry", "Laura", "Linda",
    "Margaret", "Maria", "Mark", "Martha", "Matthew", "Megan", "Melissa", "Michael", "Nancy", "Nicholas",
    "Nina", "Oscar", "Pamela", "Patrick", "Peter", "Rachel", "Raymond", "Rebecca", "Richard", "Robert",
    "Ronald", "Ruth", "Samuel", "Sandra", "Sharon", "Steven", "Susan", "Timothy", "Ursula", "Walter",
]  # fmt: skip
_SURNAMES = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙"]
_GIVEN = ["伟", "娜", "敏", "静", "磊", "芳", "强", "丽", "军", "洋", "杰", "婷"]
# Latin-square split: (i + j) % 4 == 0 goes to held-out (36 names; 108 for training), so every
# character (but not every name) is trained.
ZH_NAMES = (
    [s + g for i, s in enumerate(_SURNAMES) for j, g in enumerate(_GIVEN) if (i + j) % 4 != 0],
    [s + g for i, s in enumerate(_SURNAMES) for j, g in enumerate(_GIVEN) if (i + j) % 4 == 0],
)


def split_pool(rng: random.Random, world: list[str], n_heldout: int) -> tuple[list[str], list[str]]:
    """(train, held-out): ``n_heldout`` values drawn first, training gets every other value."""
    heldout = rng.sample(world, n_heldout)
    taken = set(heldout)
    return [v for v in world if v not in taken], heldout


def slot_pools(rng: random.Random) -> dict[str, tuple[list[str], list[str]]]:
    """Per slot (English and Chinese names apart): the (train, held-out) value pools."""
    return {
        "time": split_pool(rng, WORLD_TIMES, HELDOUT_TIMES),
        "room": split_pool(rng, WORLD_ROOMS, HELDOUT_ROOMS),
        "name_en": split_pool(rng, WORLD_EN_NAMES, HELDOUT_EN_NAMES),
        "name_zh": ZH_NAMES,
    }


def answer(intent: str, slots: dict[str, str]) -> str:
    """The canonical JSON answer: intent first, slots in the intent's order."""
    return json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False)


class Deck:
    """Draws a pool's values in a shuffled order, reshuffling when it runs out: values spread evenly."""

    def __init__(self, rng: random.Random, pool: list[str]) -> None:
        self.rng, self.pool, self.left = rng, pool, []

    def draw(self) -> str:
        if not self.left:
            self.left = self.rng.sample(self.pool, len(self.pool))
        return self.left.pop()


def make_split(
    rng: random.Random, split: int, per_intent_lang: dict[str, int], pools: dict[str, tuple[list[str], list[str]]]
) -> list[dict]:
    """``split`` 0 = train, 1 = held-out: picks that split's templates and slot values."""
    decks = {slot: Deck(rng, pool[split]) for slot, pool in pools.items()}
    rows = []
    for intent, spec in INTENTS.items():
        for lang in ("en", "zh"):
            templates = spec[lang][split]
            for k in range(per_intent_lang[intent]):
                template = templates[k % len(templates)]  # every template used about equally
                slots = {slot: decks[f"name_{lang}" if slot == "name" else slot].draw() for slot in spec["slots"]}
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


def check_rule(train: list[dict], heldout: list[dict]) -> None:
    """The task's rule: no held-out template and no held-out slot value appears in training.

    Raises ``ValueError`` (not ``assert``: the check must hold under ``python -O`` too).
    """
    train_templates = {t for spec in INTENTS.values() for lang in ("en", "zh") for t in spec[lang][0]}
    heldout_templates = {t for spec in INTENTS.values() for lang in ("en", "zh") for t in spec[lang][1]}
    if train_templates & heldout_templates:
        raise ValueError(
            f"a held-out template is also a training template: {sorted(train_templates & heldout_templates)}"
        )

    def values(rows: list[dict]) -> set[str]:
        return {v for r in rows for v in json.loads(r["messages"][-1]["content"])["slots"].values()}

    train_values, heldout_values = values(train), values(heldout)
    if train_values & heldout_values:
        raise ValueError(f"a held-out slot value is also a training value: {sorted(train_values & heldout_values)}")
    train_text = "\n".join(m["content"] for r in train for m in r["messages"])
    leaked = sorted(v for v in heldout_values if v in train_text)
    if leaked:
        raise ValueError(f"a held-out value occurs inside a training row: {leaked}")


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
# The world beyond both pools: names, rooms and times no split uses.
_WORLD_EN_NAMES = [*WORLD_EN_NAMES, "Anna", "Chris", "Diana", "Frank", "Julia", "Lucas", "Sofia", "Tom"]
_WORLD_ZH_SURNAMES = [*_SURNAMES, "胡", "朱", "高", "林"]
_WORLD_ZH_GIVEN = [*_GIVEN, "涛", "明", "超", "秀"]


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
            "time": f"{rng.randrange(6, 23):02d}:{rng.randrange(60):02d}",
            "room": f"{rng.choice('ABCDEFGHJK')}{rng.randrange(1, 10)}{rng.randrange(100):02d}",
        }
        lines.append(template.format(**values))
    return "\n".join(lines) + "\n"


def main() -> None:
    rng = random.Random(SEED)  # noqa: S311 - reproducible data, not security
    pools = slot_pools(rng)  # held-out values first, training gets the rest
    train = make_split(rng, 0, TRAIN_PER_INTENT_LANG, pools)
    heldout = make_split(rng, 1, dict.fromkeys(INTENTS, HELDOUT_PER_INTENT_LANG), pools)
    check_rule(train, heldout)
    for name, rows in (("train", train), ("heldout", heldout)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (HERE / f"meeting_commands_{name}.jsonl").write_text(text, encoding="utf-8")
    # Its own generator: the base model (built from the corpus) stays the same when the splits change.
    corpus_rng = random.Random(SEED + 1)  # noqa: S311 - reproducible data, not security
    (HERE / "meeting_corpus.txt").write_text(make_corpus(corpus_rng), encoding="utf-8")


if __name__ == "__main__":
    main()
