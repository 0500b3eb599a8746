"""Base model registration: check a local Hugging Face model directory, then record it.

A base model is a local Hugging Face model directory. We check it *before* a row exists,
so a typo in a path fails at registration with a clear message instead of at the first
training job an hour later: config, tokenizer and safetensors weights must be present
and readable. The parameter count comes from the safetensors headers (an 8-byte length +
a JSON table of dtypes and shapes), so registering a 70B model reads kilobytes, not
140 GB.

The *content hash* (sha256 over config.json, the tokenizer files and every weight file) is
what ties an adapter to the exact weights it was trained on: a name can be re-pointed, a
hash cannot. It is the one full read of the weights, done once at registration.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from registry.lineage import sha256_files
from registry.models import BaseModel
from registry.naming import NAME_RE
from tuninglab.errors import ConflictError, InvalidRequestError

# A safetensors header is JSON describing tensors; real ones are well under a few MB.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Bytes per element of the safetensors dtypes, to check a tensor's byte range against its shape.
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
# Files besides the weights that decide what a base model computes: its config and everything a
# tokenizer loads (vocabulary, merges, special tokens, chat template). Hashed when present.
CONFIG_FILE = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


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
    # Every tensor of the weights, name -> shape (from the headers): what an adapter must fit.
    tensor_shapes: dict[str, tuple[int, ...]]


def base_model_name_validate(name: str) -> None:
    """Raise BaseModelError unless all of ``name`` matches ``[a-z0-9][a-z0-9._-]{0,63}`` (no trailing newline)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
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


class SafetensorsHeaderError(ValueError):
    """A .safetensors file whose header we refuse; ``code`` says why (stable, shown to users).

    Codes: ``header_too_large`` (the declared header is above ``MAX_SAFETENSORS_HEADER``),
    ``truncated_file`` (the header or a tensor's bytes reach past the end of the file),
    ``invalid_header`` (not a JSON table of tensors, or a tensor's byte range disagrees with
    its dtype and shape).
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of one .safetensors file, read from its header only and checked.

    Layout: 8 bytes little-endian u64 N, then N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
    then the data. Every tensor's byte range must lie inside the file, which catches a
    truncated copy (a common result of an interrupted download or a full disk).

    Returns:
        ``{tensor name: {"dtype", "shape", "data_offsets"}}`` without ``__metadata__``.

    Raises:
        SafetensorsHeaderError: see its codes. OSError: the file cannot be read.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise SafetensorsHeaderError(
                f"the file is {size} bytes, shorter than a safetensors header (truncated?)", code="truncated_file"
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_SAFETENSORS_HEADER:
            raise SafetensorsHeaderError(
                f"the header is declared as {header_len} bytes; the limit is {MAX_SAFETENSORS_HEADER} bytes",
                code="header_too_large",
            )
        if header_len > size - 8:
            raise SafetensorsHeaderError(
                f"header length {header_len} does not fit in a {size}-byte file (truncated?)", code="truncated_file"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(f"the header is not JSON: {exc}", code="invalid_header") from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("the header is not a JSON object", code="invalid_header")
    data_size = size - 8 - header_len
    tensors: dict[str, dict] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsHeaderError(f"tensor {name!r} has no valid shape", code="invalid_header")
        offsets = spec.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise SafetensorsHeaderError(f"tensor {name!r} has no valid data_offsets", code="invalid_header")
        if offsets[1] > data_size:
            raise SafetensorsHeaderError(
                f"tensor {name!r} points past the end of the file (truncated?): its data ends at byte "
                f"{offsets[1]} of a {data_size}-byte data section",
                code="truncated_file",
            )
        width = SAFETENSORS_DTYPE_BYTES.get(spec.get("dtype"))
        if width is None:
            raise SafetensorsHeaderError(
                f"tensor {name!r} has unknown dtype {spec.get('dtype')!r}", code="invalid_header"
            )
        if offsets[1] - offsets[0] != math.prod(shape) * width:
            raise SafetensorsHeaderError(
                f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {spec['dtype']}",
                code="invalid_header",
            )
        tensors[name] = spec
    return tensors


def safetensors_parameter_count(path: Path) -> int:
    """Sum of elements over every tensor in one .safetensors file, from its checked header only."""
    return sum(math.prod(spec["shape"]) for spec in safetensors_header(path).values())


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
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            header = safetensors_header(file)
        except (OSError, ValueError) as exc:
            raise BaseModelError(
                f"{file.name} is not a readable safetensors file: {exc}", code="weights_invalid", param="path"
            ) from exc
        shapes.update((name, tuple(spec["shape"])) for name, spec in header.items())
    total = sum(math.prod(shape) for shape in shapes.values())
    if total <= 0:
        raise BaseModelError(f"The weights in {root} hold no tensors.", code="weights_invalid", param="path")
    return BaseModelInfo(
        path=root,
        architecture=architecture,
        model_type=model_type,
        parameter_count=total,
        weight_files=tuple(f.name for f in files),
        tensor_shapes=shapes,
    )


def base_model_content_hash(*, info: BaseModelInfo) -> str:
    """sha256 over config.json, the tokenizer files present and every weight file of a checked dir.

    ``registry.lineage.sha256_files`` hashes each file's name, size and bytes, so a changed
    tokenizer, config or shard changes the hash as surely as changed weights do. This reads
    every byte of the weights (minutes for a 70B model): it runs at registration, not per request.
    """
    names = [CONFIG_FILE, *(n for n in TOKENIZER_FILES if (info.path / n).is_file()), *info.weight_files]
    try:
        return sha256_files(info.path, names)
    except OSError as exc:
        raise BaseModelError(f"Cannot read {info.path}: {exc}", code="weights_invalid", param="path") from exc


def base_model_fill_content_hash(*, base_model: BaseModel) -> str:
    """The base model's content hash, computed and stored first when the row has none.

    Rows registered before the hash existed have ``content_hash == ""``; the pre-promotion
    check needs the serving base's hash, so it fills it here, from the files at ``path``.
    The UPDATE is conditional, so two processes filling the same row at once both store the
    same value and neither overwrites a hash set by a re-registration in between.

    Raises:
        BaseModelError: the directory is gone or broken (see ``base_model_inspect``).
    """
    if base_model.content_hash:
        return base_model.content_hash
    digest = base_model_content_hash(info=base_model_inspect(path=base_model.path))
    BaseModel.objects.filter(pk=base_model.pk, content_hash="").update(content_hash=digest)
    base_model.content_hash = BaseModel.objects.values_list("content_hash", flat=True).get(pk=base_model.pk)
    return base_model.content_hash


def base_model_register(*, name: str, path: str | Path, description: str = "") -> BaseModel:
    """Register (or re-point) the base model ``name`` at the HF model directory ``path``.

    Registering an existing name updates its path, architecture, parameter count, content
    hash and description: that is how an operator moves a model to new storage (same files,
    same hash). Adapters are tied to the exact base weights, so once jobs used the name, the
    new directory must hold the same architecture and parameter count; otherwise register it
    under a new name. Same shapes with other bytes are accepted and recorded as a new
    content hash, which the pre-promotion check compares with each version's lineage.

    Raises:
        BaseModelError: bad name or directory (see ``base_model_inspect``).
        ConflictError: ``base_model_changed`` when re-pointing a used name at other weights.
    """
    base_model_name_validate(name)
    info = base_model_inspect(path=path)
    # Hashed before the row lock: reading every weight byte can take minutes.
    content_hash = base_model_content_hash(info=info)
    with transaction.atomic():
        existing = BaseModel.objects.select_for_update().filter(name=name).first()
        if existing is None:
            return BaseModel.objects.create(
                name=name,
                path=str(info.path),
                architecture=info.architecture,
                parameter_count=info.parameter_count,
                content_hash=content_hash,
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
        # The hash of what is on disk now: if the bytes changed (same shapes, other values), the
        # versions trained on the old bytes keep the old hash in their lineage, and the
        # pre-promotion check refuses them on this base.
        existing.content_hash = content_hash
        existing.description = description or existing.description
        existing.save(update_fields=["path", "architecture", "parameter_count", "content_hash", "description"])
        return existing
