"""Typed results. Each dataclass keeps the fields callers use most and the whole JSON
object in ``raw``, so a field the server adds later is reachable without an SDK release.

Parsing is tolerant on purpose: the same job can come from our resource routes
(``/v1/tunings``) or the OpenAI-style routes, and a missing key becomes ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class FileObject:
    """An uploaded dataset (OpenAI file object shape plus our validation fields)."""

    id: str
    filename: str | None = None
    bytes: int | None = None
    purpose: str | None = None
    status: str | None = None
    created_at: int | None = None
    format: str | None = None
    example_count: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileObject:
        return cls(
            id=data["id"],
            filename=data.get("filename"),
            bytes=_int(data.get("bytes")),
            purpose=data.get("purpose"),
            status=data.get("status"),
            created_at=_int(data.get("created_at")),
            format=data.get("format"),
            example_count=_int(data.get("example_count")),
            raw=data,
        )


@dataclass
class JobError:
    """Why a job failed: stable ``code``, ``message``, the ``param`` at fault and a ``suggestion``."""

    code: str | None
    message: str | None
    param: str | None = None
    suggestion: str | None = None

    @classmethod
    def from_job_dict(cls, data: dict[str, Any]) -> JobError | None:
        error = data.get("error")
        if not isinstance(error, dict) or not (error.get("code") or error.get("message")):
            return None
        suggestion = error.get("suggestion") or data.get("suggestion") or None
        return cls(
            code=error.get("code"), message=error.get("message"), param=error.get("param"), suggestion=suggestion
        )


@dataclass
class TuningJob:
    """A fine-tuning job. ``loss``/``progress``/``eta_seconds`` are the latest reported values."""

    id: str
    status: str
    model: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    method: str | None = None
    fine_tuned_model: str | None = None
    progress: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    eta_seconds: float | None = None
    current_step: int | None = None
    total_steps: int | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    created_at: int | None = None
    finished_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True once the job is succeeded, failed or cancelled (it will not change again)."""
        return self.status in TERMINAL_STATUSES

    @property
    def suggestion(self) -> str | None:
        return self.error.suggestion if self.error else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningJob:
        def pick(*names: str) -> Any:
            for name in names:
                if data.get(name) is not None:
                    return data[name]
            return None

        # The seed route (``/v1/tunings.get``) sends ``"progress": "60%"`` and the number as
        # ``progress_percent``; the resource and OpenAI routes send the number as ``progress``.
        progress = pick("progress_percent", "progress")
        if isinstance(progress, str):
            progress = progress.rstrip("%").strip()
        # ``method`` is OpenAI's object ({"type": "supervised", ...}); ours is ``tuning_method``.
        method = data.get("tuning_method") or data.get("method")
        if isinstance(method, dict):
            method = method.get("type")
        return cls(
            id=data["id"],
            status=str(data.get("status") or ""),
            model=data.get("model"),
            training_file=data.get("training_file"),
            validation_file=data.get("validation_file"),
            method=method,
            fine_tuned_model=data.get("fine_tuned_model") or None,
            progress=_float(progress),
            loss=_float(pick("loss")),
            eval_loss=_float(pick("eval_loss")),
            eta_seconds=_float(pick("eta_seconds")),
            current_step=_int(pick("current_step")),
            total_steps=_int(pick("total_steps")),
            trained_tokens=_int(data.get("trained_tokens")),
            error=JobError.from_job_dict(data),
            hyperparameters=dict(data.get("hyperparameters") or {}),
            suffix=data.get("suffix") or None,
            seed=_int(data.get("seed")),
            metadata=data.get("metadata"),
            created_at=_int(data.get("created_at")),
            finished_at=_int(data.get("finished_at")),
            raw=data,
        )


@dataclass
class JobEvent:
    """One entry of a job's log: a message or a metrics sample (``data`` holds the numbers)."""

    id: str
    created_at: int | None = None
    level: str | None = None
    message: str = ""
    type: str | None = None
    data: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobEvent:
        return cls(
            id=data["id"],
            created_at=_int(data.get("created_at")),
            level=data.get("level"),
            message=data.get("message") or "",
            type=data.get("type"),
            data=data.get("data"),
            raw=data,
        )


@dataclass
class Checkpoint:
    """A complete training checkpoint of a job."""

    id: str
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    fine_tuned_model_checkpoint: str | None = None
    created_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            id=data["id"],
            step=_int(data.get("step") if data.get("step") is not None else data.get("step_number")),
            metrics=dict(data.get("metrics") or {}),
            fine_tuned_model_checkpoint=data.get("fine_tuned_model_checkpoint"),
            created_at=_int(data.get("created_at")),
            raw=data,
        )


@dataclass
class Model:
    """An OpenAI ``model``: a base model (``owned_by`` "system"), one of your registered models
    (its name) or the ``ft:`` id of one of your jobs. ``type`` says which
    (``base_model`` | ``registered_model`` | ``fine_tuned_model``); ``retrieve`` adds details in
    ``raw`` (a registered model's ``latest_version`` and ``aliases``; an ``ft:`` id's ``model_version``)."""

    id: str
    owned_by: str | None = None
    created: int | None = None
    type: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        return cls(
            id=data["id"],
            owned_by=data.get("owned_by"),
            created=_int(data.get("created")),
            type=data.get("type"),
            raw=data,
        )


@dataclass
class ModelVersion:
    """Version N of a registered model: an adapter (``kind`` "adapter") or full weights, with its
    lineage (base model and hash, files, hyperparameters, environment), metrics, the latest
    evaluation summary and its MLflow mirror state (``mlflow``: run_id, version, synced_at, error)."""

    id: str
    model: str | None = None
    version: int | None = None
    kind: str | None = None
    aliases: list[str] = field(default_factory=list)
    job_id: str | None = None
    base_model: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    size_bytes: int | None = None
    lineage: dict[str, Any] = field(default_factory=dict, repr=False)
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    mlflow: dict[str, Any] = field(default_factory=dict)
    created_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            id=data["id"],
            model=data.get("model"),
            version=_int(data.get("version")),
            kind=data.get("kind"),
            aliases=list(data.get("aliases") or []),
            job_id=data.get("job_id") or data.get("tuning_job"),
            base_model=dict(data.get("base_model") or {}),
            sha256=data.get("sha256"),
            size_bytes=_int(data.get("size_bytes")),
            lineage=dict(data.get("lineage") or {}),
            metrics=dict(data.get("metrics") or {}),
            evaluation=data.get("evaluation") or None,
            mlflow=dict(data.get("mlflow") or {}),
            created_at=_int(data.get("created_at")),
            raw=data,
        )


@dataclass
class Alias:
    """A movable name (``production``, ``staging``, ...) of one version of a model."""

    alias: str
    version: int | None = None
    updated_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alias:
        return cls(
            alias=data.get("alias") or data["id"],
            version=_int(data.get("version")),
            updated_at=_int(data.get("updated_at")),
            raw=data,
        )


@dataclass
class AliasEvent:
    """One move of an alias: ``kind`` (promote | rollback), from which version to which, who and why."""

    id: str
    alias: str | None = None
    kind: str | None = None
    from_version: int | None = None
    to_version: int | None = None
    actor: str | None = None
    reason: str = ""
    created_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AliasEvent:
        return cls(
            id=str(data["id"]),
            alias=data.get("alias"),
            kind=data.get("kind"),
            from_version=_int(data.get("from_version")),
            to_version=_int(data.get("to_version")),
            actor=data.get("actor"),
            reason=data.get("reason") or "",
            created_at=_int(data.get("created_at")),
            raw=data,
        )


@dataclass
class AliasMove:
    """The answer of ``promote`` / ``rollback``: where ``alias`` points now (``version``) and before.

    ``event`` is None when the alias already pointed at that version (nothing moved).
    """

    model: str | None
    alias: str
    version: int | None = None
    previous_version: int | None = None
    event: AliasEvent | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AliasMove:
        event = data.get("event")
        return cls(
            model=data.get("model"),
            alias=data["alias"],
            version=_int(data.get("version")),
            previous_version=_int(data.get("previous_version")),
            event=AliasEvent.from_dict(event) if isinstance(event, dict) else None,
            raw=data,
        )


def _side(value: Any) -> int | str | None:
    """A run's side: a version number, or ``"base"`` for the base model without an adapter."""
    return value if isinstance(value, str) else _int(value)


@dataclass
class Evaluation:
    """An evaluation of a version (or of the base model, ``version == "base"``) on a dataset.

    Runs on a worker: ``status`` goes queued → running → succeeded | failed; poll
    ``client.models.evaluation(id)``. ``metrics`` holds exact match, ROUGE-L, BLEU, chrF, loss /
    perplexity (and the judge's score when asked); ``examples`` the per-example predictions.
    """

    id: str
    status: str
    model: str | None = None
    version: int | str | None = None
    file: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    created_at: int | None = None
    finished_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(
            id=data["id"],
            status=str(data.get("status") or ""),
            model=data.get("model"),
            version=_side(data.get("version")),
            file=data.get("file"),
            metrics=dict(data.get("metrics") or {}),
            error=data.get("error") or None,
            created_at=_int(data.get("created_at")),
            finished_at=_int(data.get("finished_at")),
            raw=data,
        )


@dataclass
class Comparison:
    """An A/B comparison of two versions (either may be ``"base"``) on a dataset.

    ``table``: ``[{metric, a, b, delta}]``; ``outcomes``: ``{wins, ties, losses}`` of B against A.
    ``client.models.comparison_report(id)`` gives the same as Markdown.
    """

    id: str
    status: str
    model: str | None = None
    version_a: int | str | None = None
    version_b: int | str | None = None
    file: str | None = None
    table: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    created_at: int | None = None
    finished_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        return cls(
            id=data["id"],
            status=str(data.get("status") or ""),
            model=data.get("model"),
            version_a=_side(data.get("version_a")),
            version_b=_side(data.get("version_b")),
            file=data.get("file"),
            table=list(data.get("table") or []),
            outcomes=dict(data.get("outcomes") or {}),
            error=data.get("error") or None,
            created_at=_int(data.get("created_at")),
            finished_at=_int(data.get("finished_at")),
            raw=data,
        )


@dataclass(frozen=True)
class RouteSplit:
    """One version's share of a route: ``weight`` out of the sum of the route's weights."""

    version: int
    weight: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteSplit:
        return cls(version=int(data["version"]), weight=int(data["weight"]))


@dataclass(frozen=True)
class RouteShadow:
    """The version that gets a copy of ``percent`` % of routed requests; its answers are recorded, never returned."""

    version: int
    percent: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteShadow:
        return cls(version=int(data["version"]), percent=int(data["percent"]))


@dataclass
class Route:
    """How requests that name a model bare (``"model": "bot"``) are split between its versions.

    ``sticky`` says which key keeps one caller on one version: ``user`` (the request's
    ``user`` field), ``header`` (``X-Route-Key``), ``api_key``, or ``none`` (every request
    drawn anew). Pinned names (``bot@v3``, ``bot@production``, ``ft:`` ids) bypass the route.
    """

    model: str | None
    sticky: str | None = None
    splits: list[RouteSplit] = field(default_factory=list)
    shadow: RouteShadow | None = None
    updated_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Route:
        shadow = data.get("shadow")
        return cls(
            model=data.get("model"),
            sticky=data.get("sticky"),
            splits=[RouteSplit.from_dict(s) for s in data.get("splits") or []],
            shadow=RouteShadow.from_dict(shadow) if isinstance(shadow, dict) else None,
            updated_at=_int(data.get("updated_at")),
            raw=data,
        )


@dataclass
class VersionTraffic:
    """Live counters of one version: what the gateway answered with it, and its shadow copies.

    ``error_rate`` and ``mean_latency_ms`` are None before the first request;
    ``last_request_at`` is a unix time in seconds, like every time in the API (None when it never served).
    """

    version: int
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_latency_ms: float | None = None
    max_latency_ms: float | None = None
    shadow_requests: int = 0
    shadow_errors: int = 0
    last_request_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionTraffic:
        return cls(
            version=int(data["version"]),
            requests=_int(data.get("requests")) or 0,
            errors=_int(data.get("errors")) or 0,
            error_rate=_float(data.get("error_rate")),
            prompt_tokens=_int(data.get("prompt_tokens")) or 0,
            completion_tokens=_int(data.get("completion_tokens")) or 0,
            mean_latency_ms=_float(data.get("mean_latency_ms")),
            max_latency_ms=_float(data.get("max_latency_ms")),
            shadow_requests=_int(data.get("shadow_requests")) or 0,
            shadow_errors=_int(data.get("shadow_errors")) or 0,
            last_request_at=data.get("last_request_at"),
            raw=data,
        )


@dataclass
class ShadowRecord:
    """One mirrored request: the primary version's answer beside the shadow version's.

    ``primary_version`` is None when the primary was the bare base; ``error`` says why the
    shadow gave no answer (``shadow_output`` is then empty).
    """

    id: str
    endpoint: str | None = None
    primary_version: int | None = None
    shadow_version: int | None = None
    request: dict[str, Any] = field(default_factory=dict)
    primary_output: str = ""
    shadow_output: str = ""
    shadow_latency_ms: float | None = None
    error: str | None = None
    created_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowRecord:
        return cls(
            id=str(data["id"]),
            endpoint=data.get("endpoint"),
            primary_version=_int(data.get("primary_version")),
            shadow_version=_int(data.get("shadow_version")),
            request=dict(data.get("request") or {}),
            primary_output=data.get("primary_output") or "",
            shadow_output=data.get("shadow_output") or "",
            shadow_latency_ms=_float(data.get("shadow_latency_ms")),
            error=data.get("error") or None,
            created_at=_int(data.get("created_at")),
            raw=data,
        )


@dataclass
class Page(Generic[T]):
    """One page of a list endpoint (``{"object": "list", "data", "has_more", "first_id", "last_id"}``)."""

    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
