"""The new-chat form: types and ranges of the settings; model names are the service's to check."""

from __future__ import annotations

from django import forms

from playground.services import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    MAX_SYSTEM_PROMPT_CHARS,
    MAX_TOKENS_MAX,
    MAX_TOKENS_MIN,
    TEMPERATURE_MAX,
    TEMPERATURE_MIN,
)


class ChatSessionForm(forms.Form):
    model = forms.CharField(max_length=256)
    compare_model = forms.CharField(max_length=256, required=False)
    system_prompt = forms.CharField(max_length=MAX_SYSTEM_PROMPT_CHARS, required=False, widget=forms.Textarea)
    temperature = forms.FloatField(min_value=TEMPERATURE_MIN, max_value=TEMPERATURE_MAX, initial=DEFAULT_TEMPERATURE)
    max_tokens = forms.IntegerField(min_value=MAX_TOKENS_MIN, max_value=MAX_TOKENS_MAX, initial=DEFAULT_MAX_TOKENS)
