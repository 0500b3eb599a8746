"""Hypothesis-generated JSONL uploads: every bad line is reported by number, a rejected file
leaves nothing behind (no row, no bytes), and a large bad file is checked in bounded memory.

Files mix valid chat records with bad lines (invalid UTF-8, a line over the limit, nesting past
the parser's bound, wrong types, broken JSON), a BOM or not, ``\\n`` or ``\\r\\n`` endings; empty
files and one-line files come out of the same strategy.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from lora_engine.formats import MAX_JSON_DEPTH
from tests.helpers import record_dispatches
from tunings.models import TrainingFile
from tunings.services.files import DatasetValidationError, StagedUpload, training_file_create

MAX_LINE_BYTES = 2048
MIN_EXAMPLES = 2
BOM = b"\xef\xbb\xbf"

# Message contents with something besides whitespace (blank content is a dataset error of its own).
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
_valid = st.builds(
    lambda q, a: json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}),
    _text,
    _text,
).map(str.encode)
_bad = st.one_of(
    # Invalid UTF-8 (random bytes after 0xff 0xfe; no newline, which would end the line).
    st.binary(min_size=1, max_size=20).map(lambda b: b'{"messages": "\xff\xfe' + b.replace(b"\n", b"") + b'"}'),
    st.integers(MAX_LINE_BYTES + 1, 3 * MAX_LINE_BYTES).map(lambda n: b'"' + b"a" * n + b'"'),  # too long
    st.integers(MAX_JSON_DEPTH + 1, 900).map(lambda n: b"[" * n + b"]" * n),  # too deep
    st.integers(MAX_JSON_DEPTH + 1, 900).map(lambda n: b'{"messages": ' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from(
        [b"42", b'"text"', b"null", b"[1, 2]", b'{"messages": "hi"}', b'{"messages": [1]}', b"{", b'{"a": }']
    ),
)


@st.composite
def jsonl_files(draw) -> tuple[bytes, list[int], int]:
    """(file bytes, the 1-based numbers of the bad lines in it, the number of lines)."""
    kinds = draw(st.lists(st.booleans(), min_size=0, max_size=8))  # True: a bad line
    lines = [draw(_bad) if bad else draw(_valid) for bad in kinds]
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    content = ending.join(lines) + (ending if lines and draw(st.booleans()) else b"")
    if draw(st.booleans()):
        content = BOM + content
    return content, [number for number, bad in enumerate(kinds, start=1) if bad], len(kinds)


def _stored_blobs(data_dir: Path) -> set[Path]:
    files = data_dir / "files"
    return set(files.rglob("*.jsonl")) if files.exists() else set()


@pytest.fixture
def limits(settings, monkeypatch):
    record_dispatches(monkeypatch, settings)
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_LINE_BYTES": MAX_LINE_BYTES, "MIN_EXAMPLES": MIN_EXAMPLES}


@pytest.mark.timeout(180)
@hypothesis_settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(upload=jsonl_files())
def test_every_bad_line_is_reported_by_number_and_a_rejected_file_leaves_nothing(api_client, limits, settings, upload):
    content, bad_lines, line_count = upload
    data_dir = Path(settings.DATA_DIR)
    rows_before = TrainingFile.objects.count()
    blobs_before = _stored_blobs(data_dir)

    response = api_client.post(
        "/v1/files?purpose=fine-tune&filename=fuzz.jsonl", data=content, content_type="application/jsonl"
    )

    valid_lines = line_count - len(bad_lines)
    if not bad_lines and valid_lines >= MIN_EXAMPLES:
        assert response.status_code == 200, response.content[:500]
        assert TrainingFile.objects.count() == rows_before + 1
        assert (data_dir / TrainingFile.objects.get(id=response.json()["id"]).storage_path).exists()
        return
    assert response.status_code == 400, response.content[:500]
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    if not content:
        assert error["code"] == "missing_file"  # an empty body is no file at all
        assert TrainingFile.objects.count() == rows_before
        return
    reported = {d["line"] for d in error["details"] if d["line"] is not None}
    assert reported == set(bad_lines), (error["details"], bad_lines)
    assert error["error_count"] == len(error["details"])
    # Bad lines count as examples too (the user meant them as examples): too few lines is also reported.
    expected_file_level = (
        {"empty_file"} if line_count == 0 else {"too_few_examples"} if line_count < MIN_EXAMPLES else set()
    )
    assert {d["code"] for d in error["details"] if d["line"] is None} == expected_file_level
    # Nothing stored: no row, no bytes in the store, no temp file left.
    assert TrainingFile.objects.count() == rows_before
    assert _stored_blobs(data_dir) == blobs_before
    assert not list((data_dir / "tmp").glob("*")) if (data_dir / "tmp").exists() else True


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "shape",
    ["one 40 MB line", "200,000 broken lines"],
)
def test_a_large_bad_file_is_checked_in_bounded_memory(db, user, settings, tmp_path, shape):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_LINE_BYTES": 256 * 1024}
    path = Path(settings.DATA_DIR) / "tmp" / "big.part"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:
        if shape == "one 40 MB line":
            fh.write(b'{"messages": "' + b"x" * (40 * 1024 * 1024) + b'"}\n')
        else:
            fh.write(b'{"broken": \n' * 200_000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    staged = StagedUpload(path=path, sha256=digest, size=path.stat().st_size)

    tracemalloc.start()
    try:
        with pytest.raises(DatasetValidationError) as rejected:
            training_file_create(owner=user, upload=staged, filename="big.jsonl", purpose="fine-tune")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # The file is 2-40 MB; the check holds one line (at most the line limit) and 100 listed errors.
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    details = rejected.value.details
    assert all(isinstance(d["line"], int) or d["code"] == "too_few_examples" for d in details)
    assert details[0]["line"] == 1
    # Every line counted (the 40 MB line, then "too few examples" for a one-line file); 100 listed.
    assert rejected.value.error_count == (2 if shape == "one 40 MB line" else 200_000)
    assert len(details) <= 100
    assert not path.exists()  # the rejected upload's temp file is gone
    assert not TrainingFile.objects.exists()
    assert _stored_blobs(Path(settings.DATA_DIR)) == set()
