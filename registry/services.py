"""Base model registration: check a local Hugging Face model directory, then record it.

A base model is a local Hugging Face model directory. We check it *before* a row exists,
so a typo in a path fails at registration with a clear message instead of at the first
training job an hour later: config, tokenizer and safetensors weights must be present
and readable. The parameter count comes from the safetensors headers (an 8-byte length +
a JSON table of dtypes and shapes), so registering a 70B model reads kilobytes, not
140 GB.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from registry.models import BaseModel
from registry.naming import NAME_RE
from tuninglab.errors import ConflictError, InvalidRequestError

# A safetensors header is JSON describing tensors; real ones are well under a few MB.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class BaseModelError(InvalidRequestError):
    """A base model directory or name failed validation. ``param`` names the culprit."""

    default_code = "invalid_base_model"


@dataclass(frozen=True)
class BaseModelInfo:
    """What we learned from a model directory without loading its weights."""

    path: Path
    architecture: str
    model_type: str
    parameter_count: int
    weight_files: tuple[str, ...]


def base_model_name_validate(name: str) -> None:
    """Raise BaseModelError unless ``name`` matches ``^[a-z0-9][a-z0-9._-]{0,63}$``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BaseModelError(
            f"Invalid base model name {name!r}.",
            code="invalid_name",
            param="name",
            suggestion="Use 1-64 characters: lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'llama-3.1-8b').",
        )


def _read_config(root: Path) -> tuple[str, str]:
    config_path = root / "config.json"
    if not config_path.is_file():
        raise BaseModelError(
            f"{config_path} is missing.",
            code="config_missing",
            param="path",
            suggestion="Point at a Hugging Face model directory (the one holding config.json).",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseModelError(f"{config_path} is not valid JSON: {exc}", code="config_invalid", param="path") from exc
    if not isinstance(config, dict):
        raise BaseModelError(f"{config_path} must hold a JSON object.", code="config_invalid", param="path")
    model_type = config.get("model_type")
    architectures = config.get("architectures")
    if not isinstance(model_type, str) or not model_type:
        raise BaseModelError(f"{config_path} has no 'model_type'.", code="config_invalid", param="path")
    if (
        not isinstance(architectures, list)
        or not architectures
        or not all(isinstance(a, str) and a for a in architectures)
    ):
        raise BaseModelError(
            f"{config_path} has no 'architectures' list (e.g. [\"LlamaForCausalLM\"]).",
            code="config_invalid",
            param="path",
        )
    return architectures[0], model_type


def _check_tokenizer(root: Path) -> None:
    # tokenizer.json: fast tokenizers; tokenizer.model: sentencepiece; vocab.json + merges.txt:
    # GPT-2-style BPE. tokenizer_config.json alone is only settings, not a vocabulary.
    if (root / "tokenizer.json").is_file() or (root / "tokenizer.model").is_file():
        return
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        return
    raise BaseModelError(
        f"No tokenizer in {root}: expected tokenizer.json or tokenizer.model (with tokenizer_config.json).",
        code="tokenizer_missing",
        param="path",
        suggestion="Save the tokenizer next to the model: tokenizer.save_pretrained(DIR).",
    )


def safetensors_parameter_count(path: Path) -> int:
    """Sum of elements over every tensor in one .safetensors file, from its header only.

    Layout: 8 bytes little-endian u64 N, then N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
    then the data. We also check that the data the header promises is in the file, which
    catches a truncated copy (a common result of an interrupted download).
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("file is shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ValueError(f"header length {header_len} does not fit in a {size}-byte file")
        header = json.loads(fh.read(header_len).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_size = size - 8 - header_len
    total = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise ValueError(f"tensor {name!r} has no shape")
        offsets = spec.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or offsets[1] > data_size:
            raise ValueError(f"tensor {name!r} points past the end of the file (truncated?)")
        total += math.prod(int(d) for d in spec["shape"])
    return total


def _weight_files(root: Path) -> list[Path]:
    index_path = root / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BaseModelError(
                f"{index_path} is not a valid safetensors index: {exc}", code="weights_invalid", param="path"
            ) from exc
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise BaseModelError(
                f"Shards listed in {index_path.name} are missing: {', '.join(missing[:5])}.",
                code="weights_missing",
                param="path",
                suggestion="Finish copying the model directory, then register again.",
            )
        return [root / s for s in shards]
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in root.glob("pytorch_model*.bin")) + sorted(p.name for p in root.glob("*.pt"))
    if pickled:
        raise BaseModelError(
            f"{root} has only pickled weights ({', '.join(pickled[:3])}); we load safetensors only, "
            "because unpickling a checkpoint can run arbitrary code.",
            code="weights_not_safetensors",
            param="path",
            suggestion="Convert once: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, "
            "safe_serialization=True), then register again.",
        )
    raise BaseModelError(
        f"No weights in {root}: expected model.safetensors or sharded *.safetensors files.",
        code="weights_missing",
        param="path",
    )


def base_model_inspect(*, path: str | Path) -> BaseModelInfo:
    """Validate a local HF model directory and read what we store about it. No row is written.

    Raises:
        BaseModelError: with ``code`` path_not_found, config_missing, config_invalid,
            tokenizer_missing, weights_missing, weights_not_safetensors or weights_invalid.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BaseModelError(
            f"{root} is not a directory.",
            code="path_not_found",
            param="path",
            suggestion="Give the absolute path of a local model directory readable by the workers.",
        )
    root = root.resolve()
    architecture, model_type = _read_config(root)
    _check_tokenizer(root)
    files = _weight_files(root)
    total = 0
    for file in files:
        try:
            total += safetensors_parameter_count(file)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise BaseModelError(
                f"{file.name} is not a readable safetensors file: {exc}", code="weights_invalid", param="path"
            ) from exc
    if total <= 0:
        raise BaseModelError(f"The weights in {root} hold no tensors.", code="weights_invalid", param="path")
    return BaseModelInfo(
        path=root,
        architecture=architecture,
        model_type=model_type,
        parameter_count=total,
        weight_files=tuple(f.name for f in files),
    )


def base_model_register(*, name: str, path: str | Path, description: str = "") -> BaseModel:
    """Register (or re-point) the base model ``name`` at the HF model directory ``path``.

    Registering an existing name updates its path, architecture, parameter count and
    description: that is how an operator moves a model to new storage. Adapters are tied
    to the exact base weights, so once jobs used the name, the new directory must hold the
    same architecture and parameter count; otherwise register it under a new name.

    Raises:
        BaseModelError: bad name or directory (see ``base_model_inspect``).
        ConflictError: ``base_model_changed`` when re-pointing a used name at other weights.
    """
    base_model_name_validate(name)
    info = base_model_inspect(path=path)
    with transaction.atomic():
        existing = BaseModel.objects.select_for_update().filter(name=name).first()
        if existing is None:
            return BaseModel.objects.create(
                name=name,
                path=str(info.path),
                architecture=info.architecture,
                parameter_count=info.parameter_count,
                description=description,
            )
        same_weights = (existing.architecture, existing.parameter_count) == (info.architecture, info.parameter_count)
        in_use = existing.jobs.exists() or existing.versions.exists()
        if in_use and not same_weights:
            raise ConflictError(
                f"Base model {name!r} is used by jobs or adapters and is {existing.architecture} with "
                f"{existing.parameter_count} parameters; {info.path} holds {info.architecture} with "
                f"{info.parameter_count}.",
                code="base_model_changed",
                param="path",
                suggestion="Adapters only fit the weights they were trained on: register the new "
                "directory under a new name.",
            )
        existing.path = str(info.path)
        existing.architecture = info.architecture
        existing.parameter_count = info.parameter_count
        existing.description = description or existing.description
        existing.save(update_fields=["path", "architecture", "parameter_count", "description"])
        return existing
