"""engine/chat/constrain.py on the embedded model (ONNX Runtime backend, no torch).

- 240 sampled generations (temperature 1.0, several seeds) over five JSON schemas and forced tool
  calls: every one must parse and validate, and at every step the end tokens must be allowed
  exactly when the grammar accepts.
- Speculative verification with ``draft_masks`` gives the same tokens as constrained greedy.
- Bad schemas and grammars fail at construction with the problem named.
The schemas bound every string, number and array, so a valid answer always fits in the token budget.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from engine.backends import load_backend
from engine.chat.constrain import (
    JSON_OPTIONS,
    Constraint,
    ResponseFormat,
    constraint_for,
    grammar_tokenizer,
    validate_response_format,
)
from engine.chat.template import ChatTemplate
from engine.chat.tools import (
    FieldError,
    ToolCallFormat,
    parse_tool_calls,
    validate_tool_choice,
    validate_tools,
)
from engine.embedded import embedded_model_dir
from engine.generate import Sampler, SamplingParams
from engine.tokenizer import Tokenizer

WORD = {"type": "string", "pattern": "^[a-z]{1,6}$"}
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "name": WORD},
                "required": ["id", "name"],
                "additionalProperties": False,
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "level": {"enum": ["debug", "info", "warning", "error"]},
            "code": {"type": "integer", "minimum": 100, "maximum": 599},
            "kind": {"const": "log"},
        },
        "required": ["level", "code", "kind"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "ids": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 99},
                "minItems": 1,
                "maxItems": 4,
            },
            "flags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        },
        "required": ["ids", "flags"],
        "additionalProperties": False,
    },
    "list_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"k": {"enum": ["x", "y"]}, "v": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["k", "v"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 3,
    },
    "optional_keys": {
        "type": "object",
        "properties": {
            "a": WORD,
            "b": {"type": "boolean"},
            "c": {"type": "integer", "minimum": -9, "maximum": 9},
        },
        "required": ["a"],
        "additionalProperties": False,
    },
}
TOOLS = validate_tools(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "pattern": "^[A-Z][a-z]{1,7}$"},
                        "unit": {"enum": ["c", "f"]},
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {"query": WORD, "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
                    "required": ["query", "limit"],
                    "additionalProperties": False,
                },
            },
        },
    ]
)
JSON_SAMPLES = 40  # per schema
TOOL_SAMPLES = 40
MAX_TOKENS = 64
MAX_TOOL_TOKENS = 96  # the longest valid call is 94 bytes, so it always fits


def validate(value, schema, path="$"):
    """The JSON Schema subset the schemas above use; raises AssertionError naming the path."""
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != const"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in enum"
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{path}: not an object"
        assert set(schema.get("required", [])) <= set(value), f"{path}: missing required keys"
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema["properties"]), (
                f"{path}: extra keys {set(value) - set(schema['properties'])}"
            )
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), f"{path}: not an array"
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9), (
            f"{path}: {len(value)} items"
        )
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{i}]")
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: {value!r} not an integer"
        assert schema.get("minimum", -(10**18)) <= value <= schema.get("maximum", 10**18), (
            f"{path}: {value} out of range"
        )
    elif kind == "string":
        assert isinstance(value, str), f"{path}: not a string"
        assert re.search(schema.get("pattern", ""), value), f"{path}: {value!r} does not match the pattern"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path}: not a boolean"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_folder(embedded_model_dir())


@pytest.fixture(scope="module")
def backend():
    return load_backend(embedded_model_dir(), "ort", threads=1)


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate.from_folder(embedded_model_dir())


def sample(
    backend, tok, constraint: Constraint, seq, logits, seed: int, max_tokens: int, timing: list
) -> list[int]:
    """Sample under ``constraint`` from ``seq`` (whose next-token logits are ``logits``) until an end token."""
    sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
    out = []
    for _ in range(max_tokens):
        t0 = time.perf_counter()
        allowed = constraint.allow(logits)
        timing.append(time.perf_counter() - t0)
        ends = np.isfinite(allowed[list(tok.eos_ids)])
        assert ends.all() == ends.any() == constraint.accepting, (
            "end tokens must be allowed exactly when accepting"
        )
        token = sampler(allowed)
        out.append(token)
        if token in tok.eos_ids:
            return out
        constraint.advance(token)
        logits = backend.forward(seq, [token])[-1]
    raise AssertionError(f"no end token after {max_tokens} tokens: {tok.decode(out)!r}")


def test_sampled_json_always_parses_and_validates(backend, tok, template):
    timing, count, tokens = [], 0, 0
    for name, schema in SCHEMAS.items():
        messages = [
            {"role": "system", "content": f"Answer with JSON matching this schema: {json.dumps(schema)}"},
            {"role": "user", "content": f"Give me one {name} example."},
        ]
        base = backend.new_sequence()
        logits = backend.forward(base, template.encode(tok, messages))[-1]
        for seed in range(JSON_SAMPLES):
            constraint = Constraint.json_schema(tok, schema, vocab_size=backend.config.vocab_size)
            ids = sample(backend, tok, constraint, backend.fork(base), logits, seed, MAX_TOKENS, timing)
            text = tok.decode(ids[:-1])
            validate(json.loads(text), schema)
            assert text == json.dumps(json.loads(text))  # one line, ", " and ": " separators
            count, tokens = count + 1, tokens + len(ids)
    assert count == len(SCHEMAS) * JSON_SAMPLES
    print(f"\n{count} JSON generations, {tokens} tokens, mask {1000 * np.mean(timing):.3f} ms/token")


def test_forced_tool_calls_always_parse_and_validate(backend, tok, template):
    messages = [{"role": "user", "content": "Weather in Paris, and search for cats."}]
    base = backend.new_sequence()
    logits = backend.forward(base, template.encode(tok, messages, tools=TOOLS))[-1]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    choices = [
        validate_tool_choice("required", TOOLS),
        validate_tool_choice({"type": "function", "function": {"name": "search"}}, TOOLS),
    ]
    names, timing = set(), []
    for seed in range(TOOL_SAMPLES):
        choice = choices[seed % 2]
        constraint = constraint_for(
            tok, tools=TOOLS, tool_choice=choice, vocab_size=backend.config.vocab_size
        )
        ids = sample(backend, tok, constraint, backend.fork(base), logits, seed, MAX_TOOL_TOKENS, timing)
        answer = parse_tool_calls(tok.decode(ids[:-1]), names=list(schemas))
        assert answer.issues == [] and answer.content == "" and len(answer.tool_calls) == 1
        call = answer.tool_calls[0]
        assert choice.mode == "required" or call.name == "search"
        validate(json.loads(call.arguments), schemas[call.name])
        names.add(call.name)
    assert names == {"get_weather", "search"}  # "required" reached both tools


def _greedy(backend, tok, constraint, seq, logits, max_tokens):
    out = []
    while len(out) < max_tokens:
        token = int(np.argmax(constraint.allow(logits)))
        out.append(token)
        if token in tok.eos_ids:
            break
        constraint.advance(token)
        logits = backend.forward(seq, [token])[-1]
    return out


def _speculative(backend, tok, constraint, seq, logits, max_tokens, drafts):
    """Greedy with drafts verified in one forward: each draft is cut to what the grammar accepts
    (``draft_masks``) and checked against the masked argmax, as ``engine.speculative`` does unmasked.
    A draft stops before an end token: the model's own prediction ends the answer."""
    out, accepted_total = [int(np.argmax(constraint.allow(logits)))], 0
    while out[-1] not in tok.eos_ids and len(out) < max_tokens:
        token = out[-1]
        constraint.advance(token)
        draft = drafts(out)
        n, masks = constraint.draft_masks(draft)
        assert n == constraint.check_draft(draft)
        draft = draft[:n]
        if any(t in tok.eos_ids for t in draft):
            n = next(i for i, t in enumerate(draft) if t in tok.eos_ids)
            draft, masks = draft[:n], masks[: n + 1]
        n0 = len(seq.ids)
        step = backend.forward(seq, [token, *draft], logits_to_keep=n + 1)
        predicted = np.argmax(np.where(masks, step, -np.inf), axis=-1)
        k = 0
        while k < n and int(predicted[k]) == draft[k]:
            k += 1
        if k < n:
            backend.truncate(seq, n0 + 1 + k)
        for t in draft[:k]:
            constraint.advance(t)
        accepted_total += k
        out += [*draft[:k], int(predicted[k])]
    return out[:max_tokens], accepted_total


def test_masked_drafts_keep_speculation_identical_to_constrained_greedy(backend, tok, template):
    rng = np.random.default_rng(0)
    for name, schema in SCHEMAS.items():
        prompt = template.encode(tok, [{"role": "user", "content": f"{name} as JSON"}])
        seq = backend.new_sequence()
        logits = backend.forward(seq, prompt)[-1]
        reference = _greedy(
            backend, tok, Constraint.json_schema(tok, schema), backend.fork(seq), logits, MAX_TOKENS
        )

        def drafts(out, reference=reference):
            """The true continuation, sometimes corrupted, sometimes random tokens the grammar refuses."""
            true = reference[len(out) : len(out) + 4]
            draft = list(true)
            if draft and rng.random() < 0.5:
                draft[rng.integers(len(draft))] = int(rng.integers(tok.vocab_size))
            return draft

        got, accepted = _speculative(
            backend, tok, Constraint.json_schema(tok, schema), backend.fork(seq), logits, MAX_TOKENS, drafts
        )
        assert got == reference, name
        assert accepted > 0


def test_end_tokens_follow_acceptance_and_the_mask_is_padded(tok):
    c = Constraint.lark(tok, 'start: "a"+', vocab_size=tok.vocab_size + 100)
    a = tok.encode("a")[0]
    m = c.mask()
    assert m.shape == (tok.vocab_size + 100,) and not m[tok.vocab_size :].any()
    assert not m[list(tok.eos_ids)].any() and m[a] and not c.accepting
    c.advance(a)
    m = c.mask()
    assert m[list(tok.eos_ids)].all() and m[a] and c.accepting and not c.done
    logits = np.zeros(tok.vocab_size + 100, np.float32)
    allowed = c.allow(logits)
    assert allowed.dtype == np.float32 and np.isfinite(allowed).sum() == m.sum()
    with pytest.raises(ValueError, match="logits have 8192 entries; the constraint expects 8292"):
        c.allow(logits[: tok.vocab_size])
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        Constraint.lark(tok, 'start: "a"', vocab_size=100)


def test_check_draft_rollback_and_copy(tok):
    text = '{"k": [1, 2], "s": "x"}'
    ids = tok.encode(text)
    c = Constraint.json_object(tok)
    assert c.check_draft(ids) == len(ids)
    assert c.check_draft(ids + ids) == len(ids) + 0  # nothing may follow a complete object...
    assert c.check_draft(ids + [tok.eos_ids[0]]) == len(ids) + 1  # ...but an end token
    prefix = tok.encode('{"k": ')
    bad = prefix + tok.encode("}")
    assert c.check_draft(bad) == len(prefix)
    assert c.check_draft([]) == 0
    for t in ids[:4]:  # {"k":
        c.advance(t)
    twin = c.copy()
    c.rollback(4)
    assert c.check_draft(ids) == len(ids) and twin.check_draft(ids[4:]) == len(ids) - 4
    with pytest.raises(ValueError, match=f"token {bad[-1]} is not allowed"):
        twin.advance(bad[-1])
    assert twin.check_draft(ids[4:]) == len(ids) - 4  # a refused token leaves the state as it was
    for t in ids:
        c.advance(t)
    assert c.done and c.accepting
    assert c.draft_masks([])[1].shape == (1, tok.vocab_size)
    end = tok.eos_ids[-1]
    n, masks = c.draft_masks([end, end])
    assert (
        n == 1 and masks.shape == (2, tok.vocab_size) and masks[0, end] and masks[0].sum() == len(tok.eos_ids)
    )
    c.advance(end)
    assert c.done and c.check_draft([end]) == 0
    c.rollback(2)  # the end token and the last brace: an end token rolls back like any other
    assert not c.done and c.check_draft(ids[-1:] + [end]) == 2


def test_json_is_one_line_unless_the_schema_says_otherwise(tok):
    ids = tok.encode('{\n  "a": 1}')
    assert Constraint.json_schema(tok, {"type": "object"}).check_draft(ids) < len(ids)
    loose = Constraint.json_schema(
        tok, {"type": "object", "x-guidance": {**JSON_OPTIONS, "whitespace_flexible": True}}
    )
    assert loose.check_draft(ids) == len(ids)


def test_tool_call_grammar_uses_special_markers_and_refs(tok):
    tools = validate_tools(
        [
            {
                "function": {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"x": {"$ref": "#/$defs/X"}},
                        "required": ["x"],
                        "$defs": {"X": {"enum": ["p", "q"]}},
                    },
                }
            }
        ]
    )
    c = Constraint.tool_call(tok, tools, validate_tool_choice("required", tools))
    good = tok.encode('<tool_call>{"name": "f", "arguments": {"x": "q"}}</tool_call>')
    assert c.check_draft(good) == len(good)
    prefix = tok.encode('<tool_call>{"name": "f", "arguments": {"x": "')
    assert c.check_draft(prefix + tok.encode('z"}}</tool_call>')) == len(prefix)  # not in the $defs enum
    named = Constraint.tool_call(tok, tools, {"type": "function", "function": {"name": "f"}})  # a raw value
    assert named.check_draft(good) == len(good)
    with pytest.raises(FieldError, match="'auto' does not force a call"):
        Constraint.tool_call(tok, tools, "auto")
    fmt = ToolCallFormat("<|system|>", "<|user|>")  # markers that are special tokens are matched as tokens
    c = Constraint.tool_call(tok, tools, validate_tool_choice("required", tools), fmt, parallel=True)
    body = tok.encode('{"name": "f", "arguments": {"x": "p"}}')
    call = [tok.token_to_id("<|system|>"), *body, tok.token_to_id("<|user|>")]
    two = [*call, *tok.encode("\n"), *call]
    assert c.check_draft(two) == len(two)
    assert c.check_draft(tok.encode("<|system|>")) == 0  # the text, not the token


def test_bad_schemas_and_grammars_fail_fast_with_the_problem(tok):
    cases = [
        ({"type": "objekt"}, "Invalid type: objekt"),
        ({"type": "string", "pattern": "(("}, "unclosed group"),
        ({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}, "'/nope' does not exist"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength"),
        ({"not": {"type": "string"}}, "Unimplemented keys"),
        ("string", "must be a JSON Schema object, got str"),
    ]
    for schema, message in cases:
        t0 = time.perf_counter()
        with pytest.raises(FieldError, match=re.escape(message)) as err:
            Constraint.json_schema(tok, schema)
        assert err.value.field == "response_format.json_schema.schema"
        assert time.perf_counter() - t0 < 5
    for grammar, message in (
        ("start: foo", 'unknown name: "foo"'),
        ("start: <|nope|>", "unknown special token"),
        ("", "non-empty"),
    ):
        with pytest.raises(FieldError, match=re.escape(message)):
            Constraint.lark(tok, grammar)
    t0 = time.perf_counter()  # a lexer blow-up (2^20 DFA states) is bounded by llguidance's limits
    try:
        c = Constraint.json_schema(tok, {"type": "string", "pattern": "^[ab]*a[ab]{20}$"})
        c.mask()
    except (FieldError, ValueError):
        pass
    assert time.perf_counter() - t0 < 10


def test_response_format_and_the_request_constraint(tok):
    assert validate_response_format(None) == ResponseFormat()
    assert validate_response_format({"type": "json_object"}) == ResponseFormat("json_object")
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}
    assert validate_response_format(spec) == ResponseFormat("json_schema", {"type": "integer"}, "x")
    for value, field in (
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": 3}}, "response_format.json_schema.schema"),
        ([], "response_format"),
    ):
        with pytest.raises(FieldError) as err:
            validate_response_format(value)
        assert err.value.field == field
    auto = validate_tool_choice("auto", TOOLS)
    assert constraint_for(tok, tools=TOOLS, tool_choice=auto) is None
    c = constraint_for(tok, response_format=validate_response_format(spec))
    assert c.check_draft(tok.encode("42")) == len(tok.encode("42")) and c.check_draft(tok.encode('"a"')) == 0
    forced = constraint_for(
        tok,
        tools=TOOLS,
        tool_choice=validate_tool_choice("required", TOOLS),
        response_format=validate_response_format(spec),
    )
    assert forced.check_draft(tok.encode("<tool_call>")) == len(tok.encode("<tool_call>"))  # the call wins


def test_grammar_tokenizer_is_built_once_per_tokenizer(tok):
    assert grammar_tokenizer(tok) is grammar_tokenizer(tok)
    other = Tokenizer.from_folder(embedded_model_dir())
    assert grammar_tokenizer(other) is not grammar_tokenizer(tok)
    assert grammar_tokenizer(tok).eos_tokens == list(tok.eos_ids)
