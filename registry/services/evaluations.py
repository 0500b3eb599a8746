"""Evaluations and A/B comparisons of versions: create a queued row and send it to a worker.

The web process imports this module (API, admin, the automatic evaluation after a version is
registered), so it stays light: no torch, transformers or metric library on its import path.
Running is the worker's job, in ``registry.evaluation.runner`` (``evaluation_run``,
``comparison_run``), which ``workers.tasks`` and ``workers.inprocess`` call by task name.

Every input is owner-scoped: another owner's version or file is a 404 like a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry.evaluation.options import evaluation_options_clean
from registry.models import BaseModel, Comparison, Evaluation, ModelVersion, RunStatus
from registry.services.notify import request_comparison, request_evaluation
from tuninglab.celery import QUEUE_NAMES
from tuninglab.errors import ConflictError, InvalidRequestError, NotFoundError
from tuninglab.services import user_row_lock

PROCESSED = "processed"  # TrainingFile.Status.PROCESSED (registry does not import tunings)
# Upper bound of runs one sweep fails or re-sends per kind (a backlog is worked off over sweeps).
MAX_SWEPT_RUNS = 50


def _check_version(owner: Any, version: ModelVersion | None, param: str) -> None:
    if version is not None and version.owner_id != owner.pk:
        raise NotFoundError("No such model version.", code="version_not_found", param=param)


def _check_dataset(owner: Any, dataset: Any) -> None:
    if dataset is None or dataset.owner_id != owner.pk or dataset.deleted_at is not None:
        raise NotFoundError("No such file.", code="file_not_found", param="dataset")
    if dataset.status != PROCESSED:
        raise ConflictError(
            f"File {dataset.id} is {dataset.status}; only a processed file can be evaluated on.",
            code="file_not_processed",
            param="dataset",
        )


def _check_queue(queue: str) -> None:
    if queue not in QUEUE_NAMES:
        raise InvalidRequestError(
            f"queue must be one of {', '.join(QUEUE_NAMES)}.", code="invalid_queue", param="queue"
        )


def _check_pending_limit(owner: Any) -> None:
    """Refuse a new run while the owner already has ``MAX_PENDING_EVALUATIONS_PER_USER`` queued or running.

    Evaluations share the workers with training jobs; without a cap one owner could queue
    thousands and starve everyone. Call inside the creating transaction: the owner's row lock
    makes concurrent creates of one owner count one after the other.
    """
    limit = int(settings.TUNINGLAB["MAX_PENDING_EVALUATIONS_PER_USER"])
    user_row_lock(user_id=owner.pk)
    pending = (RunStatus.QUEUED, RunStatus.RUNNING)
    count = (
        Evaluation.objects.filter(owner=owner, status__in=pending).exclude(options__source="auto").count()
        + Comparison.objects.filter(owner=owner, status__in=pending).count()
    )
    if count >= limit:
        raise ConflictError(
            f"You have {count} evaluations or comparisons queued or running; the limit is {limit}.",
            code="too_many_pending_evaluations",
            param=None,
            suggestion="Wait for one to finish (GET /v1/evaluations/{id}), then ask again.",
        )


def _resolve_base(versions: list[ModelVersion | None], base_model: BaseModel | None) -> BaseModel:
    """The one base model of the run: the versions' base, or ``base_model`` for base-only runs."""
    bases = {v.base_model_id: v.base_model for v in versions if v is not None}
    if base_model is not None:
        bases.setdefault(base_model.pk, base_model)
    if not bases:
        raise InvalidRequestError(
            "Evaluating the base model needs base_model.", code="base_model_required", param="base_model"
        )
    if len(bases) > 1:
        raise InvalidRequestError(
            f"The sides use different base models ({', '.join(sorted(b.name for b in bases.values()))}); "
            "compare versions of one base model.",
            code="base_model_mismatch",
            param="base_model",
        )
    return next(iter(bases.values()))


def evaluation_create(
    *,
    owner: Any,
    version: ModelVersion | None,
    dataset: Any,
    base_model: BaseModel | None = None,
    options: dict[str, Any] | None = None,
    queue: str = "cpu",
    dispatch: bool = True,
) -> Evaluation:
    """Queue the evaluation of ``version`` (None: the bare ``base_model``) on ``dataset``.

    Args:
        dataset: a processed ``tunings.TrainingFile`` of ``owner``.
        options: see ``registry.evaluation.options`` (max_examples, max_new_tokens, judge, ...).
        dispatch: send the task to a worker of ``queue`` after commit; False when the caller
            runs it itself (``manage.py evaluate --wait``).

    Raises:
        NotFoundError: the version or file is not the owner's.
        ConflictError: ``file_not_processed``.
        InvalidRequestError: bad options or queue, no base model for a base-only run, or a
            ``base_model`` that is not the version's.
    """
    _check_version(owner, version, "version")
    _check_dataset(owner, dataset)
    _check_queue(queue)
    base = _resolve_base([version], base_model)
    clean = evaluation_options_clean(options)
    with transaction.atomic():
        if clean.get("source") != "auto":  # one per new version, already bounded by training
            _check_pending_limit(owner)
        evaluation = Evaluation.objects.create(
            owner=owner, version=version, base_model=base, dataset=dataset, options={**clean, "queue": queue}
        )
        if dispatch:
            request_evaluation(evaluation_id=evaluation.id, queue=queue)
    return evaluation


def evaluation_queue_automatic(*, version_id: str) -> Evaluation | None:
    """Queue the evaluation of a new version on its job's validation file (``source: auto``).

    None when ``AUTO_EVALUATE`` is off, the version has no job or the job no (usable)
    validation file, or that evaluation was already queued (idempotent per version and file).
    Runs on the job's queue: a version trained on a GPU is evaluated on one.
    """
    if not settings.TUNINGLAB["AUTO_EVALUATE"]:
        return None
    version = (
        ModelVersion.objects.select_related("owner", "base_model", "job__validation_file").filter(id=version_id).first()
    )
    if version is None or version.job is None:
        return None
    dataset = version.job.validation_file
    if dataset is None or dataset.deleted_at is not None or dataset.status != PROCESSED:
        return None
    existing = Evaluation.objects.filter(version=version, dataset=dataset, options__source="auto").first()
    if existing is not None:
        return existing
    queue = version.job.queue if version.job.queue in QUEUE_NAMES else "cpu"
    return evaluation_create(
        owner=version.owner, version=version, dataset=dataset, options={"source": "auto"}, queue=queue
    )


def comparison_create(
    *,
    owner: Any,
    version_a: ModelVersion | None,
    version_b: ModelVersion | None,
    dataset: Any,
    base_model: BaseModel | None = None,
    options: dict[str, Any] | None = None,
    queue: str = "cpu",
    dispatch: bool = True,
) -> Comparison:
    """Queue an A/B comparison of ``version_b`` against ``version_a`` (either None: the base model).

    Both sides run on the same dataset with the same options; both versions must share one base.

    Raises:
        NotFoundError, ConflictError, InvalidRequestError: as ``evaluation_create``; also
            ``same_sides`` when A and B are the same model, ``base_model_mismatch``.
    """
    _check_version(owner, version_a, "version_a")
    _check_version(owner, version_b, "version_b")
    if (version_a.pk if version_a else None) == (version_b.pk if version_b else None):
        raise InvalidRequestError("A and B are the same model; compare two different ones.", code="same_sides")
    _check_dataset(owner, dataset)
    _check_queue(queue)
    base = _resolve_base([version_a, version_b], base_model)
    clean = evaluation_options_clean(options)
    with transaction.atomic():
        _check_pending_limit(owner)
        comparison = Comparison.objects.create(
            owner=owner,
            version_a=version_a,
            version_b=version_b,
            base_model=base,
            dataset=dataset,
            options={**clean, "queue": queue},
        )
        if dispatch:
            request_comparison(comparison_id=comparison.id, queue=queue)
    return comparison


@dataclass(frozen=True)
class RunSweep:
    """What ``evaluation_runs_sweep`` did: runs failed as lost, queued runs sent again."""

    failed: list[str]
    resent: list[str]


def evaluation_runs_sweep(*, now: datetime | None = None) -> RunSweep:
    """Fail evaluations/comparisons whose worker vanished; send again those whose message was lost.

    An evaluation has no lease: a worker killed mid-run leaves it ``running``. After
    ``EVALUATION_TIMEOUT_SECONDS`` it is failed with ``worker_lost`` (create a new one to
    retry), so it stops holding one of its owner's pending slots. A run still ``queued`` after
    ``EVALUATION_RESEND_SECONDS`` gets its task again: the claim is a conditional UPDATE, so a
    duplicate message does nothing. Runs from the sweeper (beat, embedded worker).
    """
    now = now or timezone.now()
    timeout = timedelta(seconds=float(settings.TUNINGLAB["EVALUATION_TIMEOUT_SECONDS"]))
    resend_after = timedelta(seconds=float(settings.TUNINGLAB["EVALUATION_RESEND_SECONDS"]))
    failed: list[str] = []
    resent: list[str] = []
    for model, request in ((Evaluation, request_evaluation), (Comparison, request_comparison)):
        stale = model.objects.filter(status=RunStatus.RUNNING, started_at__lt=now - timeout)
        for row_id in list(stale.values_list("id", flat=True)[:MAX_SWEPT_RUNS]):
            lost = model.objects.filter(id=row_id, status=RunStatus.RUNNING, started_at__lt=now - timeout).update(
                status=RunStatus.FAILED,
                finished_at=now,
                error={
                    "code": "worker_lost",
                    "message": f"No result after {timeout.total_seconds():.0f} s: the worker running it was lost.",
                },
            )
            if lost:
                failed.append(row_id)
        waiting = model.objects.filter(status=RunStatus.QUEUED, created_at__lt=now - resend_after)
        for row_id, options in list(waiting.values_list("id", "options")[:MAX_SWEPT_RUNS]):
            queue = (options or {}).get("queue") or "cpu"
            if model is Evaluation:
                request(evaluation_id=row_id, queue=queue)
            else:
                request(comparison_id=row_id, queue=queue)
            resent.append(row_id)
    return RunSweep(failed=failed, resent=resent)
