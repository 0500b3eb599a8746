"""The serving benchmark: its adapters and a smoke run against the real stack (never its speed).

The gateway fast path it measured is tested in ``tests/inference/test_resolve_fast_path.py``.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import serving

# The registry suite's version fixtures (pytest injects them by name) and the vLLM venv fixture.
from tests.helpers import skip_or_fail_in_ci
from tests.inference.conftest import vllm_venv  # noqa: F401
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Who are you?"}]


def test_random_adapters_cover_every_linear_layer_of_the_model(tmp_path):
    model_dir = serving.tiny_model()
    shapes = serving.linear_shapes(model_dir)
    adapter = serving.write_random_adapter(tmp_path / "a", model_dir, seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == serving.LORA_RANK and sorted(config["target_modules"]) == sorted(serving.LORA_MODULES)
    assert len(shapes) == 2 * len(serving.LORA_MODULES)  # two layers of the tiny Llama


def _postgres_server() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        skip_or_fail_in_ci("the serving benchmark needs PostgreSQL (DATABASE_URL)")
    return url.rsplit("/", 1)[0]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.vllm
def test_the_quick_run_writes_every_cell_with_sane_numbers(tmp_path, vllm_venv):  # noqa: F811
    out = tmp_path / "serving.json"
    code = serving.main(["--quick", "--out", str(out), "--pg", _postgres_server(), "--database", "tl_test_serving"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "serving" and result["machine"]["cores"] >= 1
    cells = {(row["variant"], row["concurrency"]) for row in result["throughput"]}
    assert cells == {(v, c) for v in ("base", "8 adapters") for c in (1, 8)}
    for row in result["throughput"]:
        for side in ("gateway", "direct", "peft"):
            assert row[f"{side}_tokens_per_s"]["median"] > 0
            assert row[f"{side}_ttft_ms"]["median"] > 0
        assert row["gateway_vs_direct"] > 0 and row["gateway_vs_peft"] > 0
    # Every burst got exactly the tokens it asked for (the script checks it per burst too).
    assert all(r["tokens"] == r["concurrency"] * result["config"]["tokens_per_request"] for r in result["raw"])
    overhead = result["gateway_overhead"]
    assert overhead["requests"] == 10 and overhead["direct_ms"]["median"] > 0
    assert result["vllm_pid_unchanged"] is True
