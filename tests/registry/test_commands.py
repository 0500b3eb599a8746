"""manage.py list_versions / promote / rollback: the same moves as the services, errors exit with code 1."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from registry.management.commands.rollback import Command as RollbackCommand
from registry.models import Alias, AliasEvent, RegisteredModel

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def versions(tiny_adapter_version):
    return [tiny_adapter_version() for _ in range(3)]


def test_it_promotes_and_rolls_back_through_the_commands(versions, user):
    assert run("promote", "alice", "bot", "1") == f"bot@production: (unset) -> v1 (promote, event {_last_event()})\n"
    assert run("promote", "alice", "bot", "2", "--reason", "better eval") == (
        f"bot@production: v1 -> v2 (promote, event {_last_event()})\n"
    )
    assert run("promote", "alice", "bot", "3") == f"bot@production: v2 -> v3 (promote, event {_last_event()})\n"
    assert run("rollback", "alice", "bot", "--reason", "v3 broke") == (
        f"bot@production: v3 -> v2 (rollback, event {_last_event()})\n"
    )
    assert run("rollback", "alice", "bot") == f"bot@production: v2 -> v1 (rollback, event {_last_event()})\n"
    with pytest.raises(CommandError) as info:
        run("rollback", "alice", "bot")
    assert str(info.value) == (
        "[nothing_to_roll_back] Nothing to roll back: bot@production is at v1 and held no earlier version.\n"
        "Hint: Promote a version explicitly, or roll back to a given version (to_version / --to)."
    )
    assert Alias.objects.get(alias="production").version.version == 1
    events = list(AliasEvent.objects.order_by("id").select_related("from_version", "to_version"))
    assert [(e.kind, e.from_version and e.from_version.version, e.to_version.version, e.reason) for e in events] == [
        ("promote", None, 1, ""),
        ("promote", 1, 2, "better eval"),
        ("promote", 2, 3, ""),
        ("rollback", 3, 2, "v3 broke"),
        ("rollback", 2, 1, ""),
    ]


def _last_event() -> int:
    return AliasEvent.objects.order_by("-id").values_list("id", flat=True).first()


def test_it_exits_with_code_1_when_there_is_nothing_to_roll_back(versions, monkeypatch, capsys):
    run("promote", "alice", "bot", "1")
    # run_from_argv is what manage.py calls; it closes the DB connections when done, which
    # would end the test's transaction, so that part is skipped here.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    with pytest.raises(SystemExit) as info:
        RollbackCommand().run_from_argv(["manage.py", "rollback", "alice", "bot"])
    assert info.value.code == 1
    assert (
        "CommandError: [nothing_to_roll_back] Nothing to roll back: bot@production is at v1" in capsys.readouterr().err
    )


def test_it_rolls_back_to_a_given_version_and_moves_other_aliases(versions):
    run("promote", "alice", "bot", "3", "--alias", "staging")
    assert run("rollback", "alice", "bot", "--alias", "staging", "--to", "1").startswith(
        "bot@staging: v3 -> v1 (rollback, event "
    )
    assert run("promote", "alice", "bot", "1", "--alias", "staging") == (
        "bot@staging already points at v1; nothing moved.\n"
    )
    assert not Alias.objects.filter(alias="production").exists()


def test_it_lists_the_reasons_of_a_refused_promotion_and_moves_nothing(tiny_adapter_version, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16}
    tiny_adapter_version()
    big = tiny_adapter_version(rank=64)
    weights = Path(big.adapter_path) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    run("promote", "alice", "bot", "1")
    with pytest.raises(CommandError) as info:
        run("promote", "alice", "bot", "2", "--reason", "try")
    lines = str(info.value).splitlines()
    assert lines[0] == "[version_not_servable] bot v2 fails the pre-promotion check (3 problems):"
    assert [line.split("]")[0] for line in lines[1:4]] == [
        "  - [truncated_file",
        "  - [checksum_mismatch",
        "  - [rank_too_large",
    ]
    assert lines[3] == (
        "  - [rank_too_large] LoRA rank 64 (adapter_config.json r=64) is above the serving limit "
        "max_lora_rank=16 (TUNINGLAB_SERVING_MAX_LORA_RANK)"
    )
    assert lines[4].startswith("Hint: Nothing moved.")
    assert Alias.objects.get(alias="production").version.version == 1 and AliasEvent.objects.count() == 1


def test_it_refuses_unknown_owners_and_other_owners_models(versions, other_user):
    with pytest.raises(CommandError, match=r"^\[owner_not_found\] No user 'nobody'\.$"):
        run("promote", "nobody", "bot", "1")
    with pytest.raises(CommandError, match=r"^\[model_not_found\] No such model: bot\.$"):
        run("promote", "mallory", "bot", "1")
    with pytest.raises(CommandError, match=r"^\[model_not_found\]"):
        run("list_versions", "mallory", "bot")
    with pytest.raises(CommandError, match=r"^\[invalid_alias\] Invalid alias 'Prod'\."):
        run("promote", "alice", "bot", "1", "--alias", "Prod")
    assert not AliasEvent.objects.exists()


def test_it_lists_versions_with_aliases_loss_and_evaluation(versions):
    v1, v2, _ = versions
    v2.evaluation = {"metrics": {"exact_match": 0.75, "rouge_l": 0.8125, "examples": 16}, "dataset": "file-x"}
    v2.save(update_fields=["evaluation"])
    run("promote", "alice", "bot", "1")
    run("promote", "alice", "bot", "2", "--alias", "staging")
    run("promote", "alice", "bot", "1", "--alias", "canary")
    lines = run("list_versions", "alice", "bot").splitlines()
    assert lines[0].split() == ["VERSION", "KIND", "CREATED", "ALIASES", "BASE", "SHA256", "FINAL", "LOSS", "EVAL"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["v3", "v2", "v1"]
    day, minute = v1.created_at.strftime("%Y-%m-%d %H:%M").split()
    v1_cells = ["v1", "adapter", day, minute, "canary,production", "tiny-llama", v1.sha256[:12], "1.2500", "-"]
    assert rows["v1"].split() == v1_cells
    v2_cells = ["staging", "tiny-llama", v2.sha256[:12], "1.2500", "exact_match=0.75", "examples=16", "rouge_l=0.8125"]
    assert rows["v2"].split()[4:] == v2_cells
    assert rows["v3"].split()[4] == "-"
    # Columns line up: every row starts its SHA256 cell where the header does.
    column = lines[0].index("SHA256")
    assert all(line[column : column + 12] in {v.sha256[:12] for v in versions} for line in lines[1:])


def test_it_says_when_a_model_has_no_versions(user):
    RegisteredModel.objects.create(owner=user, name="empty")
    assert run("list_versions", "alice", "empty") == "empty has no versions.\n"
