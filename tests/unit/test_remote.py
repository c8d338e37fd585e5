"""engine/remote.py without a model: the prompt it renders, and how it reads other servers.

A scripted ``http.server`` plays a vLLM-like server (one JSON answer instead of a stream, an error
event mid-stream, HTTP 500, a stall) so that each way a remote server can answer is checked in
milliseconds. The end-to-end checks against our own server are in ``test_http.py``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.jobs import Job
from engine.prompt import render_text as render_prompt
from engine.prompt import split_text as split_repo_context
from engine.protocol import ErrorCode, ProtocolError, parse_params
from engine.remote import RemoteEngine, _sse_events


def fim(**kw):
    return parse_params("complete", {"prefix": "def f(", "suffix": "):\n", **kw})


def test_rendered_context_reads_back_as_the_same_fim_request():
    context = [{"path": "a.py", "text": "A = 1\n"}, {"path": "pkg/b.py", "text": "def b():\n    pass\n"}]
    for kw in ({}, {"path": "c.py"}, {"context": context}, {"context": context, "path": "c.py"}):
        p = fim(**kw)
        chunks, path, prefix = split_repo_context(render_prompt(p))
        assert (chunks, path, prefix) == (kw.get("context", []), kw.get("path"), p.prefix)
    p = fim(context=context, path="c.py")
    assert render_prompt(p).startswith("<filename>a.py\nA = 1\n<filename>pkg/b.py\n")
    assert render_prompt(p, repo_context=False) == "def f("


def test_fim_template_fills_prefix_and_suffix_once():
    p = parse_params("complete", {"prefix": "x = '{suffix}'", "suffix": "{prefix}", "path": "t.py"})
    template = "<fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>"
    assert (
        render_prompt(p, template)
        == "<filename>t.py\n<fim_suffix>{prefix}<fim_prefix>x = '{suffix}'<fim_middle>"
    )


def test_context_by_key_only_is_refused():
    with pytest.raises(ProtocolError, match="has no text") as e:
        render_prompt(fim(context=[{"path": "a.py", "key": "k1"}]))
    assert e.value.code == ErrorCode.UNKNOWN_CONTEXT_KEY


def test_sse_parser_reads_comments_crlf_and_multiline_data():
    raw = b': ping\r\n\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata:[DONE]\n\n'
    assert list(_sse_events(io.BytesIO(raw))) == ['{"a":\n1}', "[DONE]"]


# ---- a scripted server ---------------------------------------------------------------------------


class Script:
    """What the fake server answers to the next POST, and what it was sent."""

    def __init__(self):
        self.answer = None  # callable(handler)
        self.bodies: list[dict] = []
        self.connections = set()


def sse(*events) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events
    )


def chunk(text, finish=None):
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


@pytest.fixture
def fake():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_json(200, {"object": "list", "data": [{"id": "fake-model", "max_model_len": 4096}]})

        def do_POST(self):
            script.connections.add(self.client_address)
            script.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            script.answer(self)

        def send_json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_sse(self, data: bytes):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield script
    server.shutdown()
    server.server_close()


def job(p=None, emit=None) -> Job:
    return Job(1, "complete", p or fim(max_tokens=8), emit or (lambda _: None), lambda r, e: None)


def test_streams_reuse_one_connection_and_send_openai_fields(fake):
    fake.answer = lambda h: h.send_sse(sse(chunk("a"), chunk("b", "length"),
                                           {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
                                           b"[DONE]"))  # fmt: skip
    remote = RemoteEngine(fake.url)  # a bare host gets /v1
    parts = []
    p = fim(max_tokens=8, temperature=0.5, top_p=0.9, stop=["\n"], context=[{"path": "a.py", "text": "A\n"}])
    r1 = remote.execute(job(p, lambda x: parts.append(x["text"])))
    r2 = remote.execute(job())
    assert remote.url.endswith("/v1") and remote.handshake()["model_id"] == "fake-model"
    assert remote.context_length == 4096
    assert r1["text"] == "ab" and parts == ["a", "b"] and r1["stopped"] == "length"
    assert r1["tokens"] == 2 and r1["cache"]["prompt_tokens"] == 5 and r2["text"] == "ab"
    sent = fake.bodies[0]
    assert sent["prompt"] == "<filename>a.py\nA\n<filename>\ndef f(" and sent["suffix"] == "):\n"
    assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["top_p"], sent["stop"], sent["stream"]) == (
        "fake-model", 8, 0.5, 0.9, ["\n"], True)  # fmt: skip
    assert len(fake.connections) == 1  # kept alive


def test_a_server_that_ignores_stream_is_read_as_one_answer(fake):
    fake.answer = lambda h: h.send_json(
        200, {"choices": [{"text": "whole", "finish_reason": "stop"}], "usage": {}}
    )
    result = RemoteEngine(fake.url + "/v1", model="m").execute(job())
    assert result["text"] == "whole" and result["stopped"] == "stop"


def test_server_errors_name_the_url_and_status(fake):
    url = fake.url + "/v1"
    fake.answer = lambda h: h.send_json(500, {"error": {"message": "out of memory", "type": "server_error"}})
    with pytest.raises(ProtocolError) as e:
        RemoteEngine(url, model="m").execute(job())
    assert e.value.code == ErrorCode.UNAVAILABLE
    assert (
        e.value.message
        == f"remote engine {url}/completions answered HTTP 500 Internal Server Error: out of memory"
    )
    fake.answer = lambda h: h.send_json(400, {"error": {"message": "prompt too long"}})
    with pytest.raises(ProtocolError) as e:
        RemoteEngine(url, model="m").execute(job())
    assert e.value.code == ErrorCode.INVALID_PARAMS and "HTTP 400" in e.value.message
    fake.answer = lambda h: h.send_sse(sse(chunk("a"), {"error": {"message": "engine died"}}))
    with pytest.raises(ProtocolError, match="failed while streaming: engine died"):
        RemoteEngine(url, model="m").execute(job())
    fake.answer = lambda h: h.send_sse(sse(chunk("a"), b"{broken"))
    with pytest.raises(ProtocolError, match="broke off the stream"):
        RemoteEngine(url, model="m").execute(job())


def test_a_deadline_cuts_a_stalled_request(fake):
    release = threading.Event()

    def stall(h):
        release.wait(5)
        h.send_sse(sse(chunk("late"), b"[DONE]"))

    fake.answer = stall
    p = fim(max_tokens=8, deadline_ms=100)
    j = Job(1, "complete", p, lambda _: None, lambda r, e: None, deadline=time.monotonic() + 0.1)
    t0 = time.monotonic()
    result = RemoteEngine(fake.url + "/v1", model="m").execute(j)
    assert time.monotonic() - t0 < 1.0
    assert result["stopped"] == "deadline" and result["text"] == ""
    release.set()
