"""OpenAPI schema generation tweaks (drf-spectacular): operation ids and the documented error shape."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema

from tuninglab.pagination import MAX_LIMIT

_ENDS_WITH_PATH_PARAM = re.compile(r"\{[^}]+\}/?$")


class AutoSchema(SpectacularAutoSchema):
    """Names collection GETs ``*_list``.

    Our views return plain dicts (documented as objects), so spectacular cannot tell a list
    from a retrieve and would give ``/v1/tunings/`` and ``/v1/tunings/{job_id}/`` the same
    operationId. A GET whose path does not end in a path parameter is a collection read,
    except the seed-style ``/v1/tunings.get`` (one job by query parameter).
    """

    def get_operation_id(self) -> str:
        operation_id = super().get_operation_id()
        if self.method == "GET" and operation_id.endswith("_retrieve") and not self._reads_one(self.path):
            operation_id = operation_id.removesuffix("_retrieve") + "_list"
        return operation_id

    @staticmethod
    def _reads_one(path: str) -> bool:
        return bool(_ENDS_WITH_PATH_PARAM.search(path)) or path.rstrip("/").endswith(".get")


# The body of every API error (tuninglab.errors); ``details``/``error_count`` come with a dataset
# that failed validation, ``suggestion`` when there is one.
ERROR_COMPONENT = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string"},
                "suggestion": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
                "error_count": {"type": "integer"},
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_UNTYPED_OBJECT = {"type": "object", "additionalProperties": {}}
# ``(?P<job_id>[A-Za-z0-9_-]+)``: our URL groups hold no parentheses of their own.
_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>([^()]+)\)")
_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _path_group_patterns(generator: Any) -> dict[str, dict[str, str]]:
    """Schema path -> {path parameter: the regex its URL pattern matches} (from the URL conf)."""
    patterns: dict[str, dict[str, str]] = {}
    for path, path_regex, _method, _view in getattr(generator, "endpoints", None) or []:
        patterns[path] = {name: f"^{group}$" for name, group in _NAMED_GROUP.findall(path_regex)}
    return patterns


def _document_parameters(operation: dict[str, Any], group_patterns: dict[str, str]) -> None:
    """Path parameters carry their URL regex (anything else is a 404 before any view runs) and
    ``limit`` its bounds and its empty form (``tuninglab.pagination``): the schema says what the
    server accepts."""
    for parameter in operation.get("parameters", []):
        schema = parameter.setdefault("schema", {"type": "string"})
        if parameter.get("in") == "path" and parameter["name"] in group_patterns:
            schema["pattern"] = group_patterns[parameter["name"]]
        elif parameter.get("in") == "query" and parameter["name"] == "limit":
            schema.update(minimum=1, maximum=MAX_LIMIT)
            parameter["allowEmptyValue"] = True  # ``?limit=`` is the default page size, as when absent


def postprocess_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Document the error shape on every operation (drf-spectacular postprocessing hook).

    Every authenticated operation gets a ``default`` response (any status it does not list) with the ``Error``
    body, and a 4xx/5xx a view declared as a bare object gets it too. Clients then see the one
    shape our exception handler renders, and a schema-driven fuzzer (tests/security) checks that
    every error really has it.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_COMPONENT
    group_patterns = _path_group_patterns(generator)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _HTTP_METHODS:
                continue
            _document_parameters(operation, group_patterns.get(path, {}))
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                media = response.get("content", {}).get("application/json")
                if status[0] in "45" and media is not None and media.get("schema") == _UNTYPED_OBJECT:
                    media["schema"] = _ERROR_REF
            if not any(operation.get("security") or []):
                continue  # public (healthz): it documents its own answers, none in the error shape
            responses.setdefault(
                "default",
                {"description": "An error", "content": {"application/json": {"schema": _ERROR_REF}}},
            )
    return result
