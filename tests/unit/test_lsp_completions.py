"""The language server's per-request policy (CompletionService) against a scripted engine:
cancel on move, cancellation, the debounce handed to the engine, the document sent as an edit,
post-processing. Typed-along serving and superseding are the engine's (tests/unit/test_engine.py,
tests/unit/test_engine_inputs.py) and are checked end to end in tests/e2e."""

from __future__ import annotations

import asyncio
import time

import pytest

from mellum_lsp.features.completions import CompletionService
from mellum_lsp.features.debounce import DebouncePolicy
from mellum_lsp.features.pipeline import Snapshot
from mellum_lsp.features.workspace import WorkspaceContext
from mellum_lsp.held import Held
from mellum_lsp.settings import parse_settings


class ScriptedEngine:
    """Answers `complete` with `reply` once the test opens the request's gate."""

    context_length = 4096

    def __init__(self, reply: str = "ute(a, b)", served: str = "model") -> None:
        self.reply, self.served = reply, served
        self.held = Held()
        self.calls: list[dict] = []
        self.gates: list[asyncio.Event] = []
        self.cancelled = 0
        self.started = asyncio.Event()

    async def complete(self, params: dict, chunks=(), on_partial=None, text=None) -> dict:
        self.calls.append(dict(params, doc=self.held.document(params["document"], text)))
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {"text": self.reply, "served": self.served, "cache": {"prompt_tokens": 10, "reused_tokens": 9}}

    async def wait_calls(self, n: int) -> None:
        while len(self.calls) < n:
            self.started.clear()
            await self.started.wait()

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


def make(engine: ScriptedEngine, **completion) -> CompletionService:
    settings, problems = parse_settings(
        {"completion": {"debounceMs": 0, **completion}, "context": {"enabled": False}}
    )
    assert not problems

    async def get_engine():
        return engine

    return CompletionService(lambda: settings, get_engine, WorkspaceContext(lambda p: None),
                             DebouncePolicy(settings.completion.debounce_ms))  # fmt: skip


def snap(prefix: str, suffix: str = "\n", uri: str = "file:///w/a.py") -> Snapshot:
    return Snapshot(uri, prefix + suffix, len(prefix), "/w/a.py", "a.py", "python")


async def test_model_answer_is_post_processed_and_kept():
    engine = ScriptedEngine("ute(a, b)\nmore lines")
    service = make(engine, multiline=False)
    task = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    assert engine.calls[0]["stop"] == ["\n"] and engine.calls[0]["document"] == "file:///w/a.py"
    engine.release_all()
    s = await task
    assert (s.text, s.served) == ("ute(a, b)", "model")
    assert s.metrics["cache"]["reused_tokens"] == 9


async def test_the_engines_typed_ahead_answer_counts_as_typed_along():
    engine = ScriptedEngine("te(a, b)", served="typed_ahead")
    service = make(engine)
    task = asyncio.ensure_future(service.suggest(snap("x = compu")))
    await engine.wait_calls(1)
    engine.release_all()
    s = await task
    assert (s.text, s.served) == ("te(a, b)", "typed_along")


async def test_typing_on_keeps_the_engine_work_and_sends_one_edit():
    engine = ScriptedEngine()
    service = make(engine)
    first = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    second = asyncio.ensure_future(service.suggest(snap("x = compX")))
    await engine.wait_calls(2)
    assert engine.cancelled == 0  # it extends the first: the engine decides (follow or supersede)
    assert engine.calls[0]["doc"] == {"version": 1, "text": "x = comp\n"} and engine.calls[0]["offset"] == 8
    assert engine.calls[1]["doc"] == {"version": 2, "base": 1, "edit": [8, 8, "X"]}
    assert "prefix" not in engine.calls[1] and engine.calls[1]["offset"] == 9
    engine.release_all()
    assert (await first).served == (await second).served == "model"


async def test_moving_the_cursor_cancels_the_older_engine_request():
    engine = ScriptedEngine()
    service = make(engine)
    first = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    second = asyncio.ensure_future(service.suggest(snap("x = co")))  # backspace
    assert (await first).served == "superseded"
    await engine.wait_calls(2)
    assert engine.cancelled == 1
    engine.release_all()
    assert (await second).served == "model"


async def test_cancelling_the_request_cancels_the_engine_request():
    engine = ScriptedEngine()
    service = make(engine)
    task = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # let the cancellation reach the engine task
    assert engine.cancelled == 1


async def test_the_debounce_is_spent_in_the_engine():
    engine = ScriptedEngine()
    service = make(engine, debounceMs=2000)
    service.debounce.keystroke("file:///w/a.py", time.monotonic())  # first key of a burst: base delay
    task = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    assert 1900 <= engine.calls[0]["delay_ms"] <= 2000  # what is left of it once the context is built
    engine.release_all()
    await task


async def test_disabled():
    engine = ScriptedEngine()
    s = await make(engine, enabled=False).suggest(snap("x"))
    assert (s.text, s.served) == ("", "disabled") and not engine.calls


async def test_an_explicit_request_skips_the_debounce():
    engine = ScriptedEngine()
    service = make(engine, debounceMs=2000)
    service.debounce.keystroke("file:///w/a.py", time.monotonic())
    task = asyncio.ensure_future(service.suggest(snap("x = comp"), invoked=True))
    await engine.wait_calls(1)
    assert "delay_ms" not in engine.calls[0]
    engine.release_all()
    assert (await task).served == "model"
