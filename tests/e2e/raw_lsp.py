"""A blocking JSON-RPC client that writes exact bytes to `mellum-lsp serve`, for tests of the
wire itself (malformed input) and of document synchronisation."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from typing import Any


class RawLsp:
    def __init__(self, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mellum_lsp.cli", "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, **(env or {})),
        )  # fmt: skip
        self._ids = itertools.count(1)
        self.notifications: list[dict] = []
        self._watchdog: threading.Timer | None = None

    # ---- framing -------------------------------------------------------------------------
    def send_bytes(self, body: bytes) -> None:
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        self.send_bytes(json.dumps(message).encode())

    def read(self, timeout: float = 60.0) -> dict:
        """The next message; the process is killed (and this fails) if none comes in time."""
        self._watchdog = threading.Timer(timeout, self.proc.kill)
        self._watchdog.start()
        try:
            length = None
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    raise EOFError("the server closed its output")
                if line == b"\r\n" and length is not None:
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            return json.loads(self.proc.stdout.read(length))
        finally:
            self._watchdog.cancel()

    # ---- messages ------------------------------------------------------------------------
    def response(self, msg_id: Any) -> dict:
        """Read until the response to `msg_id`, answering the server's own requests."""
        while True:
            msg = self.read()
            if "method" in msg and "id" in msg:  # a request from the server: accept it
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": self._answer(msg)})
                continue
            if "method" in msg:
                self.notifications.append(msg)
                continue
            if msg.get("id") == msg_id:
                return msg

    @staticmethod
    def _answer(msg: dict) -> Any:
        if msg["method"] == "workspace/configuration":
            return [None for _ in msg["params"]["items"]]
        return None

    def request(self, method: str, params: Any = None) -> dict:
        msg_id = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return self.response(msg_id)

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def initialize(self, encodings: list[str] | None = None, options: Any = None) -> dict:
        caps: dict = {"textDocument": {"inlineCompletion": {}}}
        if encodings:
            caps["general"] = {"positionEncodings": encodings}
        result = self.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": caps,
                                             "initializationOptions": options})  # fmt: skip
        self.notify("initialized", {})
        return result

    def close(self) -> int:
        try:
            self.request("shutdown")
            self.notify("exit")
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
