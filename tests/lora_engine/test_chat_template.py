"""Chat formatting comes from the base tokenizer's own chat template, labels included.

Two real template families on the tiny tokenizer (their markers added as special
tokens, as the real tokenizers have them):
- Qwen3's: the final assistant turn is rendered with a `<think>` block, while the
  reasoning of earlier turns is removed from the history; what is learned is exactly
  the final turn as the template renders it.
- Llama 3's, with `{% generation %}` markers: a prefix-stable template, every assistant
  turn is learned, and the labels equal transformers' own `assistant_masks`.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from lora_engine.data import IGNORE_INDEX, encode_messages, load_examples
from lora_engine.errors import DataError

# Qwen3's template (Qwen/Qwen3-8B tokenizer_config.json) without its tool-calling branches.
QWEN3_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') \
and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in message.content %}
            {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
            {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]\
.lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + \
'\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
QWEN3_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Llama 3's layout, with the `{% generation %}` markers transformers uses for assistant masks.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}<|eot_id|>{% endgeneration %}"
    "{% else %}{{ m.content | trim }}<|eot_id|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CONVERSATION = [
    {"role": "system", "content": "You answer questions about the sky."},
    {"role": "user", "content": "Is the sky blue?"},
    {"role": "assistant", "content": "<think>\nThe user asks a yes/no question.\n</think>\n\nYes, on a clear day."},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "<think>\nRecall Rayleigh scattering.\n</think>\n\nSunlight scatters off air."},
]


def tokenizer_with(tiny_model_dir, template: str, markers: list[str]):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.add_tokens(markers, special_tokens=True)
    tokenizer.chat_template = template
    return tokenizer


def learned_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each maximal run of labelled positions."""
    spans, current = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


def test_it_learns_the_final_turn_exactly_as_a_reasoning_template_renders_it(tiny_model_dir):
    tokenizer = tokenizer_with(tiny_model_dir, QWEN3_TEMPLATE, QWEN3_TOKENS)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)

    enc = encode_messages(tokenizer, CONVERSATION, max_seq_len=512)

    # The template's own rendering is what the model reads: the first answer without its
    # reasoning (history), the last with its <think> block.
    assert enc.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert "The user asks" not in rendered and "Recall Rayleigh scattering." in rendered
    # Learned: exactly the final turn after the generation prompt, as rendered.
    final_turn = "<think>\nRecall Rayleigh scattering.\n</think>\n\nSunlight scatters off air.<|im_end|>"
    assert rendered.endswith("<|im_start|>assistant\n" + final_turn + "\n")
    assert learned_spans(tokenizer, enc.input_ids, enc.labels) == [final_turn]
    # The earlier answer is rendered differently once a later turn follows: context only.
    assert enc.context_turns == 1 and not enc.truncated


def test_it_learns_an_empty_think_block_the_template_adds_to_the_final_turn(tiny_model_dir):
    tokenizer = tokenizer_with(tiny_model_dir, QWEN3_TEMPLATE, QWEN3_TOKENS)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]

    enc = encode_messages(tokenizer, messages, max_seq_len=512)

    assert learned_spans(tokenizer, enc.input_ids, enc.labels) == ["<think>\n\n</think>\n\nHello.<|im_end|>"]


def test_it_reports_history_turns_kept_as_context(tiny_model_dir, tmp_path):
    tokenizer = tokenizer_with(tiny_model_dir, QWEN3_TEMPLATE, QWEN3_TOKENS)
    path = tmp_path / "train.jsonl"
    single = {"messages": CONVERSATION[:3]}
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps(single) + "\n", encoding="utf-8")

    ds = load_examples(path, tokenizer, max_seq_len=512)

    assert len(ds.examples) == 2 and ds.num_context_turns == 1
    (warning,) = ds.warnings(512, "train_file")
    assert warning.startswith("1 earlier assistant turns in train_file are context, not learned")


def test_it_labels_every_turn_of_a_prefix_stable_template_like_transformers_assistant_masks(tiny_model_dir):
    tokenizer = tokenizer_with(tiny_model_dir, LLAMA3_TEMPLATE, LLAMA3_TOKENS)
    plain = [{"role": m["role"], "content": m["content"].split("</think>")[-1].strip()} for m in CONVERSATION]

    enc = encode_messages(tokenizer, plain, max_seq_len=512)
    reference = tokenizer.apply_chat_template(plain, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)

    assert enc.input_ids == list(reference["input_ids"])
    assert [int(label != IGNORE_INDEX) for label in enc.labels] == list(reference["assistant_masks"])
    assert learned_spans(tokenizer, enc.input_ids, enc.labels) == [
        "Yes, on a clear day.<|eot_id|>",
        "Sunlight scatters off air.<|eot_id|>",
    ]
    assert enc.context_turns == 0


def test_it_refuses_a_template_that_does_not_render_the_final_turn_after_its_prompt(tiny_model_dir, tmp_path):
    # The generation prompt says "Answer:" but the rendered turn says "Reply:": no
    # prefix of the rendering is the prompt, so nothing can be labelled safely.
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}Reply: {{ m.content }}\n"
        "{% else %}{{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Answer: {% endif %}"
    )
    tokenizer = tokenizer_with(tiny_model_dir, template, [])
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "completion": "Hello."}) + "\n", encoding="utf-8")

    with pytest.raises(DataError) as err:
        load_examples(path, tokenizer, max_seq_len=64)

    assert err.value.param == "train_file:1" and "final assistant turn" in err.value.message
