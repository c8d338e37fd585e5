"""engine/http.py (OpenAI-compatible server) and engine/remote.py (its client) end to end.

One tiny random checkpoint with a quickly trained tokenizer runs behind ``start_http_server`` in a
background event loop; clients are ``http.client`` and raw sockets. A ``RemoteEngine`` pointed at
that server must give the same greedy text as the engine itself, stream, stop on cancel, and fail
clearly when the server is away. The last test runs ``python -m engine serve --remote ... --http``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from engine.jobs import Job
from engine.protocol import ErrorCode, ProtocolError, parse_params
from engine.remote import RemoteEngine

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX, SUFFIX = "def area(r):\n    return ", "\n\nprint(area(2))\n"
CONTEXT = [{"path": "geo/consts.py", "text": "PI = 3.14159\n"}]


def _train_tokenizer(out: Path) -> None:
    """A small byte-level BPE from two stdlib modules, by ``tools/train_tokenizer.py`` (a script)."""
    spec = importlib.util.spec_from_file_location(
        "mellum_tools_train_tokenizer", REPO / "tools/train_tokenizer.py"
    )
    train_tokenizer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tokenizer)
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [(root / name).read_text(encoding="utf-8") for name in ("textwrap.py", "json/encoder.py")]
    train_tokenizer.write_tokenizer(train_tokenizer.train_tokenizer(texts, vocab_size=384), out)


@pytest.fixture(scope="module")
def model_dir(checkpoints) -> Path:
    folder = checkpoints("http", vocab_size=384)
    if not (folder / "tokenizer.json").is_file():
        _train_tokenizer(folder)
    return folder


class Served:
    """An engine behind ``start_http_server`` on a background event loop."""

    def __init__(self, model_dir: Path) -> None:
        from engine.backends import load_backend
        from engine.http import start_http_server
        from engine.scheduler import Scheduler
        from engine.server import Dispatcher
        from engine.service import Engine, EngineConfig
        from engine.tokenizer import Tokenizer

        self.tok = Tokenizer.from_folder(model_dir)
        # no result cache: these tests compare what the model streams with what it returns
        config = EngineConfig(cache_mb=16, result_cache_entries=0)
        self.engine = Engine(load_backend(model_dir, "torch", threads=1), self.tok, config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def build():
            self.scheduler = Scheduler(self.engine)
            self.dispatcher = Dispatcher(self.engine, self.scheduler)
            return await start_http_server(self.dispatcher, "127.0.0.1", 0, token=TOKEN)

        self.server = self.run(build())
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def local(self, method: str, params: dict) -> tuple[dict, list[str]]:
        """A job run by the engine through the dispatcher, as the msgpack server runs it."""

        async def go():
            p = parse_params(method, params)
            job, queue = self.dispatcher.start_job(method, p, lambda _: None, asyncio.get_running_loop())
            parts = []
            while True:
                kind, payload = await queue.get()
                if kind == "partial":
                    parts.append(payload["text"])
                    continue
                result, error = payload
                assert error is None, error
                return result, parts

        return self.run(go())

    def close(self) -> None:
        self.server.close()
        self.scheduler.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(model_dir):
    s = Served(model_dir)
    yield s
    s.close()


def request(port, method, path, body=None, headers=AUTH, conn=None):
    """(status, headers, raw body); ``body`` a dict (sent as JSON) or bytes."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    c.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
    r = c.getresponse()
    raw = r.read()
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, raw


def sse_events(raw: bytes) -> list[str]:
    """The data of each event, checking the framing: every event is ``data: ...`` + a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


def assert_openai_error(status, raw, want_status):
    assert status == want_status
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "code"} and err["message"]
    return err


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# ---- the server ---------------------------------------------------------------------------------


def test_health_and_models(served):
    status, _, raw = request(served.port, "GET", "/health", headers={})
    assert status == 200 and json.loads(raw) == {"status": "ok"}
    status, _, raw = request(served.port, "GET", "/v1/models")
    models = json.loads(raw)
    assert status == 200 and models["object"] == "list" and len(models["data"]) == 1
    assert models["data"][0]["id"] == served.engine.handshake()["model_id"]
    assert models["data"][0]["max_model_len"] == 512


def test_bearer_token_is_required(served):
    body = {"prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, h, raw = request(served.port, "POST", "/v1/completions", body, headers=headers)
        assert assert_openai_error(status, raw, 401)["code"] == "invalid_api_key"
        assert h["www-authenticate"] == "Bearer"
    assert request(served.port, "GET", "/v1/models", headers={})[0] == 401
    assert request(served.port, "POST", "/v1/completions", body)[0] == 200


def test_fim_completion_uses_the_fim_layout_with_repository_context(served):
    from engine.prompt import assemble, fim_pieces

    prompt = f"<filename>{CONTEXT[0]['path']}\n{CONTEXT[0]['text']}<filename>geo/area.py\n{PREFIX}"
    body = {"prompt": prompt, "suffix": SUFFIX, "max_tokens": 12, "temperature": 0}
    status, _, raw = request(served.port, "POST", "/v1/completions", body)
    out = json.loads(raw)
    assert status == 200 and out["object"] == "text_completion"
    pieces = fim_pieces(served.tok, PREFIX, SUFFIX, [("geo/consts.py", "PI = 3.14159\n")], "geo/area.py")
    # token healing takes the prefix's last token out of the prompt (engine/healing.py)
    healed = dataclasses.replace(pieces, prefix=pieces.prefix[:-1])
    want_ids = assemble(served.tok, healed)
    assert served.engine.stats()["recent"][-1]["method"] == "complete"
    assert out["usage"]["prompt_tokens"] == len(want_ids)
    assert out["usage"]["completion_tokens"] == 12 and out["choices"][0]["finish_reason"] == "length"
    local, _ = served.local("complete", {"prefix": PREFIX, "suffix": SUFFIX, "context": CONTEXT,
                                         "path": "geo/area.py", "max_tokens": 12})  # fmt: skip
    assert out["choices"][0]["text"] == local["text"]


def test_completion_without_suffix_is_plain_generation(served):
    body = {"prompt": PREFIX, "max_tokens": 8, "temperature": 0}
    status, _, raw = request(served.port, "POST", "/v1/completions", body)
    out = json.loads(raw)
    assert status == 200
    assert served.engine.stats()["recent"][-1]["method"] == "generate"
    assert out["usage"]["prompt_tokens"] == len(served.tok.encode(PREFIX))
    assert (
        out["choices"][0]["text"] == served.local("generate", {"prompt": PREFIX, "max_tokens": 8})[0]["text"]
    )


def test_chat_completion(served):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "a prime."}]}
    ]
    status, _, raw = request(
        served.port, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 6, "temperature": 0}
    )
    out = json.loads(raw)
    assert status == 200 and out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["prompt_tokens"] == served.local("chat", {"messages": messages, "max_tokens": 6})[0][
        "cache"
    ]["prompt_tokens"]
    assert (
        out["choices"][0]["message"]["content"]
        == served.local("chat", {"messages": messages, "max_tokens": 6})[0]["text"]
    )
    status, _, raw = request(
        served.port, "POST", "/v1/chat/completions", {"messages": parts, "max_tokens": 2}
    )
    joined = [{"role": "user", "content": "Name a prime."}]
    want = served.local("chat", {"messages": joined, "max_tokens": 2})[0]["cache"]["prompt_tokens"]
    assert status == 200 and json.loads(raw)["usage"]["prompt_tokens"] == want


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_streaming_is_sse_and_greedy_equals_non_streaming(served, route):
    if route == "/v1/completions":
        body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 24, "temperature": 0, "stop": ["\n\n"]}
    else:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0}
    status, _, raw = request(served.port, "POST", route, body)
    whole = json.loads(raw)["choices"][0]
    status, headers, raw = request(
        served.port, "POST", route, body | {"stream": True, "stream_options": {"include_usage": True}}
    )
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage, chunks = chunks[-1], chunks[:-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        whole["finish_reason"]
    ]
    if route == "/v1/completions":
        assert all(c["object"] == "text_completion" for c in chunks)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == whole["text"]
    else:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == whole["message"]["content"]
    assert len(chunks) > 3  # it did stream


def test_errors_are_openai_shaped_and_the_connection_keeps_serving(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    status, headers, raw = request(served.port, "POST", "/v1/completions", b"{not json", conn=conn)
    assert assert_openai_error(status, raw, 400)["code"] == "invalid_json"
    assert headers["connection"] == "keep-alive"
    status, _, raw = request(
        served.port, "POST", "/v1/completions", {"prompt": "x", "temperature": "hot"}, conn=conn
    )
    assert "temperature" in assert_openai_error(status, raw, 400)["message"]
    status, _, raw = request(served.port, "POST", "/v1/completions", {"prompt": "x", "n": 3}, conn=conn)
    assert "n=3" in assert_openai_error(status, raw, 400)["message"]
    status, _, raw = request(served.port, "POST", "/v1/chat/completions", {"messages": []}, conn=conn)
    assert_openai_error(status, raw, 400)
    status, _, raw = request(served.port, "GET", "/v1/nowhere", conn=conn)
    assert assert_openai_error(status, raw, 404)["code"] == "not_found"
    status, headers, raw = request(served.port, "GET", "/v1/completions", conn=conn)
    assert_openai_error(status, raw, 405)
    assert headers["allow"] == "POST"
    status, _, raw = request(
        served.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}, conn=conn
    )
    assert status == 200 and json.loads(raw)["object"] == "text_completion"
    conn.close()


def raw_request(body: bytes, version="HTTP/1.1", **headers) -> bytes:
    head = f"POST /v1/completions {version}\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        return s.makefile("rb").read()


def test_raw_http_body_limit_chunked_bodies_pipelining_and_http10(served):
    raw = exchange(served.port, raw_request(b"", Content_Length=999999999))
    assert raw.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in raw
    body = json.dumps({"prompt": "x", "max_tokens": 1}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw = exchange(served.port, raw_request(chunked, Transfer_Encoding="chunked", Connection="close"))
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.count(b'"text_completion"') == 1
    # two requests in one write: two answers, in order
    raw = exchange(served.port, raw_request(body, Content_Length=len(body))
                   + raw_request(body, Content_Length=len(body), Connection="close"))  # fmt: skip
    assert raw.count(b"HTTP/1.1 200 OK") == 2 and raw.count(b'"text_completion"') == 2
    # an HTTP/1.0 client gets the stream unchunked, ended by the close
    stream = json.dumps({"prompt": "x", "max_tokens": 4, "stream": True}).encode()
    raw = exchange(served.port, raw_request(stream, "HTTP/1.0", Content_Length=len(stream)))
    head, _, events = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert sse_events(events)[-1] == "[DONE]"


def test_client_disconnect_mid_stream_cancels_the_job(served):
    before = served.engine.stats()["totals"]["cancelled"]
    body = json.dumps({"prompt": PREFIX, "max_tokens": 400, "temperature": 0, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
        s.sendall(raw_request(body, Content_Length=len(body)))
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    wait_for(lambda: served.engine.stats()["totals"]["cancelled"] == before + 1)
    record = served.engine.stats()["recent"][-1]
    assert record["stopped"] == "cancelled" and record["generated_tokens"] < 400


# ---- RemoteEngine against the server --------------------------------------------------------------


def remote_job(method: str, params: dict) -> tuple[Job, list[str]]:
    """A job to run with ``RemoteEngine.execute`` directly, and the list its partials go to."""
    parts: list[str] = []
    return Job(
        0, method, parse_params(method, params), lambda p: parts.append(p["text"]), lambda r, e: None
    ), parts


def test_remote_results_equal_the_engine(served):
    remote = RemoteEngine(served.url, token=TOKEN)
    fim = {"prefix": PREFIX, "suffix": SUFFIX, "context": CONTEXT, "path": "geo/area.py", "max_tokens": 20}
    local, local_parts = served.local("complete", fim)
    job, parts = remote_job("complete", fim)
    result = remote.execute(job)
    assert remote.model == served.engine.handshake()["model_id"]  # found by asking /v1/models
    assert result["text"] == local["text"] and result["stopped"] == local["stopped"] == "length"
    assert "".join(parts) == result["text"] and len(parts) > 3
    assert result["tokens"] == 20 and result["cache"]["prompt_tokens"] == local["cache"]["prompt_tokens"]
    assert set(result) == set(local)
    for method, params in [("generate", {"prompt": PREFIX, "max_tokens": 10}),
                           ("generate", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})]:  # fmt: skip
        assert (
            remote.execute(remote_job(method, params)[0])["text"] == served.local(method, params)[0]["text"]
        )
    fim.pop("max_tokens")
    warm = remote.execute(remote_job("prefill", fim)[0])
    assert warm["stopped"] == "done" and warm["prompt_tokens"] == local["cache"]["prompt_tokens"]
    assert remote.stats()["totals"]["requests"] == 4 and remote.stats()["totals"]["generated_tokens"] >= 40


def test_remote_cancel_stops_the_stream_and_the_server_job(served):
    from engine.scheduler import Scheduler

    remote = RemoteEngine(served.url, token=TOKEN, model=served.engine.handshake()["model_id"])
    scheduler = Scheduler(remote)
    before = served.engine.stats()["totals"]["cancelled"]
    parts, done = [], threading.Event()
    answer = {}

    def emit(partial):
        parts.append(partial["text"])
        scheduler.cancel(job)  # on the first partial

    def finish(result, error):
        answer.update(result=result, error=error)
        done.set()

    p = parse_params("complete", {"prefix": PREFIX, "suffix": SUFFIX, "max_tokens": 400})
    job = Job(scheduler.new_id(), "complete", p, emit, finish)
    t0 = time.monotonic()
    scheduler.submit(job)
    assert done.wait(10)
    assert answer["error"].code == ErrorCode.CANCELLED and len(parts) == 1
    assert time.monotonic() - t0 < 2.0
    wait_for(lambda: served.engine.stats()["totals"]["cancelled"] == before + 1)
    assert remote.stats()["recent"][-1]["stopped"] == "cancelled"
    scheduler.shutdown()


def test_remote_errors_name_the_url_and_status(served):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    for model in (None, "m"):
        with pytest.raises(ProtocolError) as e:
            RemoteEngine(f"http://127.0.0.1:{port}/v1", model=model, timeout=5).execute(
                remote_job("complete", {"prefix": "x"})[0]
            )
        assert e.value.code == ErrorCode.UNAVAILABLE
        assert f"http://127.0.0.1:{port}/v1/" in e.value.message and "unreachable" in e.value.message
    with pytest.raises(ProtocolError) as e:
        RemoteEngine(served.url, token="wrong").execute(remote_job("complete", {"prefix": "x"})[0])
    assert (
        e.value.code == ErrorCode.UNAVAILABLE
        and "HTTP 401" in e.value.message
        and served.url in e.value.message
    )
    with pytest.raises(ValueError, match="not http"):
        RemoteEngine("ftp://example.com")


def test_engine_serve_remote_over_http(served, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"MELLUM_REMOTE_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "engine", "serve", "--remote", served.url, "--http", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:

        def up():
            assert proc.poll() is None, proc.stderr.read()
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=1).close() or True
            except OSError:
                return False

        wait_for(up, 20)
        body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 16, "temperature": 0}
        status, _, raw = request(port, "POST", "/v1/completions", body, headers={})
        assert status == 200, raw
        want = json.loads(request(served.port, "POST", "/v1/completions", body)[2])["choices"][0]["text"]
        assert json.loads(raw)["choices"][0]["text"] == want
    finally:
        proc.terminate()
        proc.wait(10)
