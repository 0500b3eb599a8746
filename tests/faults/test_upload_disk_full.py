"""A full disk while an upload is written: 507 ``disk_full`` with a suggestion, and nothing left.

The data directory is a real 256 KiB tmpfs, so the kernel itself answers ENOSPC mid-write (no
patched ``write``). Mounting needs root, which CI has; elsewhere the test is skipped locally.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import skip_or_fail_in_ci
from tests.tunings.datasets.conftest import stored_files, upload_multipart, upload_raw
from tunings.models import TrainingFile

TMPFS_BYTES = 256 * 1024


@pytest.fixture
def tiny_data_dir(tmp_path, settings):
    mount_point = tmp_path / "tmpfs-data"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        skip_or_fail_in_ci(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    settings.DATA_DIR = mount_point
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_UPLOAD_BYTES": 4 * 1024 * 1024}
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def dataset(n_bytes: int) -> bytes:
    """Valid chat JSONL of about ``n_bytes``."""
    line = json.dumps(
        {"messages": [{"role": "user", "content": "Who are you? " * 20}, {"role": "assistant", "content": "x" * 400}]}
    )
    return ("\n".join([line] * (n_bytes // len(line) + 1)) + "\n").encode()


@pytest.mark.django_db
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_a_full_disk_during_an_upload_is_507_disk_full_and_leaves_nothing(api_client, tiny_data_dir, how):
    content = dataset(1024 * 1024)  # 1 MiB into 256 KiB
    upload = upload_raw if how == "raw" else lambda client, body: upload_multipart(client, "big.jsonl", body)
    response = upload(api_client, content)

    assert response.status_code == 507, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("disk_full", "file", "server_error")
    assert "free space" in error["suggestion"]
    assert not TrainingFile.objects.exists()
    assert stored_files(tiny_data_dir) == []  # no temp file, no blob

    # The space is really free again: a file that fits is stored.
    small = upload_raw(api_client, dataset(16 * 1024))
    assert small.status_code == 200, small.content
    assert TrainingFile.objects.count() == 1
    stored = [p.relative_to(tiny_data_dir) for p in stored_files(tiny_data_dir)]
    assert [p.parts[0] for p in stored] == ["files"], stored  # the blob; no temp file left
