"""LoRA engine: plain-PyTorch LoRA/QLoRA layers, adapter IO and the training recipe.

This package imports no Django, Celery, DRF or other project package (import-linter's
`engine-standalone` contract and tests/engine/test_no_django_import.py enforce it): the
worker starts it as a child process (`python -m lora_engine.train CONFIG.json`) and talks to it over
JSON lines. Importing the package itself is cheap on purpose (no torch import here), so
the Django side can import `lora_engine.config` / `lora_engine.formats` without paying
for torch.

Modules: `lora` (LoRALinear, injection), `quantize` (bitsandbytes 4/8-bit base layers),
`adapter_io` (PEFT-format save/load), `report` (parameter and memory reports),
`merge` (merge an adapter into a full model dir), `train` (the fine-tuning recipe),
`protocol` (its stdout lines and exit codes), `fsio` (atomic file and dir writes).
"""
