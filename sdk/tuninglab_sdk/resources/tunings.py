"""``client.tunings``: create, get, list, cancel, events (with ``follow``), checkpoints, and
``wait_for_completion``.

Routes: the resource style ``/v1/tunings[/{id}[/cancel|/events|/checkpoints]]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from tuninglab_sdk._base import NOT_GIVEN, TimeoutTypes
from tuninglab_sdk._pagination import AsyncPager, SyncPager, parse_page
from tuninglab_sdk._upload import looks_like_file_id
from tuninglab_sdk.resources._tunings_common import (
    DEFAULT_POLL_INTERVAL,
    TRANSIENT_ERRORS,
    TUNINGS_PATH,
    CompletionWait,
    DataInput,
    create_body,
    job_id_of,
    new_events,
    outcome,
    reaches_seen,
    upload_keys,
)
from tuninglab_sdk.types import Checkpoint, JobEvent, Page, TuningJob

if TYPE_CHECKING:
    from tuninglab_sdk._base import AsyncAPIClient, SyncAPIClient
    from tuninglab_sdk.resources.files import AsyncFiles, Files


class Tunings:
    def __init__(self, client: SyncAPIClient, files: Files) -> None:
        self._client = client
        self._files = files

    def _resolve_file(self, data: DataInput, timeout: TimeoutTypes, idempotency_key: str | None) -> str:
        if looks_like_file_id(data):
            return str(data)
        return self._files.upload(data, timeout=timeout, idempotency_key=idempotency_key).id

    def create(
        self,
        *,
        model: str,
        data: DataInput,
        method: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        validation_data: DataInput | None = None,
        metadata: Mapping[str, str] | None = None,
        lora: Mapping[str, Any] | None = None,
        priority: int | None = None,
        resources: Mapping[str, Any] | None = None,
        distributed: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> TuningJob:
        """Create a tuning job.

        Args:
            model: base model name (e.g. ``"tiny-llama"``).
            data: a local JSONL path (uploaded first) or a ``file-...`` id of an uploaded file.
            method: ``"lora"`` (default on the server), ``"qlora"`` or ``"full"``.
            hyperparameters: ``n_epochs``, ``batch_size``, ``learning_rate_multiplier``,
                ``max_steps``, ``max_seq_len``, ... (``"auto"`` where allowed).
            validation_data: like ``data``, optional.
            lora: ``{"rank", "alpha", "dropout", "target_modules"}``.
            resources: ``{"gpus", "nproc", "launcher"}``; ``nproc`` > 1 alone trains with DDP.
            distributed: ``{"strategy": "ddp"|"fsdp"|"deepspeed", "zero_stage", "offload_optimizer",
                "offload_params", "nproc_per_node", "nnodes", "rdzv_endpoint"}`` (see docs/distributed.md).
            idempotency_key: reuse to make a *deliberate* resend a no-op; by default a fresh
                key per call, shared by the call's retries.
            timeout: per-request timeout for this call (uploads included).

        Raises:
            ValidationError: bad parameters (``param`` names the field).
            NotFoundError: unknown model or file id.
        """
        keys = upload_keys(idempotency_key)
        training_file = self._resolve_file(data, timeout, keys[0])
        validation_file = self._resolve_file(validation_data, timeout, keys[1]) if validation_data is not None else None
        body = create_body(
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            method=method,
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=seed,
            metadata=metadata,
            lora=lora,
            priority=priority,
            resources=resources,
            distributed=distributed,
        )
        result = self._client._request(
            "POST", TUNINGS_PATH, json=body, timeout=timeout, idempotency_key=idempotency_key
        )
        return TuningJob.from_dict(result)

    def get(self, job_id: str | TuningJob, *, timeout: TimeoutTypes = NOT_GIVEN) -> TuningJob:
        return TuningJob.from_dict(self._client._request("GET", f"{TUNINGS_PATH}/{job_id_of(job_id)}", timeout=timeout))

    retrieve = get

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        status: str | None = None,
        model: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> SyncPager[TuningJob]:
        """All your jobs, newest first; iterating fetches further pages as needed.

        ``limit`` is the page size; ``status`` may be comma-separated (``"queued,running"``).
        """

        def fetch(cursor: str | None) -> Page[TuningJob]:
            params = {"limit": limit, "after": cursor, "status": status, "model": model}
            body = self._client._request("GET", TUNINGS_PATH, params=params, timeout=timeout)
            return parse_page(body, TuningJob.from_dict)

        return SyncPager(fetch, after=after)

    def cancel(self, job_id: str | TuningJob, *, timeout: TimeoutTypes = NOT_GIVEN) -> TuningJob:
        """Cancel a job. A queued job is cancelled at once; a running one stops at the next step
        (its status stays ``running`` with ``cancel_requested`` until then).

        Raises:
            ConflictError: the job already finished (code ``invalid_state``; not retried).
        """
        body = self._client._request("POST", f"{TUNINGS_PATH}/{job_id_of(job_id)}/cancel", timeout=timeout)
        return TuningJob.from_dict(body)

    def _events_page(self, job_id: str, cursor: str | None, limit: int | None, timeout: TimeoutTypes) -> Page[JobEvent]:
        body = self._client._request(
            "GET", f"{TUNINGS_PATH}/{job_id}/events", params={"limit": limit, "after": cursor}, timeout=timeout
        )
        return parse_page(body, JobEvent.from_dict)

    def events(
        self,
        job_id: str | TuningJob,
        *,
        limit: int | None = None,
        after: str | None = None,
        follow: bool = False,
        poll_interval: float = 2.0,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Iterator[JobEvent]:
        """A job's events.

        Without ``follow``: every event, newest first (the server's and OpenAI's order),
        paginated lazily. With ``follow=True``: a live stream in log order (oldest first) —
        the existing events, then new ones as they appear, polling every ``poll_interval``
        seconds, ending once the job is terminal and its last events were yielded.
        """
        jid = job_id_of(job_id)
        if not follow:
            return iter(SyncPager(lambda cursor: self._events_page(jid, cursor, limit, timeout), after=after))
        return self._follow(jid, limit=limit, poll_interval=poll_interval, timeout=timeout)

    def _unseen_pages(self, job_id: str, seen: set[str], limit: int | None, timeout: TimeoutTypes) -> list[Page]:
        pages = []
        for page in SyncPager(lambda cursor: self._events_page(job_id, cursor, limit, timeout)).pages():
            pages.append(page)
            if reaches_seen(page, seen):
                break
        return pages

    def _follow(
        self, job_id: str, *, limit: int | None, poll_interval: float, timeout: TimeoutTypes
    ) -> Iterator[JobEvent]:
        seen: set[str] = set()
        while True:
            # Read the job first: events written before it turned terminal are then on the page we read next.
            terminal = self.get(job_id, timeout=timeout).is_terminal
            for event in new_events(self._unseen_pages(job_id, seen, limit, timeout), seen):
                seen.add(event.id)
                yield event
            if terminal:
                return
            self._client._poll_sleep(poll_interval)

    def checkpoints(
        self,
        job_id: str | TuningJob,
        *,
        limit: int | None = None,
        after: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> SyncPager[Checkpoint]:
        """A job's complete checkpoints, newest (highest step) first."""
        jid = job_id_of(job_id)

        def fetch(cursor: str | None) -> Page[Checkpoint]:
            body = self._client._request(
                "GET", f"{TUNINGS_PATH}/{jid}/checkpoints", params={"limit": limit, "after": cursor}, timeout=timeout
            )
            return parse_page(body, Checkpoint.from_dict)

        return SyncPager(fetch, after=after)

    def wait_for_completion(
        self,
        job_id: str | TuningJob,
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        progress: bool | IO[str] = True,
        request_timeout: TimeoutTypes = NOT_GIVEN,
    ) -> TuningJob:
        """Poll until the job is terminal, showing a progress bar (status, loss, step/total, ETA).

        Args:
            timeout: seconds to wait in total (None: forever).
            poll_interval: seconds between polls.
            progress: show the bar (tqdm if installed, else a text line) on stderr, or on the
                text stream given here; False for none (a service that waits for jobs).
            request_timeout: per-request HTTP timeout.

        Returns:
            The succeeded job (``fine_tuned_model`` set).

        Raises:
            TuningFailed: the job failed (``code``, ``message``, ``param``, ``suggestion``, ``job``).
            TuningCancelled: the job was cancelled.
            WaitTimeoutError: (a ``TimeoutError``) ``timeout`` passed; the job keeps running.
        """
        jid = job_id_of(job_id)
        wait = CompletionWait(jid, timeout=timeout, poll_interval=poll_interval, progress=progress)
        try:
            while True:
                try:
                    job = self.get(jid, timeout=request_timeout)
                except TRANSIENT_ERRORS:
                    if wait.gives_up():
                        raise
                    self._client._poll_sleep(poll_interval)
                    continue
                delay = wait.next_sleep(job)
                if delay is None:
                    break
                self._client._poll_sleep(delay)
        finally:
            wait.close()
        return outcome(job)


class AsyncTunings:
    def __init__(self, client: AsyncAPIClient, files: AsyncFiles) -> None:
        self._client = client
        self._files = files

    async def _resolve_file(self, data: DataInput, timeout: TimeoutTypes, idempotency_key: str | None) -> str:
        if looks_like_file_id(data):
            return str(data)
        return (await self._files.upload(data, timeout=timeout, idempotency_key=idempotency_key)).id

    async def create(
        self,
        *,
        model: str,
        data: DataInput,
        method: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        validation_data: DataInput | None = None,
        metadata: Mapping[str, str] | None = None,
        lora: Mapping[str, Any] | None = None,
        priority: int | None = None,
        resources: Mapping[str, Any] | None = None,
        distributed: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> TuningJob:
        """See :meth:`Tunings.create`."""
        keys = upload_keys(idempotency_key)
        training_file = await self._resolve_file(data, timeout, keys[0])
        validation_file = (
            await self._resolve_file(validation_data, timeout, keys[1]) if validation_data is not None else None
        )
        body = create_body(
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            method=method,
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=seed,
            metadata=metadata,
            lora=lora,
            priority=priority,
            resources=resources,
            distributed=distributed,
        )
        result = await self._client._request(
            "POST", TUNINGS_PATH, json=body, timeout=timeout, idempotency_key=idempotency_key
        )
        return TuningJob.from_dict(result)

    async def get(self, job_id: str | TuningJob, *, timeout: TimeoutTypes = NOT_GIVEN) -> TuningJob:
        body = await self._client._request("GET", f"{TUNINGS_PATH}/{job_id_of(job_id)}", timeout=timeout)
        return TuningJob.from_dict(body)

    retrieve = get

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        status: str | None = None,
        model: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AsyncPager[TuningJob]:
        """``async for job in client.tunings.list(): ...`` — see :meth:`Tunings.list`."""

        async def fetch(cursor: str | None) -> Page[TuningJob]:
            params = {"limit": limit, "after": cursor, "status": status, "model": model}
            body = await self._client._request("GET", TUNINGS_PATH, params=params, timeout=timeout)
            return parse_page(body, TuningJob.from_dict)

        return AsyncPager(fetch, after=after)

    async def cancel(self, job_id: str | TuningJob, *, timeout: TimeoutTypes = NOT_GIVEN) -> TuningJob:
        body = await self._client._request("POST", f"{TUNINGS_PATH}/{job_id_of(job_id)}/cancel", timeout=timeout)
        return TuningJob.from_dict(body)

    async def _events_page(
        self, job_id: str, cursor: str | None, limit: int | None, timeout: TimeoutTypes
    ) -> Page[JobEvent]:
        body = await self._client._request(
            "GET", f"{TUNINGS_PATH}/{job_id}/events", params={"limit": limit, "after": cursor}, timeout=timeout
        )
        return parse_page(body, JobEvent.from_dict)

    def events(
        self,
        job_id: str | TuningJob,
        *,
        limit: int | None = None,
        after: str | None = None,
        follow: bool = False,
        poll_interval: float = 2.0,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AsyncIterator[JobEvent]:
        """``async for event in client.tunings.events(id, follow=True)`` — see :meth:`Tunings.events`."""
        jid = job_id_of(job_id)
        if not follow:
            pager = AsyncPager(lambda cursor: self._events_page(jid, cursor, limit, timeout), after=after)
            return pager.__aiter__()
        return self._follow(jid, limit=limit, poll_interval=poll_interval, timeout=timeout)

    async def _unseen_pages(self, job_id: str, seen: set[str], limit: int | None, timeout: TimeoutTypes) -> list[Page]:
        pages = []
        async for page in AsyncPager(lambda cursor: self._events_page(job_id, cursor, limit, timeout)).pages():
            pages.append(page)
            if reaches_seen(page, seen):
                break
        return pages

    async def _follow(
        self, job_id: str, *, limit: int | None, poll_interval: float, timeout: TimeoutTypes
    ) -> AsyncIterator[JobEvent]:
        seen: set[str] = set()
        while True:
            terminal = (await self.get(job_id, timeout=timeout)).is_terminal
            for event in new_events(await self._unseen_pages(job_id, seen, limit, timeout), seen):
                seen.add(event.id)
                yield event
            if terminal:
                return
            await self._client._poll_sleep(poll_interval)

    def checkpoints(
        self,
        job_id: str | TuningJob,
        *,
        limit: int | None = None,
        after: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AsyncPager[Checkpoint]:
        jid = job_id_of(job_id)

        async def fetch(cursor: str | None) -> Page[Checkpoint]:
            body = await self._client._request(
                "GET", f"{TUNINGS_PATH}/{jid}/checkpoints", params={"limit": limit, "after": cursor}, timeout=timeout
            )
            return parse_page(body, Checkpoint.from_dict)

        return AsyncPager(fetch, after=after)

    async def wait_for_completion(
        self,
        job_id: str | TuningJob,
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        progress: bool | IO[str] = True,
        request_timeout: TimeoutTypes = NOT_GIVEN,
    ) -> TuningJob:
        """See :meth:`Tunings.wait_for_completion`."""
        jid = job_id_of(job_id)
        wait = CompletionWait(jid, timeout=timeout, poll_interval=poll_interval, progress=progress)
        try:
            while True:
                try:
                    job = await self.get(jid, timeout=request_timeout)
                except TRANSIENT_ERRORS:
                    if wait.gives_up():
                        raise
                    await self._client._poll_sleep(poll_interval)
                    continue
                delay = wait.next_sleep(job)
                if delay is None:
                    break
                await self._client._poll_sleep(delay)
        finally:
            wait.close()
        return outcome(job)
