"""registry.naming: the one place that spells a job result's public names."""

from __future__ import annotations

from types import SimpleNamespace

from registry.naming import NAME_RE, default_model_name, fine_tuned_model_name, owner_slug


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


def test_it_names_the_registered_model_after_the_suffix_else_the_base() -> None:
    assert default_model_name(suffix="support-bot", base_name="tiny-llama") == "support-bot"
    assert default_model_name(suffix="", base_name="tiny-llama") == "tiny-llama-ft"


def test_it_keeps_a_default_name_within_the_name_pattern_for_a_long_base() -> None:
    name = default_model_name(suffix="", base_name="b" * 60 + ".-_x")
    assert len(name) <= 64 and NAME_RE.match(name) and name.endswith("-ft")


def test_it_falls_back_to_the_user_id_when_the_username_has_no_usable_character() -> None:
    assert owner_slug(_Owner("___", pk=42)) == "user-42"
    assert fine_tuned_model_name(_job(username="!!!")) == "ft:tiny-llama:user-7::ftjob-1"
