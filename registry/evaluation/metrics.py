"""Text metrics of predictions against references: exact match, ROUGE-L, BLEU, chrF.

Scales and rules (``docs/registry.md`` repeats them):

- ``exact_match`` (0..1): 1 when ``normalize(prediction) == normalize(reference)``.
  ``normalize`` strips, collapses every run of whitespace to one space and casefolds; nothing
  else (punctuation counts: "Tessera." and "Tessera" differ).
- ``rouge_l`` (0..1): ROUGE-L F1 of ``rouge-score`` (longest common subsequence of words, no
  stemming) with ``UnicodeWordTokenizer``: rouge-score's default tokenizer keeps only
  ``[a-z0-9]`` and would score any answer in another script as empty.
- ``bleu`` and ``chrf`` (0..100, sacrebleu's scale): sacrebleu with its defaults (BLEU: 13a
  tokenization, case-sensitive, exponential smoothing; chrF: character 6-grams, beta 2) on
  the stripped texts. Per example: ``sentence_bleu`` (effective order) and ``sentence_chrf``;
  for the file: ``corpus_bleu`` and ``corpus_chrf`` (corpus statistics, not a mean of
  sentence scores).
- The file-level ``exact_match`` and ``rouge_l`` are means over the examples.

Nothing here touches the network: rouge-score's tokenizer and the Porter stemmer need no
NLTK data (only ``rougeLsum`` would call ``nltk.sent_tokenize``, which we do not use), and
sacrebleu only downloads test sets, which we never ask for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import sacrebleu
from rouge_score import rouge_scorer

TEXT_METRICS = ("exact_match", "rouge_l", "bleu", "chrf")

# CJK ideographs, kana and hangul syllables are one token each (those scripts put no spaces
# between words); any other run of letters or digits is one token.
_WORD_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+")


def normalize(text: str) -> str:
    """The form exact match compares: stripped, whitespace runs collapsed to one space, casefolded."""
    return " ".join(text.split()).casefold()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


class UnicodeWordTokenizer:
    """Words for ROUGE: casefolded runs of letters/digits in any script (see ``_WORD_RE``)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.casefold())


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=UnicodeWordTokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (0..1); 0.0 when either side has no word."""
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def example_scores(prediction: str, reference: str) -> dict[str, float]:
    """Every text metric of one example."""
    prediction, reference = prediction.strip(), reference.strip()
    return {
        "exact_match": exact_match(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": float(sacrebleu.sentence_bleu(prediction, [reference]).score),
        "chrf": float(sacrebleu.sentence_chrf(prediction, [reference]).score),
    }


def corpus_scores(
    predictions: Sequence[str], references: Sequence[str], per_example: Sequence[dict[str, float]] | None = None
) -> dict[str, float]:
    """File-level text metrics; ``per_example`` (from ``example_scores``) saves recomputing.

    Raises:
        ValueError: no examples, or lists of different lengths.
    """
    if not predictions or len(predictions) != len(references):
        raise ValueError("corpus_scores needs as many predictions as references, at least one")
    if per_example is None:
        per_example = [example_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    preds = [p.strip() for p in predictions]
    refs = [[r.strip() for r in references]]
    n = len(per_example)
    return {
        "exact_match": sum(s["exact_match"] for s in per_example) / n,
        "rouge_l": sum(s["rouge_l"] for s in per_example) / n,
        "bleu": float(sacrebleu.corpus_bleu(preds, refs).score),
        "chrf": float(sacrebleu.corpus_chrf(preds, refs).score),
    }


# --- structured answers (JSON) ------------------------------------------------------------


def parse_json_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed as one JSON object (surrounding whitespace allowed), or None."""
    try:
        value = json.loads(text.strip())
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _slots_of(answer: dict[str, Any] | None) -> dict[str, Any]:
    slots = answer.get("slots") if answer is not None else None
    return slots if isinstance(slots, dict) else {}


def structured_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Scores of JSON answers of the form ``{"intent": ..., "slots": {...}}`` against references.

    Compares parsed objects, so key order and whitespace do not count; values must be equal
    (``"15:30"`` and ``"3:30 pm"`` differ). Scales 0..1:

    - ``valid_json``: the prediction parses as one JSON object;
    - ``json_exact_match``: the parsed prediction equals the parsed reference;
    - ``intent_accuracy``: the ``intent`` values are equal;
    - ``per_intent[intent]``: ``examples``, ``exact_match`` and ``intent_accuracy`` over the
      examples whose *reference* has that intent;
    - ``per_slot[slot]``: ``examples`` (references that have the slot) and ``accuracy`` (the
      prediction has the slot with the same value).

    Raises:
        ValueError: no examples, lists of different lengths, or a reference that is not a JSON object.
    """
    if not predictions or len(predictions) != len(references):
        raise ValueError("structured_scores needs as many predictions as references, at least one")
    valid = exact = intent_ok = 0
    per_intent: dict[str, dict[str, float]] = {}
    per_slot: dict[str, dict[str, float]] = {}
    for prediction, reference in zip(predictions, references, strict=True):
        ref = parse_json_object(reference)
        if ref is None:
            raise ValueError(f"reference is not a JSON object: {reference[:200]!r}")
        pred = parse_json_object(prediction)
        same_intent = pred is not None and pred.get("intent") == ref.get("intent")
        valid += pred is not None
        exact += pred == ref
        intent_ok += same_intent
        row = per_intent.setdefault(str(ref.get("intent")), {"examples": 0, "exact_match": 0, "intent_accuracy": 0})
        row["examples"] += 1
        row["exact_match"] += pred == ref
        row["intent_accuracy"] += same_intent
        pred_slots = _slots_of(pred)
        for slot, value in _slots_of(ref).items():
            cell = per_slot.setdefault(slot, {"examples": 0, "accuracy": 0})
            cell["examples"] += 1
            cell["accuracy"] += slot in pred_slots and pred_slots[slot] == value
    for row in per_intent.values():
        row["exact_match"] /= row["examples"]
        row["intent_accuracy"] /= row["examples"]
    for cell in per_slot.values():
        cell["accuracy"] /= cell["examples"]
    n = len(references)
    return {
        "examples": n,
        "valid_json": valid / n,
        "json_exact_match": exact / n,
        "intent_accuracy": intent_ok / n,
        "per_intent": dict(sorted(per_intent.items())),
        "per_slot": dict(sorted(per_slot.items())),
    }
