"""register_base_model: a good HF dir registers with architecture + parameter count; each bad dir fails clearly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from registry.lineage import sha256_files
from registry.models import BaseModel
from registry.services import base_models
from registry.services.base_models import (
    BaseModelError,
    SafetensorsHeaderError,
    base_model_fill_content_hash,
    base_model_register,
    safetensors_header,
    safetensors_parameter_count,
)
from tests.helpers import FAKE_PARAMETER_COUNT, write_fake_model

pytestmark = pytest.mark.django_db


def _register(*args: str) -> str:
    out = io.StringIO()
    call_command("register_base_model", *args, stdout=out)
    return out.getvalue()


def test_it_registers_a_valid_dir_with_architecture_and_parameter_count(hf_model_dir):
    output = _register("fake-llama", str(hf_model_dir), "--description", "test model")
    model = BaseModel.objects.get(name="fake-llama")
    assert model.architecture == "LlamaForCausalLM"
    assert model.parameter_count == FAKE_PARAMETER_COUNT == 456
    assert model.path == str(hf_model_dir.resolve())
    assert model.description == "test model"
    assert "Registered base model 'fake-llama'" in output and "456 parameters" in output


def test_it_counts_the_tiny_model_parameters_from_headers_only(tiny_model_dir):
    from safetensors.torch import load_file

    _register("tiny-llama", str(tiny_model_dir))
    model = BaseModel.objects.get(name="tiny-llama")
    # Independent count: load the tensors (fine for the tiny model) and add up numel().
    expected = sum(
        t.numel() for file in Path(tiny_model_dir).glob("*.safetensors") for t in load_file(str(file)).values()
    )
    assert model.parameter_count == expected > 0
    assert model.architecture == json.loads((Path(tiny_model_dir) / "config.json").read_text())["architectures"][0]


def test_it_sums_the_shards_listed_in_a_safetensors_index(tmp_path):
    root = write_fake_model(tmp_path / "sharded")
    (root / "model.safetensors").rename(root / "model-00001-of-00002.safetensors")
    write_fake_model(tmp_path / "second", tensors={"lm_head.weight": (32, 8)})
    (tmp_path / "second" / "model.safetensors").rename(root / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        },
    }
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    _register("sharded", str(root))
    assert BaseModel.objects.get(name="sharded").parameter_count == FAKE_PARAMETER_COUNT + 32 * 8


def _no_config(root: Path) -> None:
    (root / "config.json").unlink()


def _bad_json(root: Path) -> None:
    (root / "config.json").write_text("{not json")


def _no_architectures(root: Path) -> None:
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))


def _no_model_type(root: Path) -> None:
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))


def _no_tokenizer(root: Path) -> None:
    (root / "tokenizer.json").unlink()  # tokenizer_config.json alone is not a tokenizer


def _no_weights(root: Path) -> None:
    (root / "model.safetensors").unlink()


def _pickled_weights(root: Path) -> None:
    (root / "model.safetensors").unlink()
    (root / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")


def _truncated(root: Path) -> None:
    data = (root / "model.safetensors").read_bytes()
    (root / "model.safetensors").write_bytes(data[: len(data) - 100])


def _garbage_weights(root: Path) -> None:
    (root / "model.safetensors").write_bytes(b"\xff" * 64)


def _missing_shard(root: Path) -> None:
    index = {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("breaker", "code", "phrase"),
    [
        (_no_config, "config_missing", "config.json is missing"),
        (_bad_json, "config_invalid", "not valid JSON"),
        (_no_architectures, "config_invalid", "'architectures'"),
        (_no_model_type, "config_invalid", "'model_type'"),
        (_no_tokenizer, "tokenizer_missing", "No tokenizer"),
        (_no_weights, "weights_missing", "No weights"),
        (_pickled_weights, "weights_not_safetensors", "safetensors only"),
        (_truncated, "weights_invalid", "truncated"),
        (_garbage_weights, "weights_invalid", "not a readable safetensors file"),
        (_missing_shard, "weights_missing", "model-00002-of-00002.safetensors"),
    ],
)
def test_it_refuses_a_broken_model_dir_with_a_clear_error(hf_model_dir, breaker, code, phrase):
    breaker(hf_model_dir)
    with pytest.raises(CommandError) as info:
        _register("broken", str(hf_model_dir))
    assert f"[{code}]" in str(info.value)
    assert phrase in str(info.value)
    assert not BaseModel.objects.exists()


def test_it_refuses_a_path_that_is_not_a_directory(tmp_path):
    with pytest.raises(CommandError, match=r"\[path_not_found\]"):
        _register("nowhere", str(tmp_path / "missing"))


@pytest.mark.parametrize("name", ["Llama", "-llama", "llama 3", "a" * 65, "llama/3", ""])
def test_it_refuses_an_invalid_name(hf_model_dir, name):
    with pytest.raises(CommandError, match=r"\[invalid_name\]"):
        _register("--", name, str(hf_model_dir))  # "--": a name starting with "-" is not an option
    assert not BaseModel.objects.exists()


def test_it_accepts_names_at_the_edges_of_the_pattern(hf_model_dir):
    for name in ["a", "llama-3.1_8b", "0" + "x" * 63]:
        _register(name, str(hf_model_dir))
    assert BaseModel.objects.count() == 3


def test_it_re_points_an_existing_name_at_a_new_dir(hf_model_dir, tmp_path):
    _register("fake-llama", str(hf_model_dir), "--description", "first")
    moved = write_fake_model(tmp_path / "moved")
    output = _register("fake-llama", str(moved))
    model = BaseModel.objects.get(name="fake-llama")
    assert "Updated" in output
    assert model.path == str(moved.resolve())
    assert model.description == "first"  # an empty --description keeps the old one
    assert BaseModel.objects.count() == 1


def test_it_refuses_to_re_point_a_used_name_at_different_weights(make_job, tmp_path):
    make_job()  # the fixture registered "fake-llama" and a job now uses it
    other = write_fake_model(tmp_path / "bigger", tensors={"w": (100, 100)})
    with pytest.raises(CommandError, match=r"\[base_model_changed\]"):
        _register("fake-llama", str(other))
    assert BaseModel.objects.get(name="fake-llama").parameter_count == FAKE_PARAMETER_COUNT


def test_it_reads_only_the_header_to_count_parameters(hf_model_dir, monkeypatch):
    # A header claiming 10^12 parameters in a tiny file is rejected as truncated, which
    # shows the count trusts offsets only after checking them against the file size.
    path = hf_model_dir / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(ValueError, match="truncated"):
        safetensors_parameter_count(path)


def test_it_records_a_content_hash_over_config_tokenizer_and_weights(hf_model_dir, tmp_path):
    model = base_model_register(name="fake-llama", path=hf_model_dir)
    files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert model.content_hash == sha256_files(hf_model_dir, files)
    # Files that do not change what the model computes are not hashed; a copy elsewhere hashes the same.
    (hf_model_dir / "README.md").write_text("notes")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in files:
        (copy / name).write_bytes((hf_model_dir / name).read_bytes())
    assert base_model_register(name="fake-llama", path=copy).content_hash == model.content_hash
    assert base_model_register(name="fake-llama", path=hf_model_dir).content_hash == model.content_hash


def _flip_a_weight(root: Path) -> None:
    data = bytearray((root / "model.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # the last float32 becomes 1.0: same shapes, other weights
    (root / "model.safetensors").write_bytes(bytes(data))


def _other_chat_template(root: Path) -> None:
    (root / "chat_template.jinja").write_text("{{ messages }}")


def _other_vocabulary(root: Path) -> None:
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}))


def _other_config(root: Path) -> None:
    (root / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "rope_theta": 1.0})
    )


@pytest.mark.parametrize("change", [_flip_a_weight, _other_chat_template, _other_vocabulary, _other_config])
def test_it_changes_the_content_hash_with_weights_tokenizer_or_config(hf_model_dir, change):
    before = base_model_register(name="fake-llama", path=hf_model_dir).content_hash
    change(hf_model_dir)
    after = base_model_register(name="fake-llama", path=hf_model_dir).content_hash
    assert len(after) == 64 and after != before


def test_it_records_the_new_hash_when_a_used_name_gets_other_bytes_of_the_same_shapes(make_job, fake_base_model):
    make_job()  # the name is in use: shapes must stay, bytes may change (and the hash says so)
    before = fake_base_model.content_hash
    _flip_a_weight(Path(fake_base_model.path))
    model = base_model_register(name="fake-llama", path=fake_base_model.path)
    assert model.parameter_count == FAKE_PARAMETER_COUNT
    assert model.content_hash != before
    assert BaseModel.objects.get(name="fake-llama").content_hash == model.content_hash


def test_it_fills_the_missing_hash_of_a_row_registered_before_hashes(hf_model_dir, monkeypatch):
    legacy = BaseModel.objects.create(name="legacy", path=str(hf_model_dir), architecture="LlamaForCausalLM")
    assert legacy.content_hash == ""
    digest = base_model_fill_content_hash(base_model=legacy)
    assert digest == legacy.content_hash == BaseModel.objects.get(name="legacy").content_hash
    assert digest == base_model_register(name="fresh", path=hf_model_dir).content_hash
    # A row that has its hash is not re-read.
    monkeypatch.setattr(base_models, "base_model_inspect", lambda **_: pytest.fail("read the files again"))
    assert base_model_fill_content_hash(base_model=BaseModel.objects.get(name="legacy")) == digest


def test_it_refuses_to_fill_the_hash_of_a_row_whose_files_are_gone(tmp_path):
    legacy = BaseModel.objects.create(name="gone", path=str(tmp_path / "missing"))
    with pytest.raises(BaseModelError) as info:
        base_model_fill_content_hash(base_model=legacy)
    assert info.value.code == "path_not_found"
    assert BaseModel.objects.get(name="gone").content_hash == ""


def _header_file(path: Path, header: bytes, data: bytes = b"", declared: int | None = None) -> Path:
    path.write_bytes((len(header) if declared is None else declared).to_bytes(8, "little") + header + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "declared", "code"),
    [
        (b"{}", b"", 200 * 1024 * 1024, "header_too_large"),
        (b"{}", b"", 4096, "truncated_file"),
        (b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', b"\0" * 8, None, "truncated_file"),
        (b"{not json", b"", None, "invalid_header"),
        (b"[1, 2]", b"", None, "invalid_header"),
        (b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}', b"\0" * 12, None, "invalid_header"),
        (b'{"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}', b"\0", None, "invalid_header"),
    ],
)
def test_it_gives_each_broken_header_a_stable_code(tmp_path, header, data, declared, code):
    path = _header_file(tmp_path / "w.safetensors", header, data, declared)
    with pytest.raises(SafetensorsHeaderError) as info:
        safetensors_header(path)
    assert info.value.code == code


def test_it_reads_a_valid_header_without_the_metadata(tmp_path):
    header = b'{"__metadata__": {"format": "pt"}, "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}'
    path = _header_file(tmp_path / "w.safetensors", header, b"\0" * 12)
    assert safetensors_header(path) == {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}
