"""LLM Tuning Lab Python SDK.

>>> from tuninglab_sdk import TuningLab
>>> client = TuningLab(base_url="http://127.0.0.1:8000", api_key="tl-...")
>>> job = client.tunings.create(model="tiny-llama", data="customer_service.jsonl", method="lora")
>>> job = client.tunings.wait_for_completion(job.id)
>>> job.fine_tuned_model
"""

from __future__ import annotations

from tuninglab_sdk._base import NOT_GIVEN
from tuninglab_sdk._client import AsyncTuningLab, TuningLab
from tuninglab_sdk._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    FeatureUnavailableError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TuningCancelled,
    TuningFailed,
    TuningLabError,
    ValidationError,
    WaitTimeoutError,
)
from tuninglab_sdk._pagination import AsyncPager, SyncPager
from tuninglab_sdk._version import __version__
from tuninglab_sdk.resources.chat import ChatCompletion
from tuninglab_sdk.types import (
    Alias,
    AliasEvent,
    AliasMove,
    Checkpoint,
    Comparison,
    Evaluation,
    FileObject,
    JobError,
    JobEvent,
    Model,
    ModelVersion,
    Page,
    Route,
    RouteShadow,
    RouteSplit,
    ShadowRecord,
    TuningJob,
    VersionTraffic,
)

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Alias",
    "AliasEvent",
    "AliasMove",
    "AsyncPager",
    "AsyncTuningLab",
    "AuthenticationError",
    "ChatCompletion",
    "Checkpoint",
    "Comparison",
    "ConflictError",
    "Evaluation",
    "FeatureUnavailableError",
    "FileObject",
    "InternalServerError",
    "JobError",
    "JobEvent",
    "Model",
    "ModelVersion",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "RateLimitError",
    "Route",
    "RouteShadow",
    "RouteSplit",
    "ShadowRecord",
    "SyncPager",
    "TuningCancelled",
    "TuningFailed",
    "TuningJob",
    "TuningLab",
    "TuningLabError",
    "ValidationError",
    "VersionTraffic",
    "WaitTimeoutError",
    "__version__",
]
