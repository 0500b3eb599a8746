"""Production settings pass ``check --deploy``; the OpenAPI schema documents Bearer auth."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_check_deploy(**env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "REDIS_URL", "CSRF_TRUSTED_ORIGINS"}}
    env.update(
        DJANGO_SETTINGS_MODULE="tuninglab.settings_production",
        SECRET_KEY=secrets.token_urlsafe(48),  # 64 chars
        ALLOWED_HOSTS="tuninglab.example.com",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/tl_platform",
    )
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_passes_check_deploy_with_the_production_settings():
    result = _run_check_deploy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced).", result.stdout + result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
    ],
)
def test_it_refuses_to_start_without_required_production_env(overrides, message):
    result = _run_check_deploy(**overrides)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


@pytest.mark.django_db
def test_it_documents_bearer_auth_and_the_health_check_in_the_schema():
    from drf_spectacular.generators import SchemaGenerator

    # The platform's own urlconf: the whole project's schema is checked by check --deploy above.
    schema = SchemaGenerator(urlconf="tests.tuninglab.urls").get_schema(request=None, public=True)
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "API key (tl-…)",
        "description": "An API key from `manage.py create_api_key USER` or the admin, "
        "sent as `Authorization: Bearer <key>`.",
    }
    health = schema["paths"]["/healthz"]["get"]
    assert "security" not in health  # anonymous
    assert schema["paths"]["/test/whoami"]["get"]["security"][0] == {"ApiKeyAuth": []}
    assert set(health["responses"]) == {"200", "503"}
