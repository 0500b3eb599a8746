"""Chat sessions with served models and the messages in them.

Rows are written only by ``playground.services``; these classes hold data, not behaviour.

A session talks to one model, or to two side by side (``compare_model`` set): then every user
prompt is stored once per side ("a" and "b") and each side keeps its own history, so a side's
history is one ordered query. ``order`` numbers the messages of a side by turn: the prompt of
turn ``k`` is ``2k`` and its answer ``2k + 1``, so an answer's place is reserved when its prompt
is written and a second browser tab sending meanwhile cannot slip a prompt in between.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models

from tuninglab.ids import new_id


class ChatSession(models.Model):
    """One conversation: the model(s) it talks to and the sampling settings every turn uses."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "chat"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    title = models.CharField(max_length=120, blank=True, default="")
    # As the user typed it (a model name, name@alias, name@v3, an ft: id or a base model): the
    # gateway resolves it per request, so an alias move shows in the next answer.
    model = models.CharField(max_length=256)
    compare_model = models.CharField(max_length=256, blank=True, default="", help_text="Blank: one model")
    system_prompt = models.TextField(blank=True, default="")
    temperature = models.FloatField(default=0.7)
    max_tokens = models.PositiveIntegerField(default=256)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="playground_owner_recent")]

    def __str__(self) -> str:
        return f"{self.id} {self.title or self.model}"

    @property
    def side_by_side(self) -> bool:
        return bool(self.compare_model)

    @property
    def sides(self) -> list[str]:
        """The sides this session answers on: ``["a"]``, or ``["a", "b"]`` side by side."""
        return [ChatMessage.Side.A, ChatMessage.Side.B] if self.side_by_side else [ChatMessage.Side.A]

    def model_for(self, side: str) -> str:
        return self.compare_model if side == ChatMessage.Side.B else self.model


class ChatMessage(models.Model):
    """One message of one side: a prompt, or an answer as the gateway streamed it."""

    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Side(models.TextChoices):
        A = "a"
        B = "b"

    # The answer was cut short because the browser went away (or stopped it) mid-stream:
    # ``content`` holds what had arrived by then.
    INTERRUPTED = "interrupted"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    side = models.CharField(max_length=1, choices=Side.choices, default=Side.A)
    order = models.PositiveIntegerField(help_text="Turn k: prompt 2k, answer 2k+1")
    content = models.TextField(blank=True, default="")
    # The name the gateway answered with (the one the session asked for, not an internal adapter id).
    model = models.CharField(max_length=256, blank=True, default="")
    finish_reason = models.CharField(max_length=32, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Set when the call failed (the gateway's error code, e.g. model_not_found, inference_unavailable).
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    error_suggestion = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "side", "order"]
        constraints = [
            models.UniqueConstraint(fields=["session", "side", "order"], name="playground_message_unique_order")
        ]

    def __str__(self) -> str:
        return f"{self.session_id} {self.side}#{self.order} {self.role}"

    @property
    def turn(self) -> int:
        return self.order // 2

    @property
    def failed(self) -> bool:
        return bool(self.error_code)
