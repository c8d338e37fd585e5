"""The agent's tool loop against a real engine process serving the embedded model: grounded calls,
the three edit formats, consent (the loop never writes), the limits, repeated calls, the engine's
cache carried from step to step, and the request-side checks of limits and plans."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time

import pytest
from test_engine_rpc import EngineProcess
from test_http import request

from engine.embedded import embedded_model_dir
from engine.rpc import EngineClient
from mellum_lsp.agent.consent import ApplyOutcome
from mellum_lsp.agent.conversation import Conversations
from mellum_lsp.agent.loop import AgentLoop, Limits, PlanStep, plan_steps
from mellum_lsp.agent.paths import WorkspaceFiles
from mellum_lsp.agent.tools import TOOL_NAMES, Toolbox
from mellum_lsp.agent.transcript import render
from mellum_lsp.context import RepoIndex

BROKEN = "def area(width, height)\n    return width * height\n\n\ndef perimeter(width, height):\n    return 2 * (width + height)\n"
FIXED = BROKEN.replace("height)\n", "height):\n", 1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("sock")
    d.chmod(0o700)
    proc = EngineProcess(embedded_model_dir(), d / "agent.sock", "--backend", "ort")
    yield proc
    proc.stop()


class Engine:
    """An engine connection as the loop uses it (chat steps; FIM fixes through `edits.generate`)."""

    def __init__(self, client: EngineClient, info: dict) -> None:
        self.client, self.info = client, info

    async def chat(self, params, on_partial=None):
        return await self.client.request("chat", params, on_partial)

    async def request(self, method, params=None, on_partial=None):
        return await self.client.request(method, params, on_partial)

    async def complete(self, params, chunks=(), on_partial=None, text=None):
        return await self.client.request("complete", params, on_partial)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "geometry.py").write_text(BROKEN)
    (root / "main.py").write_text("from geometry import area\n\nprint(area(2, 3))\n")
    return root


class Run:
    def __init__(self, result, loop, answers, emitted):
        self.result, self.loop, self.answers, self.emitted = result, loop, answers, emitted


def run(
    engine, repo, *, edit_format="fim", plan=(), limits=Limits(steps=4), answer=True, grounded=True
) -> Run:
    async def go():
        client = await EngineClient.connect(engine.sock)
        try:
            eng = Engine(client, await client.request("handshake"))
            index = RepoIndex(str(repo))
            index.build()
            toolbox = Toolbox(WorkspaceFiles([str(repo)]), [index], edit_format)
            answers, emitted = [], []

            async def apply(edit):
                answers.append(edit)
                return ApplyOutcome(answer, "" if answer else "the user refused the edit")

            loop = AgentLoop(
                eng, toolbox, Conversations().new("agent", "fix"), apply, limits, plan=plan, edit_engine=eng,
                emit=lambda kind, text: emitted.append((kind, text)), grounded=grounded,
            )  # fmt: skip
            return Run(await loop.run("Fix the syntax error in geometry.py"), loop, answers, emitted)
        finally:
            await client.close()

    return asyncio.run(asyncio.wait_for(go(), 300))


def test_a_fim_fix_is_offered_and_the_loop_never_writes(engine, repo):
    r = run(engine, repo, plan=["read_file", "propose_edit", "read_file"], limits=Limits(steps=3))
    steps = r.result.steps
    assert [s.tool for s in steps] == ["read_file", "propose_edit", "read_file"]
    (edit,) = r.answers
    assert (
        edit.ref.shown == "geometry.py" and edit.new == FIXED and edit.search == "def area(width, height)\n"
    )
    assert (repo / "geometry.py").read_text() == BROKEN  # the client applies edits, never the loop
    # the accepted edit is what the next read shows, before the editor reports it
    assert (
        "geometry.py, lines 1-6 of 6; syntax: no syntax errors" in r.loop.conversation.messages[-1]["content"]
    )
    assert r.result.edits[0]["status"] == "applied"
    # each step's prompt starts with the previous one's: the engine serves it from its cache
    assert (
        steps[1].reused_tokens >= steps[0].prompt_tokens and steps[2].reused_tokens >= steps[1].prompt_tokens
    )
    assert "".join(t for k, t in r.emitted if k == "content") == render(r.loop.conversation).split("\n", 1)[1]


def test_a_refused_edit_is_the_models_next_message(engine, repo):
    r = run(engine, repo, plan=["read_file", "propose_edit"], limits=Limits(steps=2), answer=False)
    assert r.result.edits[0]["status"] == "refused" and not r.result.steps[1].ok
    last = r.loop.conversation.messages[-1]
    assert last["role"] == "tool" and "not applied: the user refused the edit" in last["content"]


def test_the_block_format_asks_for_the_replacement_as_code(engine, repo):
    plan = [
        "read_file",
        PlanStep("propose_edit", {"path": "geometry.py", "search": "def area(width, height)\n"}),
    ]
    r = run(engine, repo, edit_format="block", plan=plan, limits=Limits(steps=2))
    roles = [m["role"] for m in r.loop.conversation.messages[-4:]]
    assert roles == ["assistant", "tool", "assistant", "user"]  # call, "write the block", block, outcome
    block = r.loop.conversation.messages[-2]["content"]
    assert block.startswith("<<<<<<< SEARCH\ndef area(width, height)\n=======\n") and block.endswith(
        ">>>>>>> REPLACE\n"
    )
    assert r.result.steps[1].requests == 2
    edit = r.result.edits[0]
    # whatever the tiny model wrote was judged like a code action's edit: offered only when valid
    assert edit["status"] in ("applied", "invalid") and (edit["status"] == "applied") == bool(r.answers)


def test_the_json_format_takes_the_replacement_from_the_call(engine, repo):
    args = {
        "path": "geometry.py",
        "search": "def area(width, height)\n",
        "replace": "def area(width, height):\n",
    }
    r = run(
        engine,
        repo,
        edit_format="json",
        plan=["read_file", PlanStep("propose_edit", args)],
        limits=Limits(steps=2),
    )
    assert r.answers[0].new == FIXED and r.result.edits[0]["status"] == "applied"


def test_limits_end_a_run_with_a_summary(engine, repo):
    r = run(engine, repo, limits=Limits(steps=2))
    assert r.result.status == "limit" and "step limit (2)" in r.result.summary and len(r.result.steps) == 2
    r = run(engine, repo, limits=Limits(tokens=40, steps=20))
    assert r.result.status == "limit" and "token limit (40)" in r.result.summary
    r = run(engine, repo, limits=Limits(seconds=0.001, steps=20))
    assert r.result.status == "limit" and "time limit" in r.result.summary
    assert r.loop.conversation.entries[-1].kind == "note"


def test_the_same_call_again_and_again_ends_the_run(engine, repo):
    plan = [PlanStep("search", {"query": "area"})] * 3
    r = run(engine, repo, plan=plan, limits=Limits(steps=10))
    assert r.result.status == "stuck" and len(r.result.steps) == 3


def test_every_call_is_valid_grounded_or_not(engine, repo):
    for grounded in (True, False):
        r = run(engine, repo, limits=Limits(steps=4), grounded=grounded)
        assert all(
            s.tool in TOOL_NAMES and s.valid for s in r.result.steps
        )  # well-formed calls of offered tools
        if grounded:  # the grammar keeps paths and lines inside the workspace: every call can run
            assert all(s.ok for s in r.result.steps)


def test_requests_limits_and_plans_are_checked():
    assert Limits().merged({"steps": 3, "seconds": 2}) == Limits(steps=3, seconds=2.0)
    for bad, message in (({"steps": 0}, "steps must be in"), ({"steps": 1.5}, "positive integer"),
                         ({"turns": 1}, "unknown limit"), ("x", "must be an object")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            Limits().merged(bad)
    assert plan_steps(["read_file", {"tool": "search", "arguments": {"query": "x"}}]) == [
        PlanStep("read_file"),
        PlanStep("search", {"query": "x"}),
    ]
    with pytest.raises(ValueError, match=r"plan\[0\]"):
        plan_steps(["shell"])


def test_the_same_loop_runs_against_a_remote_server_with_native_tool_calls(tmp_path, repo):
    """A local engine whose chat model is an OpenAI-compatible server (our own HTTP engine here):
    calls come back as native `tool_calls`, without our grammars (`grounded=False`, "json" edits)."""
    port = random.randint(20000, 40000)
    http = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--http", f"127.0.0.1:{port}", "--backend", "ort"],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and http.poll() is None, "HTTP engine did not start"
            time.sleep(0.1)
        sock_dir = tmp_path / "s"
        sock_dir.mkdir(mode=0o700)
        front = EngineProcess(embedded_model_dir(), sock_dir / "front.sock", "--backend", "ort",
                              "--chat-remote", f"http://127.0.0.1:{port}/v1")  # fmt: skip
        try:
            r = run(front, repo, edit_format="json", plan=["list_files", "read_file"], limits=Limits(steps=3),
                    grounded=False)  # fmt: skip
        finally:
            front.stop()
    finally:
        http.terminate()
        http.wait(10)
    steps = r.result.steps
    assert [s.tool for s in steps[:2]] == ["list_files", "read_file"] and all(s.valid for s in steps)
    assert all(s.tool in TOOL_NAMES for s in steps) and r.result.status in ("limit", "stuck", "finished")
