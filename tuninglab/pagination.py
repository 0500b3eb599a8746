"""Cursor pagination for list endpoints, OpenAI style (``after`` + ``limit`` → ``has_more``).

Keyset pagination rather than offsets: a cursor is the id of the last item the client saw,
so rows inserted while a client pages (new jobs, new events) never shift or duplicate
items across pages. The queryset's own ordering decides the order; the cursor row's values
for those ordering fields bound the next page.

Used by the jobs API (jobs, events, checkpoints) and the files API.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, Q, QuerySet

from tuninglab.errors import InvalidRequestError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def parse_limit(request: Any, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """Read ``?limit=``: an integer in 1..maximum (default 20). Bad values are a 400 on ``limit``."""
    raw = request.query_params.get("limit")
    if raw in (None, ""):
        return default
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"limit must be an integer between 1 and {maximum}, got {raw!r}.", code="invalid_limit", param="limit"
        ) from None
    if not 1 <= limit <= maximum:
        raise InvalidRequestError(
            f"limit must be between 1 and {maximum}, got {limit}.", code="invalid_limit", param="limit"
        )
    return limit


def _ordering(queryset: QuerySet) -> list[str]:
    """The queryset's effective ordering, with the primary key appended as the tie-breaker.

    Keyset pagination needs a total order; ``created_at`` alone ties on fast inserts.
    """
    fields = list(queryset.query.order_by or queryset.model._meta.ordering or [])
    fields = [f for f in fields if isinstance(f, str)]
    pk = queryset.model._meta.pk.name
    if not any(f.lstrip("-") in (pk, "pk") for f in fields):
        last_desc = bool(fields) and fields[-1].startswith("-")
        fields.append(f"-{pk}" if last_desc else pk)
    return fields


def _after_filter(fields: list[str], cursor: Model) -> Q:
    """Rows strictly after ``cursor`` in the lexicographic order of ``fields``.

    (f1 > v1) OR (f1 = v1 AND f2 > v2) OR ...; "greater" flips to "less" on descending fields.
    """
    condition = Q()
    equal_prefix = Q()
    for field in fields:
        name = field.lstrip("-")
        value = cursor.pk if name == "pk" else getattr(cursor, name)
        op = "lt" if field.startswith("-") else "gt"
        condition |= equal_prefix & Q(**{f"{name}__{op}": value})
        equal_prefix &= Q(**{name: value})
    return condition


def paginate(queryset: QuerySet, request: Any, *, cursor_param: str = "after") -> tuple[list[Any], bool]:
    """One page of ``queryset``: (items, has_more), honouring ``?after=<id>&limit=<n>``.

    The queryset must already be scoped to the caller: the cursor is looked up *inside* it,
    so another owner's id is as unknown as a made-up one (400 ``invalid_cursor``).

    Args:
        queryset: scoped, ordered queryset (its ordering is kept; pk breaks ties).
        request: DRF request (reads ``query_params``).
        cursor_param: the query parameter carrying the cursor id.

    Returns:
        (items of the page, whether more items follow).

    Raises:
        InvalidRequestError: bad ``limit`` or an unknown cursor.
    """
    limit = parse_limit(request)
    fields = _ordering(queryset)
    queryset = queryset.order_by(*fields)
    after = request.query_params.get(cursor_param)
    if after:
        cursor = queryset.filter(pk=after).first()
        if cursor is None:
            raise InvalidRequestError(
                f"Unknown cursor {after!r}: pass the id of an item from the previous page.",
                code="invalid_cursor",
                param=cursor_param,
            )
        queryset = queryset.filter(_after_filter(fields, cursor))
    # One extra row tells us whether another page exists without a COUNT(*).
    rows = list(queryset[: limit + 1])
    return rows[:limit], len(rows) > limit


def list_response(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """The list envelope: ``{"object": "list", "data", "has_more", "first_id", "last_id"}``."""
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
