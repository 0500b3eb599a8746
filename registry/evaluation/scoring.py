"""Run one model (a version, or the bare base) on one dataset and score it. Worker side only.

Imports torch, transformers (through ``lora_engine.evaluate``), rouge-score and sacrebleu:
``registry.evaluation.runner`` imports this module only when a worker runs an evaluation.
The result is plain JSON-ready data: file-level metrics and one row per example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_engine.adapter_io import AdapterFormatError
from lora_engine.errors import DataError, EngineError
from lora_engine.evaluate import EvalConfig, EvalResult, evaluate
from registry.evaluation import errors
from registry.evaluation.errors import EvaluationError
from registry.evaluation.judge import judge_examples
from registry.evaluation.metrics import corpus_scores, example_scores
from registry.lineage import finite  # JSON (and PostgreSQL's jsonb) has no Infinity/NaN

log = logging.getLogger(__name__)
MAX_STORED_CHARS = 2000  # per prompt message / reference / prediction in a stored row


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights of one side are: the base dir, plus an adapter dir or instead a full-weights dir."""

    model_dir: str
    adapter_dir: str | None = None
    tokenizer_dir: str | None = None


@dataclass(frozen=True)
class SideResult:
    """``metrics``: file-level numbers (plus ``failed`` when an optional metric failed);
    ``examples``: one JSON-ready row per evaluated example."""

    metrics: dict[str, Any]
    examples: list[dict[str, Any]]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_STORED_CHARS else text[:MAX_STORED_CHARS] + " [...]"


def _run_engine(spec: ModelSpec, dataset_path: Path, options: dict[str, Any]) -> EvalResult:
    cfg = EvalConfig(
        model_dir=spec.model_dir,
        adapter_dir=spec.adapter_dir,
        tokenizer_dir=spec.tokenizer_dir,
        eval_file=str(dataset_path),
        max_examples=options["max_examples"],
        max_new_tokens=options["max_new_tokens"],
        max_seq_len=options["max_seq_len"],
        seed=options["seed"],
    )
    try:
        return evaluate(cfg)
    except AdapterFormatError as exc:
        raise EvaluationError(errors.INVALID_ADAPTER, exc.message) from exc
    except DataError as exc:
        raise EvaluationError(errors.INVALID_EVALUATION_DATA, exc.message) from exc
    except EngineError as exc:
        raise EvaluationError(exc.code, exc.message) from exc


def score_model(*, spec: ModelSpec, dataset_path: Path, options: dict[str, Any]) -> SideResult:
    """Generate, score every example, and (when ``options["judge"]`` is set) ask the judge.

    A judge failure is recorded as ``metrics["failed"]["judge"] = {code, message}`` and the
    other metrics stand.

    Raises:
        EvaluationError: the model, adapter or dataset cannot be used.
    """
    result = _run_engine(spec, dataset_path, options)
    predictions = [ex.prediction for ex in result.examples]
    references = [ex.reference for ex in result.examples]
    per_example = [example_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    metrics: dict[str, Any] = {
        **corpus_scores(predictions, references, per_example),
        "loss": finite(result.mean_loss),
        "perplexity": finite(result.perplexity),
        "examples": len(result.examples),
        "file_examples": result.num_records,
        "reference_tokens": result.reference_tokens,
        "truncated": result.num_truncated,
        "seconds": round(result.seconds, 3),
    }
    reasons: list[str | None] = [None] * len(result.examples)
    judge = options.get("judge")
    if judge:
        try:
            verdicts = judge_examples(judge, [(ex.prompt, ex.reference, ex.prediction) for ex in result.examples])
        except EvaluationError as exc:
            log.warning("judge failed (%s): %s; the other metrics stand", exc.code, exc.message)
            metrics["failed"] = {"judge": exc.as_dict()}
        else:
            metrics["judge"] = sum(v.score for v in verdicts) / len(verdicts)
            for scores, verdict in zip(per_example, verdicts, strict=True):
                scores["judge"] = float(verdict.score)
            reasons = [v.reason for v in verdicts]
    rows = [
        {
            "index": i,
            "line": ex.line,
            "prompt": [{"role": m["role"], "content": _clip(m["content"])} for m in ex.prompt],
            "reference": _clip(ex.reference),
            "prediction": _clip(ex.prediction),
            "loss": finite(ex.loss),
            "reference_tokens": ex.reference_tokens,
            "truncated": ex.truncated,
            "scores": scores,
            **({"judge_reason": reason} if reason is not None else {}),
        }
        for i, (ex, scores, reason) in enumerate(zip(result.examples, per_example, reasons, strict=True))
    ]
    return SideResult(metrics=metrics, examples=rows)
