"""The API's JSON body parser: DRF's, plus a bound on nesting depth and stable error codes.

DRF's ``JSONParser`` hands the body to ``json.load``, which recurses once per nesting level:
a 100 kB body of ``[`` raises ``RecursionError`` and becomes a 500. This parser measures the
depth first with ``lora_engine.formats.json_too_deep`` (the check dataset lines get: a scan
that does not recurse, skipped when the body has few brackets) and answers 400
``nesting_too_deep``; malformed JSON is 400 ``invalid_json``; a NUL (``\\u0000``) in any string or
key is 400 ``invalid_character`` (PostgreSQL cannot store it). The message says what to change.

The errors are DRF ``ParseError``s rather than ``tuninglab.errors.ApiError``s: DRF imports
the parser classes while ``rest_framework.views`` loads, which ``tuninglab.errors`` imports,
so this module cannot import ``tuninglab.errors``. The exception handler renders them in the
same error shape (``param`` null, ``code`` from the error detail).
"""

from __future__ import annotations

from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json

from lora_engine.formats import MAX_JSON_DEPTH, json_too_deep

INVALID_JSON = "invalid_json"
NESTING_TOO_DEEP = "nesting_too_deep"
INVALID_CHARACTER = "invalid_character"


class BoundedJSONParser(JSONParser):
    """``application/json`` bodies with at most ``MAX_JSON_DEPTH`` levels of nesting."""

    max_depth = MAX_JSON_DEPTH

    def parse(self, stream: IO[bytes], media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = get_encoding(parser_context or {})
        try:
            # Capped by DATA_UPLOAD_MAX_MEMORY_SIZE; DRF's json.load reads it whole as well.
            text = stream.read().decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(
                f"The request body is not valid {encoding} text; send UTF-8 encoded JSON.", code=INVALID_JSON
            ) from exc
        if json_too_deep(text, self.max_depth):
            raise ParseError(
                f"The JSON body is nested deeper than {self.max_depth} levels; "
                "no field of this API needs that many nested arrays or objects.",
                code=NESTING_TOO_DEEP,
            )
        try:
            parse_constant = json.strict_constant if self.strict else None
            data = json.loads(text, parse_constant=parse_constant)
        except ValueError as exc:
            raise ParseError(
                f"The request body is not valid JSON ({exc}); check quoting and commas. "
                "NaN and Infinity are not allowed.",
                code=INVALID_JSON,
            ) from exc
        # PostgreSQL text and jsonb cannot store U+0000: refuse it here rather than fail in the driver
        # (a 500). A raw NUL is invalid JSON already; only the escape "\u0000" can produce one.
        if "\\u0000" in text and _holds_nul(data):
            raise ParseError(
                "The JSON body contains a NUL character (\\u0000), which no field of this API accepts.",
                code=INVALID_CHARACTER,
            )
        return data


def _holds_nul(value: Any) -> bool:
    """True when a string or key anywhere in ``value`` holds U+0000 (depth already bounded above)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False
