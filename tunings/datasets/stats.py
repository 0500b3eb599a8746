"""Running statistics over a dataset's valid examples (one pass, constant memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_engine.formats import CANONICAL_ROLES
from tunings.datasets.tokens import TokenCounter, estimate_example_tokens


@dataclass
class DatasetStats:
    """Counts, token estimate and example lengths (in estimated tokens and characters)."""

    count_tokens: TokenCounter | None = None
    example_count: int = 0
    message_count: int = 0
    token_estimate: int = 0
    role_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CANONICAL_ROLES, 0))
    max_example_tokens: int = 0
    max_example_chars: int = 0
    total_chars: int = 0

    def add(self, messages: list[dict[str, str]]) -> None:
        """Account for one valid example (canonical messages)."""
        tokens = estimate_example_tokens(messages, self.count_tokens)
        chars = sum(len(m["content"]) for m in messages)
        self.example_count += 1
        self.message_count += len(messages)
        self.token_estimate += tokens
        self.total_chars += chars
        self.max_example_tokens = max(self.max_example_tokens, tokens)
        self.max_example_chars = max(self.max_example_chars, chars)
        for message in messages:
            self.role_counts[message["role"]] = self.role_counts.get(message["role"], 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (means rounded to one decimal)."""
        n = self.example_count
        return {
            "example_count": n,
            "message_count": self.message_count,
            "token_estimate": self.token_estimate,
            "role_counts": dict(self.role_counts),
            "max_example_tokens": self.max_example_tokens,
            "mean_example_tokens": round(self.token_estimate / n, 1) if n else 0.0,
            "max_example_chars": self.max_example_chars,
            "mean_example_chars": round(self.total_chars / n, 1) if n else 0.0,
        }
