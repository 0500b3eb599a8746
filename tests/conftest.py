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


# --- the PostgreSQL + Redis pass runs only the tests that reach a database or Redis --------------
# scripts/run_tests.sh runs every suite on SQLite first, then again with DATABASE_URL/REDIS_URL set
# and `--database-tests-only`: a test that asks for no database fixture and carries no postgres,
# redis or django_db mark ran the same code in the first pass, so the second deselects it.
# live_server: pytest-django gives it a transactional database at run time, not by name.
_DATABASE_FIXTURES = frozenset(
    {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server"}
)
_DATABASE_MARKS = ("postgres", "redis", "django_db")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-tests-only",
        action="store_true",
        help="deselect tests that use no database fixture and carry no postgres/redis/django_db mark",
    )


def reaches_a_database(item: pytest.Item) -> bool:
    """Whether the test asks for a database fixture (directly or through another) or is marked for one."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & _DATABASE_FIXTURES) or any(item.get_closest_marker(m) for m in _DATABASE_MARKS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--database-tests-only"):
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (kept if reaches_a_database(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
