"""Aliases (``production``, ``staging``, user-defined) and their moves: promote and rollback.

Each move, in one transaction: lock the registered model's row (every move of any of its
aliases queues behind it), run the pre-promotion check on the target, point the alias at
it, append an ``AliasEvent`` (who, from, to, why), and ask for an MLflow sync after commit.
A refused check raises before anything is written, so the alias and its history stay as
they were. Serving follows the aliases themselves: the gateway resolves them per request and the
supervisor reconciles vLLM with them (inference.adapters).

Rollback needs "the version that held the alias before", repeatedly: the alias's events,
replayed in order, form a stack (a promotion pushes its target, a rollback pops back to
its target), so rolling back twice walks two steps back instead of bouncing between the
last two versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from registry.models import Alias, AliasEvent, ModelVersion, RegisteredModel
from registry.naming import NAME_RE
from registry.selectors import model_version_get, registered_model_get
from registry.services.checks import version_require_servable
from registry.services.notify import request_registry_sync
from tuninglab.errors import ConflictError, InvalidRequestError, NotFoundError

DEFAULT_ALIAS = "production"
# MLflow, which mirrors every alias, reserves "latest" and "v<number>" (they would also read
# as version numbers in our own commands) and accepts no ".", although model names may have one.
RESERVED_ALIAS_RE = re.compile(r"^(latest|v[0-9]+)\Z")


@dataclass(frozen=True)
class AliasMove:
    """The alias after a move, and the event that recorded it (None: it already pointed there)."""

    alias: Alias
    event: AliasEvent | None


def alias_name_validate(alias: str) -> None:
    """Raise InvalidRequestError ``invalid_alias`` unless ``alias`` is a name MLflow can mirror too."""
    if not isinstance(alias, str) or not NAME_RE.fullmatch(alias) or "." in alias or RESERVED_ALIAS_RE.fullmatch(alias):
        raise InvalidRequestError(
            f"Invalid alias {alias!r}.",
            code="invalid_alias",
            param="alias",
            suggestion="Use 1-64 characters: lowercase letters, digits, '_' or '-', starting with a letter or "
            "digit (e.g. 'production', 'staging', 'canary-eu'); 'latest' and 'v<number>' are reserved.",
        )


def _locked_model(*, owner: Any, name: str) -> RegisteredModel:
    # Another owner's model is "not found", like a missing one (no existence leak).
    model = registered_model_get(owner=owner, name=name)
    # The row lock serialises every move of this model's aliases until the transaction ends:
    # two promotions of one alias read and write the alias one after the other, so each
    # event's from_version is the previous event's to_version.
    return RegisteredModel.objects.select_for_update().get(pk=model.pk)


def _current(registered: RegisteredModel, alias: str) -> Alias | None:
    return (
        Alias.objects.filter(registered_model=registered, alias=alias)
        .select_related("version", "registered_model")
        .first()
    )


def _move(
    *,
    registered: RegisteredModel,
    current: Alias | None,
    alias: str,
    target: ModelVersion,
    kind: str,
    actor: Any,
    reason: str,
) -> AliasMove:
    """Check ``target``, point the alias at it and record the event (inside the caller's transaction)."""
    version_require_servable(version=target)
    from_version = current.version if current is not None else None
    if current is None:
        current = Alias.objects.create(registered_model=registered, alias=alias, version=target)
    else:
        current.version = target
        current.mlflow_synced_at = None  # the MLflow mirror is behind until the sync runs
        current.save(update_fields=["version", "mlflow_synced_at", "updated_at"])
    event = AliasEvent.objects.create(
        alias=current,
        kind=kind,
        from_version=from_version,
        to_version=target,
        actor=actor,
        reason=reason or "",
    )
    request_registry_sync()  # sent on commit: a rolled-back move sends nothing
    return AliasMove(alias=current, event=event)


def model_promote(
    *,
    owner: Any,
    name: str,
    version: int | None = None,
    alias: str = DEFAULT_ALIAS,
    actor: Any = None,
    reason: str = "",
) -> AliasMove:
    """Point ``alias`` of the owner's model ``name`` at ``version`` (None: the newest version).

    Promoting the version the alias already holds writes nothing and returns ``event=None``.

    Raises:
        InvalidRequestError: ``invalid_alias``.
        NotFoundError: ``model_not_found`` (also another owner's model), ``version_not_found``.
        VersionNotServableError: the pre-promotion check refused the version; nothing moved.
    """
    alias_name_validate(alias)
    with transaction.atomic():
        registered = _locked_model(owner=owner, name=name)
        if version is None:
            target = (
                ModelVersion.objects.filter(registered_model=registered)
                .select_related("registered_model", "base_model")
                .order_by("-version")
                .first()
            )
            if target is None:
                raise NotFoundError(f"Model {name} has no versions.", code="version_not_found", param="version")
        else:
            target = model_version_get(owner=owner, name=name, version=version)
        current = _current(registered, alias)
        if current is not None and current.version_id == target.id:
            return AliasMove(alias=current, event=None)
        return _move(
            registered=registered,
            current=current,
            alias=alias,
            target=target,
            kind=AliasEvent.Kind.PROMOTE,
            actor=actor,
            reason=reason,
        )


def _held_before(current: Alias) -> str | None:
    """The id of the version the alias held before its current one, by replaying its events."""
    stack: list[str] = []
    for kind, to_id in AliasEvent.objects.filter(alias=current).order_by("id").values_list("kind", "to_version_id"):
        if kind == AliasEvent.Kind.PROMOTE:
            stack.append(to_id)
        elif to_id in stack[:-1]:
            # Back to a version held before: unwind to its latest place in the stack.
            del stack[len(stack) - 1 - stack[-2::-1].index(to_id) :]
        else:
            # An explicit rollback to a version the alias never held replaces the current one.
            stack[-1:] = [to_id]
    if not stack or stack[-1] != current.version_id:
        stack.append(current.version_id)  # the row was changed outside these services: trust the row
    return next((vid for vid in reversed(stack[:-1]) if vid != current.version_id), None)


def model_rollback(
    *,
    owner: Any,
    name: str,
    alias: str = DEFAULT_ALIAS,
    to_version: int | None = None,
    actor: Any = None,
    reason: str = "",
) -> AliasMove:
    """Point ``alias`` back at the version that held it before (or at ``to_version``).

    Rolling back twice walks two steps back (see the module docstring). ``to_version`` may be
    any version of the model; if the alias already holds it, nothing is written (``event=None``).
    The target passes the pre-promotion check first: serving limits may have changed since.

    Raises:
        InvalidRequestError: ``invalid_alias``.
        NotFoundError: ``model_not_found``, ``alias_not_found``, ``version_not_found``.
        ConflictError: ``nothing_to_roll_back`` when the alias held no earlier version.
        VersionNotServableError: the check refused the target; nothing moved.
    """
    alias_name_validate(alias)
    with transaction.atomic():
        registered = _locked_model(owner=owner, name=name)
        current = _current(registered, alias)
        if current is None:
            raise NotFoundError(f"Model {name} has no alias {alias!r}.", code="alias_not_found", param="alias")
        if to_version is not None:
            target = model_version_get(owner=owner, name=name, version=to_version, param="to_version")
            if target.id == current.version_id:
                return AliasMove(alias=current, event=None)
        else:
            previous = _held_before(current)
            if previous is None:
                raise ConflictError(
                    f"Nothing to roll back: {name}@{alias} is at v{current.version.version} and held no "
                    "earlier version.",
                    code="nothing_to_roll_back",
                    param="alias",
                    suggestion="Promote a version explicitly, or roll back to a given version (to_version / --to).",
                )
            target = ModelVersion.objects.select_related("registered_model", "base_model").get(pk=previous)
        return _move(
            registered=registered,
            current=current,
            alias=alias,
            target=target,
            kind=AliasEvent.Kind.ROLLBACK,
            actor=actor,
            reason=reason,
        )
