"""What the language server's features share, carried by the server object pygls hands them.

pygls passes the server to every handler and the protocol reads the document store from it, so
the shared state lives on a slim `LanguageServer` subclass: documents, settings (and the layers
they come from), workspace context, progress, the engine, the completion service, the local
counters, the chat and agent conversations, and the background tasks. It holds no handler; the feature modules change it.

Offers `MellumServer`, `SettingsLayers`, `Counters`, `VERSION`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from ..agent.conversation import Conversations
from ..documents import DocumentStore
from ..engine_client import EngineManager
from ..settings import Settings, merge, parse_settings
from ..telemetry import LocalStats
from .completions import CompletionService
from .debounce import DebouncePolicy
from .progress import Progress
from .protocol import MellumProtocol
from .workspace import WorkspaceContext, uri_to_path

log = logging.getLogger("mellum_lsp")
VERSION = "0.1.0"
SOURCES = ("cli", "init", "config")  # later ones override earlier ones key by key


@dataclass
class SettingsLayers:
    """The raw settings of each source: the command line, `initializationOptions`, and
    `workspace/configuration` (or `didChangeConfiguration`)."""

    raw: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(SOURCES))
    problems: tuple[str, ...] = ()  # the last problems shown to the user

    def set(self, source: str, raw: Any) -> tuple[Settings, tuple[str, ...]]:
        """The settings with `raw` as `source`, and the problems not shown yet (else ())."""
        if source not in SOURCES:
            raise ValueError(f"unknown settings source {source!r}; expected one of {SOURCES}")
        self.raw[source] = raw
        combined: Any = {}
        for name in SOURCES:
            combined = merge(combined, self.raw[name] or {})
        settings, problems = parse_settings(combined)
        if not problems or tuple(problems) == self.problems:
            return settings, ()
        self.problems = tuple(problems)
        return settings, self.problems


class Counters:
    """The local acceptance counters, written to disk at most every `flush_s` (in a thread)."""

    def __init__(self, stats: LocalStats, spawn: Callable[[Coroutine], Any], flush_s: float = 2.0) -> None:
        self.stats, self.spawn, self.flush_s = stats, spawn, flush_s
        self._flush_handle: asyncio.TimerHandle | None = None

    @property
    def session(self) -> dict:
        return dict(self.stats.session)

    def record(self, event: str, language: str | None = None, chars: int = 0) -> None:
        self.stats.record(event, language, chars)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.flush_s, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self.spawn(asyncio.to_thread(self.stats.flush))

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        with contextlib.suppress(OSError):
            self.stats.flush()


class MellumServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("mellum-lsp", VERSION, protocol_cls=MellumProtocol)
        self.docs = DocumentStore()  # replaced at `initialize` with the negotiated encoding
        self.settings = Settings()
        self.layers = SettingsLayers()
        self.progress = Progress(self)
        self.workspace_ctx = WorkspaceContext(self.text_of_path)
        self.debounce = DebouncePolicy(self.settings.completion.debounce_ms)
        self.counters = Counters(LocalStats(enabled=self.settings.telemetry.enabled), self.spawn)
        self.conversations = Conversations()  # chat and agent runs, by id (features/chat, agent)
        self.engines = EngineManager(
            self.settings, loading=self.progress, on_event=self.notify_metrics,
            on_error=lambda message: self.show(message, types.MessageType.Error),
        )  # fmt: skip
        self.completions = CompletionService(
            lambda: self.settings, self.engines.get, self.workspace_ctx, self.debounce,
            on_metrics=lambda m: self.notify_metrics({"event": "completion", **m}),
            on_engine_error=self.engines.report,
        )  # fmt: skip
        self.started = asyncio.Event()  # the `initialized` work is under way
        self.indexing: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        """Run `coro` in the background, keeping a reference and logging its failure."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def text_of_path(self, path: str) -> str | None:
        """The editor's text of the open document at `path`; None when it is not open."""
        for doc in self.docs:
            if uri_to_path(doc.uri) == path:
                return doc.text
        return None

    def show(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"Mellum: {message}"))

    def capability(self, path: str) -> Any:
        """A client capability by dotted path ("workspace.configuration"); None when absent."""
        node = getattr(self.protocol, "client_capabilities", None)
        for part in path.split("."):
            node = getattr(node, part, None)
        return node

    def notify_metrics(self, payload: dict) -> None:
        if self.settings.debug.metrics:
            self.protocol.notify("$/mellum/metrics", payload)

    async def close(self) -> None:
        self.counters.close()
        await self.engines.close()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
