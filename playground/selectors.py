"""Playground reads, always scoped to the caller: another owner's session is missing, not forbidden."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from inference.resolve import callable_model_names
from playground.models import ChatMessage, ChatSession
from tuninglab.errors import NotFoundError


def chat_session_list(*, owner: Any) -> QuerySet[ChatSession]:
    """The owner's sessions, the most recently used first."""
    return ChatSession.objects.filter(owner=owner).order_by("-updated_at", "-id")


def chat_session_get(*, owner: Any, session_id: str) -> ChatSession:
    """The owner's session ``session_id``.

    Raises:
        NotFoundError: ``session_not_found``, also for another owner's session (no existence leak).
    """
    session = ChatSession.objects.filter(owner=owner, pk=session_id).first()
    if session is None:
        raise NotFoundError(f"No such chat session: {session_id}.", code="session_not_found")
    return session


def chat_transcript(*, session: ChatSession) -> dict[str, list[ChatMessage]]:
    """Every message of the session per side (``{"a": [...], "b": [...]}``), in order."""
    sides: dict[str, list[ChatMessage]] = {side: [] for side in session.sides}
    for message in ChatMessage.objects.filter(session=session).order_by("side", "order"):
        sides.setdefault(message.side, []).append(message)
    return sides


def chat_gateway_messages(*, session: ChatSession, side: str, turn: int) -> list[dict[str, str]]:
    """The ``messages`` of the chat request answering ``turn`` on ``side``.

    The session's system prompt, then the earlier turns of that side, then this turn's prompt.
    A turn whose answer failed, never arrived or came back empty is left out with its prompt:
    the model would otherwise see a question without an answer (two user messages in a row,
    which some chat templates refuse). An answer the browser interrupted is kept with the text
    that had arrived: the user saw it and may refer to it.
    """
    rows = list(ChatMessage.objects.filter(session=session, side=side, order__lte=2 * turn).order_by("order"))
    answered = {m.turn for m in rows if m.role == ChatMessage.Role.ASSISTANT and not m.error_code and m.content.strip()}
    messages = [{"role": "system", "content": session.system_prompt}] if session.system_prompt.strip() else []
    for m in rows:
        if (
            m.role == ChatMessage.Role.SYSTEM
            or m.turn in answered
            or (m.turn == turn and m.role == ChatMessage.Role.USER)
        ):
            messages.append({"role": m.role, "content": m.content})
    return messages


def chat_model_choices(*, owner: Any) -> list[str]:
    """The names the new-chat form offers: what the gateway lists for this owner (served bases,
    the owner's models and their aliases); other spellings it accepts can be typed."""
    return callable_model_names(owner)
