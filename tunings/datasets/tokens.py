"""A cheap token estimate for uploads, with an optional real tokenizer.

At upload time we do not know which base model the file will train, so there is no single
right tokenizer. ``len(text) / 4`` is the usual rule of thumb for English BPE vocabularies
(OpenAI documents ~4 characters per token); a few tokens per message cover the chat
template's role markers. Pass ``count_tokens`` (e.g. ``lambda s: len(tok.encode(s))``) to
count with a real tokenizer instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

CHARS_PER_TOKEN = 4
# Role header + end-of-turn markers most chat templates add around each message.
MESSAGE_OVERHEAD_TOKENS = 4

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str, count_tokens: TokenCounter | None = None) -> int:
    """Tokens in ``text``: ``count_tokens(text)`` when given, else ``ceil(len(text) / 4)``."""
    if count_tokens is not None:
        return int(count_tokens(text))
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_example_tokens(messages: list[dict[str, str]], count_tokens: TokenCounter | None = None) -> int:
    """Tokens of one canonical example: every message's content plus the template overhead."""
    return sum(estimate_tokens(m["content"], count_tokens) + MESSAGE_OVERHEAD_TOKENS for m in messages)
