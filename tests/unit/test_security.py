"""Security of what listens: loopback addresses by default, the HTTP bearer token (required when
set, compared in constant time), the engine socket (0600 in a 0700 folder owned by the user, also
under a permissive umask), and bounded request bodies and frames on every transport.

Listening addresses are read from /proc/<pid>/net/tcp{,6} for the sockets the process holds, not
from what it prints.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.protocol import ErrorCode
from engine.rpc import MAX_FRAME, EngineClient, private_socket_path, read_frame

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests"


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with_target = os.readlink(f"/proc/{pid}/fd/{fd}") if os.path.islink(f"/proc/{pid}/fd/{fd}") else ""
        if m := re.fullmatch(r"socket:\[(\d+)\]", with_target):
            inodes.add(m[1])
    out = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            host, port = local.split(":")
            raw = bytes.fromhex(host)
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                address = socket.inet_ntop(
                    socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                )
            out.append((address, int(port, 16)))
    return out


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith(prefix) or prefix in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {prefix!r} line (exit code {proc.poll()})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- loopback by default -------------------------------------------------------------------------
def test_the_language_server_over_tcp_listens_on_loopback_only(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mellum_lsp.cli", "serve", "--tcp", "0"], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "XDG_STATE_HOME": str(tmp_path)})  # fmt: skip
    try:
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", wait_line(proc, "listening on"))[1])
        assert listening(proc.pid) == [("127.0.0.1", port)]
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An engine with HTTP on a bare port (``--http 0``: the default host) and a bearer token."""
    folder = Path(tempfile.mkdtemp(prefix="mlsp-sec-"))
    os.chmod(folder, 0o700)
    sock = folder / "e.sock"
    env = {**os.environ, "MELLUM_HTTP_TOKEN": TOKEN}  # the environment, not argv: /proc/PID/cmdline is public
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--socket", str(sock), "--http", "0"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
    http_line = wait_line(proc, "http ready ")
    wait_line(proc, "ready ")
    host, port = http_line.split()[-1].rsplit(":", 1)
    yield {"proc": proc, "sock": sock, "host": host, "port": int(port)}
    stop(proc)
    shutil.rmtree(folder, ignore_errors=True)


def test_the_engines_http_listens_on_loopback_unless_told_otherwise(engine):
    assert engine["host"] == "127.0.0.1"
    assert listening(engine["proc"].pid) == [("127.0.0.1", engine["port"])]
    from engine.server import http_address

    assert http_address("8080") == ("127.0.0.1", 8080) and http_address(":8080") == ("127.0.0.1", 8080)
    assert http_address("0.0.0.0:8080") == ("0.0.0.0", 8080)  # only when asked


def _get(engine, path: str, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(engine["host"], engine["port"], timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "auth",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
     f"bearer  {TOKEN.upper()}"],
)  # fmt: skip
def test_the_bearer_token_is_required(engine, auth):
    status, body = _get(engine, "/v1/models", {} if auth is None else {"Authorization": auth})
    assert status == 401 and body["error"]["code"] == "invalid_api_key", (auth, status, body)


def test_the_right_token_is_accepted_and_health_stays_open(engine):
    assert _get(engine, "/v1/models", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert (
        _get(engine, "/v1/models", {"Authorization": f"bearer {TOKEN}"})[0] == 200
    )  # the scheme is caseless
    assert _get(engine, "/health")[0] == 200
    for path in ("/v1//models", "/v1/models/", "/V1/models", "/v1/../v1/models"):  # never a way around it
        assert _get(engine, path)[0] in (401, 404), path


def test_the_token_is_compared_in_constant_time(monkeypatch):
    """``HttpServer._authorize`` compares with ``hmac.compare_digest`` (and never with ==)."""
    import hmac
    import inspect

    from engine import http as engine_http

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(engine_http.hmac, "compare_digest", spy)
    server = engine_http.HttpServer(dispatcher=None, token=TOKEN)
    server._authorize(
        engine_http.Request("GET", "/v1/models", "HTTP/1.1", {"authorization": f"Bearer {TOKEN}"})
    )
    with pytest.raises(engine_http.HttpError):
        server._authorize(engine_http.Request("GET", "/v1/models", "HTTP/1.1", {"authorization": "Bearer x"}))
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (b"x", TOKEN.encode())]
    source = inspect.getsource(engine_http.HttpServer._authorize)
    assert "self.token ==" not in source and "== self.token" not in source


# ---- the engine socket ---------------------------------------------------------------------------
def test_the_engine_socket_is_0600_in_a_0700_folder_of_the_user_even_under_umask_0(tmp_path):
    runtime = Path(tempfile.mkdtemp(prefix="mlsp-"))
    os.chmod(runtime, 0o755)
    try:
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
        code = "from engine.rpc import private_socket_path; print(private_socket_path('engine-test'))"
        sock = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                                   check=True).stdout.strip())  # fmt: skip
        folder = sock.parent
        st = folder.stat()
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
        proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--socket", str(sock)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: os.umask(0))  # fmt: skip
        try:
            wait_line(proc, "ready ")
            mode = os.stat(sock).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
        finally:
            stop(proc)
        assert not sock.exists(), "the engine left its socket behind"
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_socket_folder_open_to_others_or_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = tmp_path / f"mellum-lsp-{os.getuid()}"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    with pytest.raises(PermissionError, match="mode 0700"):
        private_socket_path("x")
    os.chmod(folder, 0o700)
    assert private_socket_path("x") == folder / "x.sock"
    if os.getuid() == 0:  # root can hand the folder to someone else: then it is not ours
        os.chown(folder, 65534, 65534)
        with pytest.raises(PermissionError, match="owned by you"):
            private_socket_path("x")
        folder.rmdir()
        other = tmp_path / "elsewhere"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
        folder.symlink_to(other)  # a link planted to another user's folder is refused too
        with pytest.raises(PermissionError, match="owned by you"):
            private_socket_path("x")


# ---- bounded sizes -------------------------------------------------------------------------------
def _raw_http(engine, data: bytes) -> bytes:
    """What the server answers to ``data`` (sent from a thread: it may answer and close first)."""
    import threading

    with socket.create_connection((engine["host"], engine["port"]), timeout=60) as s:

        def send() -> None:
            try:
                s.sendall(data)
            except OSError:  # the server answered and closed before taking it all
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        sender.join(30)
        return out


def test_http_bodies_and_heads_are_bounded(engine):
    from engine.http import MAX_BODY, MAX_HEAD

    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    # a body announced over the limit is refused before a byte of it is read
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    )
    t0 = time.monotonic()
    assert _raw_http(engine, head).startswith(b"HTTP/1.1 413 ")
    assert time.monotonic() - t0 < 10
    # a chunked body that grows over the limit is cut off at the limit
    chunk = b"x" * 2**20
    chunked = b"".join(b"%X\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 1))
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
    assert _raw_http(engine, head + chunked + b"0\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    # a head that never ends
    assert _raw_http(engine, b"GET /health HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD + 10)).startswith(
        b"HTTP/1.1 431 "
    )
    assert _get(engine, "/health")[0] == 200


def test_engine_frames_are_bounded(engine):
    rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{engine['proc'].pid}/status").read_text())[1])  # noqa: E731

    async def go() -> dict:
        before = rss()
        reader, writer = await asyncio.open_unix_connection(str(engine["sock"]))
        writer.write(struct.pack(">I", MAX_FRAME + 1) + b"\x00" * 4096)  # a length over the limit
        await writer.drain()
        answer = await asyncio.wait_for(read_frame(reader), 30)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # and the connection is closed
        writer.close()
        assert rss() - before < 16_000, "the engine allocated the announced frame"
        client = await EngineClient.connect(engine["sock"])
        try:
            stats = await client.request("stats")
        finally:
            await client.close()
        return {"answer": answer, "stats": stats}

    out = asyncio.run(go())
    assert out["answer"]["id"] is None and out["answer"]["error"]["code"] == ErrorCode.PARSE_ERROR
    assert str(MAX_FRAME) in out["answer"]["error"]["message"]
    assert out["stats"]["connections"] == 1


def test_lsp_messages_are_bounded_and_the_stream_stays_in_step(monkeypatch):
    """A Content-Length over the limit is refused and its body skipped unread, in chunks: the next
    message on the stream is answered. (The limit is lowered to 4 MiB here; it is 256 MiB.)"""
    from mellum_lsp.features import transport

    assert transport.MAX_BODY == 256 * 2**20
    monkeypatch.setattr(transport, "MAX_BODY", 4 * 2**20)

    async def go() -> list[dict]:
        from mellum_lsp.server import create_server

        server = create_server()
        out = bytearray()

        class Writer:
            def write(self, data: bytes) -> None:
                out.extend(data)

            def close(self) -> None:
                pass

        server.protocol.set_writer(Writer())
        reader = asyncio.StreamReader(limit=2**16)
        probe = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "mellum/status", "params": None}).encode()
        reader.feed_data(b"Content-Length: %d\r\n\r\n" % (transport.MAX_BODY + 1))
        for _ in range(5):  # the announced body, fed in pieces
            reader.feed_data(b" " * (2**20 if _ < 4 else 1))
        reader.feed_data(b"Content-Length: %d\r\n\r\n" % len(probe) + probe)
        reader.feed_eof()
        await transport.message_loop(reader, server.protocol)
        await asyncio.sleep(0.05)
        messages, rest = [], bytes(out)
        while rest:
            head, _, rest = rest.partition(b"\r\n\r\n")
            n = int(re.search(rb"Content-Length: (\d+)", head)[1])
            messages.append(json.loads(rest[:n]))
            rest = rest[n:]
        return messages

    answers = asyncio.run(go())
    assert answers[0]["id"] is None and answers[0]["error"]["code"] == -32600
    assert "over the limit" in answers[0]["error"]["message"]
    assert answers[1]["id"] == 7  # answered: ServerNotInitialized, as LSP says before initialize
    assert answers[1]["error"]["code"] == -32002
