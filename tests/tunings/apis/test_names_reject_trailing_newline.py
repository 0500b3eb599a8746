"""Name validators match the whole string: a trailing newline (which ``$`` tolerates) is refused."""

from __future__ import annotations

import pytest

from registry.naming import NAME_RE
from registry.services.aliases import alias_name_validate
from registry.services.base_models import BaseModelError, base_model_name_validate
from tuninglab.errors import ApiError
from tunings.hyperparameters import validate_lora


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["suffix", "model_name"])
def test_it_refuses_a_job_name_with_a_trailing_newline(api_client, job_body, dispatched, field):
    response = api_client.post("/v1/fine_tuning/jobs", {**job_body, field: "bot\n"}, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == field


def test_it_refuses_a_base_model_name_with_a_trailing_newline():
    base_model_name_validate("llama-3")
    with pytest.raises(BaseModelError):
        base_model_name_validate("llama-3\n")


@pytest.mark.parametrize("alias", ["prod\n", "v1\n", "latest\n"])
def test_it_refuses_an_alias_with_a_trailing_newline(alias):
    alias_name_validate("prod")
    with pytest.raises(ApiError) as caught:
        alias_name_validate(alias)
    assert caught.value.code == "invalid_alias"


def test_it_refuses_a_target_module_with_a_trailing_newline():
    assert validate_lora({"target_modules": ["q_proj"]}, "lora")["target_modules"] == ["q_proj"]
    with pytest.raises(ApiError) as caught:
        validate_lora({"target_modules": ["q_proj\n"]}, "lora")
    assert caught.value.param == "lora.target_modules"


def test_it_keeps_the_shared_name_pattern_anchored_for_every_caller():
    # Callers that still use ``NAME_RE.match`` (e.g. the registry's version naming) are safe too.
    assert NAME_RE.match("bot\n") is None
