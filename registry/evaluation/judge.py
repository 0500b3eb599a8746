"""LLM-as-judge through any OpenAI-compatible endpoint: a 1-5 score and a one-sentence reason.

For each example, one ``POST {base_url}/chat/completions`` with ``RUBRIC`` as the system
message and the conversation, the reference and the answer as the user message
(``temperature`` 0, ``max_tokens`` 200). The reply's ``choices[0].message.content`` must be
exactly one JSON object ``{"score": <integer 1..5>, "reason": "<text>"}`` (surrounding
whitespace allowed; no other keys, no code fences, no prose): anything else is a judge
failure. The key comes from the worker's environment variable ``api_key_env`` (see
``registry.evaluation.options``) and is sent as ``Authorization: Bearer``; it is never stored
or logged.

The first failure stops the judge for the run (no point in hammering an endpoint that is down
or a model that does not follow the format): the caller marks the ``judge`` metric failed and
keeps every other metric.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from registry.evaluation.errors import EvaluationError

RUBRIC = """You grade an assistant's answer against a reference answer.
Score the answer from 1 to 5:
5 = correct and complete: it says what the reference says (the wording may differ) and adds nothing wrong.
4 = correct, with a minor omission or a harmless extra detail.
3 = partly correct: some of the reference's key content is missing or wrong.
2 = mostly wrong or off-topic, though related to the question.
1 = wrong, empty, irrelevant, or contradicting the reference.
Judge the content, not the style or the length.
Reply with exactly one JSON object and nothing else: {"score": <integer 1-5>, "reason": "<one sentence>"}"""

JUDGE_API_KEY_MISSING = "judge_api_key_missing"
JUDGE_UNREACHABLE = "judge_unreachable"
JUDGE_HTTP_ERROR = "judge_http_error"
JUDGE_INVALID_RESPONSE = "judge_invalid_response"
MAX_FIELD_CHARS = 4000  # per prompt / reference / answer sent to the judge
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Verdict:
    score: int
    reason: str


def parse_verdict(content: Any) -> Verdict:
    """The verdict in a judge reply, parsed strictly.

    Raises:
        EvaluationError: ``judge_invalid_response`` for anything but ``{"score": 1..5, "reason": str}``.
    """
    if not isinstance(content, str):
        raise EvaluationError(JUDGE_INVALID_RESPONSE, "the judge's message content is not text")
    try:
        data = json.loads(content.strip())
    except ValueError:
        raise EvaluationError(
            JUDGE_INVALID_RESPONSE, f"the judge did not reply with a JSON object: {content[:120]!r}"
        ) from None
    if not isinstance(data, dict) or set(data) != {"score", "reason"}:
        raise EvaluationError(
            JUDGE_INVALID_RESPONSE, f"the judge's JSON must have exactly score and reason: {data!r:.120}"
        )
    score, reason = data["score"], data["reason"]
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise EvaluationError(
            JUDGE_INVALID_RESPONSE, f"the judge's score must be an integer from 1 to 5, got {score!r}"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise EvaluationError(JUDGE_INVALID_RESPONSE, "the judge's reason must be a non-empty string")
    return Verdict(score=score, reason=reason.strip()[:MAX_REASON_CHARS])


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + " [...]"


def judge_messages(prompt: Sequence[dict[str, str]], reference: str, prediction: str) -> list[dict[str, str]]:
    """The chat sent to the judge for one example."""
    conversation = "\n".join(f"{m['role']}: {_clip(m['content'])}" for m in prompt)
    user = (
        f"Conversation so far:\n{conversation}\n\n"
        f"Reference answer:\n{_clip(reference)}\n\n"
        f"Answer to grade:\n{_clip(prediction)}"
    )
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def _api_key(options: dict[str, Any]) -> str | None:
    name = options.get("api_key_env")
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise EvaluationError(JUDGE_API_KEY_MISSING, f"the worker has no environment variable {name} for the judge")
    return key


def judge_one(
    client: httpx.Client, options: dict[str, Any], prompt: Sequence[dict[str, str]], reference: str, prediction: str
) -> Verdict:
    """Ask the judge about one example.

    Raises:
        EvaluationError: unreachable endpoint, non-2xx answer, or a reply that does not parse.
    """
    body = {
        "model": options["model"],
        "messages": judge_messages(prompt, reference, prediction),
        "temperature": 0,
        "max_tokens": 200,
    }
    url = f"{options['base_url']}/chat/completions"
    try:
        response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise EvaluationError(JUDGE_UNREACHABLE, f"POST {url} failed: {type(exc).__name__}: {exc}") from None
    if not response.is_success:
        raise EvaluationError(
            JUDGE_HTTP_ERROR, f"POST {url} answered HTTP {response.status_code}: {response.text[:200]}"
        )
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        raise EvaluationError(
            JUDGE_INVALID_RESPONSE, f"POST {url} did not answer in the chat completions shape: {response.text[:200]!r}"
        ) from None
    return parse_verdict(content)


def judge_examples(
    options: dict[str, Any], items: Sequence[tuple[Sequence[dict[str, str]], str, str]]
) -> list[Verdict]:
    """Verdicts for ``(prompt, reference, prediction)`` items, in order.

    Raises:
        EvaluationError: at the first failure (missing key, endpoint, format).
    """
    key = _api_key(options)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=options["timeout_s"], headers=headers, follow_redirects=False) as client:
        return [judge_one(client, options, prompt, ref, pred) for prompt, ref, pred in items]
