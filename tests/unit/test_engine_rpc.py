"""The engine process over its socket: handshake, streaming, cancellation, superseding storms,
fuzzed frames, client disconnects and a crash followed by a restart."""

import asyncio
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time

import msgpack
import pytest

from engine.protocol import ErrorCode
from engine.rpc import MAX_FRAME, EngineClient, EngineError, encode_frame, read_frame

PREFIX = "def wrap(text, width=70, **kwargs):\n    w = TextWrapper(width=width, **kwargs)\n    return w."


class EngineProcess:
    def __init__(self, model_dir, sock, *extra):
        self.sock = str(sock)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--model", str(model_dir), "--socket", self.sock,
             "--backend", "torch", "--margin", "8", *extra],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            line = self.proc.stderr.readline()
            if line.startswith("ready"):
                break
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}")
            assert time.monotonic() < deadline, "engine did not start"

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def sock_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sock")
    os.chmod(d, 0o700)
    return d


@pytest.fixture(scope="module")
def engine_proc(tiny_model_dir, sock_dir):
    e = EngineProcess(tiny_model_dir, sock_dir / "e.sock")
    yield e
    e.stop()


def arun(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def test_socket_is_private_and_handshake_describes_the_engine(engine_proc):
    assert stat.S_IMODE(os.stat(engine_proc.sock).st_mode) == 0o600

    async def go():
        c = await EngineClient.connect(engine_proc.sock)
        try:
            return await c.request("handshake")
        finally:
            await c.close()

    h = arun(go())
    assert h["protocol"] == 1 and h["fim"] is True and h["backend"] == "torch"
    assert h["context_length"] == 4096 and h["model_id"].startswith("mellum:")


def test_complete_streams_partials_that_add_up_to_the_result(engine_proc):
    async def go():
        c = await EngineClient.connect(engine_proc.sock)
        parts = []
        try:
            r = await c.request("complete", {"prefix": PREFIX, "suffix": "\n", "max_tokens": 24, "document": "s"},
                                on_partial=parts.append)  # fmt: skip
            return r, parts
        finally:
            await c.close()

    r, parts = arun(go())
    assert "".join(p["text"] for p in parts) == r["text"]
    assert r["served"] == "model" and r["cache"]["prompt_tokens"] > 10


async def _raw(sock, data: bytes, read: int = 1):
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(data)
    await writer.drain()
    out = []
    for _ in range(read):
        try:
            msg = await asyncio.wait_for(read_frame(reader), 30)
        except asyncio.IncompleteReadError:
            break
        if msg is None:
            break
        out.append(msg)
    writer.close()
    return out


def frame(obj) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def test_fuzzed_frames_get_errors_and_the_engine_keeps_serving(engine_proc):
    rng = random.Random(0)
    cases = [
        (struct.pack(">I", MAX_FRAME + 1) + b"x" * 10, ErrorCode.PARSE_ERROR),  # huge length
        (struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1", ErrorCode.PARSE_ERROR),  # not msgpack
        (frame([1, 2, 3]), ErrorCode.PARSE_ERROR),  # not a map
        (frame({"id": 1.5, "method": "stats"}), ErrorCode.INVALID_REQUEST),  # wrong id type
        (frame({"id": 2, "method": 7}), ErrorCode.INVALID_REQUEST),  # wrong method type
        (frame({"id": 3, "method": "complete", "params": {"prefix": ["x"]}}), ErrorCode.INVALID_PARAMS),
        (frame({"id": 4, "method": "complete", "params": "nope"}), ErrorCode.INVALID_PARAMS),
        (frame({"id": 5, "method": "teleport"}), ErrorCode.METHOD_NOT_FOUND),
    ]
    for _ in range(20):
        n = rng.randint(1, 40)
        cases.append((struct.pack(">I", n) + bytes(rng.randrange(256) for _ in range(n)), None))

    async def go():
        for data, code in cases:
            replies = await _raw(engine_proc.sock, data)
            if code is not None:
                assert replies and replies[0]["error"]["code"] == code, (data[:20], replies)
            else:
                assert all("error" in r for r in replies)
        # a bad frame does not poison its connection: the next request on it is served
        replies = await _raw(
            engine_proc.sock, frame({"id": 9, "method": "nope"}) + frame({"id": 10, "method": "stats"}), 2
        )
        assert replies[0]["error"]["code"] == ErrorCode.METHOD_NOT_FOUND and "result" in replies[1]
        # and the engine still serves new connections
        c = await EngineClient.connect(engine_proc.sock)
        try:
            return await c.request("handshake")
        finally:
            await c.close()

    assert arun(go())["protocol"] == 1
    assert engine_proc.proc.poll() is None


def test_storm_of_superseding_requests_leaves_no_orphaned_work_and_memory_flat(engine_proc):
    async def storm(c, tag, n=500):
        futures = []
        for i in range(n):
            # each keystroke changes the suffix too, so no request can be served typed-ahead
            params = {"prefix": PREFIX + "x" * (i % 7), "suffix": f"\n# {tag} {i}\n", "document": "storm",
                      "max_tokens": 32}  # fmt: skip
            futures.append(c.start("complete", params)[1])
        results = await asyncio.gather(*futures, return_exceptions=True)
        superseded = sum(isinstance(r, EngineError) and r.code == ErrorCode.SUPERSEDED for r in results)
        assert not isinstance(results[-1], Exception), results[-1]
        assert superseded + sum(isinstance(r, dict) for r in results) == n
        return superseded

    async def go():
        c = await EngineClient.connect(engine_proc.sock)
        try:
            await storm(c, "warm", 100)
            rss0 = engine_proc.rss_kb()
            s1 = await storm(c, "a")
            rss1 = engine_proc.rss_kb()
            s2 = await storm(c, "b")
            rss2 = engine_proc.rss_kb()
            stats = await c.request("stats")
            return s1, s2, rss0, rss1, rss2, stats
        finally:
            await c.close()

    s1, s2, rss0, rss1, rss2, stats = arun(go())
    assert s1 > 400 and s2 > 400  # almost all were superseded before doing work
    assert stats["queued"] == 0
    assert stats["cache"]["entries"] <= 4  # one tip for the document, plus snapshots
    assert rss2 - rss1 < 20_000 and rss2 - rss0 < 40_000, (rss0, rss1, rss2)  # KB: flat


def test_cancel_by_id_and_disconnect_cancel_engine_work(engine_proc):
    async def go():
        c = await EngineClient.connect(engine_proc.sock)
        before = (await c.request("stats"))["totals"]["cancelled"]
        rid, fut = c.start("complete", {"prefix": PREFIX, "suffix": "", "max_tokens": 4000, "document": "cx"})
        await asyncio.sleep(0.3)
        await c.cancel(rid)
        with pytest.raises(EngineError) as e:
            await fut
        assert e.value.code == ErrorCode.CANCELLED
        # a client that disconnects mid-stream cancels its work
        d = await EngineClient.connect(engine_proc.sock)
        d.start("complete", {"prefix": PREFIX, "suffix": "", "max_tokens": 4000, "document": "dx"})
        await asyncio.sleep(0.3)
        await d.close()
        for _ in range(200):
            stats = await c.request("stats")
            if stats["totals"]["cancelled"] >= before + 2:
                break
            await asyncio.sleep(0.05)
        await c.close()
        return before, stats

    before, stats = arun(go())
    assert stats["totals"]["cancelled"] >= before + 2
    assert stats["queued"] == 0


def test_deadline_ms_caps_a_generation(engine_proc):
    async def go():
        c = await EngineClient.connect(engine_proc.sock)
        try:
            t0 = time.monotonic()
            r = await c.request(
                "complete", {"prefix": PREFIX, "max_tokens": 4000, "deadline_ms": 300, "document": "dl"}
            )
            return r, time.monotonic() - t0
        finally:
            await c.close()

    r, elapsed = arun(go())
    assert r["stopped"] == "deadline" and elapsed < 10


def test_killed_engine_gives_the_client_an_error_and_a_restarted_one_serves(tiny_model_dir, sock_dir):
    e = EngineProcess(tiny_model_dir, sock_dir / "crash.sock")

    async def first():
        c = await EngineClient.connect(e.sock)
        _, fut = c.start("complete", {"prefix": PREFIX, "max_tokens": 4000, "document": "k"})
        await asyncio.sleep(0.3)
        os.kill(e.proc.pid, signal.SIGKILL)
        with pytest.raises(EngineError) as err:
            await fut
        await c.close()
        return err.value.code

    try:
        assert arun(first()) == ErrorCode.UNAVAILABLE
        e.proc.wait(10)
        again = EngineProcess(tiny_model_dir, sock_dir / "crash.sock")  # replaces the stale socket

        async def second():
            c = await EngineClient.connect(again.sock)
            try:
                return await c.request("complete", {"prefix": PREFIX, "max_tokens": 8})
            finally:
                await c.close()

        assert arun(second())["served"] == "model"
        again.stop()
    finally:
        e.stop()


def test_stdio_mode_speaks_the_same_protocol(tiny_model_dir):
    async def go():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "serve", "--model", str(tiny_model_dir), "--stdio", "--backend", "torch",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        proc.stdin.write(encode_frame({"id": 1, "method": "handshake"}))
        proc.stdin.write(
            encode_frame({"id": 2, "method": "complete", "params": {"prefix": "x = ", "max_tokens": 4}})
        )
        await proc.stdin.drain()
        a = await read_frame(proc.stdout)
        while True:
            b = await read_frame(proc.stdout)
            if "partial" not in b:
                break
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
        return a, b

    a, b = arun(go())
    assert a["id"] == 1 and a["result"]["protocol"] == 1
    assert b["id"] == 2 and "text" in b["result"]
