"""The engine process: ``python -m engine serve`` / ``mellum-lsp engine``.

Listens on a Unix socket in a private directory (mode 0600) or on stdio, optionally also serves
OpenAI-compatible HTTP (``--http 127.0.0.1:PORT``). Each connection may have many requests in
flight; a disconnect cancels its work. Offers ``Dispatcher`` (request handling over any
connection), ``build_parser`` and ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .inputs import Inputs
from .jobs import Executor, Job
from .protocol import ProtocolError, parse_params
from .rpc import Connection, serve_connection
from .scheduler import Scheduler

log = logging.getLogger("engine")


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
    if os.path.exists(path):
        try:
            _, w = await asyncio.open_unix_connection(path)
            w.close()
            raise OSError(f"an engine is already listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # a stale socket from an engine that died
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(dispatcher.serve, path, limit=2**27)
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
    from .backends import load_backend
    from .tokenizer import Tokenizer

    backend = load_backend(spec.path, a.backend, threads=a.threads)
    spec_config = NO_SPECULATION if a.no_spec else SpecConfig(mtp_drafts=a.mtp_drafts)
    config = EngineConfig(cache_mb=a.cache_mb, margin=a.margin, spec=spec_config)
    return Engine(backend, Tokenizer.from_folder(spec.path), config)


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
        elif not (Path(model_dir) / "config.json").is_file():
            raise ValueError(f"--model {model_dir!r} is not a model folder (no config.json there)")
        completion = ModelSpec(path=model_dir)
    chat = None
    if a.chat_remote:
        chat = ModelSpec(url=a.chat_remote)
    elif a.chat_model:
        if not (Path(a.chat_model) / "config.json").is_file():
            raise ValueError(f"--chat-model {a.chat_model!r} is not a model folder (no config.json there)")
        chat = ModelSpec(path=a.chat_model)
    return Models(completion, chat, lambda spec: load_model(spec, a), a.memory_mb, a.cache_mb)


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

        host, _, port = a.http.rpartition(":")
        servers.append(
            await start_http_server(dispatcher, host or "127.0.0.1", int(port), token=a.http_token)
        )
        log.info("OpenAI-compatible HTTP on http://%s:%s/v1", host or "127.0.0.1", port)
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
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), stream=sys.stderr, format="engine %(levelname)s %(message)s"
    )
    try:
        return asyncio.run(run(a))
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        print(f"engine: error: {e}", file=sys.stderr)
        return 1
