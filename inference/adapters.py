"""Which adapters a vLLM process must hold, and making it hold exactly those (the reconcile).

The served set is *level-triggered*: every pass reads what the registry wants now (versions
an alias or a route points at, plus versions pinned by a request in the last
``INFERENCE_IDLE_UNLOAD_SECONDS``) and what vLLM has loaded (``/v1/models``), then loads the
missing and unloads the rest. Whatever crashed in between (vLLM, the supervisor, the web
process), the next pass converges; no event can be missed because none is needed.

Names that reach vLLM are version ids we generated (``mv-<24 hex>``), checked against
``ADAPTER_NAME_RE`` before use; adapters vLLM holds under any other name are not ours and
are left alone. Paths are absolute: vLLM resolves a relative ``lora_path`` against its own
working directory.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from inference.config import ServedBase
from inference.vllm_http import VllmError, load_adapter, loaded_adapters, unload_adapter
from registry.models import ModelVersion
from registry.services.checks import version_require_servable
from registry.services.traffic import traffic_touch

log = logging.getLogger(__name__)
ADAPTER_NAME_RE = re.compile(r"^mv-[0-9a-f]{24}\Z")


def adapter_name(version: ModelVersion) -> str:
    """The name vLLM knows ``version`` by: its id, which we generated (never a user string)."""
    if not ADAPTER_NAME_RE.fullmatch(version.id):
        raise ValueError(f"version id {version.id!r} is not a generated version id")
    return version.id


def adapter_path(version: ModelVersion) -> str:
    return str(Path(version.adapter_path).resolve())


def desired_versions(base_name: str) -> QuerySet[ModelVersion]:
    """Adapter versions on ``base_name`` that an alias or route holds, or a request pinned recently."""
    idle = timezone.now() - timedelta(seconds=settings.TUNINGLAB["INFERENCE_IDLE_UNLOAD_SECONDS"])
    return (
        ModelVersion.objects.filter(base_model__name=base_name, kind=ModelVersion.Kind.ADAPTER)
        .filter(
            Q(aliases__isnull=False)
            | Q(route_splits__weight__gt=0)
            | Q(shadowing_routes__isnull=False)
            | Q(traffic__last_request_at__gte=idle)
        )
        .distinct()
    )


@dataclass
class ReconcileResult:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)


def reconcile(base: ServedBase) -> ReconcileResult:
    """Make vLLM's loaded adapters equal ``desired_versions(base.name)``.

    A version that fails to load is reported in ``failed`` (and logged) and tried again on
    the next pass; the others are still loaded.

    Raises:
        httpx.HTTPError / VllmError: vLLM could not be asked what it holds.
    """
    wanted = {adapter_name(v): adapter_path(v) for v in desired_versions(base.name)}
    current = loaded_adapters(base)
    result = ReconcileResult()
    for name, path in sorted(wanted.items()):
        if name in current:
            continue
        try:
            load_adapter(base, name=name, path=path)
            result.loaded.append(name)
        except VllmError as exc:
            log.warning("vLLM %s refused adapter %s (%s): %s", base.name, name, path, exc)
            result.failed[name] = str(exc)
    for name in sorted(current):
        if name not in wanted and ADAPTER_NAME_RE.fullmatch(name):
            unload_adapter(base, name=name)
            result.unloaded.append(name)
    result.served = sorted((set(current) | set(result.loaded)) - set(result.unloaded))
    return result


def ensure_loaded(base: ServedBase, version: ModelVersion) -> None:
    """Load ``version`` now (the gateway's path when a request pins a version vLLM does not hold).

    The pre-promotion check runs first: a pinned version never promoted never passed it.

    Raises:
        VersionNotServableError: the check refused it.
        VllmError: vLLM refused it.
    """
    version_require_servable(version=version)
    # Counts as a request from now on, so a reconcile pass between this load and the answer
    # does not unload it as idle.
    traffic_touch(version_id=version.id)
    load_adapter(base, name=adapter_name(version), path=adapter_path(version))
