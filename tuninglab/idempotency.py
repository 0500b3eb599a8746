"""``Idempotency-Key`` for POST endpoints: a retried request gets the first answer, never a second job.

Protocol (per owner and key; keys expire after ``RECORD_TTL``, 24 h):

1. The first request *inserts* an ``IdempotencyRecord`` (status ``NULL`` = in progress) in its
   own committed transaction. The unique constraint on (owner, key) is the lock: of N
   concurrent requests exactly one insert succeeds, the others get ``IntegrityError``.
2. The winner runs the view **and** stores the response in the record inside *one*
   transaction. So the side effect (the job row) and the stored answer commit together or
   not at all: a crash can never leave a job without its recorded answer.
3. Losers poll the record until the winner's answer is committed, then replay it (same
   status and body, header ``Idempotent-Replayed: true``). A different body, path or query
   string under the same key is a 422 ``idempotency_key_reused``.
4. Only 2xx answers are stored. On an error the winner deletes its record, so the client
   may fix the request and retry with the same key (errors have no side effects: the
   transaction rolled back). A waiting loser then takes over and runs the request itself.
5. An in-progress record older than ``STALE_AFTER`` belongs to a crashed process; it is
   taken over. A loser that waited ``WAIT_TIMEOUT`` (about a second) without an answer gets
   409 ``idempotency_request_in_progress`` with ``Retry-After``: a web worker is too scarce to
   park for the length of someone else's request, and the client's retry replays the answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.response import Response

from tuninglab.errors import ConflictError, IdempotencyError, InvalidRequestError
from tuninglab.models import IdempotencyRecord

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
RECORD_TTL = timedelta(hours=24)
STALE_AFTER = timedelta(minutes=5)
WAIT_TIMEOUT = 1.0
RETRY_AFTER_SECONDS = 1
POLL_INTERVAL = 0.05


def _hash_value(value: Any, digest: Any) -> None:
    """Feed a canonical form of ``value`` to ``digest``. Uploaded files are hashed by content."""
    if isinstance(value, UploadedFile):
        digest.update(b"file:" + (value.name or "").encode() + b":")
        for chunk in value.chunks():
            digest.update(chunk)
        value.seek(0)  # the view reads the file again
    else:
        digest.update(json.dumps(value, sort_keys=True, cls=DjangoJSONEncoder, default=str).encode())


def request_fingerprint(request: Any) -> str:
    """SHA-256 over method, path, query string and the parsed body (key order does not matter).

    The query string is part of the request (``?purpose=`` chooses what an upload is for), so
    the same key with another query string is another request, not a retry.
    """
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n".encode())
    for key, values in sorted(request.query_params.lists(), key=lambda item: item[0]):
        digest.update(json.dumps([key, values]).encode())
    digest.update(b"\n")
    data = request.data
    if hasattr(data, "lists"):
        # QueryDict / MultiValueDict: form and multipart bodies (DRF merges uploaded files in).
        for key, values in sorted(data.lists(), key=lambda item: item[0]):
            digest.update(key.encode() + b"=")
            for value in values:
                _hash_value(value, digest)
    else:
        _hash_value(data, digest)
    return digest.hexdigest()


def _validated_key(raw: str) -> str:
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequestError(
            f"{HEADER} must be 1..{MAX_KEY_LENGTH} printable characters.",
            code="invalid_idempotency_key",
            param=HEADER,
        )
    return key


def _replay(record: IdempotencyRecord) -> Response:
    response = Response(record.response_body, status=record.response_status)
    response[REPLAY_HEADER] = "true"
    return response


def _reused(key: str) -> IdempotencyError:
    return IdempotencyError(
        f"{HEADER} {key!r} was already used with a different request.",
        code="idempotency_key_reused",
        param=HEADER,
        suggestion="Use a new key for a new request; reuse a key only to retry the exact same request.",
    )


def _in_progress(key: str) -> Response:
    """409 with ``Retry-After``: the first request with this key is still running."""
    error = ConflictError(
        f"A request with {HEADER} {key!r} is still being processed; retry shortly.",
        code="idempotency_request_in_progress",
        param=HEADER,
        suggestion=f"Retry the same request with the same key after {RETRY_AFTER_SECONDS} s to get its answer.",
    )
    # Returned, not raised: the API exception handler renders ApiError without extra headers.
    response = Response({"error": error.as_dict()}, status=error.status)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _claim(owner: Any, key: str, fingerprint: str, request: Any) -> IdempotencyRecord | None:
    """Try to become the request that runs: insert the in-progress record. None if another has it."""
    now = timezone.now()
    # Expired records (and abandoned in-progress ones) no longer bind the key.
    IdempotencyRecord.objects.filter(owner=owner, key=key, created_at__lt=now - RECORD_TTL).delete()
    IdempotencyRecord.objects.filter(
        owner=owner, key=key, response_status__isnull=True, created_at__lt=now - STALE_AFTER
    ).delete()
    try:
        # Own transaction (a savepoint if the caller has one open): the insert commits at once so
        # that concurrent requests see it and wait instead of blocking on an uncommitted row.
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                owner=owner, key=key, method=request.method, path=request.path[:255], request_hash=fingerprint
            )
    except IntegrityError:
        return None


def _run_and_store(record: IdempotencyRecord, handler: Callable[[], Response]) -> Response:
    """Run the view and store a 2xx answer in the same transaction as the view's writes."""
    try:
        with transaction.atomic():
            response = handler()
            if 200 <= response.status_code < 300:
                # Round-trip through JSON so the stored body equals what a client received.
                body = json.loads(json.dumps(response.data, cls=DjangoJSONEncoder))
                updated = IdempotencyRecord.objects.filter(pk=record.pk, response_status__isnull=True).update(
                    response_status=response.status_code, response_body=body
                )
                if updated != 1:
                    # Our record was taken over as stale while we ran; roll our work back.
                    raise ConflictError(
                        "This request took too long and was superseded by a retry with the same key.",
                        code="idempotency_request_in_progress",
                        param=HEADER,
                    )
                return response
    except BaseException:
        IdempotencyRecord.objects.filter(pk=record.pk, response_status__isnull=True).delete()
        raise
    # A non-2xx answer is not stored: free the key for a corrected retry.
    IdempotencyRecord.objects.filter(pk=record.pk, response_status__isnull=True).delete()
    return response


def run_idempotent(request: Any, handler: Callable[[], Response]) -> Response:
    """Run ``handler`` at most once per (caller, ``Idempotency-Key``); replay its answer otherwise.

    Without the header the handler simply runs. Needs an authenticated ``request.user``.

    Raises:
        IdempotencyError: 422 when the key was used for a different request.
        ConflictError: 409 when our own record was taken over as stale while the handler ran.

    A duplicate of a request still running after ``WAIT_TIMEOUT`` gets a 409
    ``idempotency_request_in_progress`` response with ``Retry-After``.
    """
    raw = request.headers.get(HEADER)
    if raw is None:
        return handler()
    key = _validated_key(raw)
    owner = request.user
    fingerprint = request_fingerprint(request)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        record = _claim(owner, key, fingerprint, request)
        if record is not None:
            return _run_and_store(record, handler)
        # Someone else holds the key: wait for its answer (or for it to give the key up).
        while True:
            existing = IdempotencyRecord.objects.filter(owner=owner, key=key).first()
            if existing is None:
                break  # the holder failed and freed the key; try to claim it ourselves
            if existing.request_hash != fingerprint:
                raise _reused(key)
            if existing.response_status is not None:
                return _replay(existing)
            if existing.created_at < timezone.now() - STALE_AFTER:
                break  # abandoned by a crashed process; _claim deletes it
            if time.monotonic() > deadline:
                return _in_progress(key)
            time.sleep(POLL_INTERVAL)


def idempotency_records_purge(*, now: Any = None, dry_run: bool = False) -> int:
    """Delete records past ``RECORD_TTL`` (they bind their key no more); returns how many there were.

    ``_claim`` drops an expired record only when its key comes back, so without this sweep every
    key ever sent stays in the table. ``manage.py cleanup`` calls it.
    """
    expired = IdempotencyRecord.objects.filter(created_at__lt=(now or timezone.now()) - RECORD_TTL)
    if dry_run:
        return expired.count()
    deleted, _ = expired.delete()
    return deleted


def idempotent(view_method: Callable[..., Response]) -> Callable[..., Response]:
    """Decorator for an APIView's ``post``: honour ``Idempotency-Key`` (see the module docstring)."""

    @functools.wraps(view_method)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Response:
        return run_idempotent(request, lambda: view_method(self, request, *args, **kwargs))

    return wrapper
