"""The engine process: ``python -m engine serve`` / ``mellum-lsp engine``.

Listens on a Unix socket in a private directory (mode 0600) or on stdio, optionally also serves
OpenAI-compatible HTTP (``--http 127.0.0.1:PORT``; it prints ``http ready HOST:PORT``). Each
connection may have many requests in flight; a disconnect cancels its work; every request with an
id is answered, also when its handling fails. A model folder that holds no model is refused before
anything loads (``model_folder_problem``; exit code 2, as for every bad argument). Offers
``Dispatcher`` (request handling over any connection), ``model_folder_problem``, ``BadArgument``,
``build_parser`` and ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .inputs import Inputs
from .jobs import Executor, Job
from .protocol import ErrorCode, ProtocolError, parse_params
from .rpc import Connection, serve_connection
from .scheduler import Scheduler

log = logging.getLogger("engine")
WEIGHTS = ("model.onnx", "model.safetensors", "model.safetensors.index.json")  # what a backend loads


class BadArgument(ValueError):
    """A command-line argument that names something unusable (exit code 2, like argparse's)."""


def model_folder_problem(path: str, flag: str = "--model") -> str | None:
    """Why ``path`` is not a model folder (None when it is one): missing, empty, without
    config.json or without weights. Checked before a backend is chosen, so that a wrong path is
    not reported as a missing backend ("the torch backend needs PyTorch")."""
    folder = Path(path)
    if not folder.exists():
        return f"{flag} {path}: no such folder"
    if not folder.is_dir():
        return f"{flag} {path} is a file; expected a model folder (config.json and weights)"
    if not any(folder.iterdir()):
        return f"{flag} {path}: the folder is empty; expected a model (config.json and weights)"
    if not (folder / "config.json").is_file():
        return f"{flag} {path} has no model: no config.json in it"
    if not any((folder / name).is_file() for name in WEIGHTS):
        return f"{flag} {path} has no model weights: expected one of {', '.join(WEIGHTS)}"
    return None


def check_model_folder(path: str, flag: str = "--model") -> None:
    if (problem := model_folder_problem(path, flag)) is not None:
        raise BadArgument(problem)


class Dispatcher:
    """Turns protocol requests into scheduler jobs and streams their answers back."""

    def __init__(self, engine: Executor, scheduler: Scheduler) -> None:
        self.engine, self.scheduler = engine, scheduler
        self.inputs = Inputs()  # chunk texts and document versions, shared by this engine's clients
        self.stop = asyncio.Event()
        self.connections = 0
        self.last_activity = time.monotonic()
        self._jobs: dict[tuple[int, Any], Job] = {}

    def start_job(
        self, method: str, params: Any, on_partial, loop: asyncio.AbstractEventLoop
    ) -> tuple[Job, asyncio.Queue]:
        """Submit a job; its partials and final (result, error) arrive on the returned queue, in order."""
        queue: asyncio.Queue = asyncio.Queue()
        sampling = getattr(params, "sampling", None)
        deadline = None
        if sampling is not None and sampling.deadline_ms is not None:
            deadline = time.monotonic() + sampling.deadline_ms / 1e3

        def emit(partial: dict) -> None:
            if on_partial is not None:
                loop.call_soon_threadsafe(queue.put_nowait, ("partial", partial))

        def finish(result: dict | None, error: ProtocolError | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("final", (result, error)))

        job = Job(self.scheduler.new_id(), method, params, emit, finish, document=getattr(params, "document", None),
                  background=method == "prefill", deadline=deadline)  # fmt: skip
        self.scheduler.submit(job)
        return job, queue

    async def handle(self, conn: Connection, request_id: Any, method: str, params: Any) -> None:
        """Answer one request; a failure of our own is answered INTERNAL (never silence)."""
        try:
            await self._handle(conn, request_id, method, params)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s failed", method)
            if request_id is not None:
                await conn.error(request_id, ErrorCode.INTERNAL, f"{method} failed: {type(e).__name__}: {e}")

    async def _handle(self, conn: Connection, request_id: Any, method: str, params: Any) -> None:
        self.last_activity = time.monotonic()
        try:
            p = self.inputs.resolve(parse_params(method, params))
        except ProtocolError as e:
            if request_id is not None:
                await conn.error(request_id, e.code, e.message)
            return
        if method in ("complete", "generate", "chat", "prefill"):
            await self._run(conn, request_id, method, p)
            return
        if method == "handshake":
            result = self.engine.handshake()
        elif method == "stats":
            result = self.engine.stats() | {
                "queued": self.scheduler.queued(),
                "connections": self.connections,
                "tasks": len(asyncio.all_tasks()),  # for leak checks: flat when idle
                "threads": threading.active_count(),
            }
        elif method == "cancel":
            n = 0
            if p.id is not None:
                job = self._jobs.get((id(conn), p.id))
                n += bool(job is not None and self.scheduler.cancel(job))
            if p.document is not None:
                n += self.scheduler.cancel_document(p.document)
            result = {"cancelled": n}
        else:  # shutdown
            result = {"ok": True}
            self.stop.set()
        if request_id is not None:
            await conn.send({"id": request_id, "result": result})

    async def _run(self, conn: Connection, request_id: Any, method: str, p: Any) -> None:
        stream = request_id is not None and getattr(getattr(p, "sampling", None), "stream", False)

        async def send_partial(partial: dict) -> None:
            await conn.send({"id": request_id, "partial": partial})

        job, queue = self.start_job(method, p, send_partial if stream else None, asyncio.get_running_loop())
        key = (id(conn), request_id)
        if request_id is not None:
            self._jobs[key] = job
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "partial":
                    await send_partial(payload)
                    continue
                result, error = payload
                break
        except asyncio.CancelledError:  # the client went away
            self.scheduler.cancel(job, "cancelled")
            raise
        finally:
            self._jobs.pop(key, None)
        self.last_activity = time.monotonic()
        if request_id is None:
            return
        if error is not None:
            await conn.error(request_id, error.code, error.message)
        else:
            await conn.send({"id": request_id, "result": result})

    async def serve(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.connections += 1
        try:
            await serve_connection(Connection(reader, writer), self.handle)
        finally:
            self.connections -= 1
            self.last_activity = time.monotonic()


async def _stdio_streams() -> tuple[asyncio.StreamReader, Any]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**27)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def _bind_unix(path: str, dispatcher: Dispatcher) -> asyncio.AbstractServer:
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise BadArgument(
            f"--socket {path}: its folder {os.path.dirname(os.path.abspath(path))} does not exist"
        )
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise BadArgument(f"--socket {path} exists and is not a socket; it is left as it is")
        try:
            _, w = await asyncio.open_unix_connection(path)
            w.close()
            raise OSError(f"an engine is already listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # a stale socket from an engine that died
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(dispatcher.serve, path, limit=2**27)
    except OSError as e:
        raise OSError(f"cannot listen on {path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def load_model(spec, a: argparse.Namespace) -> Executor:
    """One model: a local folder (its backend, tokenizer and caches) or a remote server."""
    from .service import Engine, EngineConfig
    from .speculative import NO_SPECULATION, SpecConfig

    if spec.url is not None:
        from .remote import RemoteEngine

        return RemoteEngine(spec.url, token=os.environ.get("MELLUM_REMOTE_TOKEN"), model=a.remote_model,
                            timeout=a.remote_timeout, fim_template=a.remote_fim_template)  # fmt: skip
    if a.scripted:  # test hook: model outputs read from a file (engine/scripted.py)
        from .scripted import ScriptedEngine

        return ScriptedEngine(a.scripted)
    from .backends import load_backend
    from .tokenizer import Tokenizer

    try:
        backend = load_backend(spec.path, a.backend, threads=a.threads)
    except (OSError, ValueError, RuntimeError, MemoryError):
        raise
    except Exception as e:  # ONNX Runtime's errors (InvalidProtobuf, Fail) are none of those
        raise RuntimeError(f"the model in {spec.path} could not be loaded: {_one_line(e)}") from None
    spec_config = NO_SPECULATION if a.no_spec else SpecConfig(mtp_drafts=a.mtp_drafts)
    config = EngineConfig(cache_mb=a.cache_mb, margin=a.margin, spec=spec_config)
    return Engine(backend, Tokenizer.from_folder(spec.path), config)


def _one_line(e: Exception, limit: int = 300) -> str:
    """An exception as one line for the user: its last line, its end kept when it is long (ONNX
    Runtime puts the cause after a long C++ signature)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    text = lines[-1]
    return text if len(text) <= limit else "..." + text[-limit:]


def load_engine(a: argparse.Namespace) -> Executor:
    """What executes jobs: the completion model and the chat model (the same one unless a chat
    model is configured), each a local folder or a remote OpenAI-compatible server."""
    from .models import Models, ModelSpec

    if a.remote:
        completion = ModelSpec(url=a.remote)
    else:
        model_dir = a.model
        if model_dir is None:
            from .embedded import embedded_model_dir

            model_dir = str(embedded_model_dir())
        else:
            check_model_folder(model_dir, "--model")
        completion = ModelSpec(path=model_dir)
    chat = None
    if a.chat_remote:
        chat = ModelSpec(url=a.chat_remote)
    elif a.chat_model:
        check_model_folder(a.chat_model, "--chat-model")
        chat = ModelSpec(path=a.chat_model)
    return Models(completion, chat, lambda spec: load_model(spec, a), a.memory_mb, a.cache_mb)


def tune_malloc() -> bool:
    """glibc: blocks of 128 KiB and more (KV-cache buffers, allocated and freed on every request)
    come from mmap and go back to the OS when freed; at most two malloc arenas. glibc's default
    raises its mmap threshold to the largest block freed so far, after which such buffers come from
    the heap and fragment it: the engine's resident memory then grows for hours (measured over
    8,000 keystrokes after the cache was full: +40 MB by default, +14 MB with this, and +8 MB with
    ONNX Runtime's CPU arena off as well). Returns whether glibc took the settings."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all(mallopt(option, value) == 1 for option, value in
               ((m_mmap_threshold, 128 * 1024), (m_trim_threshold, 128 * 1024), (m_arena_max, 2)))  # fmt: skip


def http_address(text: str) -> tuple[str, int]:
    """``--http`` as (host, port): ``PORT`` alone listens on 127.0.0.1 (never on every interface
    unless asked, e.g. ``0.0.0.0:PORT``)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise BadArgument(f"--http takes [HOST:]PORT, e.g. 127.0.0.1:8080; got {text!r}")
    return host or "127.0.0.1", int(port)


async def run(a: argparse.Namespace) -> int:
    engine = load_engine(a)
    scheduler = Scheduler(engine)
    dispatcher = Dispatcher(engine, scheduler)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, dispatcher.stop.set)
    servers: list[Any] = []
    stdio_task = None
    if a.http:
        from .http import start_http_server

        host, port = http_address(a.http)
        if not a.http_token and host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            log.warning("HTTP on %s without a token: anyone who can reach it can use the model", host)
        http = await start_http_server(dispatcher, host, port, token=a.http_token)
        servers.append(http)
        bound = http.sockets[0].getsockname()
        log.info("OpenAI-compatible HTTP on http://%s:%s/v1", bound[0], bound[1])
        print(f"http ready {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    if a.socket:
        servers.append(await _bind_unix(a.socket, dispatcher))
        log.info("engine listening on %s (%s backend)", a.socket, engine.handshake()["backend"])
        print(f"ready {a.socket}", file=sys.stderr, flush=True)
    if a.stdio or not (a.socket or a.http):
        reader, writer = await _stdio_streams()

        async def stdio() -> None:
            await dispatcher.serve(reader, writer)
            dispatcher.stop.set()

        stdio_task = asyncio.ensure_future(stdio())

    async def idle_watch() -> None:
        while a.idle_exit and not dispatcher.stop.is_set():
            await asyncio.sleep(min(5.0, a.idle_exit))
            idle = time.monotonic() - dispatcher.last_activity
            if dispatcher.connections == 0 and idle >= a.idle_exit:
                log.info("no clients for %.0f s: exiting", idle)
                dispatcher.stop.set()

    watcher = asyncio.ensure_future(idle_watch())
    await dispatcher.stop.wait()
    watcher.cancel()
    for s in servers:
        s.close()
    scheduler.shutdown()
    if stdio_task is not None:
        stdio_task.cancel()
    if a.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(a.socket)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mellum-lsp engine", description="Run the mellum-lsp model engine.")
    p.add_argument("--model", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    where = p.add_argument_group("where to listen")
    where.add_argument("--socket", help="Unix socket path (its folder should be private)")
    where.add_argument("--stdio", action="store_true", help="speak msgpack-RPC on stdin/stdout (the default)")
    where.add_argument(
        "--http", metavar="HOST:PORT", help="also serve OpenAI-compatible HTTP, e.g. 127.0.0.1:8080"
    )
    where.add_argument(
        "--http-token", default=os.environ.get("MELLUM_HTTP_TOKEN"), help="bearer token for --http"
    )
    p.add_argument(
        "--remote", metavar="URL", help="send work to an OpenAI-compatible server (vLLM, SGLang, ours)"
    )
    p.add_argument("--remote-model", help="model name on the remote server (default: its first model)")
    p.add_argument(
        "--remote-fim-template", help="FIM prompt with {prefix} and {suffix}, for servers without suffix"
    )
    p.add_argument("--remote-timeout", type=float, default=60.0, help="seconds to wait for the remote server")
    p.add_argument("--chat-model", metavar="DIR", help="model folder for chat and edits (default: --model)")
    p.add_argument("--chat-remote", metavar="URL", help="OpenAI-compatible server for chat and edits")
    p.add_argument(
        "--memory-mb", type=float, default=None,
        help="memory budget for loaded models (weights + KV cache); the least recently used is evicted",
    )  # fmt: skip
    p.add_argument("--cache-mb", type=float, default=1024.0, help="KV prefix-cache budget in MiB per model")
    p.add_argument("--margin", type=int, default=256, help="sliding-window rollback margin in tokens")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-spec", action="store_true", help="disable speculative decoding")
    p.add_argument("--mtp-drafts", type=int, default=2, help="MTP draft tokens per step")
    p.add_argument(
        "--idle-exit", type=float, default=0.0, help="exit after this many seconds without clients"
    )
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--scripted", metavar="FILE", help=argparse.SUPPRESS)  # test hook: engine/scripted.py
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), stream=sys.stderr, format="engine %(levelname)s %(message)s"
    )
    if any(arg.startswith("--http-token") for arg in argv):
        log.warning("--http-token is visible to other users in the process list; prefer MELLUM_HTTP_TOKEN")
    tune_malloc()  # before the model worker and ONNX Runtime start their threads
    try:
        return asyncio.run(run(a))
    except BadArgument as e:
        print(f"engine: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        print(f"engine: error: {e}", file=sys.stderr)
        return 1
