"""Registry: base models, registered models (one per owner and name), their versions, aliases
with history, and evaluation / comparison results.

A ``ModelVersion`` is one trained result (a LoRA adapter, or full weights) with its lineage;
an ``Alias`` names one version of a registered model and every move of it is an
``AliasEvent`` (who, when, from, to, why). The rows are the truth; MLflow mirrors them.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models

from tuninglab.ids import new_id


class BaseModel(models.Model):
    """A base model an operator registered: a local HF model dir (config, tokenizer, weights)."""

    name = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=500)
    architecture = models.CharField(max_length=100, blank=True, default="")
    parameter_count = models.BigIntegerField(default=0)
    content_hash = models.CharField(
        max_length=64, blank=True, default="", help_text="sha256 over config, tokenizer and weight files"
    )
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RegisteredModel(models.Model):
    """A line of versions that one owner names: ``(owner, name)`` is unique, names of different
    owners never meet (their versions, directories and aliases are separate)."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "rm"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="registered_models")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="registeredmodel_unique_owner_name")]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.name}"


class ModelVersion(models.Model):
    """Version N of a registered model: an adapter (or full weights) with its lineage."""

    class Kind(models.TextChoices):
        ADAPTER = "adapter"
        FULL = "full"

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "mv"), editable=False)
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    # Always registered_model.owner; kept on the row so every read scopes by owner in one filter.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_versions")
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.ADAPTER)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="versions")
    job = models.OneToOneField(
        "tunings.TuningJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="model_version"
    )
    adapter_path = models.CharField(max_length=500, help_text="The version's directory (adapter or full weights)")
    sha256 = models.CharField(max_length=64, blank=True, default="", help_text="sha256 of the weights file(s)")
    size_bytes = models.BigIntegerField(default=0)
    lineage = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    evaluation = models.JSONField(default=dict, blank=True, help_text="Summary of the latest evaluation")
    mlflow_run_id = models.CharField(max_length=64, blank=True, default="")
    mlflow_version = models.CharField(max_length=32, blank=True, default="")
    mlflow_synced_at = models.DateTimeField(null=True, blank=True)
    mlflow_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["registered_model", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["registered_model", "version"], name="modelversion_unique_model_version")
        ]

    @property
    def name(self) -> str:
        return self.registered_model.name

    def __str__(self) -> str:
        return f"{self.registered_model.name} v{self.version}"


class Alias(models.Model):
    """A movable pointer (e.g. ``production``) from a registered model to one of its versions."""

    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    alias = models.CharField(max_length=64)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)
    mlflow_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["registered_model", "alias"], name="alias_unique_model_alias")]

    def __str__(self) -> str:
        return f"{self.registered_model.name}@{self.alias}"


class AliasEvent(models.Model):
    """Who moved an alias, from which version to which, when and why (append-only history).

    Serving does not replay these events: the gateway resolves aliases on every request and
    the supervisor's reconcile loop compares the aliases' current versions with what vLLM holds
    (``inference.adapters``), so no event can be missed.
    """

    class Kind(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"

    alias = models.ForeignKey(Alias, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PROMOTE)
    from_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    to_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class RunStatus(models.TextChoices):
    """Lifecycle of an evaluation or comparison run (claimed by a worker with a conditional UPDATE)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Evaluation(models.Model):
    """Metrics of one version (or of the bare base model) on one dataset."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "eval"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evaluations")
    version = models.ForeignKey(
        ModelVersion,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="evaluations",
        help_text="None: the base model without an adapter",
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="evaluations")
    dataset = models.ForeignKey("tunings.TrainingFile", on_delete=models.PROTECT, related_name="evaluations")
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    options = models.JSONField(default=dict, blank=True, help_text="max_examples, max_new_tokens, judge settings")
    metrics = models.JSONField(default=dict, blank=True)
    examples = models.JSONField(default=list, blank=True, help_text="Per-example prediction and scores")
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class Comparison(models.Model):
    """A/B comparison of two versions (either may be the base model) on one dataset."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "cmp"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="comparisons")
    version_a = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, null=True, blank=True, related_name="+", help_text="None: the base"
    )
    version_b = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, null=True, blank=True, related_name="+", help_text="None: the base"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="comparisons")
    dataset = models.ForeignKey("tunings.TrainingFile", on_delete=models.PROTECT, related_name="comparisons")
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    options = models.JSONField(default=dict, blank=True)
    table = models.JSONField(default=list, blank=True, help_text="[{metric, a, b, delta}]")
    outcomes = models.JSONField(default=dict, blank=True, help_text="{wins, ties, losses} of b against a")
    examples = models.JSONField(default=list, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class VersionTraffic(models.Model):
    """Live serving counters of one version (written by the inference gateway, read by the API,
    the admin and ``compare --live``). Shadow requests are counted apart from answered ones."""

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, primary_key=True, related_name="traffic")
    requests = models.BigIntegerField(default=0, help_text="Requests answered (or failed) with this version")
    errors = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0.0)
    latency_ms_max = models.FloatField(default=0.0)
    shadow_requests = models.BigIntegerField(default=0, help_text="Mirrored requests (answers recorded, not returned)")
    shadow_errors = models.BigIntegerField(default=0)
    last_request_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        verbose_name_plural = "version traffic"

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.requests if self.requests else None

    def __str__(self) -> str:
        return f"traffic of {self.version_id}"
