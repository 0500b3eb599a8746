"""Registry: base models, adapter versions, aliases and the alias history.

A ``ModelVersion`` is one trained adapter; an ``Alias`` names one version of a registered
model and every move of it is an ``AliasEvent`` (who, when, from, to, why).
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
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One trained adapter: version N of registered model ``name``."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "mv"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_versions")
    name = models.CharField(max_length=255, help_text="Registered model name (the public name)")
    version = models.PositiveIntegerField()
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="versions")
    job = models.OneToOneField(
        "tunings.TuningJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="model_version"
    )
    adapter_path = models.CharField(max_length=500)
    metrics = models.JSONField(default=dict, blank=True)
    mlflow_run_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="modelversion_unique_name_version")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Alias(models.Model):
    """A movable pointer (e.g. ``production``) from a registered model name to one version."""

    model_name = models.CharField(max_length=255)
    alias = models.CharField(max_length=64)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["model_name", "alias"], name="alias_unique_model_alias")]

    def __str__(self) -> str:
        return f"{self.model_name}@{self.alias}"


class AliasEvent(models.Model):
    """Who moved an alias, from which version to which, when and why."""

    alias = models.ForeignKey(Alias, on_delete=models.CASCADE, related_name="events")
    from_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    to_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
