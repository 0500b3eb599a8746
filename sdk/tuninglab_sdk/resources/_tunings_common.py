"""What ``client.tunings`` and ``AsyncTunings`` share without I/O: the create body, the
upload keys a create derives, the rules of ``wait_for_completion`` and event de-duplication.

Only the I/O is written twice (sync and async, in ``tunings.py``); every decision lives here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import IO, Any

from tuninglab_sdk._errors import (
    APIConnectionError,
    InternalServerError,
    RateLimitError,
    TuningCancelled,
    TuningFailed,
    WaitTimeoutError,
)
from tuninglab_sdk._progress import make_progress
from tuninglab_sdk._upload import FileInput
from tuninglab_sdk.types import JobEvent, Page, TuningJob

TUNINGS_PATH = "/v1/tunings"
DEFAULT_POLL_INTERVAL = 5.0
# wait_for_completion survives this many failed polls in a row (server restarts, 5xx).
MAX_POLL_FAILURES = 10
TRANSIENT_ERRORS = (APIConnectionError, InternalServerError, RateLimitError)
DataInput = FileInput | str


def job_id_of(job: str | TuningJob) -> str:
    return job.id if isinstance(job, TuningJob) else job


def create_body(
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    method: str | None,
    hyperparameters: Mapping[str, Any] | None,
    suffix: str | None,
    seed: int | None,
    metadata: Mapping[str, str] | None,
    lora: Mapping[str, Any] | None,
    priority: int | None,
    resources: Mapping[str, Any] | None,
    distributed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    optional = {
        "validation_file": validation_file,
        "tuning_method": method,
        "hyperparameters": dict(hyperparameters) if hyperparameters is not None else None,
        "suffix": suffix,
        "seed": seed,
        "metadata": dict(metadata) if metadata is not None else None,
        "lora": dict(lora) if lora is not None else None,
        "priority": priority,
        "resources": dict(resources) if resources is not None else None,
        "distributed": dict(distributed) if distributed is not None else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def upload_keys(idempotency_key: str | None) -> tuple[str | None, str | None]:
    """Keys for the uploads a create does first, derived from the caller's key.

    With an explicit key, a deliberate resend re-uploads the same bytes under the same
    derived key, gets the *same* file id back, and so sends the same create body: the create
    replays instead of failing with 422 ``idempotency_key_reused`` over a new file id.
    """
    if not idempotency_key:
        return None, None
    return f"{idempotency_key}:training-file", f"{idempotency_key}:validation-file"


def outcome(job: TuningJob) -> TuningJob:
    if job.status == "failed":
        raise TuningFailed(job)
    if job.status == "cancelled":
        raise TuningCancelled(job)
    return job


class CompletionWait:
    """The rules of ``wait_for_completion`` without its I/O, shared by the sync and async
    clients: the deadline, the progress display, and how many failed polls in a row are
    survived. The caller polls and sleeps; this object says whether and how long."""

    def __init__(self, job_id: str, *, timeout: float | None, poll_interval: float, progress: bool | IO[str]) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.display = make_progress(job_id, bool(progress), stream=None if isinstance(progress, bool) else progress)
        self.failures = 0

    def gives_up(self) -> bool:
        """After a failed poll: True to raise its error, False to sleep ``poll_interval`` and poll again."""
        # Each poll already retried; a server restart during a long run should
        # still not end the wait. Give up after MAX_POLL_FAILURES polls in a row.
        self.failures += 1
        return self.failures >= MAX_POLL_FAILURES or (self.deadline is not None and time.monotonic() >= self.deadline)

    def next_sleep(self, job: TuningJob) -> float | None:
        """After a successful poll: None when the job is terminal, else seconds until the next poll.

        Raises:
            WaitTimeoutError: the deadline passed (the job keeps running).
        """
        self.failures = 0
        self.display.update(job)
        if job.is_terminal:
            return None
        if self.deadline is None:
            return self.poll_interval
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(
                f"Job {self.job_id} still {job.status} after {self.timeout} s (it keeps running).", job=job
            )
        return min(self.poll_interval, remaining)

    def close(self) -> None:
        self.display.close()


def reaches_seen(page: Page[JobEvent], seen: set[str]) -> bool:
    """Newest-first pages are read until one holds an event already yielded."""
    return any(event.id in seen for event in page.data)


def new_events(pages: list[Page[JobEvent]], seen: set[str]) -> list[JobEvent]:
    """Unseen events from newest-first pages, returned oldest first (log order)."""
    fresh: list[JobEvent] = []
    for page in pages:
        for event in page.data:
            if event.id not in seen:
                fresh.append(event)
    fresh.reverse()
    return fresh
