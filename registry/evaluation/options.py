"""Options of an evaluation or comparison: checked when the row is created, stored on it as given.

``{"max_examples", "max_new_tokens", "max_seq_len", "seed", "source", "judge"}`` with the
defaults in ``DEFAULTS``; unknown keys are refused (a typo must not silently change a run).
``judge`` is ``None`` or ``{"base_url", "model", "api_key_env", "timeout_s"}``.

The judge's API key is never stored: ``api_key_env`` names an environment variable of the
*worker* that holds it, read when the judge runs. The name must start with
``JUDGE_KEY_ENV_PREFIX``: whoever creates an evaluation chooses the judge URL, so a free choice
of variable would let them send any of the worker's secrets (``DATABASE_URL``, ...) to their
own server as a bearer token. Operators put judge keys, and only those, under that prefix.

The judge URL itself must be one the operator allowed (``TUNINGLAB_JUDGE_URLS``): otherwise
anyone who can create an evaluation could make the workers send requests (and a judge key)
to any host they can reach, inside the network included.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from tuninglab.errors import InvalidRequestError

MAX_EXAMPLES_LIMIT = 5000
DEFAULTS: dict[str, Any] = {
    "max_examples": 200,
    "max_new_tokens": 64,
    "max_seq_len": 1024,
    "seed": 0,
    "source": "manual",
    "judge": None,
}
SOURCES = ("manual", "auto")
JUDGE_KEY_ENV_PREFIX = "TUNINGLAB_JUDGE_"
JUDGE_DEFAULTS: dict[str, Any] = {"api_key_env": None, "timeout_s": 60.0}
_ENV_NAME_RE = re.compile(rf"^{JUDGE_KEY_ENV_PREFIX}[A-Z0-9_]+$")
_BOUNDS = {"max_examples": (1, MAX_EXAMPLES_LIMIT), "max_new_tokens": (1, 2048), "max_seq_len": (16, 131072)}
CODE = "invalid_evaluation_options"


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, code=CODE, param=f"options.{param}")


def _int(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{param} must be an integer from {low} to {high}.", param)
    return value


def judge_options_clean(judge: Any) -> dict[str, Any] | None:
    """The judge settings with defaults filled in, or None for no judge.

    Raises:
        InvalidRequestError: ``invalid_evaluation_options`` naming the field.
    """
    if judge is None:
        return None
    if not isinstance(judge, dict):
        raise _bad("judge must be an object or null.", "judge")
    if "api_key" in judge:
        raise _bad(
            f"Do not send the judge's API key; name the worker's environment variable that holds it in "
            f"api_key_env (it must start with {JUDGE_KEY_ENV_PREFIX}).",
            "judge.api_key",
        )
    unknown = sorted(set(judge) - {"base_url", "model", *JUDGE_DEFAULTS})
    if unknown:
        raise _bad(f"Unknown judge option(s): {', '.join(unknown)}.", f"judge.{unknown[0]}")
    out = {**JUDGE_DEFAULTS, **judge}
    url = out.get("base_url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _bad("judge.base_url must be an http(s) URL such as https://api.openai.com/v1.", "judge.base_url")
    out["base_url"] = url.rstrip("/")
    if not isinstance(out.get("model"), str) or not 0 < len(out["model"]) <= 200:
        raise _bad("judge.model must be a model name.", "judge.model")
    env = out["api_key_env"]
    if env is not None and (not isinstance(env, str) or not _ENV_NAME_RE.fullmatch(env)):
        raise _bad(
            f"judge.api_key_env must be null or an environment variable name starting with {JUDGE_KEY_ENV_PREFIX} "
            "(upper case, digits, underscores).",
            "judge.api_key_env",
        )
    timeout = out["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 600:
        raise _bad("judge.timeout_s must be a number of seconds from 1 to 600.", "judge.timeout_s")
    out["timeout_s"] = float(timeout)
    allowed = {u.rstrip("/") for u in settings.TUNINGLAB["JUDGE_URLS"]}
    if out["base_url"] not in allowed:
        raise InvalidRequestError(
            f"judge.base_url {out['base_url']} is not an allowed judge endpoint.",
            code="judge_url_not_allowed",
            param="options.judge.base_url",
            suggestion="Ask an operator to add it to TUNINGLAB_JUDGE_URLS"
            + (f" (allowed now: {', '.join(sorted(allowed))})." if allowed else " (no judge endpoint is allowed yet)."),
        )
    return out


def evaluation_options_clean(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` with every default filled in, checked.

    Raises:
        InvalidRequestError: ``invalid_evaluation_options`` naming the field.
    """
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidRequestError("options must be an object.", code=CODE, param="options")
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise _bad(f"Unknown option(s): {', '.join(unknown)}.", unknown[0])
    out = {**DEFAULTS, **options}
    for key, (low, high) in _BOUNDS.items():
        out[key] = _int(out[key], key, low, high)
    out["seed"] = _int(out["seed"], "seed", 0, 2**31 - 1)
    if out["max_new_tokens"] >= out["max_seq_len"]:
        raise _bad("max_new_tokens must be smaller than max_seq_len.", "max_new_tokens")
    if out["source"] not in SOURCES:
        raise _bad(f"source must be one of {', '.join(SOURCES)}.", "source")
    out["judge"] = judge_options_clean(out["judge"])
    return out
