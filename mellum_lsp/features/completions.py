"""One suggestion per request, on every keystroke, without wasted work.

The engine owns reuse (serving the rest of a suggestion the user types along, answering from a
suggestion still being written, superseding a document's older requests, recent results): it
sees every editor window it serves. The language server keeps two rules of its own:
1. debounce: how long a request should wait for the next keystroke (`DebouncePolicy`); the wait
   itself happens in the engine (`delay_ms`), where a newer keystroke supersedes the request or
   is served from it;
2. cancel on move: a new request whose cursor left the document's request in flight (not typing
   on from it) cancels that one at once.
Per request: context chunks for the budget left by the file and the generation; the engine's
`complete` with the document sent as an edit of what the engine holds; `finish`
(post-processing). Cancelling the awaiting task ($/cancelRequest) cancels the engine request.

Every answer has metrics (served how, latency, debounce, cache reuse, bytes on the wire), passed to
`on_metrics`. Offers `Suggestion`, `CompletionService`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import ErrorCode
from engine.rpc import EngineError

from ..engine_client import EngineSession, EngineUnavailable
from ..settings import Settings
from .debounce import DebouncePolicy
from .pipeline import Snapshot, context_budget, document_params, finish, wants_multiline
from .workspace import WorkspaceContext

log = logging.getLogger(__name__)
SERVED = {"typed_ahead": "typed_along", "result_cache": "model", "remote": "model"}  # engine's -> ours


@dataclass
class Suggestion:
    text: str
    served: str  # model | typed_along | superseded | disabled | no_engine | error
    id: str
    snapshot: Snapshot
    metrics: dict = field(default_factory=dict)


@dataclass
class _Inflight:
    prefix: str
    suffix: str
    task: asyncio.Task


def moved_away(inflight: _Inflight, prefix: str, suffix: str) -> bool:
    """Whether the cursor left the request in flight (rather than typing on from it)."""
    return inflight.suffix != suffix or not prefix.startswith(inflight.prefix)


class CompletionService:
    def __init__(
        self,
        settings: Callable[[], Settings],
        engine: Callable[[], Awaitable[EngineSession]],
        workspace: WorkspaceContext,
        debounce: DebouncePolicy,
        on_metrics: Callable[[dict], None] = lambda m: None,
        on_engine_error: Callable[[Exception], None] = lambda e: None,
    ) -> None:
        self.settings, self.engine, self.workspace = settings, engine, workspace
        self.debounce = debounce
        self.on_metrics, self.on_engine_error = on_metrics, on_engine_error
        self._inflight: dict[str, _Inflight] = {}
        self._ids = itertools.count(1)
        self.last_metrics: dict[str, dict] = {}

    def forget(self, uri: str) -> None:
        inflight = self._inflight.pop(uri, None)
        if inflight is not None:
            inflight.task.cancel()
        self.debounce.forget(uri)

    def _answer(
        self, snap: Snapshot, text: str, served: str, sid: str, started: float, **metrics: Any
    ) -> Suggestion:
        m = {"uri": snap.uri, "id": sid, "served": served, "text": text, "version": snap.version,
             "latency_ms": round((time.monotonic() - started) * 1e3, 3)} | metrics  # fmt: skip
        self.last_metrics[snap.uri] = m
        self.last_metrics[""] = m
        self.on_metrics(m)
        return Suggestion(text, served, sid, snap, m)

    async def suggest(
        self, snap: Snapshot, started: float | None = None, invoked: bool = False
    ) -> Suggestion:
        """The suggestion for `snap`; `invoked`: the user asked explicitly (no debounce)."""
        started = time.monotonic() if started is None else started
        settings = self.settings()
        sid = str(next(self._ids))
        if not settings.completion.enabled:
            return self._answer(snap, "", "disabled", sid, started)
        prefix, suffix = snap.model_text()
        inflight = self._inflight.get(snap.uri)
        if inflight is not None and not inflight.task.done() and moved_away(inflight, prefix, suffix):
            inflight.task.cancel()  # the cursor moved away: that work is of no use now
        delay = 0.0 if invoked else self.debounce.delay_ms(snap.uri, time.monotonic())
        task = asyncio.ensure_future(self._compute(snap, settings, delay))
        self._inflight[snap.uri] = mine = _Inflight(prefix, suffix, task)
        try:
            text, info = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # $/cancelRequest: stop the engine's work too
                task.cancel()
                raise
            return self._answer(snap, "", "superseded", sid, started, debounce_ms=delay)
        except EngineUnavailable as e:
            self.on_engine_error(e)
            return self._answer(snap, "", "no_engine", sid, started, debounce_ms=delay, error=str(e))
        except EngineError as e:
            if e.code in (ErrorCode.SUPERSEDED, ErrorCode.CANCELLED):
                return self._answer(snap, "", "superseded", sid, started, debounce_ms=delay)
            log.warning("engine error: %s", e)
            return self._answer(snap, "", "error", sid, started, debounce_ms=delay, error=str(e))
        except Exception as e:
            log.error("completion failed", exc_info=e)
            return self._answer(snap, "", "error", sid, started, debounce_ms=delay, error=repr(e))
        finally:
            if self._inflight.get(snap.uri) is mine:
                del self._inflight[snap.uri]
        return self._answer(snap, text, info.pop("served"), sid, started, debounce_ms=delay, **info)

    async def prefill(self, snap: Snapshot) -> dict | None:
        """Warm the engine's cache for a document just opened: its context chunks (the imported
        files come first, wherever the cursor goes) and file header, as a background job that
        yields to every completion."""
        settings = self.settings()
        root = self.workspace.root_for(snap.path)
        if not settings.context.enabled or root is None or not root.built.is_set():
            return None
        session = await self.engine()
        budget = context_budget(
            session.context_length,
            settings.completion.max_tokens,
            *snap.model_text(),
            settings.context.budget_tokens,
        )
        chunks = await self.workspace.chunks(snap.path, snap.text, snap.offset, budget)
        if not chunks:
            return None
        params = {"prefix": "", "suffix": "", "path": snap.rel, "document": snap.uri}
        try:
            return await session.with_context("prefill", params, chunks)
        except (EngineError, EngineUnavailable) as e:
            log.info("prefill skipped: %s", e)
            return None

    async def _compute(self, snap: Snapshot, settings: Settings, delay_ms: float) -> tuple[str, dict]:
        """The engine's suggestion for `snap`, post-processed, and what it cost."""
        session = await self.engine()
        multiline = wants_multiline(snap, settings.completion)
        prefix, suffix = snap.model_text()
        budget = 0
        if settings.context.enabled:
            budget = context_budget(
                session.context_length, settings.completion.max_tokens, prefix, suffix,
                settings.context.budget_tokens,
            )  # fmt: skip
        t0 = time.monotonic()
        try:
            chunks = await self.workspace.chunks(snap.path, snap.text, snap.offset, budget) if budget else []
        except Exception:
            log.exception("building the context failed; completing without it")
            chunks = []
        context_ms = (time.monotonic() - t0) * 1e3
        params, text = document_params(snap, settings.completion, multiline)
        if delay_ms > 0:
            params["delay_ms"] = round(max(0.0, delay_ms - context_ms), 3)  # the rest of the debounce
        if not settings.completion.typed_along:
            params["typed_ahead"] = False
        unsent = sum(c.key not in session.held.chunk_keys for c in chunks)
        result = await session.complete(params, chunks, text=text)
        raw = result.get("text", "")
        return finish(raw, snap, multiline), {
            "served": SERVED.get(result.get("served"), result.get("served") or "model"),
            "raw": raw,
            "multiline": multiline,
            "context": {
                "chunks": len(chunks),
                "sent_text": unsent,
                "budget": budget,
                "ms": round(context_ms, 3),
            },
            "cache": result.get("cache"),
            "engine_timing": result.get("timing"),
            "tokens": result.get("tokens"),
            "stopped": result.get("stopped"),
            "rpc_bytes": result.get("rpc_bytes"),
        }
