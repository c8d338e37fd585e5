"""The agent through a real LSP client against the real engine and the embedded model: it fixes a
syntax error in a fixture repository through read_file -> propose_edit and the edit reaches the
client as an annotated `workspace/applyEdit` that needs confirmation; a refused edit leaves the
file untouched; path escapes fail as tool errors through the loop; and, on the model's own
choices, every tool call it makes is valid (what it then does is printed for the record)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from lsp_client import engine_settings
from test_e2e_chat import ChatClient

from mellum_lsp.agent.tools import TOOL_NAMES
from mellum_lsp.documents import Document

BROKEN = "def area(width, height)\n    return width * height\n\n\ndef perimeter(width, height):\n    return 2 * (width + height)\n"
FIXED = BROKEN.replace("def area(width, height)\n", "def area(width, height):\n")
MAIN = 'from geometry import area, perimeter\n\n\ndef describe(w, h):\n    return f"{area(w, h)} {perimeter(w, h)}"\n'
TASK = "Fix the syntax error in geometry.py"


@pytest.fixture
def repo(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("TOKEN = 'do not read'\n")
    root = tmp_path / "repo"
    (root / "util").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "geometry.py").write_text(BROKEN)
    (root / "main.py").write_text(MAIN)
    (root / "util" / "strings.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    (root / ".gitignore").write_text("notes.txt\n")
    (root / "notes.txt").write_text("private notes\n")
    os.symlink(outside / "secret.py", root / "link_out.py")
    return root


@pytest.fixture
async def agent(engine, repo, server_env, monkeypatch):
    client = await ChatClient(str(repo), engine_settings(engine), server_env, monkeypatch).start()
    await client.session.indexed()
    yield client
    await client.session.stop()


def apply_to_disk(params: dict) -> dict:
    """What an editor does once the user accepts: the edits land in the file."""
    for change in params["edit"]["documentChanges"]:
        path = change["textDocument"]["uri"].removeprefix("file://")
        with open(path) as f:
            doc = Document(change["textDocument"]["uri"], f.read())
        edits = sorted(
            change["edits"], key=lambda e: (e["range"]["start"]["line"], e["range"]["start"]["character"])
        )
        text = doc.text
        for e in reversed(edits):
            start = doc.offset_at(_pos(e["range"]["start"]))
            end = doc.offset_at(_pos(e["range"]["end"]))
            text = text[:start] + e["newText"] + text[end:]
        with open(path, "w") as f:
            f.write(text)
    return {"applied": True}


class _pos:
    def __init__(self, p: dict) -> None:
        self.line, self.character = p["line"], p["character"]


def assert_needs_confirmation(params: dict) -> None:
    edit = params["edit"]
    annotations = edit["changeAnnotations"]
    assert annotations["mellum"]["label"] == "Mellum" and annotations["mellum"]["needsConfirmation"] is True
    for change in edit["documentChanges"]:
        assert change["edits"] and all(e["annotationId"] == "mellum" for e in change["edits"])


async def test_the_agent_fixes_a_syntax_error_through_read_file_and_propose_edit(agent, repo):
    agent.apply_policy = apply_to_disk
    result = await agent.request(
        "mellum/agent",
        {
            "task": TASK,
            "toolPlan": ["read_file", "propose_edit"],
            "limits": {"steps": 2},
            "partialResultToken": "a",
        },
    )
    steps = result["steps"]
    assert [s["tool"] for s in steps] == ["read_file", "propose_edit"] and all(s["valid"] for s in steps)
    assert steps[0]["arguments"] == {"path": "geometry.py"}  # the model chose the file
    assert steps[1]["arguments"]["search"] == "def area(width, height)\n"  # and the broken line
    assert result["edits"][0]["status"] == "applied", result
    (params,) = agent.applied
    assert_needs_confirmation(params)
    assert params["edit"]["documentChanges"][0]["textDocument"]["uri"] == (repo / "geometry.py").as_uri()
    assert (repo / "geometry.py").read_text() == FIXED
    compile(FIXED, "geometry.py", "exec")
    assert result["status"] == "limit" and "edits applied: geometry.py" in result["summary"]
    streamed = "".join(p["text"] for p in agent.progress["a"] if p.get("kind") == "content")
    transcript = await agent.transcript(result["transcript"])
    assert transcript == f"# Mellum agent: {TASK}\n" + streamed  # the stream reads like the document
    assert "+def area(width, height):" in transcript and "(applied)" in transcript


async def test_a_refused_edit_leaves_the_file_untouched(agent, repo):
    agent.apply_policy = lambda params: {"applied": False}
    before = (repo / "geometry.py").stat()
    result = await agent.request(
        "mellum/agent", {"task": TASK, "toolPlan": ["read_file", "propose_edit"], "limits": {"steps": 3}}
    )
    assert len(agent.applied) == 1 and result["edits"][0]["status"] == "refused"
    assert_needs_confirmation(agent.applied[0])
    after = (repo / "geometry.py").stat()
    assert (repo / "geometry.py").read_text() == BROKEN and after.st_mtime_ns == before.st_mtime_ns
    transcript = await agent.transcript(result["transcript"])
    assert "was not applied: the user refused the edit. The file is unchanged." in transcript
    assert result["steps"][1]["ok"] is False


async def test_path_escapes_through_the_loop_are_tool_errors(agent, repo, tmp_path):
    secret = str(tmp_path / "outside" / "secret.py")
    plan = [
        {"tool": "read_file", "arguments": {"path": "../outside/secret.py"}},
        {"tool": "read_file", "arguments": {"path": secret}},
        {"tool": "read_file", "arguments": {"path": "link_out.py"}},
        {"tool": "read_file", "arguments": {"path": "notes.txt"}},
        {"tool": "list_files", "arguments": {"path": "../outside"}},
    ]
    result = await agent.request(
        "mellum/agent", {"task": "Read the secret", "toolPlan": plan, "limits": {"steps": 5}}
    )
    steps = result["steps"]
    assert [s["arguments"]["path"] for s in steps] == [p["arguments"]["path"] for p in plan]
    errors = [s["error"] for s in steps]
    assert all(s["valid"] and not s["ok"] for s in steps)
    assert "contains '..'" in errors[0] and "outside the workspace" in errors[1]
    assert "symbolic link" in errors[2] and ".gitignore" in errors[3] and "'..'" in errors[4]
    transcript = await agent.transcript(result["transcript"])
    assert "do not read" not in transcript and "private notes" not in transcript
    assert transcript.count("\nError:\n") == 5


async def test_on_its_own_choices_every_call_the_model_makes_is_valid(agent, repo):
    agent.apply_policy = apply_to_disk
    result = await agent.request("mellum/agent", {"task": TASK, "limits": {"steps": 8}})
    steps = result["steps"]
    assert steps and all(s["valid"] and s["tool"] in TOOL_NAMES for s in steps), steps
    for params in agent.applied:
        assert_needs_confirmation(params)
    record = {"status": result["status"], "calls": [(s["tool"], s["arguments"], s["ok"]) for s in steps],
              "edits": result["edits"], "seconds": result["seconds"]}  # fmt: skip
    print("agent on its own choices:", json.dumps(record), file=sys.stderr)
