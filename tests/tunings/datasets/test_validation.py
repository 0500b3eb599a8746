"""validate_jsonl on the committed sample files: every error code with its line number, and the stats."""

from __future__ import annotations

import io
import json

import pytest

from tests.tunings.datasets.conftest import BAD_SAMPLES, DATA, GOOD_SAMPLES
from tunings.datasets import validate_jsonl
from tunings.datasets.tokens import estimate_example_tokens


def _validate(source, **limits):
    return validate_jsonl(source, max_line_bytes=limits.get("max_line_bytes", 1024), min_examples=limits.get("min", 10))


@pytest.mark.parametrize(
    ("name", "fmt"),
    GOOD_SAMPLES,
)
def test_it_accepts_every_good_sample(name, fmt):
    report = _validate(DATA / name)
    assert report.ok, report.errors
    assert report.format == fmt
    assert report.example_count == 12


@pytest.mark.parametrize(
    ("name", "code", "line"),
    BAD_SAMPLES,
)
def test_it_reports_each_bad_sample_with_its_code_and_line(name, code, line):
    report = _validate(DATA / name)
    assert report.error_count == 1, report.errors
    (error,) = report.errors
    assert error["code"] == code
    assert error["line"] == line
    if line is not None:
        assert error["message"].startswith(f"Line {line}")


def test_it_counts_all_errors_but_lists_at_most_max_errors():
    lines = [b"not json"] * 150
    report = validate_jsonl(io.BytesIO(b"\n".join(lines)), max_line_bytes=1024, min_examples=10, max_errors=100)
    assert report.error_count == 150
    assert len(report.errors) == 100
    assert [e["line"] for e in report.errors[:3]] == [1, 2, 3]


def test_it_skips_blank_lines_but_keeps_physical_line_numbers():
    good = (DATA / "good_openai_chat.jsonl").read_bytes().splitlines()
    body = b"\xef\xbb\xbf" + b"\r\n".join(good[:3]) + b"\r\n\r\n  \r\n" + b"\n".join([*good[3:], b"[]"]) + b"\n"
    report = _validate(io.BytesIO(body))
    assert report.example_count == 12
    assert [(e["line"], e["code"]) for e in report.errors] == [(15, "not_an_object")]


def test_it_drops_an_over_long_line_without_losing_the_next_line():
    good = (DATA / "good_prompt_completion.jsonl").read_bytes().splitlines()
    huge = b'{"prompt": "' + b"x" * 50_000 + b'", "completion": "y"}'
    body = b"\n".join([good[0], huge, *good[1:]])
    report = _validate(io.BytesIO(body), max_line_bytes=100)
    assert [(e["line"], e["code"]) for e in report.errors] == [(2, "line_too_long")]
    assert report.example_count == 12
    assert "49 KiB" in report.errors[0]["message"] or "KiB" in report.errors[0]["message"]


def test_it_accepts_a_line_of_exactly_the_limit():
    line = json.dumps({"prompt": "p", "completion": "c" * 60}).encode()
    report = validate_jsonl(io.BytesIO(line + b"\n"), max_line_bytes=len(line), min_examples=1)
    assert report.ok, report.errors
    report = validate_jsonl(io.BytesIO(line + b"\n"), max_line_bytes=len(line) - 1, min_examples=1)
    assert report.errors[0]["code"] == "line_too_long"


def test_it_decides_the_format_by_the_first_valid_line():
    lines = [
        json.dumps({"instruction": "broken"}),  # alpaca, but invalid: does not decide the format
        *[json.dumps({"prompt": f"p{i}", "completion": "c"}) for i in range(10)],
        json.dumps({"instruction": "i", "output": "o"}),
    ]
    report = _validate(io.BytesIO("\n".join(lines).encode()))
    assert report.format == "prompt_completion"
    assert [(e["line"], e["code"]) for e in report.errors] == [(1, "missing_field"), (12, "mixed_formats")]


def test_it_computes_stats_and_a_token_estimate():
    report = _validate(DATA / "good_openai_chat.jsonl")
    stats = report.stats.as_dict()
    records = [json.loads(line) for line in (DATA / "good_openai_chat.jsonl").read_text().splitlines()]
    # 4 of 12 examples carry a system message (i % 3 == 0).
    assert stats["role_counts"] == {"system": 4, "user": 12, "assistant": 12, "tool": 0}
    expected = [estimate_example_tokens(r["messages"]) for r in records]
    assert stats["token_estimate"] == sum(expected)
    assert stats["max_example_tokens"] == max(expected)
    assert stats["mean_example_tokens"] == round(sum(expected) / 12, 1)


def test_it_uses_a_given_tokenizer_for_the_estimate():
    report = validate_jsonl(
        DATA / "good_prompt_completion.jsonl", max_line_bytes=1024, min_examples=1, count_tokens=lambda s: 1
    )
    # 12 examples x 2 messages x (1 token + 4 template tokens)
    assert report.stats.token_estimate == 12 * 2 * 5


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _sharegpt_line(tools) -> str:
    return json.dumps(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}], "tools": tools}
    )


@pytest.mark.parametrize(
    "line",
    [
        # json.loads manages ~900 levels but rendering the tools into the prompt does not
        _sharegpt_line(_nested(900)),
        # a tools value written as a JSON string is parsed a second time
        _sharegpt_line("[" * 50_000 + "]" * 50_000),
        "[" * 100_000,
        '{"prompt": ' * 20_000 + '"p"' + "}" * 20_000,
    ],
    ids=["tools-list", "tools-json-string", "open-brackets", "nested-objects"],
)
def test_it_reports_deep_nesting_as_a_line_error(line):
    good = [_sharegpt_line([{"name": f"tool_{i}"}]) for i in range(10)]
    body = "\n".join([*good[:3], line, *good[3:]]).encode()
    report = validate_jsonl(io.BytesIO(body), max_line_bytes=1024 * 1024, min_examples=1)
    assert [(e["line"], e["code"]) for e in report.errors] == [(4, "nesting_too_deep")]
    assert report.example_count == 10


def test_it_accepts_ordinary_nesting_in_tool_schemas():
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"items": _nested(20)}}}}]
    report = validate_jsonl(io.BytesIO(_sharegpt_line(tools).encode()), max_line_bytes=1024 * 1024, min_examples=1)
    assert report.ok, report.errors


def test_it_keeps_a_line_separator_inside_a_string_and_strips_the_bom():
    # U+2028 / U+2029 / U+0085 are valid raw characters inside a JSON string; only "\n" ends a line.
    lines = [
        json.dumps({"prompt": f"first\u2028second {i}", "completion": "third\u2029fourth\x85fifth"}, ensure_ascii=False)
        for i in range(10)
    ]
    body = b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n"
    report = validate_jsonl(io.BytesIO(body), max_line_bytes=1024, min_examples=10)
    assert report.ok, report.errors
    assert report.example_count == 10
