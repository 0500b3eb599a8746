"""``deploy/gunicorn.conf.py``: multiprocess metrics start from an empty directory each run."""

from __future__ import annotations

import runpy
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_it_empties_the_multiprocess_dir_when_gunicorn_starts(monkeypatch, tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"counts of an earlier run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))

    conf = runpy.run_path(str(REPO_ROOT / "deploy" / "gunicorn.conf.py"))
    conf["on_starting"](server=None)

    assert directory.is_dir() and list(directory.iterdir()) == []
    assert (conf["bind"], conf["workers"]) == ("127.0.0.1:8000", 4)
