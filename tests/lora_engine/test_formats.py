"""Pure unit tests for lora_engine.formats (no database, no HTTP)."""

from __future__ import annotations

import json

import pytest

from lora_engine.formats import TOOLS_HEADER, FormatError, detect_format, to_messages


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "openai_chat"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
        ({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "chatglm3"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ],
)
def test_it_detects_every_format(record, fmt):
    assert detect_format(record) == fmt
    messages = to_messages(record)
    assert messages[-1]["role"] == "assistant"
    assert all(set(m) == {"role", "content"} for m in messages)


def test_it_maps_sharegpt_roles_to_canonical_ones():
    record = {
        "system": "top system",
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": '{"name": "f"}'},
            {"from": "observation", "value": "result"},
            {"from": "tool", "value": "tool says"},
            {"from": "gpt", "value": "a"},
        ],
    }
    assert [m["role"] for m in to_messages(record)] == ["system", "user", "assistant", "tool", "tool", "assistant"]


def test_it_maps_chatglm3_observation_and_tool_call_turns():
    tools = [{"name": "get_weather", "parameters": {}}]
    record = {
        "conversations": [
            {"role": "system", "content": "sys", "tools": tools},
            {"role": "user", "content": "weather?"},
            {"role": "tool", "name": "get_weather", "parameters": {"city": "Oslo"}, "observation": "rain"},
            {"role": "observation", "content": "more rain"},
            {"role": "assistant", "content": "It rains."},
        ]
    }
    messages = to_messages(record)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert json.loads(messages[2]["content"]) == {"name": "get_weather", "parameters": {"city": "Oslo"}}
    assert messages[3]["content"] == "rain"
    # Tool definitions are rendered into the system message, after the original text.
    assert messages[0]["content"] == f'sys\n\n{TOOLS_HEADER}\n[{{"name":"get_weather","parameters":{{}}}}]'


def test_it_inserts_a_system_message_for_tools_when_there_is_none():
    record = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    messages = to_messages(record)
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith(TOOLS_HEADER)
    assert len(messages) == 3


def test_it_renders_an_assistant_tool_call_without_content():
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ]
    }
    messages = to_messages(record)
    assert json.loads(messages[1]["content"]) == calls


def test_it_joins_alpaca_instruction_and_input_and_keeps_history():
    record = {"instruction": "Translate", "input": "hola", "output": "hello", "history": [["hi", "hey"]]}
    assert to_messages(record) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"},
    ]


def test_it_joins_openai_text_content_parts():
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
        ]
    }
    assert to_messages(record)[0]["content"] == "ab"


@pytest.mark.parametrize(
    ("record", "code", "param"),
    [
        ([1, 2], "not_an_object", None),
        ("text", "not_an_object", None),
        ({"question": "q", "answer": "a"}, "unknown_format", None),
        ({"messages": [{"role": "bot", "content": "x"}]}, "unknown_role", "messages[0].role"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown_role", "conversations[0].from"),
        ({"conversations": [{"role": "robot", "content": "x"}]}, "unknown_role", "conversations[0].role"),
        ({"messages": [{"role": "user", "content": "q"}]}, "missing_assistant_turn", None),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            "empty_content",
            "messages[1].content",
        ),
        ({"messages": []}, "empty_content", "messages"),
        ({"conversations": []}, "empty_content", "conversations"),
        ({"instruction": "i"}, "missing_field", "output"),
        ({"prompt": "p"}, "missing_field", "completion"),
        ({"messages": [{"content": "q"}]}, "missing_field", "messages[0].role"),
        ({"messages": "q"}, "invalid_type", "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "invalid_type", "messages[0].content"),
        ({"conversations": "x"}, "invalid_type", "conversations"),
        ({"instruction": "i", "input": 3, "output": "o"}, "invalid_type", "input"),
    ],
)
def test_it_raises_a_stable_code_and_param(record, code, param):
    with pytest.raises(FormatError) as info:
        to_messages(record)
    assert info.value.code == code
    assert info.value.param == param
    assert info.value.message


def test_it_reports_mixed_formats_against_the_file_format():
    with pytest.raises(FormatError) as info:
        to_messages({"prompt": "p", "completion": "c"}, "openai_chat")
    assert info.value.code == "mixed_formats"
    assert "prompt_completion" in info.value.message


def test_it_imports_no_django():
    import subprocess
    import sys

    code = (
        "import sys, lora_engine.formats; "
        "print(any(m.split('.')[0] in {'django', 'rest_framework', 'torch'} for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_it_bounds_json_nesting_depth_with_a_stable_code():
    from lora_engine.formats import MAX_JSON_DEPTH, NESTING_TOO_DEEP, loads_json

    assert loads_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    for text in ("[" * 100_000, '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)):
        with pytest.raises(FormatError) as err:
            loads_json(text)
        assert err.value.code == NESTING_TOO_DEEP


def test_it_does_not_count_brackets_inside_strings():
    from lora_engine.formats import loads_json

    text = json.dumps({"a": "[" * 1000, "b": '\\"' + "{" * 1000, "c": ["]" * 10, "x"]})
    assert loads_json(text) == json.loads(text)


def test_it_splits_lines_on_newline_only_and_strips_the_bom():
    import io

    from lora_engine.formats import iter_lines

    body = "\ufeff" + '{"a": "x\u2028y"}\r\n\r\n{"b": "z\u2029\x85w"}'
    lines = list(iter_lines(io.BytesIO(body.encode())))
    assert [(n, c) for n, c, _ in lines] == [
        (1, '{"a": "x\u2028y"}'.encode()),
        (2, b""),
        (3, '{"b": "z\u2029\x85w"}'.encode()),
    ]
