"""What a request's ``model`` names, for the caller: a version of theirs, or a served base model.

Rules, in order (docs/inference.md):

1. ``ft:<base>:<owner>:<suffix>:<job id>``: the version that job produced (the caller's only).
2. a base model's name: the base model without an adapter.
3. ``name@v3``: version 3 of the caller's model ``name``; ``name@alias``: the version the alias
   holds (``name@production``).
4. ``name``: the model's route if it has one (weighted split, sticky key, shadow), else its
   ``production`` alias, else its latest version.

Anything else, or another owner's model, is 404 ``model_not_found`` listing the names the
caller can use. A version whose base this deployment does not serve is 400
``model_not_served``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace
from typing import Any

from django.db.models import Exists, OuterRef, Prefetch, Subquery

from inference.adapters import adapter_name
from inference.config import ServedBase, served_base, served_bases
from inference.models import Route, RouteSplit, ServingProcess
from registry.models import Alias, BaseModel, ModelVersion, RegisteredModel
from registry.services.aliases import DEFAULT_ALIAS
from tuninglab.errors import InvalidRequestError, NotFoundError

# Every model reference a caller can use: names, aliases, "name@v3", base names, ft: ids.
MODEL_REFERENCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
VERSION_SELECTOR_RE = re.compile(r"^v([0-9]{1,9})\Z")
MAX_LISTED_NAMES = 30


@dataclass(frozen=True)
class Target:
    """Where one request goes: a served base, and the version on it (None: the bare base)."""

    requested: str
    base: ServedBase
    version: ModelVersion | None = None
    route: Route | None = None
    # The base's ServingProcess status read with the version (one query fewer for the gateway's
    # readiness check); only meaningful when ``serving_status_read``. None: no row yet.
    serving_status: str | None = None
    serving_status_read: bool = False

    @property
    def vllm_model(self) -> str:
        return adapter_name(self.version) if self.version is not None else self.base.name


def _versions() -> Any:
    return ModelVersion.objects.select_related("registered_model", "base_model")


def callable_model_names(owner: Any) -> list[str]:
    """Names the caller may put in ``model``: served bases, their models and aliases (capped)."""
    # Only served bases that are registered: an unregistered one answers 404 like any unknown name.
    served = [b.name for b in served_bases()]
    registered = set(BaseModel.objects.filter(name__in=served).values_list("name", flat=True))
    names = [name for name in served if name in registered]
    for model in RegisteredModel.objects.filter(owner=owner).prefetch_related("aliases").order_by("name"):
        names.append(model.name)
        names += [f"{model.name}@{a.alias}" for a in sorted(model.aliases.all(), key=lambda a: a.alias)]
    return names[:MAX_LISTED_NAMES]


def _not_found(owner: Any, model: str) -> NotFoundError:
    names = callable_model_names(owner)
    return NotFoundError(
        f"The model {model!r} does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
        suggestion=f"Use one of: {', '.join(names)}" if names else "Register and promote a model first.",
    )


def _served(base_name: str, requested: str) -> ServedBase:
    base = served_base(base_name)
    if base is None:
        raise InvalidRequestError(
            f"The model {requested!r} runs on base model {base_name!r}, which this deployment does not serve.",
            code="model_not_served",
            param="model",
            suggestion="An operator adds the base to TUNINGLAB_INFERENCE_BASE_MODELS and restarts serve_inference.",
        )
    return base


def _version_target(version: ModelVersion, requested: str, route: Route | None = None) -> Target:
    if version.kind != ModelVersion.Kind.ADAPTER:
        raise InvalidRequestError(
            f"The model {requested!r} is a full-weights version; the gateway serves adapters on a shared base.",
            code="model_not_served",
            param="model",
        )
    return Target(requested=requested, base=_served(version.base_model.name, requested), version=version, route=route)


def _route_of(model: RegisteredModel) -> Route | None:
    versions = RouteSplit.objects.select_related("version__base_model", "version__registered_model")
    splits = Prefetch("splits", queryset=versions)
    return (
        Route.objects.filter(registered_model=model)
        .select_related("shadow_version__base_model", "shadow_version__registered_model")
        .prefetch_related(splits)
        .first()
    )


def pick_split(route: Route, key: str | None) -> ModelVersion:
    """The version a request with sticky ``key`` goes to (weighted; no key: a fresh random draw).

    The same key always lands on the same version while the weights stay the same.
    """
    splits = [s for s in route.splits.all() if s.weight > 0]
    total = sum(s.weight for s in splits)
    if key is None:
        point = random.random()  # noqa: S311 - traffic splitting, not security
    else:
        digest = hashlib.sha256(f"{route.pk}:{key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
    threshold = point * total
    for split in splits:
        threshold -= split.weight
        if threshold < 0:
            return split.version
    return splits[-1].version


def _aliased_version(*, owner: Any, name: str, pinned: bool, selector: str) -> ModelVersion | None:
    """The common case in one query: the version an alias of the caller's model holds.

    ``name`` (bare): its ``production`` alias, when no base model has that name and the model
    has no route; ``name@alias``: that alias. None when the case does not apply (a base's
    name, a route, no such alias, ``name@v3``, another owner's model): the caller then takes
    the general path, which decides exactly as before. Nothing is cached, so an alias move
    is seen by the next request.
    """
    if pinned and (not selector or VERSION_SELECTOR_RE.fullmatch(selector)):
        return None
    # One filter() call: the three conditions hold for the same alias row.
    versions = (
        _versions()
        .annotate(serving_status=_serving_status())
        .filter(
            aliases__registered_model__owner=owner,
            aliases__registered_model__name=name,
            aliases__alias=selector if pinned else DEFAULT_ALIAS,
        )
    )
    if pinned:
        return versions.first()
    version = versions.annotate(
        is_base=Exists(BaseModel.objects.filter(name=name)),
        has_route=Exists(Route.objects.filter(registered_model__owner=owner, registered_model__name=name)),
    ).first()
    if version is None or version.is_base or version.has_route:
        return None
    return version


def _serving_status() -> Subquery:
    """The status of the ``ServingProcess`` row of a version's base (annotation; NULL: no row)."""
    rows = ServingProcess.objects.filter(base_name=OuterRef("base_model__name"))
    return Subquery(rows.values("status")[:1])


def resolve_target(*, owner: Any, model: Any, sticky_keys: dict[str, str | None] | None = None) -> Target:
    """The target of ``model`` for ``owner``; ``sticky_keys`` maps a route's sticky kind to its key.

    Raises:
        InvalidRequestError: ``invalid_model`` (not a string), ``model_not_served``.
        NotFoundError: ``model_not_found`` (also another owner's model or version).
    """
    if not isinstance(model, str) or not model or len(model) > 256:
        raise InvalidRequestError(
            "'model' must be a model name (string).",
            code="invalid_model",
            param="model",
            suggestion="GET /v1/models lists the names you can use.",
        )
    if not MODEL_REFERENCE_RE.fullmatch(model):
        # No name, alias, base or ft: id holds these characters (path separators, whitespace,
        # NUL, look-alike Unicode, a leading '-'): refuse the shape instead of looking it up.
        raise InvalidRequestError(
            f"Invalid model name {model!r}.",
            code="invalid_model",
            param="model",
            suggestion="GET /v1/models lists the names you can use.",
        )
    if model.startswith("ft:"):
        version = _versions().filter(owner=owner, job__fine_tuned_model=model).first()
        if version is None:
            raise _not_found(owner, model)
        return _version_target(version, model)
    # "bot@" (an empty selector) pins nothing: 404 like any other name that holds nothing.
    name, pinned, selector = model.partition("@")
    fast = _aliased_version(owner=owner, name=name, pinned=bool(pinned), selector=selector)
    if fast is not None:
        target = _version_target(fast, model)
        return replace(target, serving_status=fast.serving_status, serving_status_read=True)
    if not pinned and BaseModel.objects.filter(name=name).exists():
        return Target(requested=model, base=_served(name, model))
    registered = RegisteredModel.objects.filter(owner=owner, name=name).first()
    if registered is None:
        raise _not_found(owner, model)
    if pinned:
        number = VERSION_SELECTOR_RE.fullmatch(selector)
        if number:
            version = _versions().filter(registered_model=registered, version=int(number[1])).first()
        else:
            alias = Alias.objects.filter(registered_model=registered, alias=selector).select_related("version").first()
            version = _versions().filter(pk=alias.version_id).first() if alias else None
        if version is None:
            raise _not_found(owner, model)
        return _version_target(version, model)
    route = _route_of(registered)
    if route is not None and any(s.weight > 0 for s in route.splits.all()):
        key = (sticky_keys or {}).get(route.sticky)
        return _version_target(pick_split(route, key), model, route)
    alias = Alias.objects.filter(registered_model=registered, alias=DEFAULT_ALIAS).first()
    versions = _versions().filter(registered_model=registered)
    version = versions.filter(pk=alias.version_id).first() if alias else versions.order_by("-version").first()
    if version is None:
        raise _not_found(owner, model)
    return _version_target(version, model)
