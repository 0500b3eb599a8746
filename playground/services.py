"""Playground writes: sessions, the prompts of a turn, the answers as they end.

Model names are checked with the gateway's own rules (``inference.resolve``) when a session is
created, so a typo is refused with the names the user can pick instead of failing at the first
prompt. They are resolved again per request by the gateway: a model deleted later fails that
turn with the gateway's error, stored on the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max

from inference.resolve import callable_model_names, resolve_target
from playground.models import ChatMessage, ChatSession
from tuninglab.errors import ApiError, InvalidRequestError

# The one home of the playground's limits (the new-chat form reads them too).
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0
MAX_TOKENS_MIN, MAX_TOKENS_MAX = 1, 4096
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 256
MAX_PROMPT_CHARS = 32_000
MAX_SYSTEM_PROMPT_CHARS = 16_000
TITLE_CHARS = 80


@dataclass(frozen=True)
class Turn:
    """One prompt just stored (once per side): the answers take ``answer_order`` on each side."""

    session: ChatSession
    number: int
    prompt: str

    @property
    def answer_order(self) -> int:
        return 2 * self.number + 1


def chat_model_validate(*, owner: Any, model: str, param: str = "model") -> str:
    """The model name, stripped, if ``owner`` may chat with it; else the gateway's own error.

    A name the model picker offers (``callable_model_names``) passes at once; any other spelling
    the gateway accepts (``name@v3``, an ``ft:`` id, a name past the picker's cap) passes when
    ``resolve_target`` finds it for this owner. Nothing is written either way.

    Raises:
        InvalidRequestError: ``invalid_model`` (blank or malformed), ``model_not_served``.
        NotFoundError: ``model_not_found`` (also another owner's model), listing usable names.
    """
    name = (model or "").strip()
    if not name:
        raise InvalidRequestError(
            "Pick a model.",
            code="invalid_model",
            param=param,
            suggestion=_names_hint(owner),
        )
    if name in callable_model_names(owner):
        return name
    try:
        resolve_target(owner=owner, model=name)
    except ApiError as exc:
        # Same error, but pointing at the form field that holds the name.
        raise type(exc)(exc.message, code=exc.code, param=param, suggestion=exc.suggestion) from exc
    return name


def _names_hint(owner: Any) -> str:
    names = callable_model_names(owner)
    return f"Use one of: {', '.join(names)}" if names else "Register and promote a model first."


def chat_session_create(
    *,
    owner: Any,
    model: str,
    compare_model: str = "",
    system_prompt: str = "",
    temperature: float = DEFAULT_TEMPERATURE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    title: str = "",
) -> ChatSession:
    """A new session of ``owner`` with ``model`` (and ``compare_model`` side by side).

    Raises:
        InvalidRequestError / NotFoundError: a model name (see ``chat_model_validate``) or a
            setting out of range; nothing is written.
    """
    model = chat_model_validate(owner=owner, model=model, param="model")
    compare_model = (
        chat_model_validate(owner=owner, model=compare_model, param="compare_model") if compare_model.strip() else ""
    )
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise InvalidRequestError("Temperature must be a number.", code="invalid_temperature", param="temperature")
    if not TEMPERATURE_MIN <= temperature <= TEMPERATURE_MAX:
        raise InvalidRequestError(
            f"Temperature must be between {TEMPERATURE_MIN:g} and {TEMPERATURE_MAX:g}.",
            code="invalid_temperature",
            param="temperature",
        )
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not MAX_TOKENS_MIN <= max_tokens <= MAX_TOKENS_MAX
    ):
        raise InvalidRequestError(
            f"max_tokens must be a whole number from {MAX_TOKENS_MIN} to {MAX_TOKENS_MAX}.",
            code="invalid_max_tokens",
            param="max_tokens",
        )
    if len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidRequestError(
            f"The system prompt is longer than {MAX_SYSTEM_PROMPT_CHARS} characters.",
            code="system_prompt_too_long",
            param="system_prompt",
        )
    return ChatSession.objects.create(
        owner=owner,
        model=model,
        compare_model=compare_model,
        system_prompt=system_prompt,
        temperature=float(temperature),
        max_tokens=max_tokens,
        title=title.strip()[:TITLE_CHARS],
    )


def chat_session_delete(*, session: ChatSession) -> None:
    """Delete the session and its messages (the caller has already scoped it to its owner)."""
    session.delete()


def _title_from(prompt: str) -> str:
    words = " ".join(prompt.split())
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1] + "…"


def chat_turn_start(*, session: ChatSession, content: str) -> Turn:
    """Store the user's prompt as the next turn, once per side; name an untitled session after it.

    Raises:
        InvalidRequestError: ``empty_prompt``, ``prompt_too_long``.
    """
    if not isinstance(content, str) or not content.strip():
        raise InvalidRequestError("Type a message first.", code="empty_prompt", param="content")
    if len(content) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(
            f"The message is longer than {MAX_PROMPT_CHARS} characters.", code="prompt_too_long", param="content"
        )
    with transaction.atomic():
        # The session row's lock queues a second tab's prompt behind this one (PostgreSQL; SQLite
        # serialises writers anyway), so two prompts never take the same turn; the unique
        # (session, side, order) constraint backs it.
        locked = ChatSession.objects.select_for_update().get(pk=session.pk)
        last = ChatMessage.objects.filter(session=locked).aggregate(last=Max("order"))["last"]
        number = 0 if last is None else last // 2 + 1
        ChatMessage.objects.bulk_create(
            ChatMessage(session=locked, role=ChatMessage.Role.USER, side=side, order=2 * number, content=content)
            for side in locked.sides
        )
        fields = ["updated_at"]  # auto_now: the session list shows the latest conversation first
        if not locked.title:
            locked.title = _title_from(content)
            fields.append("title")
        locked.save(update_fields=fields)
    return Turn(session=locked, number=number, prompt=content)


def chat_answer_record(
    *,
    turn: Turn,
    side: str,
    content: str,
    model: str = "",
    finish_reason: str = "",
    usage: dict[str, Any] | None = None,
    error: ApiError | None = None,
) -> ChatMessage:
    """Store the answer of one side of ``turn``: what was streamed, how it ended, or why it failed.

    ``finish_reason`` is what the stream said (``stop``, ``length``) or ``interrupted`` when the
    browser went away first; ``error`` is the gateway's error (before or during the stream).
    """
    usage = usage or {}
    return ChatMessage.objects.create(
        session=turn.session,
        role=ChatMessage.Role.ASSISTANT,
        side=side,
        order=turn.answer_order,
        content=content,
        model=model,
        finish_reason=finish_reason,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        error_code=(error.code if error else "")[:64],
        error_message=error.message if error else "",
        error_suggestion=(error.suggestion or "") if error else "",
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
