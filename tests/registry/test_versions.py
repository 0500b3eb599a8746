"""Adapter dir → ModelVersion under DATA_DIR/adapters/<name>/v<N>/."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.naming import registered_model_name
from registry.versions import AdapterError, model_version_create_from_job

pytestmark = pytest.mark.django_db


def adapter(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / f"adapter-{payload.hex()[:8]}"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 4}')
    (d / "adapter_model.safetensors").write_bytes(payload)
    return d


def test_it_numbers_versions_per_name_and_copies_the_files(make_job, user, settings, tmp_path):
    j1, j2 = make_job(user, suffix="Support Bot"), make_job(user, suffix="Support Bot")
    v1 = model_version_create_from_job(job=j1, adapter_dir=adapter(tmp_path, b"one"))
    v2 = model_version_create_from_job(job=j2, adapter_dir=adapter(tmp_path, b"two"))
    assert registered_model_name(j1) == "alice-fake-llama-support-bot"
    name = "alice-fake-llama-support-bot"
    assert [(v.name, v.version) for v in (v1, v2)] == [(name, 1), (name, 2)]
    root = Path(settings.DATA_DIR) / "adapters" / "alice-fake-llama-support-bot"
    assert (root / "v2" / "adapter_model.safetensors").read_bytes() == b"two"
    assert sorted(p.name for p in root.iterdir()) == ["v1", "v2"]  # no staging dirs left


def test_it_is_idempotent_per_job(make_job, user, tmp_path):
    job = make_job(user)
    first = model_version_create_from_job(job=job, adapter_dir=adapter(tmp_path, b"a"))
    again = model_version_create_from_job(job=job, adapter_dir=adapter(tmp_path, b"b"))
    assert again.id == first.id


def test_it_rejects_an_incomplete_adapter(make_job, user, tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors"):
        model_version_create_from_job(job=make_job(user), adapter_dir=d)
