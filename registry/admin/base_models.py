"""Admin for base models: registered through the same validating service as `register_base_model`."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from registry.models import BaseModel
from registry.services.base_models import (
    BaseModelError,
    base_model_inspect,
    base_model_name_validate,
    base_model_register,
)
from tuninglab.errors import ApiError


class BaseModelForm(forms.ModelForm):
    """Name, path, description; ``clean`` runs the service's checks so errors show on the form."""

    class Meta:
        model = BaseModel
        fields = ["name", "path", "description"]
        help_texts = {
            "name": "Lowercase letters, digits, '.', '_' or '-' (e.g. llama-3.1-8b).",
            "path": "Absolute path of a local Hugging Face model directory on the worker hosts "
            "(config.json, tokenizer, *.safetensors).",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        name = data.get("name") if "name" in self.fields else self.instance.name
        path = data.get("path")
        try:
            if name is not None:
                base_model_name_validate(name)
            if path:
                info = base_model_inspect(path=path)
                data["path"] = str(info.path)
        except BaseModelError as exc:
            field = exc.param if exc.param in self.fields else None
            self.add_error(field, f"{exc.message} {exc.suggestion or ''}".strip())
        return data


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    form = BaseModelForm
    list_display = ["name", "architecture", "parameters_display", "path", "created_at"]
    search_fields = ["name", "architecture", "path"]
    readonly_fields = ["architecture", "parameter_count", "created_at"]

    @admin.display(description="parameters", ordering="parameter_count")
    def parameters_display(self, obj: BaseModel) -> str:
        n = obj.parameter_count
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.1f}{unit}"
        return str(n)

    def get_readonly_fields(self, request: HttpRequest, obj: BaseModel | None = None) -> list[str]:
        # Renaming would orphan every reference by name (API requests, configs): re-register instead.
        return self.readonly_fields + (["name"] if obj is not None else [])

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: BaseModel, form: Any, change: bool) -> None:
        data = form.cleaned_data
        try:
            row = base_model_register(name=obj.name, path=data["path"], description=data.get("description", "") or "")
        except ApiError as exc:
            # The form already ran the same checks; this is a race (files moved, or jobs
            # started using the name). Django admin cannot turn save_model errors into form
            # errors, so fail loudly rather than pretend it saved.
            raise forms.ValidationError(exc.message) from exc
        obj.pk = row.pk
        obj.path, obj.architecture, obj.parameter_count = row.path, row.architecture, row.parameter_count
        obj.description, obj.created_at = row.description, row.created_at
        obj._state.adding = False
