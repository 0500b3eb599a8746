"""Dataset formats: detect a JSONL record's format and turn it into canonical chat messages.

Pure Python, no Django, no torch: the upload validator (Django side) and the engine's data
pipeline (`lora_engine.data`) share this module, so a file that passes upload validation is
read the same way at training time.

Supported formats (one JSON object per line):

- ``openai_chat``: ``{"messages": [{"role": "system|user|assistant|tool", "content": ...}]}``
- ``alpaca``: ``{"instruction": ..., "input": ..., "output": ...}`` (``input``, ``system``,
  ``history`` optional)
- ``sharegpt``: ``{"conversations": [{"from": "system|human|gpt|tool|function_call|observation",
  "value": ...}]}`` (top-level ``system`` and ``tools`` optional)
- ``chatglm3``: ``{"conversations": [{"role": "system|user|assistant|tool|observation",
  "content": ..., "tools"?: [...]}]}``
- ``prompt_completion``: ``{"prompt": ..., "completion": ...}``

The canonical form is a list of ``{"role": "system|user|assistant|tool", "content": str}``.
Tool *definitions* (a ``tools`` list) are rendered into the system message content, after
``TOOLS_HEADER``, as compact JSON: chat templates of most base models only take string
contents, so keeping them inside the system turn trains the model on the same text it will
see at inference time. A system message is inserted first when the record has none.

Every problem raises ``FormatError(code, message, param)`` with a stable ``code`` (see
``ERROR_CODES``) and ``param`` naming the offending field (``messages[2].role``).

Reading the file is shared too: ``iter_lines`` is the one line splitter and ``loads_json``
the one line parser (with a bound on nesting depth) for both sides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import IO, Any

OPENAI_CHAT = "openai_chat"
ALPACA = "alpaca"
SHAREGPT = "sharegpt"
CHATGLM3 = "chatglm3"
PROMPT_COMPLETION = "prompt_completion"
FORMATS = (OPENAI_CHAT, ALPACA, SHAREGPT, CHATGLM3, PROMPT_COMPLETION)

CANONICAL_ROLES = ("system", "user", "assistant", "tool")

# Error codes raised by this module (the file-level ones live in tunings.datasets).
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_FORMAT = "unknown_format"
MIXED_FORMATS = "mixed_formats"
UNKNOWN_ROLE = "unknown_role"
MISSING_ASSISTANT_TURN = "missing_assistant_turn"
EMPTY_CONTENT = "empty_content"
MISSING_FIELD = "missing_field"
INVALID_TYPE = "invalid_type"
NESTING_TOO_DEEP = "nesting_too_deep"
ERROR_CODES = (
    NOT_AN_OBJECT,
    UNKNOWN_FORMAT,
    MIXED_FORMATS,
    UNKNOWN_ROLE,
    MISSING_ASSISTANT_TURN,
    EMPTY_CONTENT,
    MISSING_FIELD,
    INVALID_TYPE,
    NESTING_TOO_DEEP,
)

# JSON nested deeper than this is refused before ``json.loads`` sees it. CPython's decoder
# (and the ``json.dumps`` that renders tools into the prompt) recurse once per level and
# raise RecursionError near 1,000 levels: a line of "[[[[" would crash the reader instead of
# being reported. Real records (chat turns, tool JSON schemas) stay far below this.
MAX_JSON_DEPTH = 64

UTF8_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 64 * 1024
# A JSON string. Unrolled-loop form: each character has one way to match, so an
# unterminated string fails in linear time.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")
_PAIR_PASSES = 8
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}

TOOLS_HEADER = "Available tools (JSON):"

# sharegpt "from" → canonical role. "user"/"assistant" are accepted too: several
# exporters write them instead of human/gpt.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
}
# ChatGLM3 role → canonical role ("tool" turns are special-cased, see _chatglm3).
CHATGLM3_ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "observation": "tool",
    "tool": "tool",
}


class FormatError(ValueError):
    """A record that cannot be read: stable ``code``, human ``message``, offending ``param``."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.param})" if self.param else "")


def iter_lines(stream: IO[bytes], max_line_bytes: int | None = None) -> Iterator[tuple[int, bytes | None, int]]:
    """The one JSONL line reader: yield ``(line_number, content, size)`` per physical line.

    Lines end at ``\\n`` only (a trailing ``\\r`` is dropped): U+2028, U+2029 and U+0085
    are valid raw characters inside a JSON string, and ``str.splitlines()`` would cut a record
    there. A UTF-8 byte-order mark at the start of the file is dropped. Every physical line is
    numbered from 1, blank ones too.

    Args:
        stream: a binary file object.
        max_line_bytes: longest line to return (bytes, without the line ending); a longer
            line yields ``content=None`` and is read and dropped in chunks, so memory stays
            bounded. None: no limit.
    """
    number = 0
    limit = max_line_bytes + 2 if max_line_bytes is not None else -1  # + room for "\r\n"
    while True:
        # The first line may carry a BOM on top of the limit.
        read_limit = limit + len(UTF8_BOM) if number == 0 and limit > 0 else limit
        chunk = stream.readline(read_limit)
        if not chunk:
            return
        number += 1
        complete = limit < 0 or chunk.endswith(b"\n") or len(chunk) < read_limit
        if number == 1 and chunk.startswith(UTF8_BOM):
            chunk = chunk[len(UTF8_BOM) :]
        if complete:
            content = chunk[:-1] if chunk.endswith(b"\n") else chunk
            content = content[:-1] if content.endswith(b"\r") else content
            too_long = max_line_bytes is not None and len(content) > max_line_bytes
            yield number, (None if too_long else content), len(content)
            continue
        size = len(chunk)
        while True:
            more = stream.readline(_SKIP_CHUNK)
            size += len(more)
            if not more or more.endswith(b"\n"):
                break
        yield number, None, size


def json_too_deep(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``max_depth``, without recursing.

    Brackets inside strings do not count. Linear in the text, and every step but the last
    runs in C (``str.count``, ``re.sub``); measured at 2-5x a ``json.loads`` of the same text
    on bracket-heavy lines, nothing on lines with few brackets. Malformed text is not judged
    here: ``json.loads`` reports it (and stops before nesting deeper than this scan saw).
    """
    # Fewer openers than the limit cannot nest deeper than it.
    if text.count("[") + text.count("{") <= max_depth:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    # Each pass deletes the innermost pairs, one level: typical shallow JSON empties in a few
    # passes. The cap keeps the worst case linear.
    rest = brackets
    for _ in range(min(_PAIR_PASSES, max_depth)):
        rest, removed = _EMPTY_PAIR.subn("", rest)
        if not rest:
            return False
        if not removed:
            break
    # Deep (or unbalanced): the exact depth is the largest prefix sum of +1/-1 steps.
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > max_depth


def loads_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` instead of recursing into it.

    Raises:
        FormatError: ``nesting_too_deep``.
        json.JSONDecodeError: the text is not JSON.
    """
    if json_too_deep(text, max_depth):
        raise FormatError(NESTING_TOO_DEEP, f"JSON is nested deeper than {max_depth} levels")
    return json.loads(text)


def detect_format(record: Any) -> str:
    """Name the format of one record by its keys.

    Precedence: ``messages`` → openai_chat; ``conversations`` → sharegpt (turns carry
    ``from``/``value``) or chatglm3 (turns carry ``role``/``content``); ``instruction`` or
    ``output`` → alpaca; ``prompt`` or ``completion`` → prompt_completion.

    Raises:
        FormatError: ``not_an_object``, ``unknown_format``, ``invalid_type`` / ``empty_content``
            for a ``conversations`` value whose turns cannot tell the two formats apart.
    """
    if not isinstance(record, dict):
        raise FormatError(NOT_AN_OBJECT, f"each line must be a JSON object, got {_type_name(record)}")
    if "messages" in record:
        return OPENAI_CHAT
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise FormatError(INVALID_TYPE, f"conversations must be a list, got {_type_name(turns)}", "conversations")
        for turn in turns:
            if isinstance(turn, dict):
                if "from" in turn or "value" in turn:
                    return SHAREGPT
                if "role" in turn or "content" in turn:
                    return CHATGLM3
        if not turns:
            raise FormatError(EMPTY_CONTENT, "conversations is empty", "conversations")
        raise FormatError(
            UNKNOWN_FORMAT,
            "conversations turns need either from/value (sharegpt) or role/content (ChatGLM3) keys",
            "conversations",
        )
    if "instruction" in record or "output" in record:
        return ALPACA
    if "prompt" in record or "completion" in record:
        return PROMPT_COMPLETION
    keys = ", ".join(sorted(record)[:8]) or "none"
    raise FormatError(
        UNKNOWN_FORMAT,
        "unknown format: expected one of messages, conversations, instruction/output or "
        f"prompt/completion keys (found: {keys})",
    )


def to_messages(record: Any, fmt: str | None = None) -> list[dict[str, str]]:
    """Turn one record into canonical ``[{"role", "content"}]`` messages.

    Args:
        record: the parsed JSON line.
        fmt: the file's format (decided by its first valid line). When given and the
            record looks like another format, ``mixed_formats`` is raised.

    Returns:
        Messages with roles in ``CANONICAL_ROLES`` and non-empty string contents; at least
        one is an assistant message.

    Raises:
        FormatError: with one of ``ERROR_CODES``.
    """
    detected = detect_format(record)
    if fmt is not None:
        if fmt not in FORMATS:
            raise FormatError(UNKNOWN_FORMAT, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        if detected != fmt:
            raise FormatError(
                MIXED_FORMATS, f"this line is {detected} but the file is {fmt} (decided by its first valid line)"
            )
    messages, tools = _CONVERTERS[detected](record)
    if tools:
        messages = _with_tools(messages, tools)
    if not any(m["role"] == "assistant" for m in messages):
        raise FormatError(MISSING_ASSISTANT_TURN, "the example has no assistant turn to learn from")
    return messages


# --- per-format converters: record -> (messages, tool definitions) ---------------------------


def _openai_chat(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[Any]]:
    turns = _require_list(record, "messages")
    messages = []
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise FormatError(INVALID_TYPE, f"{where} must be an object, got {_type_name(turn)}", where)
        role = _require_str(turn, "role", where)
        if role not in CANONICAL_ROLES:
            raise FormatError(
                UNKNOWN_ROLE, f"unknown role {role!r}; expected one of {', '.join(CANONICAL_ROLES)}", f"{where}.role"
            )
        calls = turn.get("tool_calls") or turn.get("function_call")
        if role == "assistant" and turn.get("content") in (None, "") and calls:
            # An assistant turn that only calls tools: the call itself is what it says.
            content = json.dumps(calls, ensure_ascii=False, separators=(",", ":"))
        else:
            content = _content(turn, "content", where)
        messages.append({"role": role, "content": content})
    return messages, _tools(record, "tools")


def _alpaca(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[Any]]:
    instruction = _content(record, "instruction", None)
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FormatError(INVALID_TYPE, f"input must be a string, got {_type_name(extra)}", "input")
    output = _content(record, "output", None)
    messages = []
    if record.get("system") not in (None, ""):
        messages.append({"role": "system", "content": _content(record, "system", None)})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise FormatError(
            INVALID_TYPE, f"history must be a list of [prompt, response] pairs, got {_type_name(history)}", "history"
        )
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise FormatError(INVALID_TYPE, "history items must be [prompt, response] string pairs", f"history[{i}]")
        if not pair[0].strip() or not pair[1].strip():
            raise FormatError(EMPTY_CONTENT, "history turn is empty", f"history[{i}]")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return messages, []


def _sharegpt(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[Any]]:
    turns = _require_list(record, "conversations")
    messages = []
    if record.get("system") not in (None, ""):
        messages.append({"role": "system", "content": _content(record, "system", None)})
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise FormatError(INVALID_TYPE, f"{where} must be an object, got {_type_name(turn)}", where)
        sender = _require_str(turn, "from", where)
        if sender not in SHAREGPT_ROLES:
            raise FormatError(
                UNKNOWN_ROLE,
                f"unknown from {sender!r}; expected one of {', '.join(SHAREGPT_ROLES)}",
                f"{where}.from",
            )
        messages.append({"role": SHAREGPT_ROLES[sender], "content": _content(turn, "value", where)})
    return messages, _tools(record, "tools")


def _chatglm3(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[Any]]:
    turns = _require_list(record, "conversations")
    messages: list[dict[str, str]] = []
    tools: list[Any] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise FormatError(INVALID_TYPE, f"{where} must be an object, got {_type_name(turn)}", where)
        role = _require_str(turn, "role", where)
        if role not in CHATGLM3_ROLES:
            raise FormatError(
                UNKNOWN_ROLE, f"unknown role {role!r}; expected one of {', '.join(CHATGLM3_ROLES)}", f"{where}.role"
            )
        tools += _tools(turn, "tools", where)
        if role == "tool" and "name" in turn:
            # ChatGLM3 fine-tune style: a "tool" turn is the assistant's call (name +
            # parameters) plus, optionally, the observation it returned.
            name = _require_str(turn, "name", where)
            call = {"name": name, "parameters": turn.get("parameters", {})}
            messages.append({"role": "assistant", "content": json.dumps(call, ensure_ascii=False)})
            if "observation" in turn:
                messages.append({"role": "tool", "content": _content(turn, "observation", where)})
            continue
        messages.append({"role": CHATGLM3_ROLES[role], "content": _content(turn, "content", where)})
    return messages, tools


def _prompt_completion(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[Any]]:
    prompt = _content(record, "prompt", None)
    completion = _content(record, "completion", None)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], []


_CONVERTERS = {
    OPENAI_CHAT: _openai_chat,
    ALPACA: _alpaca,
    SHAREGPT: _sharegpt,
    CHATGLM3: _chatglm3,
    PROMPT_COMPLETION: _prompt_completion,
}


# --- helpers --------------------------------------------------------------------------------


def _with_tools(messages: list[dict[str, str]], tools: list[Any]) -> list[dict[str, str]]:
    """Render tool definitions into the (first) system message, inserting one if needed."""
    block = f"{TOOLS_HEADER}\n{json.dumps(tools, ensure_ascii=False, separators=(',', ':'))}"
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def _tools(obj: dict[str, Any], key: str, where: str | None = None) -> list[Any]:
    """A tools list; sharegpt exporters often store it as a JSON string, which we accept."""
    param = f"{where}.{key}" if where else key
    value = obj.get(key)
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = loads_json(value)
        except FormatError as exc:
            raise FormatError(exc.code, f"{key} {exc.message}", param) from None
        except ValueError:
            raise FormatError(INVALID_TYPE, f"{key} must be a list (or a JSON string of one)", param) from None
    if not isinstance(value, list):
        raise FormatError(INVALID_TYPE, f"{key} must be a list, got {_type_name(value)}", param)
    return value


def _require_list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        raise FormatError(MISSING_FIELD, f"missing field {key!r}", key)
    if not isinstance(value, list):
        raise FormatError(INVALID_TYPE, f"{key} must be a list, got {_type_name(value)}", key)
    if not value:
        raise FormatError(EMPTY_CONTENT, f"{key} is empty", key)
    return value


def _require_str(obj: dict[str, Any], key: str, where: str | None) -> str:
    param = f"{where}.{key}" if where else key
    if key not in obj or obj[key] is None:
        raise FormatError(MISSING_FIELD, f"missing field {param!r}", param)
    value = obj[key]
    if not isinstance(value, str):
        raise FormatError(INVALID_TYPE, f"{param} must be a string, got {_type_name(value)}", param)
    return value


def _content(obj: dict[str, Any], key: str, where: str | None) -> str:
    """A non-empty text content. OpenAI-style content parts (``[{"type": "text", ...}]``) are joined."""
    param = f"{where}.{key}" if where else key
    if key not in obj or obj[key] is None:
        raise FormatError(MISSING_FIELD, f"missing field {param!r}", param)
    value = obj[key]
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        parts = [p.get("text") for p in value]
        if not all(isinstance(p, str) for p in parts):
            raise FormatError(INVALID_TYPE, f"{param} text parts must carry a string 'text'", param)
        value = "".join(parts)
    if not isinstance(value, str):
        raise FormatError(INVALID_TYPE, f"{param} must be a string, got {_type_name(value)}", param)
    if not value.strip():
        raise FormatError(EMPTY_CONTENT, f"{param} is empty", param)
    return value


def _type_name(value: Any) -> str:
    """JSON type names, since users write JSON, not Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
