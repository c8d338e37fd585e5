"""engine/chat/template.py: loading a folder's template, rendering in the sandbox, encoding.

The embedded model's template is checked against its old tokenizer_config.json layout (plain
conversations must render as before), against transformers' renderer (the oracle), and against
the tool-call parser (a call the template renders parses back to the same call).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.chat.template import (
    EMBEDDED_TEMPLATE,
    ChatLimits,
    ChatTemplate,
    ChatTemplateError,
    normalize_messages,
)
from engine.chat.tools import parse_tool_calls
from engine.embedded import embedded_model_dir
from engine.tokenizer import Tokenizer

EMBEDDED = embedded_model_dir()
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does <|end|> mean?"},
    {"role": "assistant", "content": "A stop token."},
    {"role": "user", "content": "Thanks"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city, «today»",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]
TOOL_TURNS = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "Paris and Köln?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Köln"}},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "c2", "content": "rain"},
]


@pytest.fixture(scope="module")
def embedded() -> ChatTemplate:
    return ChatTemplate.from_folder(EMBEDDED)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_folder(EMBEDDED)


def _folder(tmp_path: Path, config: dict | None, template: str | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if template is not None:
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return folder


# -- the embedded model's template ----------------------------------------------------------------


def test_embedded_folder_ships_the_module_template(embedded):
    assert (EMBEDDED / "chat_template.jinja").read_text(encoding="utf-8") == EMBEDDED_TEMPLATE
    assert embedded.origin == str(EMBEDDED / "chat_template.jinja")
    assert embedded.variables["eos_token"] == "<|endoftext|>"


def test_plain_conversations_render_as_the_old_config_template(embedded):
    expected = (  # what tokenizer_config.json's chat_template renders
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat does <|end|> mean?<|end|>\n"
        "<|assistant|>\nA stop token.<|end|>\n<|user|>\nThanks<|end|>\n"
    )
    assert embedded.render(MESSAGES, add_generation_prompt=False) == expected
    assert embedded.render(MESSAGES) == expected + "<|assistant|>\n"


def test_tools_calls_and_results_render(embedded):
    text = embedded.render(TOOL_TURNS, tools=TOOLS)
    system, user, assistant, results, prompt = text.split("<|end|>\n")
    assert system.startswith("<|system|>\nYou check the weather.\n\n# Tools\n")
    for tool in TOOLS:  # every schema as one JSON line, non-ASCII kept
        assert "\n" + json.dumps(tool, ensure_ascii=False) + "\n" in system
    assert (
        '<tool_call>{"name": <function name>, "arguments": <arguments as a JSON object>}</tool_call>'
        in system
    )
    assert user == "<|user|>\nParis and Köln?"
    assert assistant == (
        '<|assistant|>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Köln"}}</tool_call>'
    )
    assert results == "<|user|>\n<tool_response>sunny</tool_response>\n<tool_response>rain</tool_response>"
    assert prompt == "<|assistant|>\n"
    assert text.count("You check the weather.") == 1  # the system turn is merged with the tools


def test_rendered_calls_parse_back_to_the_calls(embedded):
    text = embedded.render(TOOL_TURNS, add_generation_prompt=False)
    answer = text.split("<|assistant|>\n")[1].split("<|end|>")[0]
    parsed = parse_tool_calls(answer, names=["get_weather"], make_id=lambda k: f"c{k + 1}")
    assert parsed.issues == [] and parsed.content == ""
    assert parsed.openai_tool_calls() == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "c2",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Köln"}'},
        },
    ]


def test_tools_without_a_system_message_get_their_own_system_turn(embedded):
    text = embedded.render(MESSAGES[1:2], tools=TOOLS[1:])
    assert text.startswith("<|system|>\n# Tools\n") and "<|user|>\nWhat does" in text


def test_transformers_renders_the_embedded_template_the_same(tmp_path, embedded):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(EMBEDDED / name, folder / name)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    turns = normalize_messages(TOOL_TURNS)  # transformers wants arguments as objects
    for messages, tools in ((MESSAGES, None), (turns, TOOLS), (turns[1:], TOOLS)):
        ours = embedded.render(messages, tools=tools)
        assert (
            hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True) == ours
        )


# -- loading a folder -----------------------------------------------------------------------------


def test_a_folder_without_a_template_names_both_places(tmp_path):
    folder = _folder(tmp_path, {"eos_token": "</s>"})
    with pytest.raises(ChatTemplateError) as err:
        ChatTemplate.from_folder(folder)
    assert str(err.value) == (
        f"no chat template in {folder}/tokenizer_config.json (chat_template) or {folder}/chat_template.jinja"
    )
    shutil.rmtree(folder)
    with pytest.raises(ChatTemplateError, match="no chat template in .*tokenizer_config.json"):
        ChatTemplate.from_folder(_folder(tmp_path, None))


def test_the_jinja_file_wins_over_the_config_and_tool_use_is_picked_with_tools(tmp_path):
    config = {
        "bos_token": {"content": "<s>", "special": True},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": "config-default"},
            {"name": "tool_use", "template": "{{ bos_token }}tools={{ tools | length }}{{ eos_token }}"},
        ],
    }
    chat = ChatTemplate.from_folder(_folder(tmp_path, config, template="file {{ messages[0].content }}"))
    assert chat.render([{"role": "user", "content": "hi"}]) == "file hi"
    assert chat.render([{"role": "user", "content": "hi"}], tools=TOOLS) == "<s>tools=2</s>"


def test_list_form_without_a_default_is_refused(tmp_path):
    config = {"chat_template": [{"name": "tool_use", "template": "x"}]}
    with pytest.raises(ChatTemplateError, match=r"names chat templates \['tool_use'\] but none is 'default'"):
        ChatTemplate.from_folder(_folder(tmp_path, config))


def test_bad_config_and_bad_jinja_name_the_file(tmp_path):
    folder = _folder(tmp_path, None)
    (folder / "tokenizer_config.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ChatTemplateError, match="tokenizer_config.json cannot be read as JSON"):
        ChatTemplate.from_folder(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": 7}), encoding="utf-8")
    with pytest.raises(ChatTemplateError, match="chat_template must be a string or a list"):
        ChatTemplate.from_folder(folder)
    (folder / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (folder / "chat_template.jinja").write_text("line one\n{% if %}", encoding="utf-8")
    with pytest.raises(
        ChatTemplateError, match=r"chat_template.jinja: chat template 'default' is not valid Jinja \(line 2\)"
    ):
        ChatTemplate.from_folder(folder)


# -- rendering ------------------------------------------------------------------------------------


def test_a_raising_template_returns_its_message():
    chat = ChatTemplate.from_source(
        "{{ raise_exception('System role not supported by this model') }}", "t.jinja"
    )
    with pytest.raises(
        ChatTemplateError, match="chat template 'default' of t.jinja raised: System role not supported"
    ):
        chat.render(MESSAGES)
    with pytest.raises(ChatTemplateError, match="unknown chat role tool"):  # raised by the embedded template
        ChatTemplate.from_source(EMBEDDED_TEMPLATE.replace("'tool'", "'tool-result'")).render(TOOL_TURNS[3:4])
    with pytest.raises(ChatTemplateError, match="failed: ZeroDivisionError"):
        ChatTemplate.from_source("{{ 1 // 0 }}").render(MESSAGES)


def test_the_sandbox_is_immutable_and_closed():
    for source in (
        "{{ messages.append(1) }}",
        "{{ ''.__class__.__mro__ }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ messages[0].update({'role': 'x'}) }}",
    ):
        with pytest.raises(ChatTemplateError, match="raised"):
            ChatTemplate.from_source(source).render(MESSAGES)


def test_transformers_globals_and_filters():
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}|{{ enable_thinking }}|{{ {'k': 'é'} | tojson(indent=1) }}"
    )
    out = ChatTemplate.from_source(source).render(
        [{"role": "user", "content": "é<b>"}] * 2, variables={"enable_thinking": False}
    )
    assert out == '{"role": "user", "content": "é<b>"}|4|False|{\n "k": "é"\n}'
    with pytest.raises(ChatTemplateError, match="reserved"):
        ChatTemplate.from_source("x").render(MESSAGES, variables={"messages": []})


def test_messages_are_checked_and_normalised():
    out = normalize_messages(
        [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": None,
                "reasoning": "hmm",
                "tool_calls": [{"function": {"name": "f"}}],
            },
        ]
    )
    assert out[0]["content"] == "ab"
    assert out[1] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "hmm",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}],
    }
    cases = [
        ([], "messages is empty"),
        (
            [{"role": "user", "content": "x"}, {"role": "robot", "content": "x"}],
            r"messages\[1\].role is 'robot'; expected",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url"}]}],
            r"messages\[0\].content\[0\] must be a text part",
        ),
        ([{"role": "user", "content": 3}], r"messages\[0\].content must be a string"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}],
            r"tool_calls\[0\].function.arguments is not valid JSON",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
            "must be a JSON object",
        ),
        (
            [{"role": "user", "content": "x", "tool_calls": []}],
            "tool_calls must be a list on an assistant message",
        ),
        (
            [{"role": "user", "content": "x", "meta": {1, 2}}],
            r"messages\[0\].meta is a set; expected JSON data",
        ),
    ]
    for messages, message in cases:
        with pytest.raises(ChatTemplateError, match=message):
            normalize_messages(messages)


def test_sizes_are_bounded():
    limits = ChatLimits(max_messages=3, max_input_chars=100, max_rendered_chars=50)
    chat = ChatTemplate.from_source(
        "{% for i in range(1000) %}{{ messages[0].content }}{% endfor %}", limits=limits
    )
    with pytest.raises(ChatTemplateError, match="4 messages is more than the limit of 3"):
        chat.render(MESSAGES)
    with pytest.raises(ChatTemplateError, match=r"messages\[1\].content goes past the character limit"):
        chat.render([{"role": "user", "content": "x" * 60}] * 2)
    with pytest.raises(ChatTemplateError, match="longer than the limit of 50 characters"):
        chat.render([{"role": "user", "content": "xy"}])
    with pytest.raises(ValueError, match="max_messages=0"):
        ChatLimits(max_messages=0)


# -- encoding -------------------------------------------------------------------------------------


def test_encode_is_the_tokenized_rendering(embedded, tok):
    plain = [MESSAGES[0], {"role": "user", "content": "def f(x):\n    return x"}]
    assert embedded.encode(tok, plain) == tok.encode(embedded.render(plain), allow_special=True)
    assert embedded.encode(tok, TOOL_TURNS, tools=TOOLS) == tok.encode(
        embedded.render(TOOL_TURNS, tools=TOOLS), allow_special=True
    )


def test_special_token_text_from_messages_and_tools_stays_text(embedded, tok):
    end = tok.token_to_id("<|end|>")
    turns = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"<|end|>": "a<|system|>b"}}}],
        },
    ]
    tools = [{"type": "function", "function": {"name": "f", "description": "ends with <|end|>"}}]
    ids = embedded.encode(tok, turns, tools=tools, add_generation_prompt=False)
    assert tok.decode(ids) == embedded.render(turns, tools=tools, add_generation_prompt=False)
    assert ids.count(end) == len(turns)  # the template's own: system+tools turn, then one per message
    assert tok.token_to_id("<|system|>") in ids and ids.count(tok.token_to_id("<|system|>")) == 1
