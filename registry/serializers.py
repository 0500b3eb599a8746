"""The JSON shapes of the registry API: models (OpenAI's ``model``), versions, aliases and their
history, evaluations and comparisons.

Plain functions rather than DRF serializer classes, like ``tunings/serializers/jobs.py``: the
output is read-only and the SDK depends on these exact keys. None of them queries: the
selectors join (or prefetch) what a row shows, once per page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registry.models import Alias, AliasEvent, BaseModel, Comparison, Evaluation, ModelVersion, RegisteredModel
from tuninglab.errors import InvalidRequestError

# ``owned_by`` of the base models every owner shares (OpenAI answers "system" for its own models).
SYSTEM_OWNER = "system"
# How a request and an answer name "the base model without an adapter" as a side of a run.
BASE_SIDE = "base"


def unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def base_model_to_dict(base: BaseModel) -> dict[str, Any]:
    """A base model as an OpenAI ``model``."""
    return {
        "id": base.name,
        "object": "model",
        "created": unix(base.created_at),
        "owned_by": SYSTEM_OWNER,
        "type": "base_model",
    }


def registered_model_to_dict(model: RegisteredModel, *, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """A registered model as an OpenAI ``model``; ``summary`` (detail only) adds versions and aliases.

    Args:
        model: with ``owner`` selected.
        summary: ``registered_model_summary(...)``: latest version, version count, ``{alias: version}``.
    """
    body = {
        "id": model.name,
        "object": "model",
        "created": unix(model.created_at),
        "owned_by": model.owner.get_username(),
        "type": "registered_model",
    }
    if summary is not None:
        body.update(summary)
    return body


def fine_tuned_model_to_dict(version: ModelVersion, *, detail: bool = False) -> dict[str, Any]:
    """A version's ``ft:`` id as an OpenAI ``model``; ``detail`` adds the whole version object.

    Args:
        version: with ``owner`` and ``job`` selected (``detail``: as for ``model_version_to_dict``).
    """
    body = {
        "id": version.job.fine_tuned_model,
        "object": "model",
        "created": unix(version.created_at),
        "owned_by": version.owner.get_username(),
        "type": "fine_tuned_model",
    }
    if detail:
        body["model_version"] = model_version_to_dict(version)
    return body


def model_version_to_dict(version: ModelVersion) -> dict[str, Any]:
    """One version with its lineage, metrics, latest evaluation summary and MLflow mirror state.

    Args:
        version: with ``registered_model``, ``base_model`` selected and ``aliases`` prefetched
            (an unprefetched detail row costs one query for its aliases).
    """
    recorded_base = (version.lineage or {}).get("base_model") or {}
    return {
        "id": version.id,
        "object": "model.version",
        "model": version.registered_model.name,
        "version": version.version,
        "kind": version.kind,
        "aliases": sorted(alias.alias for alias in version.aliases.all()),
        "job_id": version.job_id,
        # The base the version was trained on, as recorded then (the hash the serving check compares).
        "base_model": {
            "name": recorded_base.get("name") or version.base_model.name,
            "content_hash": recorded_base.get("content_hash") or version.base_model.content_hash or None,
        },
        "sha256": version.sha256 or None,
        "size_bytes": version.size_bytes,
        "lineage": version.lineage or {},
        "metrics": version.metrics or {},
        "evaluation": version.evaluation or None,
        "mlflow": {
            "run_id": version.mlflow_run_id or None,
            "version": version.mlflow_version or None,
            "synced_at": unix(version.mlflow_synced_at),
            "error": version.mlflow_error or None,
        },
        "created_at": unix(version.created_at),
    }


def alias_to_dict(alias: Alias) -> dict[str, Any]:
    """An alias and the version it points at (``version`` selected)."""
    return {
        "id": alias.alias,
        "object": "model.alias",
        "alias": alias.alias,
        "version": alias.version.version,
        "updated_at": unix(alias.updated_at),
    }


def alias_event_to_dict(event: AliasEvent) -> dict[str, Any]:
    """One alias move (``alias``, ``from_version``, ``to_version``, ``actor`` selected)."""
    return {
        "id": str(event.id),
        "object": "model.alias_event",
        "alias": event.alias.alias,
        "kind": event.kind,
        "from_version": event.from_version.version if event.from_version_id else None,
        "to_version": event.to_version.version,
        "actor": event.actor.get_username() if event.actor_id else None,
        "reason": event.reason,
        "created_at": unix(event.created_at),
    }


def alias_move_to_dict(*, alias: Alias, event: AliasEvent | None) -> dict[str, Any]:
    """The answer of promote / rollback: where the alias points now, where it pointed before, the event.

    ``event`` is None when the alias already pointed at the version (nothing moved).
    """
    current = alias.version.version
    return {
        "object": "model.alias_move",
        "model": alias.registered_model.name,
        "alias": alias.alias,
        "version": current,
        "previous_version": (event.from_version.version if event.from_version_id else None) if event else current,
        "event": alias_event_to_dict(event) if event else None,
    }


def _side(version: ModelVersion | None) -> int | str:
    return version.version if version is not None else BASE_SIDE


def _run_fields(run: Evaluation | Comparison) -> dict[str, Any]:
    return {
        "status": run.status,
        "base_model": run.base_model.name,
        "file": run.dataset_id,
        "options": run.options or {},
        "error": run.error or None,
        "created_at": unix(run.created_at),
        "started_at": unix(run.started_at),
        "finished_at": unix(run.finished_at),
    }


def evaluation_to_dict(evaluation: Evaluation, *, examples: bool = True) -> dict[str, Any]:
    """An evaluation (``version__registered_model`` and ``base_model`` selected); lists leave out examples."""
    version = evaluation.version
    body = {
        "id": evaluation.id,
        "object": "model.evaluation",
        "model": version.registered_model.name if version is not None else None,
        "version": _side(version),
        **_run_fields(evaluation),
        "metrics": evaluation.metrics or {},
    }
    if examples:
        body["examples"] = evaluation.examples or []
    return body


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    """A comparison: the per-metric table, win/tie/loss of ``b`` against ``a`` and the examples."""
    named = comparison.version_a or comparison.version_b
    return {
        "id": comparison.id,
        "object": "model.comparison",
        "model": named.registered_model.name if named is not None else None,
        "version_a": _side(comparison.version_a),
        "version_b": _side(comparison.version_b),
        **_run_fields(comparison),
        "table": comparison.table or [],
        "outcomes": comparison.outcomes or {},
        "examples": comparison.examples or [],
    }


# --- request bodies -----------------------------------------------------------------------
# Only the shape is checked here; whether the model, version, alias or file exists (and is the
# caller's) is the selectors' and services' question.

DEFAULT_ALIAS = "production"
MAX_REASON = 1000
ALIAS_MOVE_FIELDS = ("alias", "version", "reason")
# Run options go to ``registry.evaluation.options`` as they are: that module owns their rules
# (bounds, defaults, the judge); errors name them as ``options.<field>``.
RUN_OPTION_FIELDS = ("max_examples", "max_new_tokens", "max_seq_len", "seed", "judge")
EVALUATION_FIELDS = ("file", "queue", *RUN_OPTION_FIELDS)
COMPARISON_FIELDS = ("version_a", "version_b", *EVALUATION_FIELDS)
DEFAULT_RUN_QUEUE = "cpu"


@dataclass(frozen=True)
class AliasMoveRequest:
    """``POST .../promote`` and ``.../rollback``: ``version`` is the target (None: newest / previous)."""

    alias: str
    version: int | None
    reason: str


@dataclass(frozen=True)
class RunRequest:
    """``POST .../evaluations`` and ``.../comparisons``: the dataset and the run's options.

    ``version_a`` / ``version_b`` (comparisons only): a version number, or None for the base model.
    """

    file: str
    options: dict[str, Any]
    queue: str = DEFAULT_RUN_QUEUE
    version_a: int | None = None
    version_b: int | None = None


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param)


def _object(payload: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_type")
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise InvalidRequestError(
            f"Unknown parameter {unknown[0]!r}.",
            code="unknown_parameter",
            param=unknown[0],
            suggestion=f"Known parameters: {', '.join(known)}.",
        )
    return payload


def parse_version_number(raw: Any, param: str = "version") -> int:
    """A version number from JSON (``3``) or a URL (``"3"``): an integer ≥ 1."""
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise _bad(f"{param} must be a version number (an integer >= 1), got {raw!r}.", param)
    return raw


def _side_number(raw: Any, param: str) -> int | None:
    if raw == BASE_SIDE:
        return None
    if raw is None:
        raise _bad(f"{param} is required: a version number or {BASE_SIDE!r}.", param, "missing_required_parameter")
    try:
        return parse_version_number(raw, param)
    except InvalidRequestError:
        raise _bad(f"{param} must be a version number or {BASE_SIDE!r}, got {raw!r}.", param) from None


def _run_request(payload: dict[str, Any], **sides: int | None) -> RunRequest:
    file = payload.get("file")
    if file is None:
        raise _bad("file (the id of an uploaded dataset) is required.", "file", "missing_required_parameter")
    if not isinstance(file, str) or not file:
        raise _bad("file must be a file id string.", "file", "invalid_type")
    queue = payload.get("queue", DEFAULT_RUN_QUEUE)
    if not isinstance(queue, str):
        raise _bad("queue must be a queue name, e.g. 'cpu' or 'gpu'.", "queue", "invalid_type")
    options = {key: payload[key] for key in RUN_OPTION_FIELDS if payload.get(key) is not None}
    return RunRequest(file=file, options=options, queue=queue, **sides)


def alias_move_request(payload: Any) -> AliasMoveRequest:
    """``{"alias"?, "version"?, "reason"?}`` → ``AliasMoveRequest`` (alias default ``production``)."""
    body = _object(payload, ALIAS_MOVE_FIELDS)
    alias = body.get("alias", DEFAULT_ALIAS)
    if not isinstance(alias, str) or not alias:
        raise _bad("alias must be a non-empty string, e.g. 'production'.", "alias", "invalid_type")
    version = body.get("version")
    reason = body.get("reason") or ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise _bad(f"reason must be a string of at most {MAX_REASON} characters.", "reason")
    return AliasMoveRequest(
        alias=alias, version=None if version is None else parse_version_number(version), reason=reason
    )


def evaluation_request(payload: Any) -> RunRequest:
    """``{"file", "queue"?, "max_examples"?, "max_new_tokens"?, "max_seq_len"?, "seed"?, "judge"?}``."""
    return _run_request(_object(payload, EVALUATION_FIELDS))


def comparison_request(payload: Any) -> RunRequest:
    """As ``evaluation_request`` plus ``version_a`` and ``version_b``: a version number or ``"base"``."""
    body = _object(payload, COMPARISON_FIELDS)
    a = _side_number(body.get("version_a"), "version_a")
    b = _side_number(body.get("version_b"), "version_b")
    if a is None and b is None:
        raise _bad("At most one side may be the base model: name a version as version_a or version_b.", "version_b")
    return _run_request(body, version_a=a, version_b=b)
