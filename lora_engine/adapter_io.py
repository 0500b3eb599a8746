"""Adapters on disk in PEFT's format, so PEFT, vLLM and we all read each other's files.

A directory with:
  - ``adapter_config.json``: ``peft_type "LORA"``, ``task_type "CAUSAL_LM"``, ``r``,
    ``lora_alpha``, ``lora_dropout``, ``target_modules`` (a list of module names such as
    ``["q_proj", "v_proj"]``; vLLM rejects regexes), ``use_rslora``, ``bias "none"``, ...
  - ``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight`` (r x in) and
    ``...lora_B.weight`` (out x r), e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``
    (PEFT's ``PeftModel`` wraps the HF model as ``base_model.model``).

Only safetensors is read: ``.bin``/``.pt`` adapters are pickles that can run code on load.
Writes are atomic (temp dir, fsync, rename), so a reader never sees half an adapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lora_engine.errors import INVALID_CONFIG, EngineError
from lora_engine.fsio import atomic_dir
from lora_engine.lora import LoRALinear, find_target_modules, inject_lora, lora_modules, lora_parameters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterFormatError(EngineError, ValueError):
    """An adapter directory we will not load: missing files, pickle weights, unsupported options."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(
            INVALID_CONFIG,
            message,
            param=param,
            suggestion="provide a PEFT LoRA adapter dir with adapter_config.json and adapter_model.safetensors",
        )


# ------------------------------------------------------------------------------ save


def peft_adapter_config(
    *,
    base_model_name_or_path: str,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    use_rslora: bool = False,
) -> dict[str, Any]:
    """The ``adapter_config.json`` content, with the fields PEFT 0.21 writes for plain LoRA."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        # PEFT writes ints when it can; vLLM and PEFT read either.
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(target_modules),
        "use_rslora": use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
        "exclude_modules": None,
        "revision": None,
        "auto_mapping": None,
    }


def _config_target_modules(model: nn.Module, injected: list[str]) -> list[str]:
    """Module names that select exactly ``injected`` under PEFT's list matching.

    Short names (``q_proj``) when they select exactly the injected layers, which is what
    PEFT writes and vLLM expects; full module names when LoRA sits only on some layers
    with a given short name (e.g. a regex that picked layer 0 only).
    """
    short = sorted({name.rsplit(".", 1)[-1] for name in injected})
    inside_lora = tuple(f"{name}." for name in injected)
    selected_by_short = {
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | LoRALinear)
        and not name.startswith(inside_lora)
        and name.rsplit(".", 1)[-1] in short
    }
    return short if selected_by_short == set(injected) else sorted(injected)


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    base_model_name_or_path: str,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    use_rslora: bool = False,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the model's LoRA weights as a PEFT adapter directory, atomically.

    The files are written into a temp dir next to ``out_dir``, fsynced, and renamed into
    place by ``fsio.atomic_dir`` (an existing ``out_dir`` is replaced only after the new
    one is complete).

    Args:
        target_modules: what the run asked for (``["q_proj", "v_proj"]``, ``["all-linear"]``,
            regexes). The config gets the list derived from the modules that really carry
            LoRA (see ``_config_target_modules``), because vLLM accepts plain names only
            and a loader must re-create exactly the saved set.
        tensors: the weights to write by parameter name, when the model's own are not whole
            (a sharded distributed run gathers them) or not the ones to save (select="best");
            default: the model's LoRA parameters.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: the model has no LoRA layers, or they disagree with ``rank``/``alpha``.
    """
    out_dir = Path(out_dir)
    modules = list(lora_modules(model))
    if not modules:
        raise ValueError("the model has no LoRA layers to save")
    for name, m in modules:
        if m.rank != rank or not math.isclose(m.alpha, float(alpha)) or m.use_rslora != use_rslora:
            raise ValueError(
                f"{name} has rank={m.rank}, alpha={m.alpha:g}, use_rslora={m.use_rslora}; "
                f"the config says rank={rank}, alpha={alpha:g}, use_rslora={use_rslora}"
            )
        if m.merged:
            raise ValueError(f"{name} is merged; unmerge() before saving the adapter")
    target_modules = _config_target_modules(model, [name for name, _ in modules])
    config = peft_adapter_config(
        base_model_name_or_path=str(base_model_name_or_path),
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=list(target_modules),
        use_rslora=use_rslora,
    )
    # safetensors wants contiguous, unshared CPU tensors.
    names = [name for name, _ in lora_parameters(model)]
    if tensors is not None:
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"no weights given for {len(missing)} LoRA parameter(s), e.g. {missing[0]}")
        out = {PEFT_PREFIX + n: tensors[n].detach().to("cpu").contiguous().clone() for n in names}
    else:
        out = {PEFT_PREFIX + n: p.detach().to("cpu").contiguous().clone() for n, p in lora_parameters(model)}

    with atomic_dir(out_dir) as tmp:
        save_file(out, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


# ------------------------------------------------------------------------------ load


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """Read and check ``adapter_config.json`` of a LoRA adapter.

    Raises:
        AdapterFormatError: missing/invalid file, not a LoRA adapter, or options we do not
            implement (DoRA, biases, per-module ranks, modules_to_save, fan_in_fan_out).
    """
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterFormatError(f"{path} not found", param=CONFIG_NAME)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{path} is not valid JSON: {exc}", param=CONFIG_NAME) from exc
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path} must hold a JSON object", param=CONFIG_NAME)
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"peft_type is {config.get('peft_type')!r}, expected 'LORA'", param="peft_type")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterFormatError(f"r must be a positive integer, got {r!r}", param="r")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterFormatError(f"lora_alpha must be a positive number, got {alpha!r}", param="lora_alpha")
    dropout = config.get("lora_dropout", 0.0)
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise AdapterFormatError(f"lora_dropout must be in [0, 1), got {dropout!r}", param="lora_dropout")
    targets = config.get("target_modules")
    if not (
        isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))
    ):
        raise AdapterFormatError(
            f"target_modules must be a name list or a regex, got {targets!r}", param="target_modules"
        )
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "lora_bias": bool(config.get("lora_bias")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "layers_to_transform": config.get("layers_to_transform") is not None,
        "target_parameters": bool(config.get("target_parameters")),
        "exclude_modules": bool(config.get("exclude_modules")),
        "trainable_token_indices": bool(config.get("trainable_token_indices")),
    }
    for field, bad in unsupported.items():
        if bad:
            raise AdapterFormatError(
                f"adapter option {field}={config.get(field)!r} is not supported by this engine", param=field
            )
    return config


def _refuse_pickles(adapter_dir: Path) -> None:
    pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterFormatError(
            f"{adapter_dir} has only pickle weights ({', '.join(pickles)}); loading pickles can run "
            f"arbitrary code, so only {WEIGHTS_NAME} is accepted (re-save it with safetensors)",
            param=WEIGHTS_NAME,
        )
    raise AdapterFormatError(f"{adapter_dir / WEIGHTS_NAME} not found", param=WEIGHTS_NAME)


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> list[str]:
    """Inject LoRA as described by a PEFT adapter dir and load its weights (safetensors only).

    Returns:
        The injected module names.

    Raises:
        AdapterFormatError: a missing or pickle-only weights file, an unsupported config, or
            weights that do not match the model (unknown module, missing tensor, wrong shape).
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterFormatError(f"{adapter_dir} is not a directory", param="adapter_dir")
    config = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / WEIGHTS_NAME
    if not weights_path.is_file():
        _refuse_pickles(adapter_dir)
    try:
        raw = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(
            f"{weights_path} is not a readable safetensors file: {exc}", param=WEIGHTS_NAME
        ) from exc

    tensors: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = key.removeprefix(PEFT_PREFIX)
        # Older PEFT versions kept the adapter name in the key: "...lora_A.default.weight".
        name = name.replace(".lora_A.default.weight", ".lora_A.weight").replace(
            ".lora_B.default.weight", ".lora_B.weight"
        )
        if not name.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterFormatError(f"unsupported tensor {key!r} in {WEIGHTS_NAME}", param=WEIGHTS_NAME)
        tensors[name] = value

    # Check everything against the model before touching it: a bad adapter leaves the
    # model as it was.
    try:
        names = find_target_modules(model, config["target_modules"])
    except ValueError as exc:
        raise AdapterFormatError(f"adapter does not fit this model: {exc}", param="target_modules") from exc
    r = config["r"]
    expected: dict[str, tuple[int, int]] = {}
    for name in names:
        base = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (r, base.in_features)
        expected[f"{name}.lora_B.weight"] = (base.out_features, r)
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        raise AdapterFormatError(
            f"adapter weights do not match the model: unknown {unknown[:3]}, missing {missing[:3]}",
            param=WEIGHTS_NAME,
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterFormatError(
                f"{name}: shape {tuple(tensors[name].shape)} in the file, {shape} expected", param=WEIGHTS_NAME
            )

    injected = inject_lora(
        model,
        targets=config["target_modules"],
        rank=r,
        alpha=config.get("lora_alpha", 8),
        dropout=float(config.get("lora_dropout", 0.0)),
        use_rslora=bool(config.get("use_rslora", False)),
    )
    with torch.no_grad():
        for name, p in lora_parameters(model):
            p.copy_(tensors[name].to(p.dtype))
    return injected
