"""Run a queued evaluation or comparison: claim it, score, store the results. Worker side.

The worker tasks (``workers.tasks``, ``workers.inprocess``) and ``manage.py evaluate/compare
--wait`` call ``evaluation_run`` / ``comparison_run``; the web process never does.

The DB decides who runs a row: ``queued → running`` is one conditional UPDATE, so a duplicate
or redelivered message finds nothing to claim and returns None. Every failure ends the row
``failed`` with ``error = {code, message}`` (codes in ``registry.evaluation.errors``); the
worker task itself never raises for a bad input.

Known gap: there is no lease. A worker that dies mid-run leaves the row ``running`` (a
redelivered message will not take it over); create a new evaluation to run it again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry.evaluation import errors
from registry.evaluation.errors import EvaluationError
from registry.evaluation.report import comparison_table, example_outcome, outcome_counts
from registry.models import Comparison, Evaluation, ModelVersion, RunStatus
from registry.services.notify import request_registry_sync

log = logging.getLogger(__name__)

STORED_EXAMPLES = 200  # per-example rows kept on an Evaluation / Comparison (all examples are scored)
SUMMARY_METRICS = ("exact_match", "rouge_l", "bleu", "chrf", "judge", "loss", "perplexity", "examples")


def _claim(model: type[Evaluation] | type[Comparison], row_id: str) -> bool:
    """queued → running for exactly one caller (the UPDATE's WHERE clause is the lock)."""
    claimed = model.objects.filter(id=row_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    )
    return claimed == 1


def _error_of(exc: Exception, what: str) -> dict[str, Any]:
    if isinstance(exc, EvaluationError):
        log.warning("%s failed: [%s] %s", what, exc.code, exc.message)
        return exc.as_dict()
    log.exception("%s crashed", what)
    return {"code": errors.INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"[:1000]}


def _fail(model: type[Evaluation] | type[Comparison], row_id: str, error: dict[str, Any]) -> None:
    model.objects.filter(id=row_id, status=RunStatus.RUNNING).update(
        status=RunStatus.FAILED, error=error, finished_at=timezone.now()
    )


def _dataset_path(dataset: Any) -> Path:
    """Where the dataset's bytes are; they must still be there."""
    path = Path(settings.DATA_DIR) / dataset.storage_path
    if dataset.deleted_at is not None or not path.is_file():
        raise EvaluationError(errors.DATASET_MISSING, f"the content of file {dataset.id} is no longer stored")
    return path


def _model_spec(version: ModelVersion | None, base_model: Any) -> Any:
    """The weights of one side: the base dir, with the version's adapter, or the version's full weights."""
    # Late: scoring imports torch, transformers, rouge-score and sacrebleu. Every process
    # imports this module (WorkersConfig.ready loads the embedded worker, web included); only
    # a process that really runs an evaluation should pay for those imports.
    from registry.evaluation.scoring import ModelSpec

    if not Path(base_model.path, "config.json").is_file():
        raise EvaluationError(
            errors.BASE_MODEL_MISSING, f"base model {base_model.name} has no model dir at {base_model.path}"
        )
    if version is None:
        return ModelSpec(model_dir=base_model.path)
    if not Path(version.adapter_path).is_dir():
        raise EvaluationError(errors.VERSION_FILES_MISSING, f"{version} has no files at {version.adapter_path}")
    if version.kind == ModelVersion.Kind.FULL:
        return ModelSpec(model_dir=version.adapter_path)
    return ModelSpec(model_dir=base_model.path, adapter_dir=version.adapter_path)


def _score(version: ModelVersion | None, base_model: Any, dataset: Any, options: dict[str, Any]) -> Any:
    from registry.evaluation.scoring import score_model  # late: see _model_spec

    return score_model(spec=_model_spec(version, base_model), dataset_path=_dataset_path(dataset), options=options)


def evaluation_summary(evaluation: Evaluation) -> dict[str, Any]:
    """What ``ModelVersion.evaluation`` keeps of its latest evaluation."""
    dataset = evaluation.dataset
    return {
        "evaluation_id": evaluation.id,
        "dataset": {"id": dataset.id, "filename": dataset.filename, "sha256": dataset.sha256},
        "source": evaluation.options.get("source", "manual"),
        "metrics": {k: evaluation.metrics[k] for k in SUMMARY_METRICS if evaluation.metrics.get(k) is not None},
        "failed": evaluation.metrics.get("failed", {}),
        "finished_at": evaluation.finished_at.isoformat() if evaluation.finished_at else None,
    }


def evaluation_run(*, evaluation_id: str) -> Evaluation | None:
    """Claim a queued evaluation, run it, store metrics and examples.

    On success also writes the summary on ``version.evaluation`` (for a version) and asks for
    an MLflow sync. Returns the finished row, or None when there was nothing to claim.
    """
    if not _claim(Evaluation, evaluation_id):
        log.info("evaluation %s is not queued (duplicate message?); nothing to do", evaluation_id)
        return None
    evaluation = Evaluation.objects.select_related("version__registered_model", "base_model", "dataset").get(
        id=evaluation_id
    )
    try:
        side = _score(evaluation.version, evaluation.base_model, evaluation.dataset, evaluation.options)
    except Exception as exc:
        _fail(Evaluation, evaluation_id, _error_of(exc, f"evaluation {evaluation_id}"))
        evaluation.refresh_from_db()
        return evaluation
    with transaction.atomic():
        updated = Evaluation.objects.filter(id=evaluation_id, status=RunStatus.RUNNING).update(
            status=RunStatus.SUCCEEDED,
            metrics=side.metrics,
            examples=side.examples[:STORED_EXAMPLES],
            error=None,
            finished_at=timezone.now(),
        )
        evaluation.refresh_from_db()
        if updated and evaluation.version_id is not None:
            ModelVersion.objects.filter(id=evaluation.version_id).update(evaluation=evaluation_summary(evaluation))
            request_registry_sync()
    return evaluation


def comparison_run(*, comparison_id: str) -> Comparison | None:
    """Claim a queued comparison, run both sides, store the table, win/tie/loss and examples.

    Returns the finished row, or None when there was nothing to claim.
    """
    if not _claim(Comparison, comparison_id):
        log.info("comparison %s is not queued (duplicate message?); nothing to do", comparison_id)
        return None
    comparison = Comparison.objects.select_related(
        "version_a__registered_model", "version_b__registered_model", "base_model", "dataset"
    ).get(id=comparison_id)
    sides = {}
    try:
        for key, version in (("a", comparison.version_a), ("b", comparison.version_b)):
            try:
                sides[key] = _score(version, comparison.base_model, comparison.dataset, comparison.options)
            except EvaluationError as exc:
                raise EvaluationError(exc.code, f"side {key.upper()}: {exc.message}") from exc
    except Exception as exc:
        _fail(Comparison, comparison_id, _error_of(exc, f"comparison {comparison_id}"))
        comparison.refresh_from_db()
        return comparison

    a, b = sides["a"], sides["b"]
    outcomes = [example_outcome(ea["scores"], eb["scores"]) for ea, eb in zip(a.examples, b.examples, strict=True)]
    examples = [
        {
            "index": ea["index"],
            "line": ea["line"],
            "prompt": ea["prompt"],
            "reference": ea["reference"],
            "a": {"prediction": ea["prediction"], "loss": ea["loss"], "scores": ea["scores"]},
            "b": {"prediction": eb["prediction"], "loss": eb["loss"], "scores": eb["scores"]},
            "outcome": outcome,
        }
        for ea, eb, outcome in zip(a.examples, b.examples, outcomes, strict=True)
    ]
    Comparison.objects.filter(id=comparison_id, status=RunStatus.RUNNING).update(
        status=RunStatus.SUCCEEDED,
        table=comparison_table(a.metrics, b.metrics),
        outcomes=outcome_counts(outcomes),
        examples=examples[:STORED_EXAMPLES],
        error=None,
        finished_at=timezone.now(),
    )
    comparison.refresh_from_db()
    return comparison
