"""Every public name of a training result, in one place.

* ``fine_tuned_model_name(job)``: OpenAI's id for the result of a job,
  ``ft:<base>:<owner>:<suffix>:<job id>`` (the job's ``fine_tuned_model``; checkpoints add
  ``:ckpt-step-N``).
* ``registered_model_name(job)``: the registry line its versions count up in,
  ``<owner>-<base>[-<suffix>]``, slugged to ``NAME_RE``.

Both take any object with ``id``, ``owner``, ``base_model.name`` and ``suffix`` (a
``TuningJob``); the registry sits below ``tunings`` and does not import it.
"""

from __future__ import annotations

import re
from typing import Any

# Names that become directory names and URL segments: lowercase, no path separators.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")


def owner_slug(owner: Any) -> str:
    """The owner's username as a name part (``user-<pk>`` when nothing usable is left)."""
    return _slug(str(owner.get_username())) or f"user-{owner.pk}"


def fine_tuned_model_name(job: Any) -> str:
    """``ft:<base>:<owner>:<suffix>:<job id>``; no suffix gives ``ft:<base>:<owner>::<job id>``."""
    return f"ft:{job.base_model.name}:{owner_slug(job.owner)}:{job.suffix}:{job.id}"


def registered_model_name(job: Any) -> str:
    """The registry name of a job's adapter line: ``<owner>-<base>[-<suffix>]``, slugged.

    Versions count up per name, so re-training with the same base and suffix gives v2, v3,
    ... The owner is part of the name because names (and aliases) are global.
    """
    parts = [owner_slug(job.owner), _slug(job.base_model.name)]
    if job.suffix:
        parts.append(_slug(job.suffix))
    name = "-".join(p for p in parts if p)[:64].rstrip("-._") or "model"
    if not NAME_RE.match(name):
        name = f"m{name}"[:64]
    return name
