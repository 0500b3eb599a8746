"""Hostile names are refused with a 400 in the error shape, and no user string reaches a child's argv.

Names become directory names, URL segments and (for the engine and vLLM) process arguments, so
each entry point refuses path separators, ``..``, NUL, whitespace, newlines, a leading ``-`` and
Unicode look-alikes of the allowed ASCII characters.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings

from inference.config import ServedBase, vllm_argv
from registry.services.base_models import base_model_register
from tests.helpers import record_dispatches
from tests.security.objects import make_owned_objects
from tuninglab.errors import ApiError
from tunings.models import TuningJob
from workers.runner import run_job

HOSTILE_NAMES = [
    "../etc",
    "a/b",
    "..",
    "bot\x00",
    "my bot",
    "bot\n",
    "-rf",
    "--model",
    "b\u043et",  # Cyrillic o
    "\uff42ot",  # fullwidth b
    "a\u2215b",  # division slash
    "a\\b",
    "",
]
SHELL_METACHARACTERS = "$(touch /tmp/pwned); `id` | rm -rf ~ && echo '\"' > x"
ID_RE = re.compile(r"^ftjob-[0-9a-f]{24}$")


@pytest.fixture
def alice(db, user, tmp_path, monkeypatch, settings):
    record_dispatches(monkeypatch, settings)
    return make_owned_objects(owner=user, root=tmp_path)


def _assert_400(response, context: str) -> None:
    assert response.status_code == 400, f"{context}: {response.status_code} {response.content[:300]!r}"
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), context


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_it_refuses_hostile_names_everywhere_a_name_comes_in(api_client, alice, name):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.raw_key}")
    job = {"model": "fake-llama", "training_file": alice.file.id}
    if name:  # "" is "no suffix" / "default name", which is allowed
        _assert_400(api_client.post("/v1/fine_tuning/jobs", {**job, "suffix": name}, format="json"), "suffix")
        _assert_400(api_client.post("/v1/fine_tuning/jobs", {**job, "model_name": name}, format="json"), "model_name")
        _assert_400(api_client.post("/v1/fine_tuning/jobs", {**job, "promote_to": name}, format="json"), "promote_to")
        _assert_400(
            api_client.post("/generate", {"prompt": "hi"}, format="json", QUERY_STRING=urlencode({"adapter": name})),
            "adapter",
        )
    _assert_400(
        api_client.post(f"/v1/models/{alice.model_name}/promote", {"version": 1, "alias": name}, format="json"), "alias"
    )
    assert TuningJob.objects.filter(owner=alice.owner).count() == 1  # only the fixture's job
    with pytest.raises(ApiError) as refused:
        base_model_register(name=name, path=alice.job.base_model.path)
    assert refused.value.status == 400 and refused.value.code == "invalid_name"


# A launcher flag we generate: ``--name`` or ``--name=value`` with a number or a host.
LAUNCHER_FLAG_RE = re.compile(r"^--[a-z][a-z_-]*(=[0-9A-Za-z.]+)?$")
LAUNCHER_MODULES = {
    None: None,
    "ddp": "torch.distributed.run",
    "fsdp": "torch.distributed.run",
    "deepspeed": "deepspeed.launcher.runner",
}


@pytest.mark.parametrize("strategy", [None, "ddp", "fsdp", "deepspeed"])
def test_the_training_child_argv_holds_only_generated_values(api_client, alice, monkeypatch, strategy):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.raw_key}")
    suffix = "z9._-edge-of-the-charset"
    body = {
        "model": "fake-llama",
        "training_file": alice.file.id,
        "suffix": suffix,
        "metadata": {"note": SHELL_METACHARACTERS, "--config": "/etc/passwd"},
        "hyperparameters": {"batch_size": 2},
    }
    if strategy is not None:
        body["distributed"] = {"strategy": strategy, "nproc_per_node": 2}
    response = api_client.post("/v1/fine_tuning/jobs", body, format="json")
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    spawned: list[list[str]] = []

    def record(argv, *args, **kwargs):
        spawned.append(list(argv))
        raise OSError("argv recorded; no process started")

    monkeypatch.setattr(subprocess, "Popen", record)
    run_job(job_id, worker_id="w1", queue="cpu")

    assert len(spawned) == 1
    argv = spawned[0]
    python, config_path = argv[0], argv[-1]
    assert Path(python).name.startswith("python")
    if strategy is None:
        assert argv[1:3] == ["-m", "lora_engine.train"] and len(argv) == 4
    else:
        # python -m <launcher> <generated flags> (-m | --module) lora_engine.train CONFIG
        assert argv[1:3] == ["-m", LAUNCHER_MODULES[strategy]]
        assert argv[-3] in ("-m", "--module") and argv[-2] == "lora_engine.train"
        for flag in argv[3:-3]:
            assert LAUNCHER_FLAG_RE.match(flag), (flag, argv)
    config = Path(config_path).resolve()
    assert config.is_relative_to(Path(django_settings.DATA_DIR).resolve())
    assert ID_RE.match(job_id) and job_id in config.parts
    recorded = TuningJob.objects.get(id=job_id).launch_config
    assert recorded["argv"] == [*argv[:-1], config.name]  # what the row shows is what ran
    for element in [*argv, json.dumps(recorded)]:
        for hostile in (suffix, SHELL_METACHARACTERS, "--config", "/etc/passwd", "note"):
            assert hostile not in element, (hostile, argv)


def test_the_vllm_argv_holds_only_settings_and_validated_names(alice, settings, tmp_path):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "VLLM_EXTRA_ARGS": ""}
    base = alice.job.base_model
    argv = vllm_argv(base=ServedBase(name=base.name, port=8100, host="127.0.0.1"), model_path=base.path)
    conf = settings.TUNINGLAB
    expected_values = {
        conf["VLLM_PYTHON"],
        str(Path(base.path).resolve()),
        base.name,
        "127.0.0.1",
        "8100",
        conf["VLLM_DTYPE"],
    }
    for element in argv:
        assert (
            element in expected_values
            or element.startswith("--")
            or element.isdigit()
            or element in {"-m", "vllm.entrypoints.openai.api_server"}
        ), (element, argv)
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", base.name)
