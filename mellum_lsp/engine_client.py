"""The language server's side of the engine: find it, start it, keep talking to it.

- `engine_target(settings)`: where the engine for these settings listens and how to start one
  there. The default is the shared engine of (model folder, backend) at
  `private_socket_path(engine_socket_name(model, backend))`, started detached
  (`start_new_session`) with `--idle-exit`, so several editor windows share one loaded model.
  `engine.socket` names the socket instead; `engine.url` runs a local engine in front of a
  remote OpenAI-compatible server (`--remote URL`).
- `EngineSession`: one connection that reconnects (and restarts the engine) when it is lost and
  retries the request once; `complete()` sends context chunks by key, with their text only the
  first time on a connection (again if the engine answers "unknown context key"); cancelling
  the awaiting task cancels the engine request (`EngineClient.cancel(id)`).
- `EngineUnavailable`: no engine, and none could be started (the message says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.protocol import ErrorCode
from engine.rpc import EngineClient, EngineError, engine_socket_name, private_socket_path

from .settings import Settings
from .telemetry import state_dir

log = logging.getLogger(__name__)
DEFAULT_CONTEXT_LENGTH = 8192  # when the engine does not know its model's (a remote server)


class EngineUnavailable(Exception):
    """No engine to talk to; the message is meant for the user."""


@dataclass(frozen=True)
class EngineTarget:
    socket: Path
    command: tuple[str, ...] | None  # starts an engine listening on `socket`; None: connect only
    description: str


def default_model_dir() -> str:
    from engine.embedded import embedded_model_dir

    return str(embedded_model_dir())


def engine_target(settings: Settings, python: str = sys.executable) -> EngineTarget:
    """Where to find (or how to start) the engine these settings ask for."""
    eng, model = settings.engine, settings.model
    common = ["--idle-exit", f"{eng.idle_exit_s:g}", *eng.args]
    if eng.url:
        digest = hashlib.sha256(eng.url.encode()).hexdigest()[:12]
        socket = Path(eng.socket) if eng.socket else private_socket_path(f"engine-remote-{digest}")
        cmd = (python, "-m", "engine", "serve", "--remote", eng.url, "--socket", str(socket), *common)
        return EngineTarget(socket, cmd, f"remote model at {eng.url}")
    try:
        model_dir = model.path or default_model_dir()
    except FileNotFoundError as e:
        if eng.socket:
            return EngineTarget(Path(eng.socket), None, f"engine at {eng.socket}")
        raise EngineUnavailable(f"{e}; set mellum.model.path") from None
    if not (Path(model_dir) / "config.json").is_file():
        raise EngineUnavailable(f"mellum.model.path {model_dir!r} is not a model folder (no config.json)")
    socket = (
        Path(eng.socket) if eng.socket else private_socket_path(engine_socket_name(model_dir, model.backend))
    )
    cmd = (python, "-m", "engine", "serve", "--model", model_dir, "--backend", model.backend,
           "--socket", str(socket), *common)  # fmt: skip
    return EngineTarget(socket, cmd, f"{Path(model_dir).name} ({model.backend})")


def _log_tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


async def _try_connect(socket: Path) -> EngineClient | None:
    try:
        return await EngineClient.connect(socket)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, OSError):
        return None


@contextlib.asynccontextmanager
async def _spawn_lock(socket: Path) -> AsyncIterator[None]:
    """Held while starting an engine, so windows that start together load one model."""
    lock = open(str(socket) + ".lock", "a")  # noqa: SIM115 - closed below
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


async def start_engine(target: EngineTarget, timeout_s: float) -> EngineClient:
    """Connect to `target`, starting a detached engine there when nothing listens."""
    client = await _try_connect(target.socket)
    if client is not None:
        return client
    if target.command is None:
        raise EngineUnavailable(
            f"no engine listens on {target.socket} and no model is configured to start one"
        )
    async with _spawn_lock(target.socket):
        client = await _try_connect(target.socket)  # another window may have started it meanwhile
        if client is not None:
            return client
        logs = state_dir()
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{target.socket.stem}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(  # detached: outlives this server, shared with other windows
                target.command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        log.info("started engine pid %s: %s", proc.pid, " ".join(target.command))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            client = await _try_connect(target.socket)
            if client is not None:
                _reap_later(proc)
                return client
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            proc.kill()
            proc.wait()
            raise EngineUnavailable(f"the engine did not start within {timeout_s:g} s (log: {log_path})")
    client = await _try_connect(target.socket)
    if client is not None:
        return client
    raise EngineUnavailable(
        f"the engine exited with code {proc.returncode}: {_log_tail(log_path)} (log: {log_path})"
    )


_children: list[subprocess.Popen] = []


def _reap_later(proc: subprocess.Popen) -> None:
    """Remember an engine we started so that its exit status is collected (no zombies)."""
    _children.append(proc)
    _children[:] = [p for p in _children if p.poll() is None]


def _wire_context(chunks: Any, known: set[str], full: bool) -> list[dict]:
    out = []
    for c in chunks:
        item = {"path": c.path, "key": c.key}
        if full or c.key not in known:
            item["text"] = c.text
        out.append(item)
    return out


class EngineSession:
    """A connection to the engine of `target` that survives the engine's restarts."""

    def __init__(
        self,
        target: EngineTarget,
        *,
        start_timeout_s: float = 180.0,
        loading: Callable[[str], contextlib.AbstractAsyncContextManager] | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        self.target = target
        self.start_timeout_s = start_timeout_s
        self.loading = loading  # progress reporter around starting an engine
        self.on_event = on_event if on_event is not None else (lambda e: None)
        self.client: EngineClient | None = None
        self.info: dict = {}  # the handshake
        self.known_keys: set[str] = set()
        self.keeps_chunks = True  # the engine remembers chunk text by key (a remote one does not)
        self.connects = 0
        self.retry_after_s = 10.0  # after a failed start, fail fast for this long
        self._failure: tuple[float, EngineUnavailable] | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed.is_set()

    @property
    def context_length(self) -> int:
        return int(self.info.get("context_length") or DEFAULT_CONTEXT_LENGTH)

    async def connect(self) -> EngineClient:
        """The live connection, reconnecting or starting the engine when needed."""
        async with self._lock:
            if self.client is not None and not self.client.closed.is_set():
                return self.client
            if self.client is not None:
                await self.client.close()
                self.client = None
            problem: Exception | None = None
            for _ in range(3):  # a dying engine may still accept a connection, then drop it
                client = await self._open()
                try:
                    self.info = await asyncio.wait_for(client.request("handshake"), 30)
                except (EngineError, asyncio.TimeoutError) as e:
                    await client.close()
                    problem = e
                    continue
                self.client = client
                self.known_keys = set()
                self.keeps_chunks = self.info.get("backend") != "remote"
                self.connects += 1
                self.on_event({"event": "engine_connected", "connects": self.connects, "info": self.info})
                return client
            raise EngineUnavailable(
                f"the engine at {self.target.socket} did not answer the handshake: {problem}"
            )

    async def _open(self) -> EngineClient:
        client = await _try_connect(self.target.socket)
        if client is not None:
            return client
        if self._failure is not None and time.monotonic() - self._failure[0] < self.retry_after_s:
            raise self._failure[1]
        try:
            client = await self._start()
        except EngineUnavailable as e:
            self._failure = (time.monotonic(), e)
            raise
        self._failure = None
        return client

    async def _start(self) -> EngineClient:
        if self.loading is None:
            return await start_engine(self.target, self.start_timeout_s)
        async with self.loading(f"Starting the Mellum engine: {self.target.description}") as report:
            client = await start_engine(self.target, self.start_timeout_s)
            report.end_message = "the engine is ready"
            return client

    async def request(self, method: str, params: Any = None, on_partial=None) -> Any:
        """One request; after a lost connection, reconnect (restarting the engine) and retry once.
        `params` may be a function, called for each attempt (after connecting)."""
        for attempt in range(2):
            client = await self.connect()
            wire = params() if callable(params) else params
            rid, future = client.start(method, wire, on_partial)
            document = wire.get("document") if isinstance(wire, dict) else None
            self.on_event({"event": "engine_request", "request": rid, "method": method, "document": document})
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                self._cancel(client, rid, future, method)
                raise
            except EngineError as e:
                if e.code == ErrorCode.UNAVAILABLE and attempt == 0:
                    log.warning("engine unavailable (%s); reconnecting", e.message)
                    with contextlib.suppress(Exception):
                        await client.close()
                    continue
                raise
        raise AssertionError("unreachable")

    def _cancel(self, client: EngineClient, rid: int, future: asyncio.Future, method: str) -> None:
        """Cancel engine request `rid` and report how the engine answered it."""

        async def run() -> None:
            await client.cancel(rid)
            outcome = "answered"
            try:
                await asyncio.wait_for(asyncio.shield(future), 30)
            except EngineError as e:
                outcome = {ErrorCode.CANCELLED: "cancelled", ErrorCode.SUPERSEDED: "superseded"}.get(
                    e.code, f"error {e.code}"
                )
            except (asyncio.TimeoutError, asyncio.CancelledError):
                outcome = "no answer"
            self.on_event({"event": "engine_cancelled", "request": rid, "method": method, "outcome": outcome})

        task = asyncio.ensure_future(run())
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    async def complete(self, params: dict, chunks: Any = (), on_partial=None) -> dict:
        """FIM completion; `chunks` have `path`, `text`, `key`."""
        return await self.with_context("complete", params, chunks, on_partial)

    async def with_context(self, method: str, params: dict, chunks: Any = (), on_partial=None) -> dict:
        """`complete` or `prefill` with context chunks sent by key where the engine has their text."""
        chunks = list(chunks)
        for full in (False, True):

            def wire(full: bool = full) -> dict:
                full = full or not self.keeps_chunks
                return dict(params, context=_wire_context(chunks, self.known_keys, full))

            try:
                result = await self.request(method, wire, on_partial)
            except EngineError as e:
                if e.code != ErrorCode.INVALID_PARAMS or full:
                    raise
                if "keeps no chunks" in e.message:  # a remote engine: always send the text
                    self.keeps_chunks = False
                elif "unknown context key" not in e.message:
                    raise
                self.known_keys.clear()
                continue
            self.known_keys.update(c.key for c in chunks)
            return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
