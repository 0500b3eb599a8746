"""Validate a whole JSONL file: every problem with its line number and a stable code.

Rules (documented in docs/datasets.md):
- Lines are split by ``lora_engine.formats.iter_lines``, the reader the engine uses too: on
  ``\\n`` only, numbered from 1. Blank lines are skipped (still counted for numbering); a
  UTF-8 byte-order mark at the start of the file and ``\\r\\n`` endings are accepted.
- Each line is parsed by ``lora_engine.formats.loads_json``: nesting deeper than
  ``MAX_JSON_DEPTH`` is ``nesting_too_deep``.
- A line longer than ``max_line_bytes`` is ``line_too_long`` and is skipped without being
  read into memory whole.
- The file's format is the format of its first *valid* line; a later line in another
  format is ``mixed_formats``.
- One problem is reported per line (the first found); the file-level problems
  (``empty_file``, ``too_few_examples``) come after the line problems.
- At most ``max_errors`` problems are listed; ``error_count`` counts them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from json import JSONDecodeError
from pathlib import Path
from typing import IO, Any

from lora_engine import formats
from lora_engine.formats import FormatError, detect_format, iter_lines, loads_json, to_messages
from tunings.datasets.stats import DatasetStats
from tunings.datasets.tokens import TokenCounter

INVALID_JSON = "invalid_json"
INVALID_ENCODING = "invalid_encoding"
LINE_TOO_LONG = "line_too_long"
EMPTY_FILE = "empty_file"
TOO_FEW_EXAMPLES = "too_few_examples"
ERROR_CODES = (INVALID_ENCODING, INVALID_JSON, LINE_TOO_LONG, EMPTY_FILE, TOO_FEW_EXAMPLES, *formats.ERROR_CODES)

MAX_REPORTED_ERRORS = 100


@dataclass
class ValidationReport:
    """What ``validate_jsonl`` found: the format, the stats and the problems."""

    format: str = ""
    stats: DatasetStats = field(default_factory=DatasetStats)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    max_errors: int = MAX_REPORTED_ERRORS

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def example_count(self) -> int:
        return self.stats.example_count

    def add_error(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append({"line": line, "code": code, "message": message, "param": param})


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


def validate_jsonl(
    source: str | Path | IO[bytes],
    *,
    max_line_bytes: int,
    min_examples: int,
    max_errors: int = MAX_REPORTED_ERRORS,
    count_tokens: TokenCounter | None = None,
) -> ValidationReport:
    """Read a JSONL file once and report its format, stats and every problem.

    Args:
        source: a path or a binary file object positioned at the start.
        max_line_bytes: longest accepted line (bytes, without the newline).
        min_examples: fewest valid examples a training file needs.
        max_errors: how many problems to list (all are counted).
        count_tokens: optional real tokenizer for the token estimate.

    Returns:
        A ``ValidationReport``; ``report.ok`` is True when there is no problem.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as stream:
            return validate_jsonl(
                stream,
                max_line_bytes=max_line_bytes,
                min_examples=min_examples,
                max_errors=max_errors,
                count_tokens=count_tokens,
            )
    report = ValidationReport(stats=DatasetStats(count_tokens=count_tokens), max_errors=max_errors)
    fmt: str | None = None
    example_lines = 0
    for number, content, size in iter_lines(source, max_line_bytes):
        if content is None:
            example_lines += 1
            report.add_error(
                number,
                LINE_TOO_LONG,
                f"Line {number} is {_kib(size)}; the limit is {_kib(max_line_bytes)} per line.",
            )
            continue
        if not content.strip():
            continue
        example_lines += 1
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add_error(
                number, INVALID_ENCODING, f"Line {number} is not valid UTF-8 (bad byte at offset {exc.start})."
            )
            continue
        try:
            record = loads_json(text)
        except FormatError as exc:  # nesting_too_deep
            report.add_error(number, exc.code, f"Line {number}: {exc.message}.", exc.param)
            continue
        except ValueError as exc:
            detail = f": {exc.msg} at column {exc.colno}" if isinstance(exc, JSONDecodeError) else ""
            report.add_error(number, INVALID_JSON, f"Line {number} is not valid JSON{detail}.")
            continue
        try:
            messages = to_messages(record, fmt)
        except FormatError as exc:
            report.add_error(number, exc.code, f"Line {number}: {exc.message}.", exc.param)
            continue
        if fmt is None:
            fmt = detect_format(record)
            report.format = fmt
        report.stats.add(messages)

    if example_lines == 0:
        report.add_error(None, EMPTY_FILE, "The file has no examples: it is empty or holds only blank lines.", "file")
    elif example_lines < min_examples:
        report.add_error(
            None,
            TOO_FEW_EXAMPLES,
            f"The file has {example_lines} example(s); at least {min_examples} are required.",
            "file",
        )
    return report
