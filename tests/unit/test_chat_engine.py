"""The engine's chat path end to end on the embedded model: the ``chat`` RPC (streamed channels,
cancel, the cache reused across turns), constrained output through RPC and HTTP, tool calls, and
the remote backend forwarding the same fields to an OpenAI-compatible server (our own here)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from test_engine_rpc import EngineProcess, arun

from engine.embedded import embedded_model_dir
from engine.rpc import EngineClient, EngineError

SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "mid", "high"]}},
     "required": ["ok", "level"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"inner": {"type": "object", "properties": {"n": {"type": "integer",
     "minimum": 0, "maximum": 99}}, "required": ["n"], "additionalProperties": False},
     "name": {"type": "string", "maxLength": 6}}, "required": ["inner", "name"], "additionalProperties": False},
]  # fmt: skip
READ_FILE = {"type": "function", "function": {"name": "read_file", "description": "Read a workspace file",
             "parameters": {"type": "object", "properties": {"path": {"type": "string", "maxLength": 24}},
                            "required": ["path"], "additionalProperties": False}}}  # fmt: skip


def valid(value, schema) -> bool:
    """The subset of JSON Schema the SCHEMAS use."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 99
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", 10**9)
    if kind == "array":
        return (
            isinstance(value, list)
            and len(value) <= schema["maxItems"]
            and all(valid(v, schema["items"]) for v in value)
        )
    if kind == "object":
        props = schema["properties"]
        return (isinstance(value, dict) and set(schema["required"]) <= set(value) <= set(props)
                and all(valid(v, props[k]) for k, v in value.items()))  # fmt: skip
    raise AssertionError(schema)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("sock")
    d.chmod(0o700)
    proc = EngineProcess(embedded_model_dir(), d / "chat.sock", "--backend", "ort")
    yield proc
    proc.stop()


def ask(sock, **params):
    async def go():
        c = await EngineClient.connect(sock)
        parts = []
        try:
            return await c.request("chat", params, on_partial=parts.append), parts
        finally:
            await c.close()

    return arun(go())


def test_chat_streams_its_answer_and_turn_two_prefills_only_new_tokens(engine):
    first = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Add two numbers."},
    ]
    r1, parts = ask(engine.sock, messages=first, max_tokens=24, conversation="c1", stream=True)
    assert "".join(p.get("text", "") for p in parts) == r1["text"] and r1["tokens"] > 0
    second = [*first, {"role": "assistant", "content": r1["text"]}, {"role": "user", "content": "Shorter."}]
    r2, _ = ask(engine.sock, messages=second, max_tokens=8, conversation="c1")
    cache = r2["cache"]
    # everything of turn 1 (prompt and answer, but its last token and the retokenised end) is reused
    assert cache["reused_tokens"] >= r1["cache"]["prompt_tokens"] + r1["tokens"] - 3, (r1["cache"], cache)
    assert cache["computed_tokens"] < 30


def test_constrained_json_is_valid_for_every_sampled_call(engine):
    async def go():
        c = await EngineClient.connect(engine.sock)
        out = []
        try:
            for i in range(120):
                schema = SCHEMAS[i % len(SCHEMAS)]
                fmt = {"type": "json_schema", "json_schema": {"name": f"s{i % 3}", "schema": schema}}
                r = await c.request("chat", {"messages": [{"role": "user", "content": f"JSON please #{i}"}],
                                             "response_format": fmt, "max_tokens": 64, "temperature": 1.0})  # fmt: skip
                out.append((schema, r))
        finally:
            await c.close()
        return out

    results = arun(go())
    bad = [(r["text"], r["stopped"]) for schema, r in results if not valid(json.loads(r["text"]), schema)]
    assert not bad and all(r["constrained"] for _, r in results)


def test_required_tool_choice_gives_a_valid_call(engine):
    for seed in range(5):
        r, _ = ask(engine.sock, messages=[{"role": "user", "content": f"Open the readme ({seed})"}],
                   tools=[READ_FILE], tool_choice="required", max_tokens=48, temperature=1.0)  # fmt: skip
        assert r["finish_reason"] == "tool_calls", r
        call = r["tool_calls"][0]
        assert call["function"]["name"] == "read_file" and call["id"].startswith("call_")
        assert valid(json.loads(call["function"]["arguments"]), READ_FILE["function"]["parameters"])


def test_bad_chat_requests_name_the_problem(engine):
    for params, match in [
        ({"messages": []}, "messages must hold"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}, "schema"),
        ({"messages": [{"role": "user", "content": "x"}], "grammar": "start: ("}, "grammar"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ]:  # fmt: skip
        with pytest.raises(EngineError, match=match) as e:
            ask(engine.sock, **params)
        assert e.value.code == -32602, e.value


def test_cancel_stops_a_chat_stream(engine):
    async def go():
        c = await EngineClient.connect(engine.sock)
        try:
            rid, future = c.start("chat", {"messages": [{"role": "user", "content": "Talk."}], "max_tokens": 4000,
                                           "stream": True}, on_partial=lambda p: None)  # fmt: skip
            await asyncio.sleep(0.3)
            await c.cancel(rid)
            with pytest.raises(EngineError) as e:
                await asyncio.wait_for(future, 30)
            return e.value.code
        finally:
            await c.close()

    assert arun(go()) == -32800


def test_http_and_remote_backend_carry_tools_and_response_format(tmp_path):
    """Our HTTP server, and a second engine whose chat model is that server (--chat-remote)."""
    import subprocess
    import sys
    import time

    from test_http import request

    port = random.randint(20000, 40000)
    http = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--http", f"127.0.0.1:{port}", "--backend", "ort"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, _ = request(port, "GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and http.poll() is None, "HTTP engine did not start"
            time.sleep(0.1)
        schema = SCHEMAS[0]
        body = {"messages": [{"role": "user", "content": "status?"}], "max_tokens": 40, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}  # fmt: skip
        status, _, raw = request(port, "POST", "/v1/chat/completions", body, headers={})
        out = json.loads(raw)
        assert status == 200 and valid(json.loads(out["choices"][0]["message"]["content"]), schema), out
        body = {"messages": [{"role": "user", "content": "open it"}], "max_tokens": 48, "tools": [READ_FILE],
                "tool_choice": {"type": "function", "function": {"name": "read_file"}}, "stream": True}  # fmt: skip
        status, _, raw = request(port, "POST", "/v1/chat/completions", body, headers={})
        events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]
        calls = [c for e in events for ch in e["choices"] for c in ch["delta"].get("tool_calls", [])]
        assert status == 200 and calls and calls[0]["function"]["name"] == "read_file"
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
        # a local engine whose chat model is that server
        sock_dir = tmp_path / "s"
        sock_dir.mkdir(mode=0o700)
        front = EngineProcess(embedded_model_dir(), sock_dir / "front.sock", "--backend", "ort",
                              "--chat-remote", f"http://127.0.0.1:{port}/v1")  # fmt: skip
        try:
            r, _ = ask(front.sock, messages=[{"role": "user", "content": "open it"}], tools=[READ_FILE],
                       tool_choice="required", max_tokens=48)  # fmt: skip
            assert r["served"] == "remote" and r["tool_calls"][0]["function"]["name"] == "read_file", r
        finally:
            front.stop()
    finally:
        http.terminate()
        http.wait(10)
