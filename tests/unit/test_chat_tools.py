"""engine/chat/tools.py: the tool-call parser (whole and streamed) and tools / tool_choice checks."""

from __future__ import annotations

import json

import pytest

from engine.chat.tools import (
    FieldError,
    ToolCall,
    ToolCallFormat,
    ToolCallIssue,
    ToolCallParser,
    ToolChoice,
    parse_tool_calls,
    validate_tool_choice,
    validate_tools,
)
from engine.embedded import embedded_model_dir


def _ids(k: int) -> str:
    return f"call_{k}"


def _stream(pieces, fmt=ToolCallFormat(), names=None):
    parser = ToolCallParser(fmt, names, make_id=_ids)
    events = [e for p in pieces for e in parser.feed(p)] + parser.finish()
    content = "".join(v for k, v in events if k == "content")
    calls = [v for k, v in events if k == "tool_call"]
    issues = [v for k, v in events if k == "issue"]
    return content, calls, issues


GOOD = (
    'Let me look.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Köln", "days": [1, 2]}}</tool_call>\n'
    '<tool_call> {"name": "now", "arguments": {}} </tool_call>'
)


def test_good_calls_become_openai_tool_calls():
    answer = parse_tool_calls(GOOD, names=["get_weather", "now"], make_id=_ids)
    assert answer.content == "Let me look."
    assert answer.issues == []
    assert answer.openai_tool_calls() == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Köln", "days": [1, 2]}'},
        },
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert json.loads(answer.tool_calls[0].arguments) == {"city": "Köln", "days": [1, 2]}


def test_every_split_of_the_stream_parses_the_same():
    whole = _stream([GOOD])
    assert whole[1] and not whole[2]
    for cut in range(len(GOOD) + 1):
        assert _stream([GOOD[:cut], GOOD[cut:]]) == whole
    assert _stream(list(GOOD)) == whole


def test_content_is_released_unless_it_may_start_a_call():
    parser = ToolCallParser(make_id=_ids)
    assert parser.feed("Hello <tool") == [("content", "Hello ")]
    assert parser.feed("box> there") == [("content", "<toolbox> there")]
    assert parser.feed('<tool_call>{"name": ') == []
    assert parser.feed('"f"}</tool_call>!') == [
        ("tool_call", ToolCall("call_0", "f", "{}")),
        ("content", "!"),
    ]
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<tool_call>{not json}</tool_call>", "the call is not valid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "the call has no string 'name'"),
        (
            '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
            "names 'rm_rf', which is not among the tools",
        ),
        (
            '<tool_call>{"name": "now", "arguments": [1]}</tool_call>',
            "'arguments' must be a JSON object, got list",
        ),
        ("<tool_call>[1]</tool_call>", "a call must be a JSON object, got int"),
        ('<tool_call>{"name": "now", "argu', "never closed and is not complete JSON"),
    ],
)
def test_malformed_calls_are_reported_not_raised(text, message):
    for pieces in ([text], list(text)):
        content, calls, issues = _stream(
            ["before ", *pieces, "" if "never" in message else " after"], names=["now"]
        )
        assert calls == []
        assert len(issues) == 1 and message in issues[0].message
        assert issues[0].text.startswith("<tool_call>") and issues[0].text in text + "</tool_call>"
        assert content.startswith("before ")


def test_an_unclosed_call_with_complete_json_is_used():
    content, calls, issues = _stream(['<tool_call>{"name": "now", "arguments": {"a": 1}}'])
    assert (content, [c.name for c in calls], issues) == ("", ["now"], [])


def test_a_list_of_calls_in_one_block_and_a_bad_item():
    text = '<tool_call>[{"name": "a", "arguments": {}}, {"name": 3}, {"name": "b"}]</tool_call>'
    answer = parse_tool_calls(text, make_id=_ids)
    assert [(c.id, c.name, c.arguments) for c in answer.tool_calls] == [
        ("call_0", "a", "{}"),
        ("call_1", "b", "{}"),
    ]
    assert answer.issues == [ToolCallIssue(text, "the call has no string 'name'")]


def test_another_format_from_the_folder_config(tmp_path):
    assert ToolCallFormat.from_folder(embedded_model_dir()) == ToolCallFormat()
    config = {
        "eos_token": "</s>",
        "mellum_tool_call": {"start": "[TOOL_CALLS]", "end": "[/TOOL_CALLS]", "arguments_key": "parameters"},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    fmt = ToolCallFormat.from_folder(tmp_path)
    assert fmt == ToolCallFormat("[TOOL_CALLS]", "[/TOOL_CALLS]", "name", "parameters")
    text = "ok " + fmt.render("f", {"x": 1}) + " <tool_call>{}</tool_call>"
    answer = parse_tool_calls(text, fmt, make_id=_ids)
    assert answer.openai_tool_calls()[0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert answer.content == "ok  <tool_call>{}</tool_call>"  # the default markers are text here
    for bad, message in (
        ({"start": "x", "stop": "y"}, "keys among"),
        ({"start": ""}, r"\['start'\] must be non-empty"),
    ):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mellum_tool_call": bad}))
        with pytest.raises(ValueError, match=message):
            ToolCallFormat.from_folder(tmp_path)


# -- tools and tool_choice ------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "now"}},
]


def test_valid_tools_are_copied_with_defaults():
    out = validate_tools(TOOLS)
    assert out[0] == TOOLS[0] and out[0] is not TOOLS[0]
    assert out[1] == {
        "type": "function",
        "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
    }
    assert validate_tools(None) == []


@pytest.mark.parametrize(
    ("tools", "field", "message"),
    [
        ("x", "tools", "must be a list"),
        ([3], "tools[0]", "must be an object"),
        ([{"type": "retrieval"}], "tools[0].type", "expected 'function'"),
        ([{"type": "function"}], "tools[0].function", "must be an object"),
        ([{"function": {"name": "has space"}}], "tools[0].function.name", "'has space'; expected 1-64"),
        (
            [*TOOLS, {"function": {"name": "now"}}],
            "tools[2].function.name",
            r"already the name of tools\[1\]",
        ),
        (
            [{"function": {"name": "f", "description": 1}}],
            "tools[0].function.description",
            "must be a string",
        ),
        (
            [{"function": {"name": "f", "parameters": []}}],
            "tools[0].function.parameters",
            "JSON Schema object",
        ),
        (
            [{"function": {"name": "f", "parameters": {"type": "array"}}}],
            "tools[0].function.parameters.type",
            "'array'",
        ),
        (
            [{"function": {"name": "f", "parameters": {"default": {1, 2}}}}],
            "tools[0].function.parameters",
            "not JSON data",
        ),
        ([{"function": {"name": "f", "strict": "yes"}}], "tools[0].function.strict", "boolean"),
    ],
)
def test_bad_tools_name_the_field(tools, field, message):
    with pytest.raises(FieldError, match=message) as err:
        validate_tools(tools)
    assert err.value.field == field and str(err.value).startswith(field + ": ")


def test_tool_choice():
    tools = validate_tools(TOOLS)
    assert validate_tool_choice(None, tools) == ToolChoice("auto")
    assert validate_tool_choice(None, []) == ToolChoice("none")
    assert validate_tool_choice("required", tools).forces_call
    assert not validate_tool_choice("auto", tools).forces_call
    named = validate_tool_choice({"type": "function", "function": {"name": "now"}}, tools)
    assert named == ToolChoice("function", "now") and named.forces_call
    cases = [
        ("always", "tool_choice", "expected 'none', 'auto', 'required'"),
        (
            {"type": "function", "function": {"name": "nope"}},
            "tool_choice.function.name",
            "'nope' is not among",
        ),
        ({"type": "function", "name": "now"}, "tool_choice", "must be {'type': 'function'"),
        (3, "tool_choice", "must be a string or an object"),
    ]
    for value, field, message in cases:
        with pytest.raises(FieldError, match=message) as err:
            validate_tool_choice(value, tools)
        assert err.value.field == field
    with pytest.raises(FieldError, match="'required' but no tools"):
        validate_tool_choice("required", [])
