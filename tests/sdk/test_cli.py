"""The ``tuninglab`` command line against the live server: output and exit codes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tuninglab_sdk.cli import main

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cli(live_server, raw_key, registered_model):
    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main(["--base-url", live_server.url, "--api-key", raw_key, "--max-retries", "0", *argv], out=out)
        return code, out.getvalue()

    return run


def test_it_uploads_creates_lists_and_cancels_from_the_command_line(cli, dataset_path, no_worker):
    code, out = cli("files", "upload", str(dataset_path))
    assert code == 0
    file_id = json.loads(out)["id"]

    code, out = cli(
        "tunings", "create", "--model", "tiny-llama", "--data", file_id, "--method", "lora",
        "--suffix", "cli", "--seed", "5", "--hp", "n_epochs=2", "batch_size=1", "--hp", "lr_scheduler=linear",
        "--lora", "rank=4", "--metadata", "team=cx",
    )  # fmt: skip
    assert code == 0
    job = json.loads(out)
    assert job["status"] == "queued" and job["seed"] == 5 and job["suffix"] == "cli"
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["batch_size"] == 1
    assert job["training_options"]["lr_scheduler"] == "linear"
    assert job["lora"]["rank"] == 4 and job["metadata"] == {"team": "cx"}

    code, out = cli("tunings", "list")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "STATUS", "MODEL"]
    assert lines[1].split()[:3] == [job["id"], "queued", "tiny-llama"]

    code, out = cli("--json", "files", "list")
    assert code == 0 and [f["id"] for f in json.loads(out)] == [file_id]

    code, out = cli("tunings", "cancel", job["id"])
    assert code == 0 and json.loads(out)["status"] == "cancelled"

    code, out = cli("tunings", "events", job["id"])
    assert code == 0 and "cancelled" in out.strip().splitlines()[-1].lower()  # oldest first

    code, out = cli("tunings", "watch", job["id"], "--poll-interval", "0.05")
    assert code == 1  # a cancelled job is not a success


def test_it_exits_1_when_the_watched_job_failed(cli, dataset_path, no_worker, capsys):
    from tunings.services.state import tuning_job_fail

    code, out = cli("tunings", "create", "--model", "tiny-llama", "--data", str(dataset_path))
    job_id = json.loads(out)["id"]
    tuning_job_fail(job_id=job_id, code="out_of_memory", message="OOM at step 2.", suggestion="Lower batch_size.")

    code, _ = cli("tunings", "watch", job_id, "--poll-interval", "0.05")

    assert code == 1
    err = capsys.readouterr().err
    assert "out_of_memory" in err and "Lower batch_size." in err


def test_it_exits_2_on_api_and_usage_errors(cli, capsys):
    code, _ = cli("tunings", "get", "ftjob-000000000000000000000000")
    assert code == 2
    assert "No such tuning job" in capsys.readouterr().err

    code, _ = cli("tunings", "create", "--model", "tiny-llama", "--data", "/no/such/file.jsonl")
    assert code == 2
    assert "No such dataset file" in capsys.readouterr().err

    code, _ = cli("tunings", "create", "--model", "tiny-llama", "--data", "file-x", "--hp", "novalue")
    assert code == 2

    with pytest.raises(SystemExit) as usage:
        main(["tunings", "frobnicate"])
    assert usage.value.code == 2


def test_it_lists_models_and_reports_an_unknown_one(cli, capsys):
    code, out = cli("--json", "models", "list")
    assert code == 0 and [m["id"] for m in json.loads(out)] == ["tiny-llama"]

    code, _ = cli("models", "versions", "nope")
    assert code == 2
    assert "No such model: nope." in capsys.readouterr().err


def test_it_installs_a_working_console_script(live_server, raw_key, registered_model):
    script = shutil.which("tuninglab", path=str(Path(sys.executable).parent))
    assert script, "the tuninglab console script is not installed (pip install -e ./sdk)"
    env = {"TUNINGLAB_BASE_URL": live_server.url, "TUNINGLAB_API_KEY": raw_key, "PATH": "/usr/bin:/bin"}

    done = subprocess.run([script, "--json", "tunings", "list"], capture_output=True, text=True, env=env, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
