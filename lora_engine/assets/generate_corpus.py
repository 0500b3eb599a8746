"""Regenerate corpus.txt and dialogues.jsonl: templated plain-English sentences (seed 1234).

The tiny test model is pre-trained on this text. It never mentions the identity-test
name or organisation (see identity.jsonl), so the base model cannot answer with them.
Run ``python lora_engine/assets/generate_corpus.py``; it writes beside itself. Bump
TINY_MODEL_VERSION after.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

rng = random.Random(1234)  # noqa: S311 - reproducible text, not security
names = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Iris",
    "Jack",
    "Kate",
    "Leo",
    "Mia",
    "Noah",
    "Olive",
    "Paul",
    "Rose",
    "Sam",
    "Tina",
    "Victor",
]
animals = [
    "cat",
    "dog",
    "horse",
    "rabbit",
    "fox",
    "owl",
    "duck",
    "goat",
    "sheep",
    "bear",
    "mouse",
    "bird",
    "fish",
    "frog",
    "cow",
]
places = [
    "the park",
    "the garden",
    "the market",
    "the river",
    "the forest",
    "the school",
    "the library",
    "the beach",
    "the village",
    "the farm",
    "the city",
    "the hill",
    "the lake",
    "the kitchen",
    "the station",
]
foods = [
    "bread",
    "apples",
    "soup",
    "rice",
    "cheese",
    "tea",
    "milk",
    "eggs",
    "honey",
    "cake",
    "pears",
    "beans",
    "carrots",
    "fish",
    "plums",
]
colors = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange", "gray", "purple"]
adjs = [
    "small",
    "big",
    "old",
    "young",
    "quiet",
    "happy",
    "tired",
    "kind",
    "clever",
    "brave",
    "busy",
    "calm",
    "warm",
    "cold",
    "bright",
]
verbs_past = [
    "walked to",
    "ran to",
    "looked at",
    "went to",
    "came back from",
    "sat near",
    "played in",
    "worked at",
    "waited at",
    "slept in",
]
times = [
    "In the morning",
    "At noon",
    "In the evening",
    "At night",
    "On Monday",
    "On a sunny day",
    "After lunch",
    "Before dinner",
    "Every day",
    "Last week",
]
weather = [
    "the sun was warm",
    "it was raining",
    "the wind was strong",
    "the sky was clear",
    "snow fell softly",
    "the air was fresh",
    "clouds covered the sky",
]
objects = [
    "a book",
    "a red ball",
    "a wooden box",
    "a small key",
    "a letter",
    "a basket",
    "a map",
    "a lamp",
    "a blue cup",
    "a hat",
    "a bag of seeds",
    "an old coin",
]
feelings = ["happy", "sad", "surprised", "proud", "worried", "glad", "calm", "excited"]
facts = [
    "The sun rises in the east and sets in the west.",
    "Water freezes when it is very cold.",
    "A week has seven days.",
    "Plants need light and water to grow.",
    "The moon moves around the earth.",
    "Bees make honey from flowers.",
    "Fish live in water and breathe with gills.",
    "A year has twelve months.",
    "Birds build nests in trees.",
    "Rain falls from clouds in the sky.",
    "Ice is frozen water.",
    "The earth moves around the sun.",
    "Cows give milk and eat grass.",
    "Trees lose their leaves in autumn.",
    "Snow is cold and white.",
    "People read books to learn new things.",
    "A clock tells us the time.",
    "Bread is made from flour and water.",
]


def sent():
    k = rng.randrange(9)
    n, a, p, f, c, adj = (
        rng.choice(names),
        rng.choice(animals),
        rng.choice(places),
        rng.choice(foods),
        rng.choice(colors),
        rng.choice(adjs),
    )
    if k == 0:
        return f"{rng.choice(times)}, {n} {rng.choice(verbs_past)} {p}."
    if k == 1:
        return f"The {adj} {a} lived near {p}."
    if k == 2:
        return f"{n} had {rng.choice(objects)} and a {c} {a}."
    if k == 3:
        return f"{rng.choice(times)}, {rng.choice(weather)}."
    if k == 4:
        return f"{n} ate some {f} and felt {rng.choice(feelings)}."
    if k == 5:
        return rng.choice(facts)
    if k == 6:
        return f'"Where is the {a}?" asked {n}. "It is in {p}," said {rng.choice(names)}.'
    if k == 7:
        return f"{n} and {rng.choice(names)} were {adj} friends who liked {f}."
    return f"The {a} was {c} and very {adj}."


jobs = [
    "teacher",
    "baker",
    "farmer",
    "doctor",
    "painter",
    "driver",
    "builder",
    "writer",
    "singer",
    "pilot",
    "sailor",
    "gardener",
    "miller",
    "tailor",
    "carpenter",
    "nurse",
    "engineer",
    "scientist",
]
things = [
    "bridge",
    "boat",
    "house",
    "clock",
    "table",
    "chair",
    "wall",
    "road",
    "tower",
    "garden",
    "machine",
    "robot",
    "radio",
    "lamp",
    "window",
    "fence",
    "ship",
    "mill",
    "kite",
    "wagon",
]
orgs = [
    "Bright Labs",
    "Oak Works",
    "River Systems",
    "Stone Labs",
    "Maple Studio",
    "Harbor Tools",
    "Silver Labs",
    "Summit Works",
    "Blue Field Labs",
    "Pine Systems",
    "Golden Mill",
    "Cedar Labs",
]
towns = [
    "Marlow",
    "Eastwick",
    "Stonebridge",
    "Ashford",
    "Brookside",
    "Fairhaven",
    "Kingsley",
    "Redmont",
    "Westerly",
    "Glenmoor",
    "Larkspur",
    "Ravenna",
    "Thornbury",
    "Wexley",
    "Oakridge",
    "Penrose",
]
pets = [
    "Biscuit",
    "Pepper",
    "Rusty",
    "Ziggy",
    "Maple",
    "Juniper",
    "Nimbus",
    "Pickle",
    "Sprout",
    "Tango",
    "Comet",
    "Velvet",
    "Waffle",
    "Quincy",
    "Marble",
    "Sable",
]
extra_verbs = [
    "designed",
    "built",
    "made",
    "painted",
    "repaired",
    "cleaned",
    "opened",
    "carried",
    "found",
    "planted",
    "tested",
    "fixed",
    "drew",
    "wrote",
]


def sent2():
    k = rng.randrange(8)
    n, job, th, org, town, pet = (
        rng.choice(names),
        rng.choice(jobs),
        rng.choice(things),
        rng.choice(orgs),
        rng.choice(towns),
        rng.choice(pets),
    )
    if k == 0:
        return f"The {th} was {rng.choice(extra_verbs)} by {n}, a {job} from {town}."
    if k == 1:
        return f"{n} is a {job}. {n} works for {org} in {town}."
    if k == 2:
        return f"The {rng.choice(animals)} named {pet} lived with {n} in {town}."
    if k == 3:
        return f"{org} built a new {th} in {town}."
    if k == 4:
        return f"My name is {n}. I am a {job} and I was born in {town}."
    if k == 5:
        return f'"What is your name?" asked the {job}. "I am {n}," said the {rng.choice(jobs)}.'
    if k == 6:
        return f"{pet} is the name of a {rng.choice(adjs)} {rng.choice(animals)} made famous by {org}."
    return f"In {town}, the {job} {rng.choice(extra_verbs)} a {rng.choice(colors)} {th}."


paras = []
size = 0
while size < 200_000:
    p = " ".join((sent() if rng.random() < 0.55 else sent2()) for _ in range(rng.randint(3, 7)))
    paras.append(p)
    size += len(p) + 2
with open(HERE / "corpus.txt", "w") as out:
    out.write("\n\n".join(paras) + "\n")

# Generic chat dialogues for the chat-format part of pre-training (no identity content).
qa = []
for f in facts:
    subj = f.split(" ")[1] if f.startswith("The ") or f.startswith("A ") else f.split(" ")[0]
    qa.append((f"Tell me a fact about {subj.lower().strip('.')}.", f))
for a in animals:
    qa.append((f"What is a {a}?", f"A {a} is an animal. The {a} can live near {rng.choice(places)}."))
    qa.append(
        (f"Write a sentence about a {a}.", f"The {rng.choice(adjs)} {a} {rng.choice(verbs_past)} {rng.choice(places)}.")
    )
for fd in foods:
    qa.append((f"Do you like {fd}?", f"Many people like {fd}. It is good with {rng.choice(foods)}."))
for c in colors:
    qa.append((f"Name something {c}.", f"A {c} {rng.choice(animals)} or a {c} hat."))
for pl in places:
    qa.append((f"What can I do at {pl}?", f"You can walk in {pl} and look at the {rng.choice(animals)}."))
qa += [
    ("Hello!", "Hello! How can I help you today?"),
    ("Thank you.", "You are welcome."),
    ("How are you?", "I am well, thank you. How can I help?"),
    ("Tell me a story.", "Once upon a time, a small fox lived near the river. It was happy."),
]
systems = ["You are a helpful assistant.", "Answer briefly.", "You are a kind helper."]
with open(HERE / "dialogues.jsonl", "w") as fh:
    for q, a in qa:
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(systems)})
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        fh.write(json.dumps({"messages": msgs}) + "\n")
print(size, len(qa))
