"""Inference state: the managed vLLM processes, traffic routes (A/B splits, shadow), shadow answers.

* ``ServingProcess``: one row per served base model, written by its supervisor
  (``manage.py serve_inference``): status, pids, restarts, the adapters loaded, the log
  file. The gateway reads it to answer 503 with a useful message while vLLM starts.
* ``Route`` + ``RouteSplit``: how requests that name a registered model (no alias, no
  version) are split between its versions by weight, with a sticky key; optionally a share
  mirrored to a shadow version.
* ``ShadowRecord``: a mirrored request's shadow answer, recorded and never returned.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models

from registry.models import ModelVersion, RegisteredModel
from tuninglab.ids import new_id


class ServingProcess(models.Model):
    """The supervisor's view of one vLLM process (one per served base model)."""

    class Status(models.TextChoices):
        STARTING = "starting"  # process started, /health not answering yet
        READY = "ready"
        RESTARTING = "restarting"  # died or hung; waiting out the backoff
        WAITING = "waiting"  # the base model is not registered (or unreadable) yet
        STOPPED = "stopped"

    base_name = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.STOPPED)
    url = models.CharField(max_length=200, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True, help_text="vLLM server process (its own process group)")
    supervisor_pid = models.IntegerField(null=True, blank=True)
    supervisor_host = models.CharField(max_length=255, blank=True, default="")
    argv = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    last_exit = models.TextField(blank=True, default="", help_text="Why the last vLLM process ended")
    loaded_adapters = models.JSONField(default=list, blank=True, help_text="Internal adapter names vLLM has loaded")
    reconciled_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    log_path = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["base_name"]
        verbose_name_plural = "serving processes"

    def __str__(self) -> str:
        return f"vLLM {self.base_name} ({self.status})"


class Route(models.Model):
    """Traffic policy of one registered model: weighted split between versions, sticky, with shadow."""

    class Sticky(models.TextChoices):
        USER = "user"  # the request's OpenAI ``user`` field (else random)
        HEADER = "header"  # the ``X-Route-Key`` header (else random)
        API_KEY = "api_key"  # the calling API key
        NONE = "none"  # every request drawn anew

    registered_model = models.OneToOneField(RegisteredModel, on_delete=models.CASCADE, related_name="route")
    sticky = models.CharField(max_length=8, choices=Sticky.choices, default=Sticky.USER)
    shadow_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="shadowing_routes"
    )
    shadow_percent = models.PositiveSmallIntegerField(default=0, help_text="Share of routed requests mirrored")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)

    def __str__(self) -> str:
        return f"route of {self.registered_model}"


class RouteSplit(models.Model):
    """One version's weight in a route."""

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="splits")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="route_splits")
    weight = models.PositiveIntegerField()

    class Meta:
        ordering = ["version__version"]
        constraints = [models.UniqueConstraint(fields=["route", "version"], name="routesplit_unique_route_version")]


class ShadowRecord(models.Model):
    """A mirrored request: what the shadow version answered (never sent to the caller)."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "shadow"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="shadow_records")
    primary_version = models.ForeignKey(ModelVersion, on_delete=models.SET_NULL, null=True, related_name="+")
    shadow_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="shadow_records")
    endpoint = models.CharField(max_length=32)
    request = models.JSONField(default=dict, help_text="The request body (prompt or messages), truncated")
    primary_output = models.TextField(blank=True, default="")
    shadow_output = models.TextField(blank=True, default="")
    shadow_latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
