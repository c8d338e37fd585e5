"""Fuzzing the language server's wire and requests with hypothesis: every request is answered, the
server stays up, its copy of each document follows the client's, and nothing leaks.

The fuzzed input: valid message shapes with wrong types, missing and unknown fields, huge numbers
(2**64, 1e999, 5,000-digit integers), positions past the end or inside a UTF-16 surrogate pair,
unknown methods, ids of every JSON type, truncated and deeply nested JSON, bodies that are not
UTF-8, out-of-order lifecycle messages, and garbage headers (missing, negative, huge or non-numeric
Content-Length; header lines longer than the stream's limit; streams that end inside a message).

Most tests run the server in this process, exactly as ``mellum-lsp serve`` runs it
(``create_server`` + ``transport.message_loop``), so that its asyncio tasks can be counted; the
last ones drive a real ``mellum-lsp serve`` process and read its fds, threads and memory in /proc.
No engine is configured (the model folder does not exist): completions are answered "no engine"
at once, so the fuzzer spends its time on the protocol, the document store and the handlers.

Cases: ``FUZZ_CASES`` (1,000 by default, the CI run; ``FUZZ_CASES=10000`` for a long run) for
the main test, half as many for each of the others, through the hypothesis settings profile ``fuzz``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mellum_lsp.features.transport import MAX_BODY, message_loop
from mellum_lsp.server import create_server

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "1000"))
settings.register_profile(
    "fuzz", max_examples=FUZZ_CASES, deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)  # fmt: skip
FUZZ = settings.get_profile("fuzz")
HALF = settings(FUZZ, max_examples=max(50, FUZZ_CASES // 2))

NO_ENGINE = {"mellum": {"model": {"path": "/nonexistent/mellum-fuzz-model"}, "telemetry": {"enabled": False},
                        "completion": {"debounceMs": 0}}}  # fmt: skip
URIS = ["file:///fuzz/a.py", "file:///fuzz/b.py", "untitled:c", "file:///fuzz/%F0%9F%98%80.py"]
ALPHABET = list("ab \n\r\t(){}:=x") + ["😀", "é", "\u2028", "\x00", "\r\n", "𝔘"]
MAX_UINT = 2**31 - 1  # LSP's uinteger


# ---- the in-process peer -------------------------------------------------------------------------
def frame(body: bytes, extra: bytes = b"") -> bytes:
    return b"Content-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def key(msg_id: Any) -> str:
    return json.dumps(msg_id, sort_keys=True)


def client_answer(msg: dict) -> Any:
    """What an editor answers to the server's own requests."""
    if msg.get("method") == "workspace/configuration":
        return [None for _ in msg.get("params", {}).get("items", [])]
    return None


class Peer:
    """The fuzzer's end of an in-process server: feeds it bytes, collects its answers by id, and
    answers its requests (workspace/configuration, progress, registrations) like an editor."""

    def __init__(self, limit: int = MAX_BODY) -> None:
        self.server = create_server()
        self.reader = asyncio.StreamReader(limit=limit)
        self.answers: dict[str, list[dict]] = defaultdict(list)
        self.null_errors: list[dict] = []
        self.notifications: list[dict] = []
        self.changed = asyncio.Event()
        self._buf = bytearray()
        self.server.protocol.set_writer(self)
        self.loop_task = asyncio.ensure_future(message_loop(self.reader, self.server.protocol))
        self._ids = itertools.count(1)

    # pygls' writer interface
    def write(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            length = int(re.search(rb"Content-Length: (\d+)", self._buf[:end]).group(1))
            if len(self._buf) < end + 4 + length:
                return
            msg = json.loads(self._buf[end + 4 : end + 4 + length])
            del self._buf[: end + 4 + length]
            self._received(msg)

    def close(self) -> None:
        pass

    def _received(self, msg: dict) -> None:
        if "method" in msg:
            if "id" in msg:
                self.feed(
                    frame(
                        json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": client_answer(msg)}).encode()
                    )
                )
            else:
                self.notifications.append(msg)
        elif msg.get("id") is None:
            assert "id" in msg, f"an answer without an id (JSON-RPC wants id null): {msg}"
            self.null_errors.append(msg)
        else:
            self.answers[key(msg["id"])].append(msg)
        self.changed.set()

    def feed(self, data: bytes) -> None:
        self.reader.feed_data(data)

    def next_id(self) -> int:
        return next(self._ids)

    async def until(self, done, timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert not self.loop_task.done(), f"the server's message loop ended: {self.loop_task}"
            self.changed.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"no answer in {timeout} s: {what}"
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def request(self, method: str, params: Any = None) -> dict:
        rid = self.next_id()
        self.feed(
            frame(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode())
        )
        await self.until(lambda: key(rid) in self.answers, what=method)
        return self.answers.pop(key(rid))[0]

    def notify(self, method: str, params: Any = None) -> None:
        self.feed(frame(json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode()))

    async def start(self, root: Path) -> None:
        caps = {"textDocument": {"inlineCompletion": {}, "synchronization": {"didSave": True}},
                "workspace": {"workspaceFolders": True}, "general": {"positionEncodings": ["utf-16"]}}  # fmt: skip
        answer = await self.request("initialize", {"processId": None, "rootUri": root.as_uri(),
                                                   "capabilities": caps, "initializationOptions": NO_ENGINE})  # fmt: skip
        assert answer["result"]["capabilities"]["positionEncoding"] == "utf-16"
        self.notify("initialized", {})
        assert "result" in await self.request("mellum/status", {"waitForIndex": True})

    async def quiet(self) -> None:
        """Until the server's background work and in-flight requests are done."""
        protocol = self.server.protocol
        for _ in range(2000):
            busy = [t for t in self.server._tasks if not t.done()]
            busy += [f for f in protocol._request_futures.values() if not f.done()]
            if not busy:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"still busy after 10 s: {busy}")


def run(loop: asyncio.AbstractEventLoop, coro, timeout: float = 60.0):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


# ---- what the server must answer -----------------------------------------------------------------
def expected(body: bytes) -> tuple[str | None, Any]:
    """("id", id): an answer with that id; ("null", code): an error with id null; (None, None):
    nothing (a notification, or a response to one of the server's requests). From JSON-RPC 2.0."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "null", -32700
    if not isinstance(data, dict):
        return "null", -32600
    rid = data.get("id")
    valid_id = isinstance(rid, int | str) and not isinstance(rid, bool)
    if data.get("jsonrpc") != "2.0" or ("method" in data and not isinstance(data["method"], str)):
        return ("id", rid) if valid_id else ("null", -32600)
    if "method" not in data or "id" not in data:
        return None, None
    return ("id", rid) if valid_id else ("null", -32600)


# ---- strategies ----------------------------------------------------------------------------------
HUGE = [2**31, 2**53 + 1, 2**64, -(2**63), 10**30, 1e308, float("inf"), float("-inf"), float("nan")]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from(HUGE), st.floats(), st.text(max_size=12)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
texts = st.lists(st.sampled_from(ALPHABET), max_size=30).map("".join)
ints = st.integers(0, 6) | st.sampled_from([0, 1, 2, 3, 40, MAX_UINT])
positions = st.fixed_dictionaries({"line": ints, "character": ints})
uris = st.sampled_from(URIS)
doc_id = st.fixed_dictionaries({"uri": uris})


def requests_params(root_uri: str) -> dict[str, st.SearchStrategy]:
    """Well-shaped params of the requests the server handles (and some it does not)."""
    return {
        "textDocument/inlineCompletion": st.fixed_dictionaries(
            {"textDocument": doc_id, "position": positions,
             "context": st.fixed_dictionaries({"triggerKind": st.sampled_from([1, 2])})}),
        "textDocument/completion": st.fixed_dictionaries({"textDocument": doc_id, "position": positions}),
        "textDocument/hover": st.fixed_dictionaries({"textDocument": doc_id, "position": positions}),
        "mellum/document": st.fixed_dictionaries({"uri": uris}),
        "mellum/lastCompletion": st.fixed_dictionaries({}, optional={"uri": uris}),
        "mellum/status": st.fixed_dictionaries({}, optional={"waitForIndex": st.booleans()}),
        "mellum/engineStats": st.just({}),
        "workspace/executeCommand": st.fixed_dictionaries(
            {"command": st.sampled_from(["mellum.accepted", "mellum.partiallyAccepted", "mellum.rejected", "x"]),
             "arguments": st.lists(json_values, max_size=2)}),
        "initialize": st.fixed_dictionaries({"processId": st.none(), "rootUri": st.none(), "capabilities": st.just({})}),
        "mellum/noSuchMethod": json_values,
    }  # fmt: skip


def notification_params(root_uri: str) -> dict[str, st.SearchStrategy]:
    change = st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": positions, "end": positions}),
                                    "text": texts}) | st.fixed_dictionaries({"text": texts})  # fmt: skip
    settings_ = st.dictionaries(st.sampled_from(["completion", "context", "telemetry", "debug", "junk"]),
                                json_values, max_size=3)  # fmt: skip
    return {
        "textDocument/didOpen": st.fixed_dictionaries({"textDocument": st.fixed_dictionaries(
            {"uri": uris, "languageId": st.sampled_from(["python", "rust", ""]), "version": ints, "text": texts})}),
        "textDocument/didChange": st.fixed_dictionaries({
            "textDocument": st.fixed_dictionaries({"uri": uris, "version": ints}),
            "contentChanges": st.lists(change, max_size=3)}),
        "textDocument/didClose": st.fixed_dictionaries({"textDocument": doc_id}),
        "textDocument/didSave": st.fixed_dictionaries({"textDocument": doc_id}),
        "$/cancelRequest": st.fixed_dictionaries({"id": st.integers(0, 10**6) | st.text(max_size=4)}),
        "$/setTrace": st.fixed_dictionaries({"value": st.sampled_from(["off", "messages", "verbose"])}),
        "workspace/didChangeConfiguration": st.fixed_dictionaries({"settings": st.fixed_dictionaries(
            {"mellum": settings_})}),
        "workspace/didChangeWatchedFiles": st.fixed_dictionaries({"changes": st.lists(st.fixed_dictionaries(
            {"uri": st.just(root_uri + "/m.py") | uris, "type": st.sampled_from([1, 2, 3])}), max_size=2)}),
        "workspace/didChangeWorkspaceFolders": st.fixed_dictionaries({"event": st.fixed_dictionaries(
            {"added": st.lists(st.just({"uri": root_uri, "name": "ws"}), max_size=1), "removed": st.just([])})}),
        "initialized": st.just({}),
        "$/unknownNotification": json_values,
    }  # fmt: skip


def _paths(obj: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*at, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*at, i))
    return out


@st.composite
def mutate(draw, obj: Any) -> Any:
    """``obj`` with one node replaced by any JSON value, deleted, or given an unknown field."""
    obj = copy.deepcopy(obj)
    path = draw(st.sampled_from(_paths(obj)))
    new = draw(json_values)
    if not path:
        return new
    *head, last = path
    parent = obj
    for part in head:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[last] = new
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = new
    return obj


@st.composite
def message(draw, root_uri: str, ids) -> bytes:
    """One message body: a request or notification, maybe mutated, maybe badly encoded."""
    kinds = requests_params(root_uri) | notification_params(root_uri)
    method = draw(st.sampled_from(sorted(kinds)))
    params = draw(kinds[method])
    if draw(st.integers(0, 3)) == 0:
        params = draw(mutate(params))
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if method in requests_params(root_uri):
        msg["id"] = next(ids) if draw(st.booleans()) else str(next(ids))
    shape = draw(st.integers(0, 40))
    if shape == 0:  # an id of another JSON type
        msg["id"] = draw(st.sampled_from([1.5, True, None, [1], {"a": 1}, -(2**63), 2**64]))
    elif shape == 1:
        msg["jsonrpc"] = draw(st.sampled_from(["1.0", 2.0, None]))
    elif shape == 2:
        msg["method"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif shape == 3:
        return draw(json_values.map(lambda v: json.dumps(v).encode()))  # any JSON, not a message
    body = json.dumps(msg).encode()
    if shape == 4:  # truncated
        return body[: draw(st.integers(0, max(0, len(body) - 1)))]
    if shape == 5:  # deep nesting: json raises RecursionError, not ValueError
        depth = draw(st.sampled_from([50, 5000, 200_000]))
        return body.replace(b'"params": ', b'"params": ' + b"[" * depth, 1) + b"]" * depth
    if shape == 6:  # a number too long for Python's int parser
        return body.replace(b'"params": ', b'"params": ' + b"9" * 5000 + b', "x": ', 1)
    if shape == 7:  # not UTF-8
        return body.replace(b"params", b"par\xffams", 1)
    return body


def frames(root_uri: str, ids) -> st.SearchStrategy[list[bytes]]:
    return st.lists(message(root_uri, ids), min_size=1, max_size=6)


# ---- fixtures ------------------------------------------------------------------------------------
def process_counts() -> dict[str, int]:
    """This process's fds, and its threads apart from the event loop's executor pool (which grows
    on demand to its fixed size: ``asyncio.to_thread`` work, e.g. flushing the counters)."""
    pool = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
    status = Path("/proc/self/status").read_text()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(re.search(r"Threads:\s+(\d+)", status)[1]) - len(pool),
        "pool": len(pool),
    }


@pytest.fixture(scope="module", autouse=True)
def quiet_logs():
    """pygls logs every refused message with a traceback: that would be most of the fuzzer's time."""
    import logging

    loggers = [logging.getLogger(name) for name in ("pygls", "mellum_lsp")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@pytest.fixture(scope="module")
def session(tmp_path_factory, monkeypatch_module):
    """A persistent event loop and an initialized in-process server on it."""
    root = tmp_path_factory.mktemp("fuzz-ws")
    (root / ".git").mkdir()
    (root / "m.py").write_text("def helper(x):\n    return x + 1\n")
    monkeypatch_module.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    peer = loop.run_until_complete(_start(root))
    yield loop, peer, root
    loop.run_until_complete(peer.server.close())
    peer.reader.feed_eof()
    loop.run_until_complete(asyncio.wait_for(peer.loop_task, 10))
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


async def _start(root: Path) -> Peer:
    peer = Peer()
    await peer.start(root)
    return peer


async def exchange(peer: Peer, bodies: list[bytes]) -> None:
    """Send ``bodies`` framed; wait until each is answered as JSON-RPC says it must be."""
    want_ids: dict[str, int] = defaultdict(int)
    nulls = 0
    for body in bodies:
        kind, value = expected(body)
        if kind == "id":
            want_ids[key(value)] += 1
        elif kind == "null":
            nulls += 1
    before = len(peer.null_errors)
    for body in bodies:
        peer.feed(frame(body))
    await peer.until(
        lambda: (
            all(len(peer.answers.get(k, ())) >= n for k, n in want_ids.items())
            and len(peer.null_errors) >= before + nulls
        ),
        what=f"answers to {[b[:120] for b in bodies]}",
    )
    await peer.quiet()
    for k, n in want_ids.items():
        got = peer.answers.pop(k)
        assert len(got) == n, f"{len(got)} answers to id {k}, expected {n}: {got}"
        for answer in got:
            assert ("result" in answer) != ("error" in answer), answer
    extra = peer.null_errors[before + nulls :]
    assert not extra, f"unexpected errors with id null: {extra}"
    assert not peer.answers, f"answers to requests never sent: {dict(peer.answers)}"
    del peer.null_errors[before:]


# ---- the tests -----------------------------------------------------------------------------------
def test_every_fuzzed_request_is_answered_once_and_nothing_leaks(session):
    loop, peer, root = session
    ids = itertools.count(10_000)
    examples = {"n": 0, "messages": 0}

    @FUZZ
    @given(bodies=frames(root.as_uri(), ids))
    def fuzz(bodies: list[bytes]) -> None:
        examples["n"] += 1
        examples["messages"] += len(bodies)
        run(loop, exchange(peer, bodies))

    for _ in range(3):  # warm up: pools, caches and lazily created state exist before counting
        run(
            loop,
            exchange(peer, [json.dumps({"jsonrpc": "2.0", "id": "w", "method": "mellum/status"}).encode()]),
        )
    run(loop, peer.quiet())
    before, tasks_before = process_counts(), len(asyncio.all_tasks(loop))
    fuzz()
    run(loop, peer.quiet())
    after, tasks_after = process_counts(), len(asyncio.all_tasks(loop))
    print(f"fuzzed {examples['n']} examples, {examples['messages']} messages; {before} -> {after}")
    assert examples["n"] >= min(FUZZ_CASES, 100)
    assert tasks_after <= tasks_before, (tasks_before, tasks_after, asyncio.all_tasks(loop))
    assert not peer.server.protocol._request_futures, "pygls' request table keeps finished work"
    assert after["fds"] <= before["fds"], (before, after)
    assert after["threads"] <= before["threads"], (before, after)
    assert after["pool"] <= min(32, (os.cpu_count() or 1) + 4), after  # the default executor's bound
    assert "result" in run(loop, peer.request("mellum/status"))


def _utf16_offset(text: str, line: int, character: int) -> int:
    """The reference: offset of an LSP position (UTF-16 code units, clamped to the line, a position
    inside a surrogate pair meaning that character), written apart from ``documents.py``."""
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    if line >= len(starts):
        return len(text)
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    content = text[starts[line] : end].rstrip("\r\n") if line + 1 < len(starts) else text[starts[line] :]
    units = 0
    for i, ch in enumerate(content):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > character:
            return starts[line] + i
        units += width
    return starts[line] + len(content)


def _apply(text: str, change: dict) -> str:
    if "range" not in change:
        return change["text"]
    a = _utf16_offset(text, **change["range"]["start"])
    b = _utf16_offset(text, **change["range"]["end"])
    a, b = min(a, b), max(a, b)
    return text[:a] + change["text"] + text[b:]


edits = st.lists(
    st.one_of(
        st.tuples(st.just("open"), uris, texts),
        st.tuples(st.just("change"), uris, st.lists(
            st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": positions, "end": positions}),
                                   "text": texts}) | st.fixed_dictionaries({"text": texts}), min_size=1, max_size=3)),
        st.tuples(st.just("close"), uris, st.none()),
        st.tuples(st.just("bad"), uris, st.sampled_from([-1, 2**31, "seven", None])),
    ), min_size=1, max_size=8,
)  # fmt: skip


def test_the_servers_document_equals_the_clients_after_fuzzed_edits(session):
    """Incremental edits in UTF-16 (astral characters, CRLF and CR line ends, positions past the end
    or inside a surrogate pair, reversed ranges); invalid positions drop the whole notification."""
    loop, peer, _ = session
    model: dict[str, tuple[str, int]] = {}
    version = itertools.count(1)

    async def check(steps) -> None:
        for uri in URIS:  # from a known state: whatever earlier examples left open is closed
            peer.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        model.clear()
        for kind, uri, arg in steps:
            v = next(version)
            if kind == "open":
                peer.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                                      "version": v, "text": arg}})  # fmt: skip
                model[uri] = (arg, v)
            elif kind == "close":
                peer.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
                model.pop(uri, None)
            elif kind == "change":
                peer.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": v},
                                                       "contentChanges": arg})  # fmt: skip
                if uri in model:
                    text = model[uri][0]
                    for change in arg:
                        text = _apply(text, change)
                    model[uri] = (text, v)
            else:  # a position no editor sends: the notification is dropped whole
                bad = {"range": {"start": {"line": 0, "character": 0}, "end": {"line": arg, "character": 0}},
                       "text": "lost"}  # fmt: skip
                peer.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": v},
                                                       "contentChanges": [{"text": "lost too"}, bad]})  # fmt: skip
        for uri in URIS:
            answer = await peer.request("mellum/document", {"uri": uri})
            if uri in model:
                assert answer["result"]["text"] == model[uri][0], (uri, steps)
                assert answer["result"]["version"] == model[uri][1]
            else:
                assert answer["error"]["code"] == -32602

    @HALF
    @given(steps=edits)
    def fuzz(steps) -> None:
        run(loop, check(steps))

    fuzz()


garbage_lines = st.one_of(
    st.sampled_from([b"Content-Length: -5\r\n", b"Content-Length: x\r\n", b"Content-Length: 99999999999999\r\n",
                     b"Content-Length: \xb2\r\n", b"Content-Length: 1e3\r\n", b"Content-Length:\r\n", b"\r\n",
                     b"Content-Type: application/json\r\n", b":\r\n", b"Content-Length: 10\r\n\r\n{\"a\"",
                     b"x" * 70_000 + b"\r\n", b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"]),
    st.binary(max_size=40),
)  # fmt: skip


def test_garbage_headers_and_streams_that_end_midway_never_stop_the_server(session):
    """Each example is a connection of its own (as a TCP client's: a 64 KiB line limit) carrying
    garbage and then ending; the server's own stream keeps answering."""
    loop, peer, _ = session
    probe = json.dumps({"jsonrpc": "2.0", "id": "probe", "method": "mellum/status"}).encode()
    counts = {"n": 0}

    async def check(lines: list[bytes]) -> None:
        reader = asyncio.StreamReader(limit=2**16)
        reader.feed_data(b"".join(lines))
        reader.feed_eof()
        assert await asyncio.wait_for(message_loop(reader, peer.server.protocol), 10) is None
        await peer.quiet()
        peer.null_errors.clear()  # garbage may carry a complete (bad) message: answered, not counted
        peer.answers.clear()
        await exchange(peer, [probe])

    @HALF
    @given(lines=st.lists(garbage_lines, min_size=1, max_size=5))
    def fuzz(lines: list[bytes]) -> None:
        counts["n"] += 1
        run(loop, check(lines))

    fuzz()
    assert counts["n"] >= min(FUZZ_CASES // 2, 50)


# ---- a real server process -----------------------------------------------------------------------
class Process:
    """``mellum-lsp serve`` over pipes; a thread reads its messages and answers its requests."""

    def __init__(self, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mellum_lsp.cli", "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        self.answers: dict[str, list[dict]] = defaultdict(list)
        self.nulls = 0
        self.cv = threading.Condition()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, body: bytes) -> None:
        with self.lock:
            self.proc.stdin.write(frame(body))
            self.proc.stdin.flush()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line:
                with self.cv:
                    self.cv.notify_all()
                return
            msg = json.loads(out.read(length))
            if "method" in msg and "id" in msg:
                self.send(
                    json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": client_answer(msg)}).encode()
                )
                continue
            with self.cv:
                if "method" in msg:
                    pass
                elif msg.get("id") is None:
                    self.nulls += 1
                else:
                    self.answers[key(msg["id"])].append(msg)
                self.cv.notify_all()

    def wait(self, done, what: str, timeout: float = 30.0) -> None:
        with self.cv:
            ok = self.cv.wait_for(lambda: done() or self.proc.poll() is not None, timeout)
        assert self.proc.poll() is None, f"the server exited with {self.proc.returncode} after {what}"
        assert ok and done(), f"no answer in {timeout} s to {what}"

    def request(self, method: str, params: Any, rid: str) -> dict:
        self.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode())
        self.wait(lambda: key(rid) in self.answers, method)
        with self.cv:
            return self.answers.pop(key(rid))[0]

    def counts(self) -> dict[str, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {"fds": len(os.listdir(f"/proc/{self.proc.pid}/fd")),
                "threads": int(re.search(r"Threads:\s+(\d+)", status)[1]),
                "rss_kb": int(re.search(r"VmRSS:\s+(\d+)", status)[1])}  # fmt: skip


@pytest.mark.slow
def test_a_real_server_process_answers_fuzzed_traffic_and_its_fds_threads_and_memory_stay_flat(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / ".git").mkdir()
    server = Process(dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state")))
    ids = itertools.count(1)
    try:
        init = {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {"textDocument": {
            "inlineCompletion": {}}}, "initializationOptions": NO_ENGINE}  # fmt: skip
        assert "result" in server.request("initialize", init, "init")
        server.send(b'{"jsonrpc": "2.0", "method": "initialized", "params": {}}')
        marks: list[dict] = []

        @HALF
        @given(bodies=frames(root.as_uri(), ids))
        def fuzz(bodies: list[bytes]) -> None:
            want = defaultdict(int)
            with server.cv:
                nulls = server.nulls + sum(expected(b)[0] == "null" for b in bodies)
            for body in bodies:
                kind, value = expected(body)
                if kind == "id":
                    want[key(value)] += 1
                server.send(body)
            server.wait(lambda: server.nulls >= nulls and all(len(server.answers[k]) >= n for k, n in want.items()),
                        f"{[b[:100] for b in bodies]}")  # fmt: skip
            with server.cv:
                server.answers.clear()
            if len(marks) < 2 or len(marks) % 100 == 0:
                marks.append(server.counts())
            else:
                marks.append({})

        fuzz()
        assert "result" in server.request("mellum/status", {}, "alive")
        time.sleep(0.5)  # background work settles
        start, end = next(m for m in marks[1:] if m), server.counts()
        print(f"real server: {len(marks)} examples; after warm-up {start}, at the end {end}")
        assert end["fds"] <= start["fds"], (start, end)
        assert end["threads"] <= start["threads"] + 2, (start, end)
        assert end["rss_kb"] - start["rss_kb"] < max(8_000, 0.05 * start["rss_kb"]), (start, end)
        assert server.request("shutdown", None, "bye").get("result", 0) is None
        server.send(b'{"jsonrpc": "2.0", "method": "exit"}')
        assert server.proc.wait(30) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_the_lifecycle_out_of_order(tmp_path):
    """Requests before initialize are answered; after shutdown every request is answered with an
    error (InvalidRequest) instead of silence; a second initialize is refused; exit ends the process
    with 0 after shutdown and 1 without."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    for with_shutdown in (True, False):
        server = Process(env)
        try:
            early = server.request("mellum/status", {}, "early")
            assert "result" in early or "error" in early
            init = {
                "processId": None,
                "rootUri": None,
                "capabilities": {},
                "initializationOptions": NO_ENGINE,
            }
            assert "result" in server.request("initialize", init, "init")
            again = server.request("initialize", init, "again")
            assert again["error"]["code"] == -32600 and "initialize" in again["error"]["message"]
            server.send(b'{"jsonrpc": "2.0", "method": "initialized", "params": {}}')
            assert "result" in server.request("mellum/status", {}, "ok")
            if with_shutdown:
                assert server.request("shutdown", None, "down") == {
                    "jsonrpc": "2.0",
                    "id": "down",
                    "result": None,
                }
                late = server.request("mellum/status", {}, "late")
                assert late["error"]["code"] == -32600 and "shut down" in late["error"]["message"]
                late = server.request("textDocument/inlineCompletion", {"textDocument": {"uri": URIS[0]},
                                      "position": {"line": 0, "character": 0}}, "late2")  # fmt: skip
                assert late["error"]["code"] == -32600
            server.send(b'{"jsonrpc": "2.0", "method": "exit"}')
            assert server.proc.wait(30) == (0 if with_shutdown else 1)
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
