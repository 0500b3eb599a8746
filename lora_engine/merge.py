"""Merge a LoRA adapter into its base model and export a plain Hugging Face model dir.

The result needs no LoRA support to serve (``W' = W + (alpha/r)·B·A`` is baked in): any
HF-compatible runtime loads it. The merge runs in float32 whatever the stored dtype, so
the small update is not rounded away before it is added, and the weights are written back
in the base model's own dtype.

CLI: ``python -m lora_engine.merge BASE_MODEL_DIR ADAPTER_DIR OUT_DIR``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lora_engine.adapter_io import load_adapter
from lora_engine.fsio import atomic_dir
from lora_engine.lora import merge_lora

# Files of a model dir that hold weights (written fresh by save_pretrained) or are
# pickles; everything else at the top level (tokenizer, chat template, ...) is copied.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")


def merge_and_export(base_model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``base + adapter`` merged as a full HF model dir (safetensors weights), atomically.

    Args:
        base_model_dir: a local HF causal-LM dir (config + safetensors weights + tokenizer).
        adapter_dir: a PEFT-format LoRA adapter (ours or PEFT's).
        out_dir: where the merged model goes; replaced only once the new one is complete.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        AdapterFormatError: the adapter cannot be read or does not fit the base model.
        FileNotFoundError: ``base_model_dir`` has no ``config.json``.
    """
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if not (base_model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{base_model_dir} is not a Hugging Face model dir (no config.json)")
    stored_dtype = getattr(AutoConfig.from_pretrained(base_model_dir), "dtype", None) or torch.float32
    if isinstance(stored_dtype, str):
        stored_dtype = getattr(torch, stored_dtype)

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    load_adapter(model, adapter_dir)
    merge_lora(model)
    model.to(stored_dtype)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        written = {p.name for p in tmp.iterdir()}
        for src in sorted(base_model_dir.iterdir()):
            if src.is_file() and src.name not in written and not src.name.endswith(_WEIGHT_SUFFIXES):
                if src.name.endswith(".index.json"):
                    continue  # a sharded-weights index of the base, not ours
                shutil.copy2(src, tmp / src.name)
        (tmp / "merge_info.json").write_text(
            json.dumps({"base_model_dir": str(base_model_dir), "adapter_dir": str(adapter_dir)}, indent=2) + "\n"
        )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Merge a LoRA adapter into its base model.")
    parser.add_argument("base_model_dir")
    parser.add_argument("adapter_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    out = merge_and_export(args.base_model_dir, args.adapter_dir, args.out_dir)
    print(json.dumps({"merged_model_dir": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
