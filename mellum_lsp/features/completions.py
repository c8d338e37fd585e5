"""One suggestion per request, on every keystroke, without wasted work.

`CompletionService.suggest(snapshot)` runs the per-request policy:
1. typed along: when the user typed the start of the document's last suggestion, answer with
   its rest at once (no debounce, no engine);
2. supersede: a newer request for the same document ends the older one with an empty answer;
   its engine work is cancelled when the cursor moved elsewhere, and left running when the new
   request extends it (the engine then serves the new one from it or supersedes it itself);
3. debounce: wait `DebouncePolicy.delay_ms`, unless a newer request comes first;
4. context chunks for the budget left by the file and the generation; the engine's `complete`;
   `finish` (post-processing); the result is kept as the document's last suggestion.
Cancelling the awaiting task ($/cancelRequest) cancels the engine request.

Every answer has metrics (served how, latency, debounce, cache reuse), passed to `on_metrics`.
Offers `Suggestion`, `CompletionService`.
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
from .pipeline import Snapshot, context_budget, engine_params, finish, wants_multiline
from .suggestions import Shown, typed_along
from .workspace import WorkspaceContext

log = logging.getLogger(__name__)


@dataclass
class Suggestion:
    text: str
    served: str  # model | typed_along | engine_typed_ahead | superseded | disabled | no_engine | error
    id: str
    snapshot: Snapshot
    metrics: dict = field(default_factory=dict)


@dataclass
class _Inflight:
    prefix: str
    suffix: str
    task: asyncio.Task


@dataclass
class _DocState:
    generation: int = 0
    shown: Shown | None = None
    shown_generation: int = 0
    inflight: _Inflight | None = None
    newer: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._docs: dict[str, _DocState] = {}
        self._ids = itertools.count(1)
        self.last_metrics: dict[str, dict] = {}

    def forget(self, uri: str) -> None:
        state = self._docs.pop(uri, None)
        if state is not None:
            state.newer.set()
            if state.inflight is not None:
                state.inflight.task.cancel()
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
        state = self._docs.setdefault(snap.uri, _DocState())
        state.generation += 1
        generation = state.generation
        state.newer.set()  # ends older requests of this document
        newer = state.newer = asyncio.Event()
        prefix, suffix = snap.prefix, snap.suffix

        if not settings.completion.enabled:
            return self._answer(snap, "", "disabled", sid, started)
        if settings.completion.typed_along:
            rest = typed_along(state.shown, prefix, suffix)
            if rest is not None:
                state.shown = Shown(prefix, suffix, rest, sid)
                return self._answer(snap, rest, "typed_along", sid, started)

        inflight = state.inflight
        if inflight is not None and not inflight.task.done():
            if inflight.suffix != suffix or not prefix.startswith(inflight.prefix):
                inflight.task.cancel()  # the cursor moved away: that work is of no use now

        delay = 0.0 if invoked else self.debounce.delay_ms(snap.uri, time.monotonic())
        if delay > 0 and await _first(newer, delay / 1e3):
            return self._answer(snap, "", "superseded", sid, started, debounce_ms=delay)
        if settings.completion.typed_along:  # an older request may have finished meanwhile
            rest = typed_along(state.shown, prefix, suffix)
            if rest is not None:
                state.shown = Shown(prefix, suffix, rest, sid)
                return self._answer(snap, rest, "typed_along", sid, started, debounce_ms=delay)

        task = asyncio.ensure_future(self._compute(snap, settings))
        state.inflight = _Inflight(prefix, suffix, task)

        def keep(t: asyncio.Task) -> None:
            if t.cancelled() or t.exception() is not None:
                return
            text = t.result()[0]
            if generation > state.shown_generation:
                state.shown, state.shown_generation = Shown(prefix, suffix, text, sid), generation

        task.add_done_callback(keep)
        waiter = asyncio.ensure_future(newer.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # $/cancelRequest: stop the engine's work too
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if not task.done():
            return self._answer(snap, "", "superseded", sid, started, debounce_ms=delay)
        if task.cancelled():
            return self._answer(snap, "", "superseded", sid, started, debounce_ms=delay)
        error = task.exception()
        if isinstance(error, EngineUnavailable):
            self.on_engine_error(error)
            return self._answer(snap, "", "no_engine", sid, started, debounce_ms=delay, error=str(error))
        if isinstance(error, EngineError):
            if error.code in (ErrorCode.SUPERSEDED, ErrorCode.CANCELLED):
                return self._answer(snap, "", "superseded", sid, started, debounce_ms=delay)
            log.warning("engine error: %s", error)
            return self._answer(snap, "", "error", sid, started, debounce_ms=delay, error=str(error))
        if error is not None:
            log.error("completion failed", exc_info=error)
            return self._answer(snap, "", "error", sid, started, debounce_ms=delay, error=repr(error))
        text, info = task.result()
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

    async def _compute(self, snap: Snapshot, settings: Settings) -> tuple[str, dict]:
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
        params = engine_params(snap, settings.completion, multiline)
        unsent = sum(c.key not in session.known_keys for c in chunks)
        result = await session.complete(params, chunks)
        text = finish(result.get("text", ""), snap, multiline)
        served = "engine_typed_ahead" if result.get("served") == "typed_ahead" else "model"
        return text, {
            "served": served,
            "raw": result.get("text", ""),
            "multiline": multiline,
            "context": {
                "chunks": len(chunks),
                "sent_text": unsent,
                "budget": budget,
                "ms": round(context_ms, 3),
            },  # fmt: skip
            "cache": result.get("cache"),
            "engine_timing": result.get("timing"),
            "tokens": result.get("tokens"),
            "stopped": result.get("stopped"),
        }


async def _first(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s`; True if `event` was set first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
        return True
    except asyncio.TimeoutError:
        return False
