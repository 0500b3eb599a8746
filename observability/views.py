"""``GET /metrics``: Prometheus text format.

Its labels name users, models and jobs, so it is not for everyone: with
``TUNINGLAB_METRICS_TOKEN`` set, a scrape must send ``Authorization: Bearer <token>``
(Prometheus: ``authorization: {credentials: ...}`` in the scrape config) and anything else gets
a 401; without it the route is open and must be restricted at the proxy (docs/observability.md).

Like django-prometheus's own view, which this replaces so the lab's database collector is
in the answer in both of prometheus_client's modes:

* one process (runserver, gunicorn with one worker): the default registry, which holds
  django-prometheus's request metrics, the process metrics, the gateway's histograms and the
  database collector (registered once at start-up);
* several processes (gunicorn ``--workers N``): with ``PROMETHEUS_MULTIPROC_DIR`` set, every
  process writes its metrics to files there and any one of them answers for all, merging the
  files; the database collector is added to that answer (it reads shared rows, not memory).
"""

from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from observability.collectors import DATABASE_COLLECTOR


def multiprocess_dir() -> str:
    """The multiprocess directory, if set.

    Read from the environment, not from settings, because prometheus_client itself reads this
    variable when a metric is created: one source means the writers and this view agree.
    """
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def metrics_registry() -> CollectorRegistry:
    """The registry a scrape reads: the default one, or one merging every process's files."""
    if not multiprocess_dir():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(DATABASE_COLLECTOR)
    return registry


def _authorized(request: HttpRequest) -> bool:
    token = settings.TUNINGLAB["METRICS_TOKEN"]
    if not token:
        return True
    sent = request.headers.get("Authorization", "")
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())  # constant time


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse("metrics need the scrape token\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
