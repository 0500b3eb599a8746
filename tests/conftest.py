"""Fixtures shared by every suite: users with real API keys, a tiny base model, an isolated data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_engine.fsio import atomic_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("TUNINGLAB_TEST_CACHE", REPO_ROOT / ".cache"))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny Llama (HF dir) built locally once and cached across runs, keyed by the builder version."""
    # Late: tiny_model imports torch and transformers (seconds), which most API suites never need.
    from lora_engine.tiny_model import TINY_MODEL_VERSION, build_tiny_model

    target = CACHE_DIR / f"tiny-model-v{TINY_MODEL_VERSION}"
    if not (target / "config.json").exists():
        # Built in a temp dir and renamed in: a half-built model is never mistaken for a cached one.
        with atomic_dir(target) as staging:
            build_tiny_model(staging)
    return target


@pytest.fixture(autouse=True)
def _isolated_data_dir(settings, tmp_path):
    """Point TUNINGLAB data (uploads, adapters, checkpoints) at a per-test directory."""
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    # Follow-ups that start background work (MLflow sync, automatic evaluation) are off unless
    # a test turns them on: a suite about jobs must not wait for MLflow or a model load.
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_ENABLED": False, "AUTO_EVALUATE": False}


@pytest.fixture
def user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def other_user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username="mallory", password="pw-mallory-123")


def _client_for(user):
    from rest_framework.test import APIClient

    from tuninglab.services import api_key_create

    _, raw = api_key_create(owner=user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.raw_api_key = raw
    return client


@pytest.fixture
def api_client(user):
    return _client_for(user)


@pytest.fixture
def other_api_client(other_user):
    return _client_for(other_user)


@pytest.fixture
def base_model(db, tiny_model_dir):
    from registry.models import BaseModel

    return BaseModel.objects.create(name="tiny-llama", path=str(tiny_model_dir), architecture="LlamaForCausalLM")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite, test against a file, not the in-memory default.

    The live-server tests run the in-process worker thread beside the server thread; an
    in-memory shared-cache database answers "table is locked" at once instead of waiting,
    while a file database honours the 30 s busy timeout like the embedded setup does.
    """
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")
