"""The per-request policy of CompletionService against a scripted engine: superseding,
cancellation, typed-along serving, debounce, post-processing."""

from __future__ import annotations

import asyncio
import time

import pytest

from mellum_lsp.features.completions import CompletionService
from mellum_lsp.features.debounce import DebouncePolicy
from mellum_lsp.features.pipeline import Snapshot
from mellum_lsp.features.workspace import WorkspaceContext
from mellum_lsp.settings import parse_settings


class ScriptedEngine:
    """Answers `complete` with `reply` once the test opens the request's gate."""

    context_length = 4096

    def __init__(self, reply: str = "ute(a, b)") -> None:
        self.reply = reply
        self.known_keys: set[str] = set()
        self.calls: list[dict] = []
        self.gates: list[asyncio.Event] = []
        self.cancelled = 0
        self.started = asyncio.Event()

    async def complete(self, params: dict, chunks=(), on_partial=None) -> dict:
        self.calls.append(params)
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {"text": self.reply, "served": "model", "cache": {"prompt_tokens": 10, "reused_tokens": 9}}

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


async def test_typing_along_is_served_without_the_engine():
    engine = ScriptedEngine()
    service = make(engine)
    task = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    engine.release_all()
    await task
    s = await service.suggest(snap("x = compu"))
    assert (s.text, s.served) == ("te(a, b)", "typed_along")
    s = await service.suggest(snap("x = compute"))
    assert (s.text, s.served) == ("(a, b)", "typed_along")
    assert len(engine.calls) == 1


async def test_a_newer_request_supersedes_and_typing_on_keeps_the_engine_work():
    engine = ScriptedEngine()
    service = make(engine)
    first = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await engine.wait_calls(1)
    second = asyncio.ensure_future(service.suggest(snap("x = compX")))
    assert (await first).served == "superseded"
    await engine.wait_calls(2)
    assert engine.cancelled == 0  # it extends the first: the engine decides (follow or supersede)
    engine.release_all()
    assert (await second).served == "model"


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


async def test_a_request_superseded_during_its_debounce_never_reaches_the_engine():
    engine = ScriptedEngine()
    service = make(engine, debounceMs=2000)
    service.debounce.keystroke("file:///w/a.py", time.monotonic())  # first key of a burst: base delay
    first = asyncio.ensure_future(service.suggest(snap("x = comp")))
    await asyncio.sleep(0)  # let it start waiting
    second = asyncio.ensure_future(service.suggest(snap("x = compu")))
    assert (await first).served == "superseded"
    assert engine.calls == []
    second.cancel()


async def test_disabled():
    engine = ScriptedEngine()
    s = await make(engine, enabled=False).suggest(snap("x"))
    assert (s.text, s.served) == ("", "disabled") and not engine.calls


async def test_an_explicit_request_skips_the_debounce():
    engine = ScriptedEngine()
    service = make(engine, debounceMs=2000)
    service.debounce.keystroke("file:///w/a.py", time.monotonic())
    task = asyncio.ensure_future(service.suggest(snap("x = comp"), invoked=True))
    await engine.wait_calls(1)  # went straight to the engine
    engine.release_all()
    assert (await task).served == "model"
