"""Set, read and remove a registered model's traffic route (weighted split, sticky key, shadow).

A route decides where requests that name the model bare (``"model": "bot"``) go; pinned
names (``bot@v3``, ``bot@production``, ``ft:`` ids) bypass it. Every version a route sends
traffic to (the shadow too) must pass the pre-promotion check, exactly like an alias move.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from inference.models import Route, RouteSplit
from registry.models import ModelVersion, RegisteredModel
from registry.selectors import model_version_get, registered_model_get
from registry.services.checks import VersionNotServableError, version_require_servable
from tuninglab.errors import InvalidRequestError, NotFoundError

MAX_SPLITS = 10


def _bad(message: str, param: str, suggestion: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, code="invalid_route", param=param, suggestion=suggestion)


def _int(value: Any, param: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"'{param}' must be an integer from {low} to {high}.", param)
    return value


def route_set(*, owner: Any, name: str, payload: Any, actor: Any = None) -> Route:
    """Replace the route of the owner's model ``name`` with ``payload``.

    ``payload``: ``{"splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],
    "sticky": "user"|"header"|"api_key"|"none", "shadow": {"version": 3, "percent": 10} | null}``.

    Raises:
        InvalidRequestError: ``invalid_route`` naming the field.
        NotFoundError: ``model_not_found`` / ``version_not_found``.
        VersionNotServableError: a version failed the pre-promotion check; nothing changed.
    """
    if not isinstance(payload, dict):
        raise _bad("The route must be a JSON object.", "route")
    unknown = sorted(set(payload) - {"splits", "sticky", "shadow"})
    if unknown:
        raise _bad(f"Unknown route field {unknown[0]!r}.", unknown[0], "Fields: splits, sticky, shadow.")
    splits = payload.get("splits")
    if not isinstance(splits, list) or not 1 <= len(splits) <= MAX_SPLITS:
        raise _bad(f"'splits' must be a list of 1 to {MAX_SPLITS} {{version, weight}} objects.", "splits")
    sticky = payload.get("sticky", Route.Sticky.USER)
    if sticky not in Route.Sticky.values:
        raise _bad(f"'sticky' must be one of {', '.join(Route.Sticky.values)}.", "sticky")
    with transaction.atomic():
        registered = registered_model_get(owner=owner, name=name)
        RegisteredModel.objects.select_for_update().get(pk=registered.pk)
        chosen: list[tuple[ModelVersion, int]] = []
        for i, item in enumerate(splits):
            if not isinstance(item, dict) or set(item) != {"version", "weight"}:
                raise _bad('Each split is {"version": <number>, "weight": <integer>}.', f"splits[{i}]")
            number = _int(item["version"], f"splits[{i}].version", low=1, high=10**9)
            weight = _int(item["weight"], f"splits[{i}].weight", low=0, high=10_000)
            version = model_version_get(owner=owner, name=name, version=number, param=f"splits[{i}].version")
            if any(v.pk == version.pk for v, _ in chosen):
                raise _bad(f"Version {number} appears twice in 'splits'.", f"splits[{i}].version")
            chosen.append((version, weight))
        if sum(w for _, w in chosen) <= 0:
            raise _bad("At least one split needs a weight above 0.", "splits")
        shadow_version, shadow_percent = None, 0
        shadow = payload.get("shadow")
        if shadow is not None:
            if not isinstance(shadow, dict) or set(shadow) != {"version", "percent"}:
                raise _bad('\'shadow\' is {"version": <number>, "percent": 0-100} or null.', "shadow")
            number = _int(shadow["version"], "shadow.version", low=1, high=10**9)
            shadow_percent = _int(shadow["percent"], "shadow.percent", low=0, high=100)
            shadow_version = model_version_get(owner=owner, name=name, version=number, param="shadow.version")
        # Only versions that get traffic are checked: a weight-0 split is a placeholder.
        serving = [(v, f"splits[{i}].version") for i, (v, w) in enumerate(chosen) if w > 0]
        if shadow_version is not None:
            serving.append((shadow_version, "shadow.version"))
        for version, param in serving:
            try:
                version_require_servable(version=version)
            except VersionNotServableError as exc:
                exc.param = param  # which entry of the route failed, not the alias API's "version"
                raise
        route, _ = Route.objects.update_or_create(
            registered_model=registered,
            defaults={
                "sticky": sticky,
                "shadow_version": shadow_version,
                "shadow_percent": shadow_percent,
                "updated_by": actor,
            },
        )
        route.splits.all().delete()
        RouteSplit.objects.bulk_create([RouteSplit(route=route, version=v, weight=w) for v, w in chosen])
    return route_get(owner=owner, name=name)


def route_get(*, owner: Any, name: str) -> Route:
    """The route of the owner's model ``name`` (404 ``route_not_found`` when it has none)."""
    registered = registered_model_get(owner=owner, name=name)
    route = (
        Route.objects.filter(registered_model=registered)
        .select_related("registered_model", "shadow_version")
        .prefetch_related("splits__version")
        .first()
    )
    if route is None:
        raise NotFoundError(
            f"Model {name} has no route: requests go to its production alias (else its latest version).",
            code="route_not_found",
            param="name",
        )
    return route


def route_delete(*, owner: Any, name: str) -> None:
    """Remove the route; requests for ``name`` go back to its production alias."""
    route_get(owner=owner, name=name).delete()


def route_to_dict(route: Route) -> dict[str, Any]:
    return {
        "object": "model.route",
        "model": route.registered_model.name,
        "sticky": route.sticky,
        "splits": [{"version": s.version.version, "weight": s.weight} for s in route.splits.all()],
        "shadow": (
            {"version": route.shadow_version.version, "percent": route.shadow_percent}
            if route.shadow_version_id
            else None
        ),
        "updated_at": int(route.updated_at.timestamp()),
    }
