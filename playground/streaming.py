"""One turn's answer(s), streamed to the browser as server-sent events while the gateway streams them.

The playground calls the gateway in-process (``inference.gateway.proxy`` with ``stream=True``),
so a chat from the page goes through the same model resolution, per-owner concurrency limit,
traffic counters and metrics as one from the API. Events sent to the browser, each a JSON
``data`` line under an ``event`` name, tagged with the side ("a", or "b" side by side):

* ``turn``  ``{"turn", "title", "sides": [{"side", "model"}]}``: first, once (an untitled session
  is named after its first prompt).
* ``token`` ``{"side", "text"}``: a piece of an answer, as it arrives.
* ``done``  ``{"side", "message_id", "model", "finish_reason", "usage"}``: that side's answer is stored.
* ``error`` ``{"side", "message_id", "code", "message", "suggestion"}``: that side failed (before
  or during its stream); the answer is stored with the error.
* ``end``   ``{}``: last, once every side ended.

Side by side, both requests are sent before the first read and the two streams are then read
in turns, one event of each, in the request's own thread. Both are in flight at vLLM at once,
which batches them and produces a token of each per step, so reading them alternately costs no
throughput and a side waits at most one event of the other. One thread also keeps one database
connection (Django's are per thread; the answers and the gateway's traffic rows are written
here) and keeps the owner's concurrency slots taken and released by the request that took them.

Every answer is stored exactly once: when its stream ends, or, if the browser goes away (or
presses Stop) first, in ``close()`` with the text that had arrived and finish reason
``interrupted``. Django calls ``close()`` when the response ends, whether or not it was read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest

from inference.gateway import ROUTE_KEY_HEADER, proxy
from playground.models import ChatMessage
from playground.selectors import chat_gateway_messages
from playground.services import Turn, chat_answer_record
from tuninglab.errors import ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayCaller:
    """What ``proxy`` reads of a request: the user, the API key (none: a browser session), headers."""

    user: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: Any = None

    @classmethod
    def for_session(cls, request: HttpRequest, session_id: str) -> GatewayCaller:
        # The session id is the sticky key of a header-sticky route: one conversation stays on
        # one version of a split model instead of changing voice between turns.
        return cls(user=request.user, headers={ROUTE_KEY_HEADER: session_id})


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event; JSON escapes newlines, so ``data`` is one line whatever it holds."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _Side:
    """The state of one side's answer while it streams."""

    def __init__(self, side: str, model: str) -> None:
        self.side, self.model = side, model
        self.response: Any = None  # the gateway's StreamingHttpResponse
        self.chunks: Iterator[bytes] | None = None
        self.buffer = b""
        self.pieces: list[str] = []
        self.answered_model = ""
        self.finish_reason = ""
        self.usage: dict[str, Any] = {}
        self.saw_done = False
        self.error: ApiError | None = None
        self.message: ChatMessage | None = None  # set once stored

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def drain(self) -> None:
        """Read the gateway's stream to its end: the relay releases the owner's slot and records
        the traffic itself when its stream ends (after an error event, vLLM ends it at once)."""
        chunks, self.chunks, self.response = self.chunks, None, None
        if chunks is None:
            return
        try:
            for _ in chunks:
                pass
        except Exception:  # the answer is already decided; a broken tail changes nothing
            log.exception("draining the stream of %s failed", self.model)

    def abandon(self) -> None:
        """Close the gateway's stream before its end (the browser left): vLLM stops generating.

        ``HttpResponse.close()`` also sends ``request_finished``, which closes this thread's
        database connection when it is due: harmless here (the request is ending and the next
        query reconnects), and the reason a stream that ended is drained instead of closed.
        """
        response, self.response, self.chunks = self.response, None, None
        if response is not None:
            response.close()  # releases the owner's slot and records the traffic (once)


class ChatStream:
    """The iterable a ``StreamingHttpResponse`` sends: SSE bytes, and ``close()`` for Django."""

    def __init__(self, *, caller: GatewayCaller, turn: Turn) -> None:
        self.caller, self.turn = caller, turn
        self.sides = [_Side(side, turn.session.model_for(side)) for side in turn.session.sides]
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._events()
        finally:
            self.close()

    def _events(self) -> Iterator[bytes]:
        sides = [{"side": s.side, "model": s.model} for s in self.sides]
        yield sse("turn", {"turn": self.turn.number, "title": self.turn.session.title, "sides": sides})
        for side in self.sides:
            self._open(side)
        for side in self.sides:
            if side.error is not None:
                yield self._finish(side)
        active = [s for s in self.sides if s.error is None]
        while active:
            for side in list(active):
                ended = False
                try:
                    raw = next(side.chunks)  # type: ignore[arg-type]
                except StopIteration:
                    ended = True
                except Exception:  # a broken relay must end this side, not the other one
                    log.exception("playground stream of %s failed", side.model)
                    side.error = ApiError("The stream failed; the error is logged.", code="upstream_error", status=502)
                else:
                    yield from self._read(side, raw)
                if ended or side.error is not None:
                    active.remove(side)
                    yield self._finish(side)
        yield sse("end", {})

    def _open(self, side: _Side) -> None:
        session = self.turn.session
        body = {
            "model": side.model,
            "messages": chat_gateway_messages(session=session, side=side.side, turn=self.turn.number),
            "temperature": session.temperature,
            "max_tokens": session.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            side.response = proxy(self.caller, body, "chat")
        except ApiError as exc:
            side.error = exc
            return
        except Exception:  # stored and shown like any failure; the details go to the log only
            log.exception("playground request to %s failed", side.model)
            side.error = ApiError("The gateway failed; the error is logged.", code="internal_error", status=500)
            return
        side.chunks = iter(side.response.streaming_content)

    def _read(self, side: _Side, raw: bytes) -> Iterator[bytes]:
        """Parse the gateway's SSE bytes (``data: {...}`` events) into token events."""
        side.buffer += raw
        while b"\n\n" in side.buffer and side.error is None:
            event, side.buffer = side.buffer.split(b"\n\n", 1)
            for line in event.decode("utf-8", errors="replace").splitlines():
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    side.saw_done = True
                    continue
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    continue
                text = self._apply(side, chunk)
                if text:
                    yield sse("token", {"side": side.side, "text": text})

    @staticmethod
    def _apply(side: _Side, chunk: Any) -> str:
        if not isinstance(chunk, dict):
            return ""
        if "error" in chunk:
            side.error = _stream_error(chunk["error"])
            return ""
        side.answered_model = str(chunk.get("model") or side.answered_model)
        if isinstance(chunk.get("usage"), dict):
            side.usage = chunk["usage"]
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text += str(delta.get("content") or "")
            if choice.get("finish_reason"):
                side.finish_reason = str(choice["finish_reason"])
        side.pieces.append(text)
        return text

    def _finish(self, side: _Side) -> bytes:
        """Store the side's answer (once) and say how it ended."""
        side.drain()
        if side.error is None and not side.saw_done and not side.finish_reason:
            side.error = ApiError("The answer stream ended before it was complete.", code="upstream_error")
        side.message = chat_answer_record(
            turn=self.turn,
            side=side.side,
            content=side.text,
            model=side.answered_model or (side.model if side.error is None else ""),
            finish_reason=side.finish_reason,
            usage=side.usage,
            error=side.error,
        )
        if side.error is not None:
            error = side.error
            return sse(
                "error",
                {
                    "side": side.side,
                    "message_id": side.message.pk,
                    "code": error.code,
                    "message": error.message,
                    "suggestion": error.suggestion or "",
                },
            )
        return sse(
            "done",
            {
                "side": side.side,
                "message_id": side.message.pk,
                "model": side.message.model,
                "finish_reason": side.finish_reason,
                "usage": side.usage,
            },
        )

    def close(self) -> None:
        """Release every upstream stream; store each unfinished answer as ``interrupted``."""
        if self._closed:
            return
        self._closed = True
        for side in self.sides:
            if side.message is None:
                side.abandon()
        for side in self.sides:
            if side.message is None:
                side.message = chat_answer_record(
                    turn=self.turn,
                    side=side.side,
                    content=side.text,
                    model=side.answered_model,
                    finish_reason=ChatMessage.INTERRUPTED,
                    usage=side.usage,
                    error=side.error,
                )


def _stream_error(error: Any) -> ApiError:
    """The error event a stream carried (the gateway's shape, or vLLM's), as an ApiError."""
    if not isinstance(error, dict):
        return ApiError(str(error) or "The stream reported an error.", code="upstream_error", status=502)
    code = error.get("code")
    return ApiError(
        str(error.get("message") or "The stream reported an error."),
        code=code if isinstance(code, str) and code else "upstream_error",
        suggestion=error.get("suggestion") if isinstance(error.get("suggestion"), str) else None,
        status=502,
    )
