"""Mirror the registry to MLflow: a run per trained version, a registered-model version linked
to it, the aliases, and finished evaluations. Worker side only (``registry_sync`` runs in the
``SYNC_REGISTRY`` task and in ``manage.py registry_sync``).

The database is the truth; MLflow is a mirror that may be down. A row says what is pending
(``ModelVersion.mlflow_synced_at`` null, an ``Alias`` synced before its last move), so a
sync that fails, crashes or never ran is caught up by the next one, and one that runs twice
adds nothing: a version's run is found again by its ``tuninglab.version_id`` tag, its
registered-model version by that run's id, and metrics are logged with fixed timestamps, so
MLflow drops a re-logged value as a duplicate.

Names: the owner is part of every MLflow name (``u<owner id>.<model name>``, both for the
experiment and the registered model) because MLflow has one name space for all owners; the
owner's id, not the username, so a rename does not fork the line. MLflow forbids ``/`` and
``:`` in registered model names, and our model names hold neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from django.conf import settings
from django.db import connection
from django.db.models import F, Q
from django.utils import timezone
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

from registry import mlflow_payloads as payloads
from registry.models import Alias, Evaluation, ModelVersion, RunStatus

log = logging.getLogger(__name__)

TAG_VERSION_ID = "tuninglab.version_id"
# Set last, when params, metrics and artifacts are all in: a run without it (a sync that
# crashed half-way) is completed by the next sync instead of being duplicated.
TAG_MIRRORED = "tuninglab.mirrored"
# One tag per evaluation logged to a run: what makes re-logging an evaluation a no-op.
TAG_EVALUATION_PREFIX = "tuninglab.evaluation."
# MLflow's limits (mlflow.utils.validation): params/tags and metrics per log_batch, param value length.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
ERROR_MAX_CHARS = 2000
# A remote server gets one cheap reachability probe before a sync: the MLflow client retries a
# refused connection for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES), the probe answers in seconds.
PROBE_TIMEOUT_S = 5
# Evaluations are picked up when they finished after (or shortly before) the version's last
# sync: the margin covers a finish time stamped before its commit and skew between worker
# clocks. Re-checking one costs a get_run; its tag makes the re-log a no-op.
EVALUATION_LOOKBACK = timedelta(minutes=5)
# pg_try_advisory_lock key serialising syncs across workers ("tlmf").
SYNC_LOCK_KEY = 0x746C6D66


@dataclass
class SyncReport:
    """What one ``registry_sync`` mirrored, what waits, and what failed (each a readable line)."""

    tracking_uri: str
    enabled: bool = True
    versions: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class MirrorError(RuntimeError):
    """A row cannot be mirrored for a reason on our side (e.g. its files are gone)."""


def mlflow_dir() -> Path:
    """``DATA_DIR/mlflow``: the embedded store, its artifacts and the sync lock."""
    return Path(settings.DATA_DIR) / "mlflow"


def mlflow_tracking_uri() -> str:
    """``TUNINGLAB["MLFLOW_TRACKING_URI"]``, else the embedded SQLite store under ``DATA_DIR/mlflow``."""
    return settings.TUNINGLAB["MLFLOW_TRACKING_URI"] or f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def registry_sync(*, everything: bool = False) -> SyncReport:
    """Bring MLflow up to date with every version, alias and evaluation the DB says is pending.

    Idempotent and safe to run concurrently (syncs take turns). One row's failure is recorded
    on the row (``mlflow_error``) and in the report, and the sync goes on with the next row;
    when a remote server does not answer, every pending row gets that reason and nothing is
    attempted. Never raises for a row's failure.

    Args:
        everything: treat every version and alias as pending (after pointing at a new or wiped
            MLflow store); what MLflow already has is found and reused, not duplicated.
    """
    uri = mlflow_tracking_uri()
    report = SyncReport(tracking_uri=_display_uri(uri))
    if not settings.TUNINGLAB["MLFLOW_ENABLED"]:
        report.enabled = False
        return report
    with _one_sync_at_a_time():
        versions = list(_pending_versions(everything=everything))
        if not (
            versions
            or _pending_aliases(everything=everything).exists()
            or _evaluation_candidates(everything=everything).exists()
        ):
            return report  # nothing pending: MLflow is not even contacted
        down = _unreachable(uri)
        if down is not None:
            _give_up(versions, reason=down, report=report)
            return report
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        artifact_root = _local_artifact_root(uri)
        for index, version in enumerate(versions):
            if not _sync_version(client, version, artifact_root=artifact_root, report=report):
                down = _unreachable(uri)
                if down is not None:
                    _give_up(versions[index + 1 :], reason=down, report=report)
                    return report
        _sync_aliases(client, everything=everything, report=report)
        _sync_evaluations(client, everything=everything, report=report)
    return report


# --- what is pending -------------------------------------------------------------------------


def _pending_versions(*, everything: bool) -> Iterable[ModelVersion]:
    rows = ModelVersion.objects.all() if everything else ModelVersion.objects.filter(mlflow_synced_at__isnull=True)
    # Oldest first per model, so MLflow numbers its versions like we do whenever it can.
    return rows.select_related("registered_model__owner", "base_model").order_by("registered_model_id", "version")


def _pending_aliases(*, everything: bool) -> Any:
    rows = Alias.objects.all()
    if not everything:
        rows = rows.filter(Q(mlflow_synced_at__isnull=True) | Q(mlflow_synced_at__lt=F("updated_at")))
    return rows.select_related("registered_model__owner", "version").order_by("registered_model_id", "alias")


def _evaluation_candidates(*, everything: bool) -> Any:
    rows = Evaluation.objects.filter(status=RunStatus.SUCCEEDED, version__mlflow_synced_at__isnull=False).exclude(
        version__mlflow_run_id=""
    )
    if not everything:
        rows = rows.filter(finished_at__gte=F("version__mlflow_synced_at") - EVALUATION_LOOKBACK)
    return rows.select_related("version__registered_model__owner").order_by("version_id", "finished_at", "id")


# --- versions --------------------------------------------------------------------------------


def _sync_version(
    client: mlflow.MlflowClient, version: ModelVersion, *, artifact_root: Path | None, report: SyncReport
) -> bool:
    """Mirror one version (run, artifacts, registered-model version); False when it failed."""
    label = payloads.label(version)
    # The rows read from here on are what MLflow will hold; anything newer is newer than this.
    read_at = timezone.now()
    try:
        name = payloads.mlflow_name(version)
        experiment_id = _experiment_id(client, name, version, artifact_root=artifact_root)
        run = _find_run(client, experiment_id, version) or _create_run(client, experiment_id, version)
        run_id = run.info.run_id
        if run.data.tags.get(TAG_MIRRORED) != "true":
            _log_run(client, run_id, version)
        _ensure_registered_model(client, name, version)
        mlflow_version = _model_version(client, name, run, version)
    except Exception as exc:  # one row's failure must not stop the others
        error = _error_text(exc)
        log.warning("MLflow sync of %s failed: %s", label, error)
        ModelVersion.objects.filter(pk=version.pk).update(mlflow_error=error)
        report.failures.append(f"{label}: {error}")
        return False
    ModelVersion.objects.filter(pk=version.pk).update(
        mlflow_run_id=run_id, mlflow_version=mlflow_version, mlflow_synced_at=read_at, mlflow_error=""
    )
    report.versions.append(f"{label} -> MLflow {name} v{mlflow_version} (run {run_id})")
    return True


def _experiment_id(client: mlflow.MlflowClient, name: str, version: ModelVersion, *, artifact_root: Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (artifact_root / name).as_uri() if artifact_root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=payloads.model_tags(version))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile by someone else: use it
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _find_run(client: mlflow.MlflowClient, experiment_id: str, version: ModelVersion) -> Run | None:
    """The version's run from an earlier sync (the first complete one, else the oldest)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_VERSION_ID}` = '{version.id}'",
        order_by=["attributes.start_time ASC"],
    )
    complete = [run for run in runs if run.data.tags.get(TAG_MIRRORED) == "true"]
    return (complete or runs or [None])[0]


def _create_run(client: mlflow.MlflowClient, experiment_id: str, version: ModelVersion) -> Run:
    lineage = version.lineage or {}
    started = payloads.parse_time((lineage.get("job") or {}).get("started_at")) or version.created_at
    tags = {
        TAG_VERSION_ID: version.id,
        "tuninglab.job_id": payloads.job_id_of(version) or "",
        "tuninglab.owner": version.registered_model.owner.get_username(),
        "tuninglab.owner_id": str(version.owner_id),
        "tuninglab.model": version.registered_model.name,
        "tuninglab.version": str(version.version),
        "tuninglab.kind": version.kind,
        "tuninglab.sha256": version.sha256,
    }
    if lineage.get("code_version"):
        tags["mlflow.source.git.commit"] = lineage["code_version"]
    return client.create_run(
        experiment_id,
        start_time=payloads.ms(started),
        tags=tags,
        run_name=f"{version.registered_model.name} v{version.version}",
    )


def _log_run(client: mlflow.MlflowClient, run_id: str, version: ModelVersion) -> None:
    """Params, per-step and summary metrics, artifacts and evaluations; then mark the run complete."""
    weights_dir = Path(version.adapter_path)
    if not weights_dir.is_dir():
        raise MirrorError(f"the version's directory {weights_dir} is missing")
    params = [Param(key, value) for key, value in payloads.params(version).items()]
    for chunk in payloads.chunks(params, PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in payloads.chunks(payloads.step_metrics(version) + payloads.summary_metrics(version), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    client.log_artifacts(run_id, str(weights_dir), payloads.weights_artifact(version))
    for path in payloads.training_logs(version):
        client.log_artifact(run_id, str(path), "logs")
    evaluations = Evaluation.objects.filter(version=version, status=RunStatus.SUCCEEDED).order_by("finished_at", "id")
    _log_evaluations(client, run_id, version, list(evaluations))
    client.set_tag(run_id, TAG_MIRRORED, "true")
    client.set_terminated(run_id, "FINISHED", end_time=payloads.ms(version.created_at))


def _ensure_registered_model(client: mlflow.MlflowClient, name: str, version: ModelVersion) -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    owner = version.registered_model.owner.get_username()
    description = f"{owner}/{version.registered_model.name}, mirrored from LLM Tuning Lab (its database is the truth)."
    try:
        client.create_registered_model(name, tags=payloads.model_tags(version), description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _model_version(client: mlflow.MlflowClient, name: str, run: Run, version: ModelVersion) -> str:
    """The registered-model version linked to ``run``: the existing one, else a new one."""
    run_id = run.info.run_id
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return str(min(int(mv.version) for mv in existing))
    created = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{payloads.weights_artifact(version)}",
        run_id=run_id,
        tags={
            TAG_VERSION_ID: version.id,
            "tuninglab.version": str(version.version),
            "tuninglab.kind": version.kind,
            "tuninglab.sha256": version.sha256,
            "tuninglab.base_model": version.base_model.name,
            "tuninglab.base_model_content_hash": version.base_model.content_hash,
        },
        description=f"{version.registered_model.owner.get_username()}/{payloads.label_name(version)}",
        # Stores of the open-source server create versions READY at once; never block a worker.
        await_creation_for=0,
    )
    return str(created.version)


def _give_up(versions: Sequence[ModelVersion], *, reason: str, report: SyncReport) -> None:
    """MLflow does not answer: every pending row keeps waiting, with the reason on it."""
    ModelVersion.objects.filter(pk__in=[v.pk for v in versions], mlflow_synced_at__isnull=True).update(
        mlflow_error=reason
    )
    report.failures.extend(f"{payloads.label(v)}: {reason}" for v in versions)
    for alias in _pending_aliases(everything=False):
        report.failures.append(f"{payloads.alias_label(alias)}: {reason}")
    if not report.failures:
        report.failures.append(reason)


# --- aliases ---------------------------------------------------------------------------------


def _sync_aliases(client: mlflow.MlflowClient, *, everything: bool, report: SyncReport) -> None:
    for alias in _pending_aliases(everything=everything):
        label = payloads.alias_label(alias)
        if not alias.version.mlflow_version:
            report.waiting.append(f"{label}: v{alias.version.version} is not in MLflow yet")
            continue
        try:
            client.set_registered_model_alias(
                payloads.mlflow_name(alias.version), alias.alias, alias.version.mlflow_version
            )
        except Exception as exc:  # one alias's failure must not stop the others
            report.failures.append(f"{label}: {_error_text(exc)}")
            continue
        # Stamped with the move it mirrors (its updated_at), not our clock: a move committed
        # meanwhile changed the row, matches nothing here, and stays pending.
        Alias.objects.filter(pk=alias.pk, version_id=alias.version_id, updated_at=alias.updated_at).update(
            mlflow_synced_at=alias.updated_at
        )
        report.aliases.append(f"{label} -> MLflow v{alias.version.mlflow_version}")


# --- evaluations -----------------------------------------------------------------------------


def _sync_evaluations(client: mlflow.MlflowClient, *, everything: bool, report: SyncReport) -> None:
    """Log evaluations that finished after their version was mirrored to the version's run."""
    by_version: dict[str, list[Evaluation]] = {}
    for evaluation in _evaluation_candidates(everything=everything):
        by_version.setdefault(evaluation.version_id, []).append(evaluation)
    for evaluations in by_version.values():
        version = evaluations[0].version
        read_at = timezone.now()
        try:
            run = client.get_run(version.mlflow_run_id)
            new = [e for e in evaluations if f"{TAG_EVALUATION_PREFIX}{e.id}" not in run.data.tags]
            if not new:
                continue
            version.refresh_from_db(fields=["evaluation"])
            _log_evaluations(client, run.info.run_id, version, new)
        except Exception as exc:  # one version's failure must not stop the others
            report.failures.append(f"evaluations of {payloads.label(version)}: {_error_text(exc)}")
            continue
        ModelVersion.objects.filter(pk=version.pk, mlflow_run_id=version.mlflow_run_id).update(mlflow_synced_at=read_at)
        report.evaluations.extend(f"{e.id} of {payloads.label(version)} -> run {version.mlflow_run_id}" for e in new)


def _log_evaluations(
    client: mlflow.MlflowClient, run_id: str, version: ModelVersion, evaluations: Sequence[Evaluation]
) -> None:
    """Each evaluation's metrics (``eval/<dataset>/<metric>``) and report JSON, then its tag."""
    for evaluation in evaluations:
        timestamp = payloads.ms(evaluation.finished_at or evaluation.created_at)
        metrics = [
            Metric(payloads.metric_key("eval", evaluation.dataset_id, *path), value, timestamp, 0)
            for path, value in payloads.numbers(evaluation.metrics)
        ]
        for chunk in payloads.chunks(metrics, METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
        client.log_dict(run_id, payloads.evaluation_report(evaluation), f"evaluation/{evaluation.id}.json")
        client.set_tag(run_id, f"{TAG_EVALUATION_PREFIX}{evaluation.id}", evaluation.dataset_id)
    if version.evaluation:
        client.log_dict(run_id, version.evaluation, "evaluation/latest.json")


def _error_text(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, MlflowException) else str(exc)
    return f"{type(exc).__name__}: {message}"[:ERROR_MAX_CHARS]


def _is_remote(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def _display_uri(uri: str) -> str:
    """The URI without a password, for reports and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _local_artifact_root(uri: str) -> Path | None:
    """Where runs of a database-backed store keep artifacts (a server decides for itself)."""
    if _is_remote(uri) or uri.startswith("databricks"):
        return None
    return mlflow_dir() / "artifacts"


def _unreachable(uri: str) -> str | None:
    """Why a remote MLflow server cannot be used now, or None (it answers, or the store is local)."""
    if not _is_remote(uri):
        return None
    where = _display_uri(uri)
    try:
        # The scheme is http(s) (checked above) and the URI comes from settings, not a user.
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):  # noqa: S310
            return None
    except urllib.error.HTTPError as exc:
        # Any answer below 500 (even 401/404 from a proxy) means something is listening.
        return None if exc.code < 500 else f"MLflow at {where} answers HTTP {exc.code}"
    except OSError as exc:  # refused, timed out, DNS: down
        reason = getattr(exc, "reason", exc)
        return f"MLflow at {where} is unreachable ({reason})"


@contextlib.contextmanager
def _one_sync_at_a_time() -> Iterator[None]:
    """Serialise syncs: two at once would both miss the run the other is creating and make two.

    PostgreSQL: a session advisory lock (workers on several hosts share the database). SQLite
    means one host: an flock on ``DATA_DIR/mlflow/.sync.lock`` (threads and processes alike).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Poll instead of blocking: a blocking wait is one statement, and statement_timeout
            # would cancel it while another worker's sync uploads artifacts for longer than that.
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [SYNC_LOCK_KEY])
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.5)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [SYNC_LOCK_KEY])
        return
    mlflow_dir().mkdir(parents=True, exist_ok=True)
    with open(mlflow_dir() / ".sync.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
