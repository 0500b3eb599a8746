"""What the job and model pages show, and their live JSON, built from the owner-scoped selectors.

The page and its ``live.json`` come from the same functions here, so the first paint and
every poll agree on keys and units. Each function costs a fixed number of queries whatever
the number of events, checkpoints or versions (the pages' tests count them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Max, Prefetch, QuerySet
from django.urls import reverse

from inference.services.routes import route_get, route_to_dict
from registry.evaluation.report import METRIC_LABELS, TABLE_METRICS
from registry.models import Alias, Evaluation, ModelVersion, RegisteredModel, RunStatus
from registry.selectors import alias_list, model_version_list, registered_model_list
from registry.services.traffic import traffic_summaries
from tuninglab.charts import line_chart_svg, stacked_svg
from tuninglab.errors import NotFoundError
from tunings.models import JobEvent, TuningJob
from tunings.selectors.curves import job_curve_points
from tunings.selectors.jobs import QueueInfo, checkpoint_list, job_event_list, tuning_job_queue_info
from tunings.serializers.jobs import checkpoint_to_dict, job_to_dict, unix

# How many events the log shows per page, and at most per poll (the newest ones).
EVENTS_PER_PAGE = 50
CHART_WIDTH, LOSS_CHART_HEIGHT, LR_CHART_HEIGHT = 640, 280, 200
# Job fields the "configuration" block shows, from the API's job object (one shape everywhere).
CONFIG_KEYS = (
    "model",
    "tuning_method",
    "training_file",
    "validation_file",
    "hyperparameters",
    "training_options",
    "lora",
    "seed",
    "suffix",
    "model_name",
    "promote_to",
    "metadata",
    "priority",
    "resources",
    "queue",
    "max_attempts",
)
# ModelVersion.metrics keys the versions table shows (lineage of the run), in column order.
VERSION_LOSS_KEYS = (
    ("final_loss", "final train loss"),
    ("eval_loss", "eval loss"),
    ("best_eval_loss", "best eval loss"),
    ("best_train_loss", "best train loss"),
)


# --------------------------------------------------------------------------------- jobs


def newest_event_seq(job: TuningJob) -> int:
    """The highest ``seq`` of the job's events (0 without any): one snapshot bound per read.

    Curves and events are read up to this bound, so a point written between the two reads
    waits for the next poll instead of being skipped by a ``last_seq`` that passed it.
    """
    return job_event_list(job=job).values_list("seq", flat=True).first() or 0


def event_row(event: JobEvent) -> dict[str, Any]:
    """One log line: never the event's ``data`` (it carries operator detail).

    ``seq`` is text: seqs are nanosecond clock readings (~1.8e18), past the integers a
    JavaScript number holds exactly (2**53), and the page compares them.
    """
    return {
        "seq": str(event.seq),
        "created_at": event.created_at.isoformat(),
        "level": event.level,
        "type": event.type,
        "message": event.message,
    }


def checkpoint_row(checkpoint: Any, job: TuningJob) -> dict[str, Any]:
    """A checkpoint as the API shows it (no server path), flattened for a table row."""
    body = checkpoint_to_dict(checkpoint, job)
    metrics = body["metrics"]
    return {
        "step": body["step_number"],
        "name": body["fine_tuned_model_checkpoint"],
        "created_at": checkpoint.created_at.isoformat(),
        "saved": checkpoint.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "loss": metrics.get("loss"),
        "eval_loss": metrics.get("eval_loss"),
        "trained_tokens": metrics.get("trained_tokens"),
    }


def job_error(job: TuningJob) -> dict[str, Any] | None:
    """``{code, message, param, suggestion}`` of a failed job, else None."""
    if job.status != TuningJob.Status.FAILED or not job.error:
        return None
    error = job.error if isinstance(job.error, dict) else {"message": str(job.error)}
    return {
        "code": error.get("code"),
        "message": error.get("message"),
        "param": error.get("param"),
        "suggestion": job.suggestion or None,
    }


def job_result_version(job: TuningJob) -> dict[str, Any] | None:
    """The model version the job produced (name, number, page URL), if any (one query)."""
    if job.status != TuningJob.Status.SUCCEEDED:
        return None
    version = ModelVersion.objects.filter(job=job, owner=job.owner_id).select_related("registered_model").first()
    if version is None:
        return None
    name = version.registered_model.name
    return {"name": name, "version": version.version, "url": reverse("webui:model-detail", kwargs={"name": name})}


def job_progress(job: TuningJob) -> dict[str, Any]:
    return {
        "step": job.current_step,
        "total_steps": job.total_steps,
        "percent": round(float(job.progress or 0.0), 1),
    }


def job_config(job: TuningJob, queue_info: QueueInfo) -> str:
    """The job's configuration and hyperparameters as indented JSON text (escaped by the template)."""
    body = job_to_dict(job, queue_info=queue_info)
    return json.dumps({key: body[key] for key in CONFIG_KEYS}, indent=2, sort_keys=False, default=str)


def loss_chart_svg(curves: dict[str, Any]) -> str:
    return line_chart_svg(
        {"train": curves["train"], "eval": curves["eval"]},
        title="Loss",
        x_label="step",
        y_label="loss",
        width=CHART_WIDTH,
        height=LOSS_CHART_HEIGHT,
    )


def lr_chart_svg(curves: dict[str, Any]) -> str:
    return line_chart_svg(
        {"learning rate": curves["lr"]},
        title="Learning rate",
        x_label="step",
        y_label="lr",
        width=CHART_WIDTH,
        height=LR_CHART_HEIGHT,
    )


def curves_document(job: TuningJob) -> str:
    """The downloadable ``curves.svg``: the loss chart (train + eval) above the learning-rate chart."""
    curves = job_curve_points(job=job)
    return stacked_svg(
        [loss_chart_svg(curves), lr_chart_svg(curves)],
        width=CHART_WIDTH,
        heights=[LOSS_CHART_HEIGHT, LR_CHART_HEIGHT],
    )


def job_live(job: TuningJob, *, after_seq: int) -> dict[str, Any]:
    """``live.json``: the job's state and what happened after ``after_seq``.

    ``train``/``eval``/``lr`` hold only the points after ``after_seq`` (replace by step when
    merging); ``events`` the newest ``EVENTS_PER_PAGE`` events after it, oldest first;
    ``last_seq`` is what to send as ``after_seq`` next (``last_seq_str`` the same as text).
    """
    bound = newest_event_seq(job)
    if bound > after_seq:
        curves = job_curve_points(job=job, after_seq=after_seq, until_seq=bound)
        newest = job_event_list(job=job).filter(seq__gt=after_seq, seq__lte=bound)[:EVENTS_PER_PAGE]
        events = [event_row(e) for e in reversed(list(newest))]
    else:
        curves = {"train": [], "eval": [], "lr": []}
        events = []
    queue_info = tuning_job_queue_info(jobs=[job])[job.id]
    return {
        "status": job.status,
        "progress": job_progress(job),
        "eta_seconds": job.eta_seconds if job.status == TuningJob.Status.RUNNING else None,
        "queue_position": queue_info.position,
        "estimated_start": unix(queue_info.estimated_start),
        "train": curves["train"],
        "eval": curves["eval"],
        "lr": curves["lr"],
        "events": events,
        "last_seq": max(bound, after_seq),
        # The same as text, for JavaScript (see ``event_row``): what the page sends as after_seq.
        "last_seq_str": str(max(bound, after_seq)),
        "checkpoints": [checkpoint_row(c, job) for c in checkpoint_list(job=job)],
        "cancel_requested": job.cancel_requested,
        "error": job_error(job),
        "model_version": job_result_version(job),
        "terminal": job.is_terminal,
    }


@dataclass(frozen=True)
class EventPage:
    """One page of the events log, newest first; ``older_before`` is the next page's ``before``."""

    events: list[dict[str, Any]]
    older_before: int | None


def job_event_page(job: TuningJob, *, before_seq: int | None, until_seq: int) -> EventPage:
    """``EVENTS_PER_PAGE`` events, newest first, below ``before_seq`` (or up to ``until_seq``)."""
    events = job_event_list(job=job)
    events = events.filter(seq__lt=before_seq) if before_seq is not None else events.filter(seq__lte=until_seq)
    rows = list(events[: EVENTS_PER_PAGE + 1])
    older = rows[EVENTS_PER_PAGE - 1].seq if len(rows) > EVENTS_PER_PAGE else None
    return EventPage(events=[event_row(e) for e in rows[:EVENTS_PER_PAGE]], older_before=older)


# ------------------------------------------------------------------------------- models


def model_list(*, owner: Any) -> QuerySet[RegisteredModel]:
    """The owner's models with their version count, newest version and aliases (three queries a page)."""
    return (
        registered_model_list(owner=owner)
        .annotate(version_count=Count("versions"), latest_version=Max("versions__version"))
        .prefetch_related(Prefetch("aliases", queryset=Alias.objects.select_related("version").order_by("alias")))
    )


def version_rows(registered: RegisteredModel) -> QuerySet[ModelVersion]:
    """The model's versions, newest first, each with its evaluations (newest first, no examples)."""
    evaluations = Evaluation.objects.defer("examples").order_by("-created_at", "-id")
    return model_version_list(registered_model=registered).prefetch_related(
        Prefetch("evaluations", queryset=evaluations, to_attr="evaluation_rows")
    )


def versions_table(versions: list[ModelVersion]) -> dict[str, Any]:
    """Columns and rows of the side-by-side metrics table.

    Loss columns come from what the run recorded (``ModelVersion.metrics``); evaluation
    columns from each version's newest succeeded evaluation, in the comparison report's
    metric order, only for metrics some version on the page has.
    """
    latest: dict[str, Evaluation | None] = {}
    for version in versions:
        rows = getattr(version, "evaluation_rows", [])
        latest[version.id] = next((e for e in rows if e.status == RunStatus.SUCCEEDED), None)
    loss_keys = [
        (k, label) for k, label in VERSION_LOSS_KEYS if any((v.metrics or {}).get(k) is not None for v in versions)
    ]
    eval_keys = [
        (metric, METRIC_LABELS.get(metric, metric))
        for metric, _ in TABLE_METRICS
        if any(e is not None and (e.metrics or {}).get(metric) is not None for e in latest.values())
    ]
    rows = []
    for version in versions:
        evaluation = latest[version.id]
        pending = next(
            (
                e.status
                for e in getattr(version, "evaluation_rows", [])
                if e.status in (RunStatus.QUEUED, RunStatus.RUNNING)
            ),
            None,
        )
        rows.append(
            {
                "version": version,
                "aliases": sorted(a.alias for a in version.aliases.all()),
                "losses": [(version.metrics or {}).get(k) for k, _ in loss_keys],
                "scores": [(evaluation.metrics or {}).get(k) if evaluation else None for k, _ in eval_keys],
                "evaluation_count": len(getattr(version, "evaluation_rows", [])),
                "evaluation_pending": pending,
                "job_url": reverse("webui:job-detail", kwargs={"job_id": version.job_id}) if version.job_id else None,
            }
        )
    return {
        "loss_columns": [label for _, label in loss_keys],
        "score_columns": [label for _, label in eval_keys],
        "rows": rows,
    }


def model_route(*, owner: Any, name: str) -> Any:
    """The model's route row, or None when it has none (requests go to its production alias)."""
    try:
        return route_get(owner=owner, name=name)
    except NotFoundError:
        return None


def model_live(*, owner: Any, registered: RegisteredModel) -> dict[str, Any]:
    """The A/B report: the route (weights, sticky, shadow) and live counters of the versions that serve.

    Serving versions are the route's splits and shadow, every aliased version and the newest
    version (where bare requests go without a route or a production alias): a set bounded by
    the route and the aliases, not by how many versions the model has, so a poll costs the
    same few queries for a model with five versions or five hundred.
    """
    route = model_route(owner=owner, name=registered.name)
    roles: dict[int, list[str]] = {}
    objects: dict[int, ModelVersion] = {}
    weights: dict[int, int] = {}

    def add(version: ModelVersion, role: str) -> None:
        objects[version.version] = version
        roles.setdefault(version.version, []).append(role)

    if route is not None:
        for split in route.splits.all():
            add(split.version, f"split {split.weight}")
            weights[split.version.version] = split.weight
        if route.shadow_version_id:
            add(route.shadow_version, f"shadow {route.shadow_percent}%")
    aliases = list(alias_list(registered_model=registered))
    for alias in aliases:
        add(alias.version, f"@{alias.alias}")
    newest = model_version_list(registered_model=registered).first()
    if newest is not None:
        add(newest, "latest")
    total_weight = sum(weights.values())
    summaries = traffic_summaries(objects.values())
    versions = []
    for number in sorted(objects):
        versions.append(
            {
                "version": number,
                "roles": roles[number],
                "weight": weights.get(number),
                "share": round(100.0 * weights[number] / total_weight, 1)
                if number in weights and total_weight
                else None,
                **summaries[objects[number].id],
            }
        )
    return {
        "model": registered.name,
        "route": route_to_dict(route) if route is not None else None,
        "aliases": {a.alias: a.version.version for a in aliases},
        "versions": versions,
    }
