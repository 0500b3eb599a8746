"""Registry reads, always scoped to the caller: another owner's model is a 404 like a missing one."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Max, Q, QuerySet

from registry.models import (
    Alias,
    AliasEvent,
    BaseModel,
    Comparison,
    Evaluation,
    ModelVersion,
    RegisteredModel,
    VersionTraffic,
)
from tuninglab.errors import NotFoundError


def registered_model_get(*, owner: Any, name: str, param: str = "name") -> RegisteredModel:
    """The caller's registered model ``name``."""
    model = RegisteredModel.objects.filter(owner=owner, name=name).first()
    if model is None:
        raise NotFoundError(f"No such model: {name}.", code="model_not_found", param=param)
    return model


def model_version_list(*, registered_model: RegisteredModel) -> QuerySet[ModelVersion]:
    """Versions of one registered model, newest first, with what their rows show joined in."""
    return (
        ModelVersion.objects.filter(registered_model=registered_model)
        .select_related("registered_model", "base_model", "job")
        .prefetch_related("aliases")
        .order_by("-version")
    )


def model_version_get(*, owner: Any, name: str, version: int, param: str = "version") -> ModelVersion:
    """Version ``version`` of the caller's model ``name``."""
    row = (
        ModelVersion.objects.select_related("registered_model", "base_model", "job")
        .filter(owner=owner, registered_model__name=name, version=version)
        .first()
    )
    if row is None:
        raise NotFoundError(f"No version {version} of model {name}.", code="version_not_found", param=param)
    return row


def alias_list(*, registered_model: RegisteredModel) -> QuerySet[Alias]:
    """The model's aliases and the versions they point at."""
    return Alias.objects.filter(registered_model=registered_model).select_related("version").order_by("alias")


def alias_event_list(*, registered_model: RegisteredModel, alias: str | None = None) -> QuerySet[AliasEvent]:
    """Alias moves of the model (optionally one alias), newest first."""
    events = AliasEvent.objects.filter(alias__registered_model=registered_model)
    if alias is not None:
        events = events.filter(alias__alias=alias)
    return events.select_related("alias", "from_version", "to_version", "actor").order_by("-created_at", "-id")


# --- reads for the HTTP API and the admin -------------------------------------------------


def base_model_list() -> QuerySet[BaseModel]:
    """Every base model (shared by all owners), by name."""
    return BaseModel.objects.order_by("name")


def registered_model_list(*, owner: Any) -> QuerySet[RegisteredModel]:
    """The caller's registered models, by name."""
    return RegisteredModel.objects.filter(owner=owner).select_related("owner").order_by("name")


def fine_tuned_version_list(*, owner: Any) -> QuerySet[ModelVersion]:
    """The caller's versions that carry an OpenAI ``ft:`` id: those of succeeded jobs, oldest first.

    The id lives on the job (``fine_tuned_model``); the FK reaches it without importing ``tunings``.
    """
    succeeded = ModelVersion._meta.get_field("job").related_model.Status.SUCCEEDED
    return (
        ModelVersion.objects.filter(owner=owner, job__status=succeeded)
        .exclude(job__fine_tuned_model="")
        .select_related("owner", "job")
        .order_by("created_at", "id")
    )


def model_lookup(*, owner: Any, model_id: str) -> BaseModel | RegisteredModel | ModelVersion:
    """What a ``/v1/models/{id}`` id names: an ``ft:`` id → its version, a base model, or the caller's model.

    A base model's name wins over a registered model of the same name: base names are the one
    name space every owner shares, so an id means the same model to everyone who can see it.

    Raises:
        NotFoundError: nothing of that id the caller may see (another owner's ft id included).
    """
    if model_id.startswith("ft:"):
        version = (
            ModelVersion.objects.select_related("registered_model", "base_model", "job", "owner")
            .prefetch_related("aliases")
            .filter(owner=owner, job__fine_tuned_model=model_id)
            .first()
        )
        if version is not None:
            return version
    else:
        base = BaseModel.objects.filter(name=model_id).first()
        if base is not None:
            return base
        model = RegisteredModel.objects.select_related("owner").filter(owner=owner, name=model_id).first()
        if model is not None:
            return model
    raise NotFoundError(f"No such model: {model_id}.", code="model_not_found", param="model")


def registered_model_summary(*, registered_model: RegisteredModel) -> dict[str, Any]:
    """The newest version number, the version count and ``{alias: version}`` of one model (two queries)."""
    stats = ModelVersion.objects.filter(registered_model=registered_model).aggregate(
        latest=Max("version"), count=Count("id")
    )
    aliases = dict(alias_list(registered_model=registered_model).values_list("alias", "version__version"))
    return {"latest_version": stats["latest"], "version_count": stats["count"], "aliases": aliases}


def alias_get(*, registered_model: RegisteredModel, alias: str) -> Alias:
    """One alias of the model (with the version it points at)."""
    row = alias_list(registered_model=registered_model).filter(alias=alias).first()
    if row is None:
        raise NotFoundError(
            f"Model {registered_model.name} has no alias {alias!r}.", code="alias_not_found", param="alias"
        )
    return row


def evaluation_list(*, version: ModelVersion) -> QuerySet[Evaluation]:
    """Evaluations of one version, newest first."""
    return _evaluations().filter(version=version).order_by("-created_at", "-id")


def evaluation_get(*, owner: Any, evaluation_id: str) -> Evaluation:
    """The caller's evaluation ``evaluation_id``."""
    row = _evaluations().filter(owner=owner, id=evaluation_id).first()
    if row is None:
        raise NotFoundError(f"No such evaluation: {evaluation_id}.", code="not_found", param="evaluation_id")
    return row


def comparison_get(*, owner: Any, comparison_id: str) -> Comparison:
    """The caller's comparison ``comparison_id``."""
    row = (
        Comparison.objects.select_related(
            "version_a__registered_model", "version_b__registered_model", "base_model", "dataset"
        )
        .filter(owner=owner, id=comparison_id)
        .first()
    )
    if row is None:
        raise NotFoundError(f"No such comparison: {comparison_id}.", code="not_found", param="comparison_id")
    return row


def evaluation_dataset_get(*, owner: Any, file_id: str, param: str = "file") -> Any:
    """The caller's live dataset ``file_id`` (a ``tunings.TrainingFile`` row) to evaluate on.

    Reached through the ``Evaluation.dataset`` FK's model so ``registry`` needs no import of
    ``tunings``. Someone else's or a deleted file is a 404 like a missing one; whether the
    file is usable (validated) is the evaluation service's check.
    """
    files = Evaluation._meta.get_field("dataset").related_model
    file = files.objects.filter(id=file_id, owner=owner, deleted_at__isnull=True).first()
    if file is None:
        raise NotFoundError(f"No such file: {file_id}.", code="not_found", param=param)
    return file


def _evaluations() -> QuerySet[Evaluation]:
    return Evaluation.objects.select_related("version__registered_model", "base_model")


def version_alias_event_list(*, version: ModelVersion) -> QuerySet[AliasEvent]:
    """Alias moves to or from one version, newest first (alias, versions and actor joined)."""
    return (
        AliasEvent.objects.filter(Q(from_version=version) | Q(to_version=version))
        .select_related("alias", "from_version", "to_version", "actor")
        .order_by("-created_at", "-id")
    )


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"prefix.a.b": 1}``: nested metrics as one row each."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(_flat(f"{prefix}.{key}", inner))
    return out


def version_comparison_rows(*, versions: list[ModelVersion]) -> list[tuple[str, list[Any]]]:
    """Versions side by side: one ``(row label, [value per version])`` per fact, metric and count.

    Facts first (model, kind, base, job, aliases), then every metric any version has (training
    metrics, the latest evaluation, the job's resolved hyperparameters, live traffic), so a
    metric one version lacks shows as ``None`` in its column rather than shifting the others.
    Expects ``registered_model``, ``base_model`` and ``job`` joined and ``aliases`` prefetched.
    """
    traffic = {row.version_id: row for row in VersionTraffic.objects.filter(version__in=versions)}
    columns: list[dict[str, Any]] = []
    for v in versions:
        row = traffic.get(v.id)
        column = {
            "model": v.registered_model.name,
            "version": f"v{v.version}",
            "kind": v.kind,
            "base model": v.base_model.name,
            "job": v.job_id or "-",
            "aliases": ", ".join(sorted(a.alias for a in v.aliases.all())) or "-",
            "created": v.created_at.strftime("%Y-%m-%d %H:%M"),
            **_flat("metrics", v.metrics or {}),
            **_flat("evaluation", v.evaluation or {}),
            **_flat("hyperparameters", (v.job.resolved_hyperparameters if v.job else None) or {}),
            "traffic.requests": row.requests if row else 0,
            "traffic.errors": row.errors if row else 0,
            "traffic.mean_latency_ms": round(row.mean_latency_ms, 2) if row and row.mean_latency_ms else None,
        }
        columns.append(column)
    labels: list[str] = []
    for column in columns:
        labels += [label for label in column if label not in labels]
    return [(label, [column.get(label) for column in columns]) for label in labels]
