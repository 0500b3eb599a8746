"""registry.naming: the one place that spells a job result's public names."""

from __future__ import annotations

from types import SimpleNamespace

from registry.naming import NAME_RE, fine_tuned_model_name, owner_slug, registered_model_name


class _Owner:
    def __init__(self, username: str, pk: int = 7) -> None:
        self.username, self.pk = username, pk

    def get_username(self) -> str:
        return self.username


def _job(username: str = "alice", base: str = "tiny-llama", suffix: str = "", job_id: str = "ftjob-1"):
    return SimpleNamespace(id=job_id, owner=_Owner(username), base_model=SimpleNamespace(name=base), suffix=suffix)


def test_it_spells_fine_tuned_names_like_openai() -> None:
    assert fine_tuned_model_name(_job(suffix="bot")) == "ft:tiny-llama:alice:bot:ftjob-1"
    assert fine_tuned_model_name(_job()) == "ft:tiny-llama:alice::ftjob-1"


def test_it_slugs_every_part_of_the_registry_name_into_the_name_pattern() -> None:
    name = registered_model_name(_job(username="Alice.Smith@Corp", base="Llama/3.1 8B", suffix="Support Bot"))
    assert name == "alice.smith-corp-llama-3.1-8b-support-bot"
    assert NAME_RE.match(name)


def test_it_caps_registry_names_at_64_characters_without_a_trailing_separator() -> None:
    name = registered_model_name(_job(username="a" * 40, base="b" * 30, suffix="c" * 30))
    assert len(name) <= 64 and NAME_RE.match(name) and not name.endswith(("-", ".", "_"))


def test_it_falls_back_to_the_user_id_when_the_username_has_no_usable_character() -> None:
    assert owner_slug(_Owner("___", pk=42)) == "user-42"
    assert fine_tuned_model_name(_job(username="!!!")) == "ft:tiny-llama:user-7::ftjob-1"
