"""The pre-promotion check on real adapters of the tiny Llama: each refusal has its code and exact reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_engine.adapter_io import save_adapter
from lora_engine.lora import inject_lora
from registry.models import BaseModel, ModelVersion
from registry.services.base_models import base_model_register, safetensors_header
from registry.services.checks import (
    FULL_WEIGHTS_NOTE,
    Problem,
    VersionNotServableError,
    version_check_servable,
    version_require_servable,
)

pytestmark = pytest.mark.django_db


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


@pytest.fixture(scope="session")
def lora_engine_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """An adapter written by the engine itself (inject_lora + save_adapter on the loaded tiny model)."""
    # Late: transformers costs seconds to import and only this fixture loads a model.
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    inject_lora(model, targets=["q_proj", "v_proj", "down_proj"], rank=4, alpha=8)
    out = tmp_path_factory.mktemp("engine") / "adapter"
    return save_adapter(
        model,
        out,
        base_model_name_or_path=str(tiny_model_dir),
        rank=4,
        alpha=8,
        dropout=0.0,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )


@pytest.fixture
def other_base_dir(tiny_model_dir, tmp_path) -> Path:
    """The tiny Llama with other weight values (same shapes): another base that adapters still 'fit'."""
    root = tmp_path / "tiny-other"
    shutil.copytree(tiny_model_dir, root)
    weights = root / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # the last float32 becomes 1.0
    weights.write_bytes(bytes(data))
    return root


def test_it_passes_an_adapter_written_by_the_engine(tiny_base, make_version, lora_engine_adapter):
    version = make_version(base=tiny_base, adapter_dir=lora_engine_adapter, lora_rank=4)
    assert version_check_servable(version=version) == []
    version_require_servable(version=version)  # does not raise


def test_it_refuses_a_rank_64_adapter_when_serving_allows_16(tiny_adapter_version, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16}
    version = tiny_adapter_version(rank=64)
    assert version_check_servable(version=version) == [
        Problem(
            "rank_too_large",
            "LoRA rank 64 (adapter_config.json r=64, tensors up to rank 64) is above the serving limit "
            "max_lora_rank=16 (TUNINGLAB_SERVING_MAX_LORA_RANK)",
        )
    ]


def test_it_reads_the_rank_from_the_tensors_not_the_job_row_or_config(tiny_base, peft_adapter, make_version):
    # The job row and the config both say 8; the tensors hold rank 32.
    adapter = peft_adapter(tiny_base.path, rank=32, config_rank=8)
    version = make_version(base=tiny_base, adapter_dir=adapter, lora_rank=8)
    problems = version_check_servable(version=version)
    assert codes(problems) == ["rank_too_large", "shape_mismatch"]
    assert problems[0].message.startswith("LoRA rank 32 (adapter_config.json r=8, tensors up to rank 32)")
    assert problems[1].message.startswith("4 LoRA module(s) do not fit the base: model.layers.0.self_attn.q_proj: ")
    assert "rank 32 in the tensors, r=8 in adapter_config.json" in problems[1].message


def test_it_refuses_an_adapter_trained_on_another_base(tiny_base, other_base_dir, peft_adapter, make_version, settings):
    other = base_model_register(name="tiny-other", path=other_base_dir)
    assert other.content_hash != tiny_base.content_hash
    version = make_version(base=other, adapter_dir=peft_adapter(other_base_dir))
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_BASE_MODEL": "tiny-llama"}
    assert version_check_servable(version=version) == [
        Problem(
            "base_mismatch",
            f"trained on base tiny-other (content sha256 {other.content_hash[:12]}); the serving base is "
            f"tiny-llama (content sha256 {tiny_base.content_hash[:12]})",
        )
    ]
    # The same version on its own base (no serving base configured) fits.
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_BASE_MODEL": ""}
    assert version_check_servable(version=version) == []


def test_it_refuses_an_adapter_whose_base_weights_were_replaced_since(
    tiny_adapter_version, tiny_base, other_base_dir, tiny_model_dir
):
    version = tiny_adapter_version()
    trained_on = tiny_base.content_hash
    # Same name, same shapes, other bytes: re-registration records the new hash.
    replaced = base_model_register(name="tiny-llama", path=other_base_dir)
    assert replaced.content_hash != trained_on
    assert version_check_servable(version=version) == [
        Problem(
            "base_mismatch",
            f"trained on tiny-llama with content sha256 {trained_on[:12]}, but tiny-llama's files have changed "
            f"since (now {replaced.content_hash[:12]}): the adapter does not fit the weights being served",
        )
    ]
    # Moving the original files back under the name makes it fit again.
    base_model_register(name="tiny-llama", path=tiny_model_dir)
    assert version_check_servable(version=version) == []


def test_it_refuses_a_truncated_safetensors_file(tiny_adapter_version):
    version = tiny_adapter_version()
    weights = Path(version.adapter_path) / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    problems = version_check_servable(version=version)
    assert codes(problems) == ["truncated_file", "checksum_mismatch"]
    last = max(safetensors_header_of(data).items(), key=lambda item: item[1]["data_offsets"][1])
    assert problems[0].message == (
        f"adapter_model.safetensors: tensor {last[0]!r} points past the end of the file (truncated?): its data ends "
        f"at byte {last[1]['data_offsets'][1]} of a {last[1]['data_offsets'][1] - 100}-byte data section"
    )


def safetensors_header_of(data: bytes) -> dict:
    size = int.from_bytes(data[:8], "little")
    return {k: v for k, v in json.loads(data[8 : 8 + size]).items() if k != "__metadata__"}


def test_it_refuses_a_header_above_the_bound(tiny_adapter_version):
    version = tiny_adapter_version()
    weights = Path(version.adapter_path) / "adapter_model.safetensors"
    weights.write_bytes((200 * 1024 * 1024).to_bytes(8, "little") + b"{}")
    problems = version_check_servable(version=version)
    assert codes(problems) == ["header_too_large", "checksum_mismatch"]
    assert problems[0].message == (
        "adapter_model.safetensors: the header is declared as 209715200 bytes; the limit is 104857600 bytes"
    )


def test_it_refuses_changed_bytes_by_checksum(tiny_adapter_version):
    version = tiny_adapter_version()
    weights = Path(version.adapter_path) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, valid header, one bit of one weight changed
    weights.write_bytes(bytes(data))
    problems = version_check_servable(version=version)
    assert codes(problems) == ["checksum_mismatch"]
    assert problems[0].message.endswith(
        f", {version.sha256[:12]} was recorded at registration: the files changed since"
    )


def test_it_refuses_a_pickle_next_to_the_adapter(tiny_adapter_version):
    version = tiny_adapter_version()
    (Path(version.adapter_path) / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    assert version_check_servable(version=version) == [
        Problem(
            "unsafe_file",
            "pickle-based file(s) adapter_model.bin: loading them can run arbitrary code; only safetensors is served",
        )
    ]


def test_it_refuses_modules_serving_does_not_support(tiny_adapter_version, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_LORA_MODULES": ("q_proj", "k_proj", "v_proj", "o_proj")}
    version = tiny_adapter_version(modules=("q_proj", "up_proj", "lm_head"))
    assert version_check_servable(version=version) == [
        Problem(
            "unsupported_module",
            "LoRA on lm_head, up_proj; serving supports q_proj, k_proj, v_proj, o_proj "
            "(TUNINGLAB_SERVING_LORA_MODULES)",
        )
    ]


def test_it_refuses_tensors_that_do_not_fit_the_base_layers(tiny_base, make_version, tmp_path):
    adapter = tmp_path / "wrong-shapes"
    adapter.mkdir()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": torch.zeros(4, 64), f"{prefix}.lora_B.weight": torch.zeros(128, 4)}
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    )
    version = make_version(base=tiny_base, adapter_dir=adapter, lora_rank=4)
    assert version_check_servable(version=version) == [
        Problem(
            "shape_mismatch",
            "1 LoRA module(s) do not fit the base: model.layers.0.self_attn.q_proj: lora_A [4, 64] / lora_B [128, 4], "
            "expected [r, 128] / [128, r] for the base's [128, 128]",
        )
    ]


def test_it_accepts_the_base_tokenizer_and_refuses_another_chat_template(tiny_adapter_version, tiny_model_dir):
    version = tiny_adapter_version()
    root = Path(version.adapter_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, root / name)
    # Re-serialised as save_pretrained does (other key order, runtime fields): still the base's.
    fast = json.loads((root / "tokenizer.json").read_text())
    fast["truncation"] = {"max_length": 64, "strategy": "longest_first", "stride": 0, "direction": "right"}
    (root / "tokenizer.json").write_text(json.dumps(dict(reversed(fast.items()))))
    config = json.loads((root / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    config["is_local"] = True
    (root / "tokenizer_config.json").write_text(json.dumps(dict(reversed(config.items())), indent=1))
    assert version_check_servable(version=version) == []

    (root / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert version_check_servable(version=version) == [
        Problem("chat_template_mismatch", "the version carries a chat template that is not the base's")
    ]
    fast["added_tokens"] = fast["added_tokens"][:-1]
    (root / "tokenizer.json").write_text(json.dumps(fast))
    assert codes(version_check_servable(version=version)) == ["tokenizer_mismatch", "chat_template_mismatch"]
    assert version_check_servable(version=version)[0].message == (
        "the version carries a tokenizer that is not the base's (differs in: tokenizer.json)"
    )


def test_it_refuses_a_version_trained_before_base_hashes_were_recorded(tiny_adapter_version, tiny_base):
    version = tiny_adapter_version()
    version.lineage["base_model"]["content_hash"] = ""
    assert version_check_servable(version=version) == [
        Problem(
            "base_hash_unknown",
            "the lineage records no content hash for the base it was trained on (tiny-llama), so it cannot be "
            f"shown to fit the serving base tiny-llama (content sha256 {tiny_base.content_hash[:12]})",
        )
    ]


def test_it_fills_the_hash_of_a_serving_base_registered_before_hashes(tiny_adapter_version, tiny_base, settings):
    version = tiny_adapter_version()
    legacy = BaseModel.objects.create(name="tiny-legacy", path=tiny_base.path, architecture="LlamaForCausalLM")
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_BASE_MODEL": "tiny-legacy"}
    assert version_check_servable(version=version) == []  # same files, so the same hash
    legacy.refresh_from_db()
    assert legacy.content_hash == tiny_base.content_hash


def test_it_refuses_an_unregistered_serving_base(tiny_adapter_version, settings):
    version = tiny_adapter_version()
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_BASE_MODEL": "llama-70b"}
    assert version_check_servable(version=version) == [
        Problem(
            "serving_base_not_registered",
            "the serving base model 'llama-70b' (TUNINGLAB_SERVING_BASE_MODEL) is not a registered base model",
        )
    ]


def test_it_reports_every_problem_in_one_error(tiny_adapter_version, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16, "SERVING_LORA_MODULES": ("q_proj",)}
    version = tiny_adapter_version(rank=32, modules=("q_proj", "v_proj"))
    (Path(version.adapter_path) / "extra.pt").write_bytes(b"pickle")
    with pytest.raises(VersionNotServableError) as info:
        version_require_servable(version=version)
    error = info.value
    assert (error.status, error.code) == (409, "version_not_servable")
    assert [d["code"] for d in error.details] == ["unsafe_file", "rank_too_large", "unsupported_module"]
    assert error.message.startswith("bot v1 fails the pre-promotion check (3 problems): [unsafe_file] pickle-based")
    assert "[rank_too_large] LoRA rank 32" in error.message and "[unsupported_module] LoRA on v_proj;" in error.message
    assert error.as_dict()["details"] == error.details and error.as_dict()["code"] == "version_not_servable"


def _full_weights_dir(tiny_model_dir: Path, root: Path) -> Path:
    """A full fine-tune's result: the base's files (config, tokenizer, weights) as save_pretrained writes them."""
    shutil.copytree(tiny_model_dir, root)
    return root


def test_it_checks_a_full_weights_version_for_integrity_only(tiny_base, tiny_model_dir, make_version, tmp_path):
    version = make_version(
        base=tiny_base, adapter_dir=_full_weights_dir(tiny_model_dir, tmp_path / "full"), method="full"
    )
    assert version.kind == ModelVersion.Kind.FULL
    assert version_check_servable(version=version) == []


def test_it_refuses_full_weights_that_are_not_the_base_architecture(tiny_base, tiny_model_dir, make_version, tmp_path):
    root = _full_weights_dir(tiny_model_dir, tmp_path / "full")
    tensors = {k: torch.zeros(v["shape"]) for k, v in safetensors_header(root / "model.safetensors").items()}
    del tensors["lm_head.weight"]
    tensors["model.norm.weight"] = torch.zeros(64)
    save_file(tensors, str(root / "model.safetensors"))
    version = make_version(base=tiny_base, adapter_dir=root, method="full")
    assert version_check_servable(version=version) == [
        Problem(
            "shape_mismatch",
            "the weights are not tiny-llama's: missing 1 tensor(s) of the base (lm_head.weight); "
            f"1 tensor(s) with other shapes (model.norm.weight [64] vs [128]) {FULL_WEIGHTS_NOTE}",
        )
    ]
    assert "not in a LoRA slot" in FULL_WEIGHTS_NOTE
