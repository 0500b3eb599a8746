"""The pre-promotion check: would serving load this version, on the serving base, as it is?

vLLM refuses an adapter only when it loads it ("LoRA rank 64 is greater than max_lora_rank
16"), i.e. after production already points at it. This check runs before an alias moves
(promote and rollback alike) and answers with every reason at once, each a ``Problem``
with a stable code:

* ``base_mismatch`` / ``base_hash_unknown``: the content hash of the base the version was
  trained on (recorded in its lineage) is not the serving base's current hash. Names are
  not enough: a name can be re-pointed at other weights.
* ``rank_too_large``: the real rank (``adapter_config.json`` ``r`` and the tensor shapes,
  not only what the job row asked for) is above ``SERVING_MAX_LORA_RANK``.
* ``unsupported_module``: a LoRA tensor targets a module outside ``SERVING_LORA_MODULES``,
  or the file holds tensors that are not LoRA A/B matrices.
* ``tokenizer_mismatch`` / ``chat_template_mismatch``: the version dir carries a tokenizer
  or chat template that is not the base's.
* ``unsafe_file``, ``file_missing``, ``invalid_adapter_config``, ``header_too_large``,
  ``truncated_file``, ``invalid_header``, ``checksum_mismatch``, ``checksum_missing``,
  ``shape_mismatch``, ``empty_adapter``: the files do not load, are not the bytes that were
  registered, or do not fit the base's layers.
* ``serving_base_not_registered`` / ``serving_base_unreadable`` (``base_unreadable`` for full
  weights): the base to compare with is missing or broken.

Only headers are read (the base's and the version's); weights are hashed, never loaded,
so the check runs in the web process without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from registry.lineage import sha256_file, sha256_files
from registry.models import BaseModel, ModelVersion
from registry.services.base_models import (
    BaseModelError,
    BaseModelInfo,
    SafetensorsHeaderError,
    base_model_fill_content_hash,
    base_model_inspect,
    safetensors_header,
)
from registry.services.versions import ADAPTER_WEIGHTS, UNSAFE_WEIGHT_SUFFIXES
from tuninglab.errors import ConflictError

# PEFT's config file name (lora_engine.adapter_io.CONFIG_NAME; that module imports torch).
ADAPTER_CONFIG = "adapter_config.json"
# PEFT keys: "base_model.model.<module>.lora_A.weight"; older PEFT kept the adapter name
# ("...lora_A.default.weight"). <module> is the base layer, e.g. model.layers.0.self_attn.q_proj.
LORA_TENSOR_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])(?:\.default)?\.weight$")
# What decides how text becomes tokens and back. The pad token is left out on purpose: it
# only fills batches and changes no output.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token")
# How many offending tensors a message names before it says "and N more".
MAX_LISTED = 3
FULL_WEIGHTS_NOTE = "(full weights are served as their own model, not in a LoRA slot of the serving base)"


@dataclass(frozen=True)
class Problem:
    """One reason a version cannot take an alias: a stable ``code`` and an exact message."""

    code: str
    message: str


class VersionNotServableError(ConflictError):
    """The pre-promotion check refused a version; the alias did not move.

    ``message`` lists every reason; the API body adds ``details``: ``[{code, message}]``.
    """

    default_code = "version_not_servable"

    def __init__(self, *, version: ModelVersion, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        self.details = [{"code": p.code, "message": p.message} for p in problems]
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        self.summary = f"{version.registered_model.name} v{version.version} fails the pre-promotion check ({count})"
        super().__init__(
            f"{self.summary}: " + " ".join(f"[{p.code}] {p.message}" for p in problems),
            param="version",
            suggestion="Nothing moved. Promote a version that fits the serving limits "
            "(TUNINGLAB_SERVING_BASE_MODEL, TUNINGLAB_SERVING_MAX_LORA_RANK, TUNINGLAB_SERVING_LORA_MODULES), "
            "or retrain on the serving base.",
        )

    def as_dict(self) -> dict[str, Any]:
        body = super().as_dict()
        body["details"] = self.details
        return body


def version_check_servable(*, version: ModelVersion) -> list[Problem]:
    """Every reason serving would refuse (or mis-serve) ``version``; ``[]`` when it fits.

    Adapters are checked against the serving base (``SERVING_BASE_MODEL``, default: the
    version's own base); full-weights versions against their own base, for integrity only.
    May store the serving base's content hash when its row has none yet.
    """
    root = Path(version.adapter_path)
    if not root.is_dir():
        problems = [Problem("file_missing", f"the version directory {root} does not exist")]
    elif version.kind == ModelVersion.Kind.FULL:
        problems = _check_full_weights(version, root)
    else:
        problems = _check_adapter(version, root)
    return problems


def version_require_servable(*, version: ModelVersion) -> None:
    """Raise ``VersionNotServableError`` (with every reason) unless ``version`` passes the check."""
    problems = version_check_servable(version=version)
    if problems:
        raise VersionNotServableError(version=version, problems=problems)


# ------------------------------------------------------------------------------ adapters


def _check_adapter(version: ModelVersion, root: Path) -> list[Problem]:
    limits = settings.TUNINGLAB
    base_info, problems = _serving_base(version)
    problems += _unsafe_files(root)
    config, config_problems = _adapter_config(root)
    problems += config_problems
    tensors, file_problems = _header(root / ADAPTER_WEIGHTS)
    problems += file_problems
    problems += _checksum(version, root, [ADAPTER_WEIGHTS])
    if tensors is None:
        # Without a readable header only the config can speak for rank and modules.
        lora: dict[str, dict[str, tuple[int, ...]]] = {}
    else:
        lora, layout_problems = _lora_tensors(tensors)
        problems += layout_problems

    rank, rank_sources = _rank(config, lora)
    if rank > limits["SERVING_MAX_LORA_RANK"]:
        problems.append(
            Problem(
                "rank_too_large",
                f"LoRA rank {rank} ({', '.join(rank_sources)}) is above the serving limit "
                f"max_lora_rank={limits['SERVING_MAX_LORA_RANK']} (TUNINGLAB_SERVING_MAX_LORA_RANK)",
            )
        )
    modules = {module.rsplit(".", 1)[-1] for module in lora}
    targets = (config or {}).get("target_modules")
    if isinstance(targets, list):  # a string is a regex; the tensors say what it matched
        modules |= {t.rsplit(".", 1)[-1] for t in targets if isinstance(t, str)}
    unsupported = sorted(modules - set(limits["SERVING_LORA_MODULES"]))
    if unsupported:
        problems.append(
            Problem(
                "unsupported_module",
                f"LoRA on {', '.join(unsupported)}; serving supports {', '.join(limits['SERVING_LORA_MODULES'])} "
                "(TUNINGLAB_SERVING_LORA_MODULES)",
            )
        )
    if base_info is not None:
        if lora:
            problems += _lora_shapes(lora, config, base_info)
        problems += _tokenizer(root, base_info)
    return problems


def _serving_base(version: ModelVersion) -> tuple[BaseModelInfo | None, list[Problem]]:
    """The serving base's checked dir, and a problem when the version was trained on other weights."""
    name = settings.TUNINGLAB["SERVING_BASE_MODEL"] or version.base_model.name
    base = BaseModel.objects.filter(name=name).first()
    if base is None:
        return None, [
            Problem(
                "serving_base_not_registered",
                f"the serving base model {name!r} (TUNINGLAB_SERVING_BASE_MODEL) is not a registered base model",
            )
        ]
    try:
        info = base_model_inspect(path=base.path)
        current = base_model_fill_content_hash(base_model=base)
    except BaseModelError as exc:
        return None, [Problem("serving_base_unreadable", f"the serving base {name} cannot be read: {exc.message}")]
    recorded_base = version.lineage.get("base_model") or {}
    recorded = recorded_base.get("content_hash") or ""
    trained_on = recorded_base.get("name") or version.base_model.name
    if not recorded:
        return info, [
            Problem(
                "base_hash_unknown",
                f"the lineage records no content hash for the base it was trained on ({trained_on}), so it "
                f"cannot be shown to fit the serving base {name} (content sha256 {current[:12]})",
            )
        ]
    if recorded == current:
        return info, []
    if trained_on == name:
        message = (
            f"trained on {name} with content sha256 {recorded[:12]}, but {name}'s files have changed since "
            f"(now {current[:12]}): the adapter does not fit the weights being served"
        )
    else:
        message = (
            f"trained on base {trained_on} (content sha256 {recorded[:12]}); the serving base is {name} "
            f"(content sha256 {current[:12]})"
        )
    return info, [Problem("base_mismatch", message)]


def _adapter_config(root: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    path = root / ADAPTER_CONFIG
    if not path.is_file():
        return None, [Problem("file_missing", f"{ADAPTER_CONFIG} is missing")]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [Problem("invalid_adapter_config", f"{ADAPTER_CONFIG} is not valid JSON: {exc}")]
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        return None, [Problem("invalid_adapter_config", f"{ADAPTER_CONFIG} does not describe a PEFT LoRA adapter")]
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return config, [Problem("invalid_adapter_config", f"{ADAPTER_CONFIG} has r={r!r}, not a positive integer")]
    return config, []


def _lora_tensors(tensors: dict[str, dict]) -> tuple[dict[str, dict[str, tuple[int, ...]]], list[Problem]]:
    """``{module: {"A": shape, "B": shape}}`` from an adapter's header; other tensors are problems."""
    lora: dict[str, dict[str, tuple[int, ...]]] = {}
    others = []
    for key, spec in sorted(tensors.items()):
        match = LORA_TENSOR_RE.fullmatch(key)
        if match is None:
            others.append(key)
            continue
        lora.setdefault(match["module"], {})[match["side"]] = tuple(spec["shape"])
    problems = []
    if others:
        problems.append(
            Problem(
                "unsupported_module",
                f"{ADAPTER_WEIGHTS} holds {len(others)} tensor(s) that are not LoRA A/B matrices "
                f"({_listed(others)}); modules_to_save, DoRA and embedding adapters are not served",
            )
        )
    if not lora:
        problems.append(Problem("empty_adapter", f"{ADAPTER_WEIGHTS} holds no LoRA tensors"))
    return lora, problems


def _rank(config: dict[str, Any] | None, lora: dict[str, dict[str, tuple[int, ...]]]) -> tuple[int, list[str]]:
    """The largest rank anything claims (config ``r``, per-module ``rank_pattern``, tensor shapes)."""
    sources: list[str] = []
    ranks: list[int] = []
    if config is not None and isinstance(config.get("r"), int):
        ranks.append(config["r"])
        sources.append(f"{ADAPTER_CONFIG} r={config['r']}")
    pattern = [v for v in ((config or {}).get("rank_pattern") or {}).values() if isinstance(v, int)]
    if pattern:
        ranks.append(max(pattern))
        sources.append(f"rank_pattern up to {max(pattern)}")
    # lora_A is (r, in), lora_B is (out, r).
    shaped = [shape[0] for sides in lora.values() if len(shape := sides.get("A", ())) == 2]
    shaped += [shape[1] for sides in lora.values() if len(shape := sides.get("B", ())) == 2]
    if shaped:
        ranks.append(max(shaped))
        sources.append(f"tensors up to rank {max(shaped)}")
    return (max(ranks) if ranks else 0), sources


def _lora_shapes(
    lora: dict[str, dict[str, tuple[int, ...]]], config: dict[str, Any] | None, base: BaseModelInfo
) -> list[Problem]:
    """Each module's lora_A must be (r, in) and lora_B (out, r) for the base layer's (out, in)."""
    r = (config or {}).get("r") if not (config or {}).get("rank_pattern") else None
    wrong = []
    for module, sides in sorted(lora.items()):
        layer = base.tensor_shapes.get(f"{module}.weight")
        a, b = sides.get("A"), sides.get("B")
        if layer is None or len(layer) != 2:
            wrong.append(f"{module} is not a linear layer of the base")
            continue
        if a is None or b is None:
            wrong.append(f"{module} has lora_{'A' if a is None else 'B'} missing")
            continue
        out_features, in_features = layer
        rank = a[0] if len(a) == 2 else -1
        if a != (rank, in_features) or b != (out_features, rank):
            wrong.append(
                f"{module}: lora_A {list(a)} / lora_B {list(b)}, expected [r, {in_features}] / [{out_features}, r] "
                f"for the base's [{out_features}, {in_features}]"
            )
        elif r is not None and rank != r:
            wrong.append(f"{module}: rank {rank} in the tensors, r={r} in {ADAPTER_CONFIG}")
    if not wrong:
        return []
    return [Problem("shape_mismatch", f"{len(wrong)} LoRA module(s) do not fit the base: {_listed(wrong, sep='; ')}")]


# ------------------------------------------------------------------------------ full weights


def _check_full_weights(version: ModelVersion, root: Path) -> list[Problem]:
    """Integrity only: a full fine-tune does not go into a LoRA slot, it needs its own model."""
    problems = _unsafe_files(root)
    weights = sorted(p.name for p in root.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] | None = {}
    if not weights:
        problems.append(Problem("file_missing", f"no *.safetensors weights in {root}"))
        shapes = None
    for name in weights:
        tensors, file_problems = _header(root / name)
        problems += file_problems
        if tensors is None or shapes is None:
            shapes = None
            continue
        shapes.update((key, tuple(spec["shape"])) for key, spec in tensors.items())
    if weights:
        problems += _checksum(version, root, weights)
    try:
        base = base_model_inspect(path=version.base_model.path)
    except BaseModelError as exc:
        base = None
        problems.append(Problem("base_unreadable", f"its base {version.base_model.name} cannot be read: {exc.message}"))
    if base is not None:
        if shapes is not None:
            missing = sorted(set(base.tensor_shapes) - set(shapes))
            extra = sorted(set(shapes) - set(base.tensor_shapes))
            differ = sorted(k for k in set(shapes) & set(base.tensor_shapes) if shapes[k] != base.tensor_shapes[k])
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s) of the base ({_listed(missing)})")
            if extra:
                parts.append(f"{len(extra)} tensor(s) the base does not have ({_listed(extra)})")
            if differ:
                listed = [f"{k} {list(shapes[k])} vs {list(base.tensor_shapes[k])}" for k in differ]
                parts.append(f"{len(differ)} tensor(s) with other shapes ({_listed(listed)})")
            if parts:
                problems.append(
                    Problem("shape_mismatch", f"the weights are not {version.base_model.name}'s: {'; '.join(parts)}")
                )
        problems += _tokenizer(root, base)
    return [Problem(p.code, f"{p.message} {FULL_WEIGHTS_NOTE}") for p in problems]


# ------------------------------------------------------------------------------ shared


def _listed(items: list[str], *, sep: str = ", ") -> str:
    more = f"{sep}and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return sep.join(items[:MAX_LISTED]) + more


def _unsafe_files(root: Path) -> list[Problem]:
    # Anywhere in the dir: a loader that falls back to a pickle would run its code.
    unsafe = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in UNSAFE_WEIGHT_SUFFIXES)
    if not unsafe:
        return []
    return [
        Problem(
            "unsafe_file",
            f"pickle-based file(s) {', '.join(unsafe)}: loading them can run arbitrary code; "
            "only safetensors is served",
        )
    ]


def _header(path: Path) -> tuple[dict[str, dict] | None, list[Problem]]:
    if not path.is_file():
        return None, [Problem("file_missing", f"{path.name} is missing")]
    try:
        return safetensors_header(path), []
    except SafetensorsHeaderError as exc:
        return None, [Problem(exc.code, f"{path.name}: {exc}")]
    except OSError as exc:
        return None, [Problem("file_missing", f"{path.name} cannot be read: {exc}")]


def _checksum(version: ModelVersion, root: Path, names: list[str]) -> list[Problem]:
    """The weights must be the bytes registered: the same rule as ``model_version_create_from_job``
    (one file: its own sha256; several: ``sha256_files`` over them)."""
    if not version.sha256:
        return [Problem("checksum_missing", "no sha256 was recorded at registration, the files cannot be verified")]
    present = [n for n in names if (root / n).is_file()]
    if len(present) != len(names):
        return []  # reported as file_missing already
    try:
        digest = sha256_file(root / names[0]) if len(names) == 1 else sha256_files(root, names)
    except OSError as exc:
        return [Problem("file_missing", f"cannot read the weights to verify them: {exc}")]
    if digest == version.sha256:
        return []
    return [
        Problem(
            "checksum_mismatch",
            f"sha256 of {', '.join(names)} is {digest[:12]}, {version.sha256[:12]} was recorded at registration: "
            "the files changed since",
        )
    ]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _token_text(value: Any) -> Any:
    # tokenizer_config.json writes a special token as a string or an AddedToken dict.
    return value.get("content") if isinstance(value, dict) else value


def _tokenizer_view(root: Path) -> dict[str, Any]:
    """What a dir's tokenizer files define, in a form ``save_pretrained`` round-trips unchanged.

    ``save_pretrained`` rewrites tokenizer_config.json (key order, renamed keys, loader
    flags), so whole files cannot be compared byte for byte: we compare the vocabulary
    (tokenizer.json minus runtime truncation/padding, or the sentencepiece/BPE files), the
    special tokens and the effective chat template.
    """
    view: dict[str, Any] = {}
    fast = _read_json(root / "tokenizer.json") if (root / "tokenizer.json").is_file() else None
    if isinstance(fast, dict):
        view["tokenizer.json"] = {k: v for k, v in fast.items() if k not in ("truncation", "padding")}
    elif (root / "tokenizer.json").is_file():
        view["tokenizer.json"] = "unreadable"
    for name in ("tokenizer.model", "merges.txt"):
        if (root / name).is_file():
            view[name] = sha256_file(root / name)
    if (root / "vocab.json").is_file():
        view["vocab.json"] = _read_json(root / "vocab.json")
    config = _read_json(root / "tokenizer_config.json")
    config = config if isinstance(config, dict) else {}
    special_map = _read_json(root / "special_tokens_map.json")
    special_map = special_map if isinstance(special_map, dict) else {}
    if (root / "tokenizer_config.json").is_file() or (root / "special_tokens_map.json").is_file():
        view["special tokens"] = {key: _token_text(special_map.get(key, config.get(key))) for key in SPECIAL_TOKEN_KEYS}
    # transformers reads chat_template.jinja first, then chat_template.json, then the config key.
    template_json = _read_json(root / "chat_template.json")
    if (root / "chat_template.jinja").is_file():
        view["chat template"] = (root / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    elif isinstance(template_json, dict) and "chat_template" in template_json:
        view["chat template"] = template_json["chat_template"]
    elif config.get("chat_template") is not None:
        view["chat template"] = config["chat_template"]
    return view


def _tokenizer(root: Path, base: BaseModelInfo) -> list[Problem]:
    """Whatever tokenizer parts the version dir carries must be the base's (serving uses the base's)."""
    mine = _tokenizer_view(root)
    if not mine:
        return []
    theirs = _tokenizer_view(base.path)
    problems = []
    differ = [part for part in mine if part != "chat template" and mine[part] != theirs.get(part)]
    if differ:
        problems.append(
            Problem(
                "tokenizer_mismatch",
                f"the version carries a tokenizer that is not the base's (differs in: {', '.join(differ)})",
            )
        )
    if "chat template" in mine and mine["chat template"] != theirs.get("chat template"):
        problems.append(
            Problem(
                "chat_template_mismatch",
                "the version carries a chat template that is not the base's"
                + ("" if "chat template" in theirs else " (the base has none)"),
            )
        )
    return problems
