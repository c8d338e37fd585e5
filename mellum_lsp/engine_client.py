"""The language server's side of the engine: find it, start it, keep talking to it.

- `engine_target(settings)`: where the engine for these settings listens and how to start one
  there. The default is the shared engine of (model folder, backend) at
  `private_socket_path(engine_socket_name(model, backend))`, started detached
  (`start_new_session`) with `--idle-exit`, so several editor windows share one loaded model.
  Without `model.path` the engine is started without `--model` (it then loads its embedded
  model), on the socket of "the embedded model of this engine installation".
  `engine.socket` names the socket instead; `engine.url` runs a local engine in front of a
  remote OpenAI-compatible server (`--remote URL`).
- `EngineSession`: one connection that reconnects (and restarts the engine) when it is lost;
  `complete()` sends context chunks by key and the document as an edit of the version the
  engine holds (`held.py`); the engine's error code decides a retry (reconnect, or send the
  text it does not hold). Cancelling the awaiting task cancels the engine request.
- `EngineManager`: the language server's current `EngineSession`, made from the settings and
  remade when the `engine` or `model` settings change; failures shown at most once a minute.
- `EngineUnavailable`: no engine, and none could be started (the message says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import inspect
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.protocol import ErrorCode
from engine.rpc import EngineClient, EngineError, engine_socket_name, private_socket_path

from .held import Held
from .settings import Settings
from .telemetry import state_dir

log = logging.getLogger(__name__)
ATTEMPTS = 3  # a request and its recoveries (reconnect, resend a chunk or a document)
DEFAULT_CONTEXT_LENGTH = 8192  # when the engine does not know its model's (a remote server)


class EngineUnavailable(Exception):
    """No engine to talk to; the message is meant for the user."""


@dataclass(frozen=True)
class EngineTarget:
    socket: Path
    command: tuple[str, ...] | None  # starts an engine listening on `socket`; None: connect only
    description: str


def embedded_model_key() -> str:
    """Stands for the model folder in the socket name of the engine's embedded model: one shared
    engine per installed engine package (the embedded model ships inside it) and backend."""
    return str(Path(inspect.getfile(EngineClient)).resolve().parent) + "#embedded"


def engine_target(settings: Settings, python: str = sys.executable) -> EngineTarget:
    """Where to find (or how to start) the engine these settings ask for."""
    eng, model = settings.engine, settings.model
    common = ["--idle-exit", f"{eng.idle_exit_s:g}", *eng.args]
    if eng.url:
        digest = hashlib.sha256(eng.url.encode()).hexdigest()[:12]
        socket = Path(eng.socket) if eng.socket else private_socket_path(f"engine-remote-{digest}")
        cmd = (python, "-m", "engine", "serve", "--remote", eng.url, "--socket", str(socket), *common)
        return EngineTarget(socket, cmd, f"remote model at {eng.url}")
    if not model.path:  # the engine loads its embedded model when started without --model
        model_args, key, name = (), embedded_model_key(), "the embedded model"
    elif (Path(model.path) / "config.json").is_file():
        model_args, key, name = ("--model", model.path), model.path, Path(model.path).name
    else:
        raise EngineUnavailable(f"mellum.model.path {model.path!r} is not a model folder (no config.json)")
    socket = Path(eng.socket) if eng.socket else private_socket_path(engine_socket_name(key, model.backend))
    cmd = (python, "-m", "engine", "serve", *model_args, "--backend", model.backend,
           "--socket", str(socket), *common)  # fmt: skip
    return EngineTarget(socket, cmd, f"{name} ({model.backend})")


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
                _reap(proc)
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


def _reap(proc: subprocess.Popen) -> None:
    """Collect the exit status of an engine we started whenever it exits, even when another
    window restarted it (no zombies): a daemon thread waits for it."""
    threading.Thread(target=proc.wait, daemon=True, name=f"engine-reaper-{proc.pid}").start()


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
        self.held = Held()  # what this connection's engine holds of our chunks and documents
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
                self.held = Held()
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
        """One request, recovered by error code (never by message): after a lost connection,
        reconnect (restarting the engine); when the engine does not hold a chunk or a document
        version the request relied on, send the text. ``params`` may be a function of ``Held``,
        called for each attempt. A dict result gets ``rpc_bytes``: the request frames sent."""
        sent_bytes = 0
        for attempt in range(ATTEMPTS):
            client = await self.connect()
            wire = params(self.held) if callable(params) else params
            sent = client.bytes_sent
            rid, future = client.start(method, wire, on_partial)
            sent_bytes += client.bytes_sent - sent
            document = wire.get("document") if isinstance(wire, dict) else None
            self.on_event({"event": "engine_request", "request": rid, "method": method, "document": document})
            try:
                result = await asyncio.shield(future)
                return dict(result, rpc_bytes=sent_bytes) if isinstance(result, dict) else result
            except asyncio.CancelledError:
                self._cancel(client, rid, future, method)
                raise
            except EngineError as e:
                recover = {
                    ErrorCode.UNAVAILABLE: client.close,
                    ErrorCode.UNKNOWN_CONTEXT_KEY: self.held.forget_chunks,
                    ErrorCode.UNKNOWN_DOCUMENT: self.held.forget_documents,
                }.get(e.code)
                if recover is None or attempt == ATTEMPTS - 1:
                    raise
                log.info("engine answered %s (%s); retrying", e.code, e.message)
                with contextlib.suppress(Exception):
                    if asyncio.iscoroutine(done := recover()):
                        await done
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

    async def complete(
        self, params: dict, chunks: Any = (), on_partial=None, text: str | None = None
    ) -> dict:
        """FIM completion; `chunks` have `path`, `text`, `key`; with `text` (the document's model
        text) and `params["offset"]` the document goes as an edit of what the engine holds."""
        return await self.with_context("complete", params, chunks, on_partial, text)

    async def with_context(
        self, method: str, params: dict, chunks: Any = (), on_partial=None, text: str | None = None
    ) -> dict:
        """`complete` or `prefill` with context chunks by key and the document as an edit."""
        chunks = list(chunks)

        def wire(held: Held) -> dict:
            out = dict(params, **held.context(chunks))
            if text is not None:
                out["doc"] = held.document(params["document"], text)
            return out

        return await self.request(method, wire, on_partial)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


class EngineManager:
    """The language server's engine: one `EngineSession` for the current settings.

    The session is made on first use and remade when the `engine` or `model` settings change;
    `report` passes a failure on to the user at most once every `error_interval_s`."""

    def __init__(
        self,
        settings: Settings,
        *,
        loading: Callable[[str], contextlib.AbstractAsyncContextManager] | None = None,
        on_event: Callable[[dict], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        error_interval_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.loading, self.on_event = loading, on_event
        self.on_error = on_error if on_error is not None else (lambda message: None)
        self.error_interval_s = error_interval_s
        self.session: EngineSession | None = None
        self._error_at: float | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected

    async def get(self) -> EngineSession:
        """The connected session, starting the engine when needed (raises `EngineUnavailable`)."""
        if self.session is None:
            try:
                target = engine_target(self.settings)
            except (EngineUnavailable, PermissionError) as e:
                raise EngineUnavailable(str(e)) from None
            self.session = EngineSession(
                target, start_timeout_s=self.settings.engine.start_timeout_s,
                loading=self.loading, on_event=self.on_event,
            )  # fmt: skip
        await self.session.connect()
        return self.session

    async def connect(self) -> None:
        """Connect now (at start-up, after a settings change); a failure is reported, not raised."""
        try:
            await self.get()
        except EngineUnavailable as e:
            self.report(e)

    def configure(self, settings: Settings) -> asyncio.Task | None:
        """New settings. A session for other `engine`/`model` settings is closed and a new one
        connected in the background: that task is returned (None when nothing changed)."""
        old, self.settings = self.settings, settings
        if self.session is None or (old.engine, old.model) == (settings.engine, settings.model):
            return None
        session, self.session = self.session, None
        return self._spawn(self._reconnect(session))

    async def _reconnect(self, old: EngineSession) -> None:
        await old.close()
        await self.connect()

    def report(self, error: Exception) -> None:
        now = time.monotonic()
        if self._error_at is None or now - self._error_at > self.error_interval_s:
            self._error_at = now
            self.on_error(str(error))

    def status(self) -> dict | None:
        """The session for `mellum/status` (None before the first use)."""
        if self.session is None:
            return None
        return {
            "socket": str(self.session.target.socket),
            "connected": self.session.connected,
            "connects": self.session.connects,
            "info": self.session.info,
        }

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("engine task failed", exc_info=task.exception())
