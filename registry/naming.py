"""Every public name of a training result, in one place.

* ``fine_tuned_model_name(job)``: OpenAI's id for the result of a job,
  ``ft:<base>:<owner>:<suffix>:<job id>`` (the job's ``fine_tuned_model``; checkpoints add
  ``:ckpt-step-N``).
* ``default_model_name``: the registered model (per owner) a job's result becomes a version
  of, when the job names none: its suffix, else ``<base>-ft``.

``fine_tuned_model_name`` takes any object with ``id``, ``owner``, ``base_model.name`` and ``suffix`` (a
``TuningJob``); the registry sits below ``tunings`` and does not import it.
"""

from __future__ import annotations

import re
from typing import Any

# Names that become directory names and URL segments: lowercase, no path separators.
# ``\Z``, not ``$``: ``$`` also matches before a trailing newline, so "bot\n" would pass ``match``.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")


def owner_slug(owner: Any) -> str:
    """The owner's username as a name part (``user-<pk>`` when nothing usable is left)."""
    return _slug(str(owner.get_username())) or f"user-{owner.pk}"


def fine_tuned_model_name(job: Any) -> str:
    """``ft:<base>:<owner>:<suffix>:<job id>``; no suffix gives ``ft:<base>:<owner>::<job id>``."""
    return f"ft:{job.base_model.name}:{owner_slug(job.owner)}:{job.suffix}:{job.id}"


def default_model_name(*, suffix: str, base_name: str) -> str:
    """The registered model a job's result joins when the job names none: its suffix, else ``<base>-ft``."""
    name = suffix or f"{base_name[:61].rstrip('-._')}-ft"
    return name if NAME_RE.fullmatch(name) else f"m{name}"[:64]
