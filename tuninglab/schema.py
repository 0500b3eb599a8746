"""OpenAPI schema generation tweaks (drf-spectacular)."""

from __future__ import annotations

import re

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema

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
