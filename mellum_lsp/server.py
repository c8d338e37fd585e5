"""The language server: `mellum-lsp serve` (stdio, or `--tcp PORT` on 127.0.0.1).

Registration and thin handlers; the work is in `features/`, `documents.py`, `engine_client.py`.

- Sync: incremental `didOpen`/`didChange`/`didClose`/`didSave` on our own `DocumentStore` in the
  negotiated position encoding (UTF-8 when offered, else UTF-32 when offered, else UTF-16).
- `textDocument/inlineCompletion` (LSP 3.18) and `textDocument/completion` (one AI item, for
  clients without inline completion) through `CompletionService`.
- `workspace/executeCommand`: `mellum.accepted`, `mellum.partiallyAccepted`, `mellum.rejected`
  (local counters, see `telemetry.py`).
- Custom requests: `mellum/lastCompletion` (metrics of the last answer, optionally for a `uri`),
  `mellum/engineStats` (the engine's `stats`), `mellum/status` (engine, indexes, settings;
  `{"waitForIndex": true}` answers once the indexes are built). With `debug.metrics` every
  answer is also sent as a `$/mellum/metrics` notification.
- Settings: `initializationOptions`, then `workspace/configuration` (section `mellum`), again on
  `workspace/didChangeConfiguration`; problems are shown with `window/showMessage`.
- Model loading and indexing are reported with server-initiated `window/workDoneProgress`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from .documents import DocumentError, DocumentStore, choose_encoding
from .engine_client import EngineSession, EngineUnavailable, engine_target
from .features import items
from .features.completions import CompletionService
from .features.debounce import DebouncePolicy
from .features.pipeline import Snapshot, language_of
from .features.progress import Progress
from .features.protocol import MellumProtocol, plain
from .features.transport import StreamWriterAdapter, message_loop, stdio_streams
from .features.workspace import WorkspaceContext, uri_to_path
from .settings import Settings, merge, parse_settings, section
from .telemetry import LocalStats

log = logging.getLogger("mellum_lsp")
VERSION = "0.1.0"
WATCH_GLOB = "**/*.{py,pyi,js,mjs,cjs,jsx,ts,mts,cts,tsx,go,rs,java,c,h,cc,cpp,cxx,hh,hpp,hxx}"


class MellumServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("mellum-lsp", VERSION, protocol_cls=MellumProtocol)
        self.docs = DocumentStore()
        self.settings = Settings()
        self._raw: dict[str, Any] = {"init": None, "config": None, "cli": {}}
        self._problems_shown: tuple[str, ...] = ()
        self.progress = Progress(self)
        self.workspace_ctx = WorkspaceContext(self._text_of_path)
        self.debounce = DebouncePolicy(self.settings.completion.debounce_ms)
        self.stats = LocalStats(enabled=self.settings.telemetry.enabled)
        self.session: EngineSession | None = None
        self._engine_error_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self.started = asyncio.Event()  # the `initialized` work is under way
        self.indexing: asyncio.Task | None = None
        self.completions = CompletionService(
            lambda: self.settings, self.engine, self.workspace_ctx, self.debounce,
            on_metrics=self._metrics, on_engine_error=self._engine_error,
        )  # fmt: skip

    # ---- helpers -------------------------------------------------------------------------
    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def _text_of_path(self, path: str) -> str | None:
        for doc in self.docs:
            if uri_to_path(doc.uri) == path:
                return doc.text
        return None

    def show(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"Mellum: {message}"))

    def capability(self, path: str) -> Any:
        node = getattr(self.protocol, "client_capabilities", None)
        for part in path.split("."):
            node = getattr(node, part, None)
        return node

    def notify_metrics(self, payload: dict) -> None:
        if self.settings.debug.metrics:
            self.protocol.notify("$/mellum/metrics", payload)

    def _metrics(self, m: dict) -> None:
        self.notify_metrics({"event": "completion", **m})

    def _engine_error(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._engine_error_at > 60:
            self._engine_error_at = now
            self.show(str(error), types.MessageType.Error)

    # ---- settings ------------------------------------------------------------------------
    def apply_settings(self, source: str, raw: Any) -> None:
        self._raw[source] = raw
        combined = merge(merge(self._raw["cli"], self._raw["init"] or {}), self._raw["config"] or {})
        settings, problems = parse_settings(combined)
        if problems and tuple(problems) != self._problems_shown:
            self._problems_shown = tuple(problems)
            self.show("settings: " + "; ".join(problems))
        old, self.settings = self.settings, settings
        self.debounce.base_ms = settings.completion.debounce_ms
        self.stats.enabled = settings.telemetry.enabled
        self.workspace_ctx.debounce_s = settings.context.index_debounce_ms / 1e3
        if self.session is not None and (old.engine, old.model) != (settings.engine, settings.model):
            session, self.session = self.session, None
            self.spawn(session.close())
            self.spawn(self.connect_engine())

    async def pull_configuration(self) -> None:
        if not self.capability("workspace.configuration"):
            return
        try:
            result = await self.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section="mellum")])
            )
        except Exception as e:
            log.warning("workspace/configuration failed: %s", e)
            return
        if result and isinstance(result[0], dict):
            self.apply_settings("config", result[0])

    # ---- engine --------------------------------------------------------------------------
    async def engine(self) -> EngineSession:
        if self.session is None:
            try:
                target = engine_target(self.settings)
            except (EngineUnavailable, PermissionError) as e:
                raise EngineUnavailable(str(e)) from None
            self.session = EngineSession(
                target, start_timeout_s=self.settings.engine.start_timeout_s,
                loading=lambda title: self.progress(title), on_event=self.notify_metrics,
            )  # fmt: skip
        await self.session.connect()
        return self.session

    async def connect_engine(self) -> None:
        try:
            await self.engine()
        except EngineUnavailable as e:
            self._engine_error(e)

    # ---- indexing ------------------------------------------------------------------------
    def root_paths(self) -> list[str]:
        try:
            folders = self.workspace.folders.values()
            paths = [uri_to_path(f.uri) for f in folders]
            if not paths and self.workspace.root_uri:
                paths = [uri_to_path(self.workspace.root_uri)]
        except RuntimeError:
            return []
        return [p for p in paths if p]

    def reindex(self) -> None:
        """Index the workspace folders not indexed yet (after those already under way)."""
        previous = self.indexing

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await self.index_roots()

        self.indexing = self.spawn(run())

    async def index_roots(self) -> None:
        added = self.workspace_ctx.set_roots(self.root_paths())
        if not added:
            return
        async with self.progress("Mellum: indexing", ", ".join(r.root for r in added)) as report:
            files = 0
            for i, root in enumerate(added):
                report(f"{root.root}", int(100 * i / len(added)))
                stats = await self.workspace_ctx.build(root)
                files += stats.files
            report.end_message = f"indexed {files} files"

    async def register_watchers(self) -> None:
        if not self.capability("workspace.did_change_watched_files.dynamic_registration"):
            return
        options = types.DidChangeWatchedFilesRegistrationOptions(
            watchers=[types.FileSystemWatcher(glob_pattern=WATCH_GLOB)]
        )
        registration = types.Registration(
            id="mellum-watch", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES, register_options=options
        )
        try:
            await self.client_register_capability_async(
                types.RegistrationParams(registrations=[registration])
            )
        except Exception as e:
            log.warning("could not register file watchers: %s", e)

    # ---- requests ------------------------------------------------------------------------
    def snapshot(self, uri: str, position: types.Position) -> tuple[Snapshot, Any]:
        """The document text and cursor offset now (before any later change is applied)."""
        try:
            doc = self.docs.get(uri)
            offset = doc.offset_at(position, strict=True)
        except DocumentError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        path = uri_to_path(uri)
        root = self.workspace_ctx.root_for(path)
        rel = root.relpath(path) if root is not None else None
        language = language_of(doc.language_id, path, None)
        return Snapshot(uri, doc.text, offset, path, rel, language, doc.version), doc

    async def prefill(self, snap: Snapshot) -> None:
        result = await self.completions.prefill(snap)
        if result is not None:
            self.notify_metrics({"event": "prefill", "uri": snap.uri, **result})

    def use_completion_fallback(self) -> bool:
        mode = self.settings.completion.fallback
        if mode == "auto":
            return self.capability("text_document.inline_completion") is None
        return mode == "always"

    def record(self, event: str, language: str | None = None, chars: int = 0) -> None:
        self.stats.record(event, language, chars)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(2.0, self._flush_stats)

    def _flush_stats(self) -> None:
        self._flush_handle = None
        self.spawn(asyncio.to_thread(self.stats.flush))

    def status(self) -> dict:
        engine = None
        if self.session is not None:
            engine = {
                "socket": str(self.session.target.socket),
                "connected": self.session.connected,
                "connects": self.session.connects,
                "info": self.session.info,
            }
        roots = {
            r.root: {"built": r.built.is_set(), "files": len(r.index)}
            for r in self.workspace_ctx.roots.values()
        }
        return {
            "version": VERSION,
            "positionEncoding": self.docs.encoding,
            "engine": engine,
            "roots": roots,
            "settingsProblems": list(self._problems_shown),
            "session": dict(self.stats.session),
        }

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        with contextlib.suppress(OSError):
            self.stats.flush()
        if self.session is not None:
            await self.session.close()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


# ---- handlers ------------------------------------------------------------------------------
def register(server: MellumServer) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls: MellumServer, params: types.InitializeParams) -> None:
        general = params.capabilities.general
        ls.docs = DocumentStore(choose_encoding(general.position_encodings if general else None))
        ls.apply_settings("init", section(params.initialization_options))

    @server.feature(types.INITIALIZED)
    async def initialized(ls: MellumServer, params: types.InitializedParams) -> None:
        ls.reindex()
        try:
            await ls.pull_configuration()
            await ls.register_watchers()
            ls.spawn(ls.connect_engine())
        finally:
            ls.started.set()

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: MellumServer, params: None) -> None:
        await ls.close()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: MellumServer, params: types.DidOpenTextDocumentParams) -> None:
        d = params.text_document
        ls.docs.open(d.uri, d.text, d.version, d.language_id)
        if ls.settings.completion.prefill_on_open and ls.session is not None and ls.session.connected:
            snap, _ = ls.snapshot(d.uri, types.Position(line=0, character=0))
            ls.spawn(ls.prefill(snap))

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: MellumServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        try:
            doc = ls.docs.get(uri)
            first, last = None, 0
            for change in params.content_changes:
                start, end = doc.apply_change(change)
                lo, hi = doc.position_at(start)[0], doc.position_at(end)[0]
                first = lo if first is None else min(first, lo)
                last = max(last, hi)
            doc.version = params.text_document.version
        except DocumentError as e:
            log.warning("didChange ignored: %s", e)
            ls.window_log_message(types.LogMessageParams(type=types.MessageType.Warning, message=str(e)))
            return
        ls.debounce.keystroke(uri, time.monotonic())
        if first is not None:
            ls.workspace_ctx.edited(uri_to_path(uri), first, last)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: MellumServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.docs.close(uri)
        ls.completions.forget(uri)
        ls.workspace_ctx.closed(uri_to_path(uri))

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls: MellumServer, params: types.DidSaveTextDocumentParams) -> None:
        uri = params.text_document.uri
        text = ls.docs.get(uri).text if uri in ls.docs else params.text
        ls.workspace_ctx.saved(uri_to_path(uri), text)

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched(ls: MellumServer, params: types.DidChangeWatchedFilesParams) -> None:
        changes = []
        for event in params.changes:
            path = uri_to_path(event.uri)
            if path is not None:
                changes.append((path, event.type == types.FileChangeType.Deleted))
        ls.workspace_ctx.files_changed(changes)

    @server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def did_change_folders(ls: MellumServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
        ls.reindex()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: MellumServer, params: types.DidChangeConfigurationParams) -> None:
        if ls.capability("workspace.configuration"):
            await ls.pull_configuration()
        elif isinstance(params.settings, dict):
            ls.apply_settings("config", section(params.settings))

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: MellumServer, params: types.InlineCompletionParams):
        started = time.monotonic()
        snap, doc = ls.snapshot(params.text_document.uri, params.position)
        ls.workspace_ctx.cursor_at(snap.path, params.position.line)
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        s = await ls.completions.suggest(snap, started, invoked=invoked)
        if s.text:  # a typed-along rest is the same suggestion still shown
            ls.record("typed_along" if s.served == "typed_along" else "shown", snap.language, len(s.text))
        command = items.feedback_command(s.id, snap.uri, s.text, snap.language)
        return items.inline_list(s.text, doc, snap.offset, command)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
    async def completion(ls: MellumServer, params: types.CompletionParams):
        started = time.monotonic()
        snap, doc = ls.snapshot(params.text_document.uri, params.position)
        if not ls.use_completion_fallback():
            return types.CompletionList(is_incomplete=False, items=[])
        ls.workspace_ctx.cursor_at(snap.path, params.position.line)
        invoked = (
            params.context is not None and params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        )
        s = await ls.completions.suggest(snap, started, invoked=invoked)
        if s.text:
            ls.record("shown", snap.language, len(s.text))
        command = items.feedback_command(s.id, snap.uri, s.text, snap.language)
        return items.completion_list(s.text, doc, snap.offset, command)

    def _arg(args: tuple) -> dict:
        first = plain(args[0]) if args else None
        return first if isinstance(first, dict) else {}

    @server.command("mellum.accepted")
    def accepted(ls: MellumServer, *args: Any):
        a = _arg(args)
        ls.record("accepted", a.get("language"), int(a.get("length") or 0))
        return dict(ls.stats.session)

    @server.command("mellum.partiallyAccepted")
    def partially_accepted(ls: MellumServer, *args: Any):
        a = _arg(args)
        ls.record(
            "partially_accepted", a.get("language"), int(a.get("acceptedLength") or a.get("length") or 0)
        )
        return dict(ls.stats.session)

    @server.command("mellum.rejected")
    def rejected(ls: MellumServer, *args: Any):
        ls.record("rejected", _arg(args).get("language"))
        return dict(ls.stats.session)

    @server.feature("mellum/lastCompletion")
    def last_completion(ls: MellumServer, params: Any):
        params = plain(params)
        uri = params.get("uri", "") if isinstance(params, dict) else ""
        return ls.completions.last_metrics.get(uri or "")

    @server.feature("mellum/document")
    def document(ls: MellumServer, params: Any):
        """The server's copy of a document (for checking synchronisation)."""
        params = plain(params)
        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str) or uri not in ls.docs:
            raise JsonRpcInvalidParams(f"mellum/document: {uri!r} is not an open document")
        doc = ls.docs.get(uri)
        return {"text": doc.text, "version": doc.version, "lineCount": doc.line_count}

    @server.feature("mellum/engineStats")
    async def engine_stats(ls: MellumServer, params: Any):
        try:
            session = await ls.engine()
            return await session.request("stats")
        except EngineUnavailable as e:
            raise JsonRpcException(message=str(e), code=types.LSPErrorCodes.RequestFailed) from None

    @server.feature("mellum/status")
    async def status(ls: MellumServer, params: Any):
        params = plain(params)
        if isinstance(params, dict) and params.get("waitForIndex"):
            await ls.started.wait()
            while ls.indexing is not None and not ls.indexing.done():
                await asyncio.wait([ls.indexing])
            await ls.workspace_ctx.drain()
        return ls.status()


def create_server() -> MellumServer:
    server = MellumServer()
    register(server)
    return server


# ---- running -------------------------------------------------------------------------------
async def _serve_stdio(server: MellumServer) -> int:
    reader, writer = await stdio_streams()
    server.protocol.set_writer(writer)
    code = await message_loop(reader, server.protocol)
    await server.close()
    return 0 if code is None else code


async def _serve_tcp(server: MellumServer, port: int) -> int:
    """Serve the first client that connects to 127.0.0.1:PORT; exit when it goes."""
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    taken = False

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal taken
        if taken:
            writer.close()
            return
        taken = True
        server.protocol.set_writer(StreamWriterAdapter(writer))
        code = await message_loop(reader, server.protocol)
        if not done.done():
            done.set_result(0 if code is None else code)

    tcp = await asyncio.start_server(connection, "127.0.0.1", port)
    print(f"mellum-lsp listening on 127.0.0.1:{tcp.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    async with tcp:
        code = await done
    await server.close()
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mellum-lsp serve", description="Run the Mellum language server.")
    p.add_argument("--stdio", action="store_true", help="talk LSP on stdin/stdout (the default)")
    p.add_argument(
        "--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead (0: any free port)"
    )
    p.add_argument("--engine", metavar="SOCKET|URL", help="engine socket, or an OpenAI-compatible server URL")
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], help="engine backend")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--log-file", help="write logs here instead of stderr")
    return p


def cli_settings(a: argparse.Namespace) -> dict:
    """Settings given on the command line (under those from the editor)."""
    raw: dict[str, Any] = {}
    if a.engine:
        key = "url" if a.engine.startswith(("http://", "https://")) else "socket"
        raw.setdefault("engine", {})[key] = a.engine
    if a.model:
        raw.setdefault("model", {})["path"] = a.model
    if a.backend:
        raw.setdefault("model", {})["backend"] = a.backend
    return raw


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handler = logging.FileHandler(a.log_file) if a.log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(
        level=a.log_level.upper(), handlers=[handler], format="mellum-lsp %(levelname)s %(name)s: %(message)s"
    )
    if a.log_level.upper() != "DEBUG":
        logging.getLogger("pygls").setLevel(logging.WARNING)
    server = create_server()
    server.apply_settings("cli", cli_settings(a))
    runner = _serve_tcp(server, a.tcp) if a.tcp is not None else _serve_stdio(server)
    try:
        return asyncio.run(runner)
    except KeyboardInterrupt:
        return 130
