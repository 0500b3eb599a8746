"""A job's training curves (loss, eval loss, learning rate) read back from its metrics events.

The worker writes at most one ``metrics`` event per step (``workers.relay``), whose ``data`` is
the engine's metrics line (``lora_engine.protocol``): ``step``, ``loss``, ``lr``, ``eval_loss``
(only on evaluated steps, else null), ``tokens_per_s``, ... NaN and infinities arrive as null.
The curves are those events in ``seq`` order, so a page can poll for the points after the
last ``seq`` it has and append them.
"""

from __future__ import annotations

import math
from typing import Any

from tunings.models import JobEvent, TuningJob

# Curve name -> the metrics field it plots against ``step``.
CURVE_FIELDS = {"train": "loss", "eval": "eval_loss", "lr": "lr"}


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None (missing, null, a string, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def job_curve_points(*, job: TuningJob, after_seq: int = 0, until_seq: int | None = None) -> dict[str, Any]:
    """The job's curve points from its metrics events with ``after_seq < seq (<= until_seq)``.

    One query, ordered by ``seq``. A point is kept only when its step and value are finite
    numbers (a step without an evaluation has no eval point). A resumed attempt may report a
    step an earlier attempt already reported: the later value replaces the earlier one, and
    each curve comes back sorted by step. A client merging polls should do the same (replace
    by step).

    Returns:
        ``{"train": [[step, loss], ...], "eval": [[step, eval_loss], ...], "lr": [[step, lr], ...],
        "last_seq": int}`` where ``last_seq`` is the highest ``seq`` read (``after_seq`` when none).
    """
    events = JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS, seq__gt=after_seq)
    if until_seq is not None:
        events = events.filter(seq__lte=until_seq)
    curves: dict[str, dict[float, float]] = {name: {} for name in CURVE_FIELDS}
    last_seq = after_seq
    for seq, data in events.order_by("seq", "id").values_list("seq", "data"):
        last_seq = max(last_seq, seq)
        if not isinstance(data, dict):
            continue
        step = _number(data.get("step"))
        if step is None:
            continue
        for name, field in CURVE_FIELDS.items():
            value = _number(data.get(field))
            if value is not None:
                curves[name][step] = value
    result: dict[str, Any] = {
        name: [[int(step) if step.is_integer() else step, value] for step, value in sorted(points.items())]
        for name, points in curves.items()
    }
    result["last_seq"] = last_seq
    return result
