"""What the MLflow mirror logs for a version: params, step and summary metrics, tags, names, files.

Pure functions of the registry rows and the files they point at (no MLflow calls), so
``registry.services.mlflow_sync`` reads as the sync itself: find or create, log, link, record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric

from registry.lineage import finite, metrics_lines
from registry.models import Alias, Evaluation, ModelVersion
from tuninglab import datapaths

# Engine config fields that are paths on a worker or per-attempt switches, not settings of the run.
CONFIG_NOT_PARAMS = frozenset(
    {"base_model_dir", "train_file", "validation_file", "output_dir", "stop_file", "metrics_file", "resume"}
)
# Fields of a metrics line that are bookkeeping, not a series worth plotting.
STEP_FIELDS_NOT_METRICS = frozenset({"type", "step", "total_steps", "progress", "eta_s"})
PARAM_VALUE_MAX_CHARS = 6000
_UNSAFE_KEY_CHARS = re.compile(r"[^\w.\-]")
T = TypeVar("T")


def evaluation_report(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "id": evaluation.id,
        "version_id": evaluation.version_id,
        "dataset": evaluation.dataset_id,
        "options": evaluation.options,
        "metrics": evaluation.metrics,
        "examples": evaluation.examples,
        "created_at": iso(evaluation.created_at),
        "started_at": iso(evaluation.started_at),
        "finished_at": iso(evaluation.finished_at),
    }


# --- what a run holds ------------------------------------------------------------------------


def params(version: ModelVersion) -> dict[str, str]:
    """Base model (name, content hash), method, seed, LoRA shape, hyperparameters, engine config, files."""
    lineage = version.lineage or {}
    base = lineage.get("base_model") or {}
    values: dict[str, Any] = {
        "base_model": base.get("name") or version.base_model.name,
        "base_model_content_hash": base.get("content_hash") or version.base_model.content_hash,
        "method": lineage.get("method"),
        "kind": version.kind,
        "seed": lineage.get("seed"),
    }
    for key, value in (lineage.get("lora") or {}).items():
        values[f"lora_{key}"] = value
    for key, value in (lineage.get("resolved_hyperparameters") or {}).items():
        values[f"hp.{key}"] = value
    for key, value in (lineage.get("config") or {}).items():
        if key not in CONFIG_NOT_PARAMS:
            values[f"config.{key}"] = value
    for param, file in (lineage.get("files") or {}).items():
        if file:
            values[param] = file.get("id")
            values[f"{param}_sha256"] = file.get("sha256")
    return {safe_key(key): param_value(value) for key, value in values.items()}


def step_metrics(version: ModelVersion) -> list[Metric]:
    """Each numeric field of each metrics line of the run's metrics.jsonl, per step.

    Every attempt appends to the file, and a resumed attempt repeats the steps after its
    checkpoint: the last value of a step wins (it is the one the saved weights came from).
    """
    latest: dict[tuple[str, int], float] = {}
    for line in metrics_lines(metrics_file(version)):
        if not isinstance(line.get("step"), int):
            continue
        for key, value in line.items():
            number = finite(value)
            if key not in STEP_FIELDS_NOT_METRICS and number is not None:
                latest[(safe_key(key), line["step"])] = number
    timestamp = ms(version.created_at)  # fixed, so a re-log is a duplicate MLflow drops
    return [Metric(key, value, timestamp, step) for (key, step), value in sorted(latest.items())]


def summary_metrics(version: ModelVersion) -> list[Metric]:
    """The version's final/best numbers (``summary/<name>``) at its last step."""
    metrics = version.metrics or {}
    step = metrics.get("steps") if isinstance(metrics.get("steps"), int) else 0
    timestamp = ms(version.created_at)
    return [Metric(metric_key("summary", *path), value, timestamp, step) for path, value in numbers(metrics)]


def metrics_file(version: ModelVersion) -> Path | None:
    configured = ((version.lineage or {}).get("config") or {}).get("metrics_file")
    job_id = job_id_of(version)
    candidates = [Path(configured)] if configured else []
    if job_id:
        # The newest attempt's first (each attempt trains in run/attempt-<n>/), then the layout before attempts.
        run = job_dir_of(job_id) / "run"
        candidates += sorted(run.glob("attempt-*/metrics.jsonl"), key=_attempt_number, reverse=True)
        candidates.append(run / "metrics.jsonl")
    return next((p for p in candidates if p.is_file()), None)


def training_logs(version: ModelVersion) -> list[Path]:
    """The job's attempt logs (the training child's stderr) and the engine's train.log."""
    job_id = job_id_of(version)
    if not job_id:
        return []
    job_dir = job_dir_of(job_id)
    logs = sorted(job_dir.glob("attempt-*.log"))
    run = job_dir / "run"
    logs += sorted(run.glob("attempt-*/train.log"), key=_attempt_number)
    if (run / "train.log").is_file():
        logs.append(run / "train.log")
    return logs


def _attempt_number(path: Path) -> int:
    """``.../run/attempt-3/train.log`` → 3 (numeric order: attempt-10 after attempt-9)."""
    suffix = path.parent.name.removeprefix("attempt-")
    return int(suffix) if suffix.isdigit() else -1


def job_dir_of(job_id: str) -> Path:
    return datapaths.job_dir(job_id)


def job_id_of(version: ModelVersion) -> str | None:
    return version.job_id or ((version.lineage or {}).get("job") or {}).get("id")


def weights_artifact(version: ModelVersion) -> str:
    return "model" if version.kind == ModelVersion.Kind.FULL else "adapter"


def model_tags(version: ModelVersion) -> dict[str, str]:
    return {
        "tuninglab.owner": version.registered_model.owner.get_username(),
        "tuninglab.owner_id": str(version.owner_id),
        "tuninglab.model": version.registered_model.name,
    }


# --- names, values, plumbing -----------------------------------------------------------------


def mlflow_name(version: ModelVersion) -> str:
    """``u<owner id>.<model name>``: experiment and registered model of one owner's model."""
    return f"u{version.owner_id}.{version.registered_model.name}"


def label_name(version: ModelVersion) -> str:
    return f"{version.registered_model.name} v{version.version}"


def label(version: ModelVersion) -> str:
    return f"{version.registered_model.owner.get_username()}/{label_name(version)}"


def alias_label(alias: Alias) -> str:
    return f"{alias.registered_model.owner.get_username()}/{alias.registered_model.name}@{alias.alias}"


def safe_key(name: str) -> str:
    """A param/metric key MLflow accepts (alphanumerics, ``_ - .``); user-given names may hold others."""
    return _UNSAFE_KEY_CHARS.sub("_", str(name)).strip(".") or "_"


def metric_key(*parts: str) -> str:
    return "/".join(safe_key(part) for part in parts)


def param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:PARAM_VALUE_MAX_CHARS]


def numbers(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """``(path, value)`` of every finite number in a JSON tree of dicts (lists are skipped)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, (*prefix, str(key)))
    elif prefix and (number := finite(tree)) is not None:
        yield prefix, number


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def parse_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
