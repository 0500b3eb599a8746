"""What every page view shares: owner lookups as 404s, domain errors as messages, query parsing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.contrib import messages
from django.http import Http404, HttpRequest

from tuninglab.errors import ApiError, NotFoundError

T = TypeVar("T")


def owned_or_404(lookup: Callable[..., T], **kwargs: Any) -> T:
    """Call an owner-scoped selector; its NotFoundError (a missing id or another owner's) is a 404 page."""
    try:
        return lookup(**kwargs)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc


def error_text(exc: ApiError) -> str:
    """``message (code) — suggestion``: what the API error body says, as one line for a flash message."""
    text = f"{exc.message} ({exc.code})"
    if exc.suggestion:
        text += f" {exc.suggestion}"
    return text


@contextmanager
def errors_as_messages(request: HttpRequest) -> Iterator[None]:
    """Turn a service's refusal (409, 400, a failed check) into an error message instead of a 500.

    The caller redirects back afterwards either way: the page shows the message and the
    unchanged state.
    """
    try:
        yield
    except ApiError as exc:
        messages.error(request, error_text(exc))


def int_param(value: Any, *, default: int | None = None, minimum: int = 0) -> int | None:
    """A non-negative integer query or form value; anything else is ``default`` (pages never 400)."""
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return default
    return number if number >= minimum else default
