"""Session-level behaviour: settings problems, progress, file watching, acceptance counters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lsp_client import Session, capabilities, engine_settings
from lsprotocol import types

pytestmark = pytest.mark.slow


async def test_invalid_settings_are_named_and_defaults_used(engine, workspace, server_env):
    settings = engine_settings(engine)
    settings["completion"] = {"maxTokens": "lots", "debounceMs": 0}
    lsp = await Session(str(workspace), settings, capabilities(), server_env).start()
    try:
        text = " ".join(m.message for m in lsp.client.messages)
        assert "mellum.completion.maxTokens" in text and "using 64" in text
        status = await lsp.request("mellum/status")
        assert any("maxTokens" in p for p in status["settingsProblems"])
    finally:
        await lsp.stop()


async def test_progress_watchers_and_watched_file_updates(lsp, workspace):
    status = await lsp.indexed()
    (root,) = status["roots"].values()
    reports = [r for rs in lsp.client.progress_reports.values() for r in rs]
    assert "Mellum: indexing" in [r.title for r in reports if isinstance(r, types.WorkDoneProgressBegin)]
    assert any(isinstance(r, types.WorkDoneProgressEnd) and "indexed" in r.message for r in reports)
    assert [r.method for r in lsp.registrations] == [types.WORKSPACE_DID_CHANGE_WATCHED_FILES]

    new_file = workspace / "inventory" / "pricing.py"
    new_file.write_text("def discount(price: float, rate: float) -> float:\n    return price * (1 - rate)\n")
    try:
        lsp.client.workspace_did_change_watched_files(
            types.DidChangeWatchedFilesParams(
                changes=[types.FileEvent(uri=new_file.as_uri(), type=types.FileChangeType.Created)]
            )
        )
        status = await lsp.indexed()
        assert next(iter(status["roots"].values()))["files"] == root["files"] + 1
    finally:
        new_file.unlink()
        lsp.client.workspace_did_change_watched_files(
            types.DidChangeWatchedFilesParams(
                changes=[types.FileEvent(uri=new_file.as_uri(), type=types.FileChangeType.Deleted)]
            )
        )
        status = await lsp.indexed()
        assert next(iter(status["roots"].values()))["files"] == root["files"]


async def test_feedback_commands_update_local_counters(engine, workspace, server_env):
    lsp = await Session(str(workspace), engine_settings(engine), capabilities(), server_env).start()
    try:
        args = [{"id": "1", "uri": "file:///x.py", "length": 12, "language": "python"}]
        for command in ("mellum.accepted", "mellum.partiallyAccepted", "mellum.rejected"):
            await lsp.client.workspace_execute_command_async(
                types.ExecuteCommandParams(command=command, arguments=args)
            )
        status = await lsp.request("mellum/status")
        assert status["session"] == {"accepted": 1, "partially_accepted": 1, "rejected": 1}
    finally:
        await lsp.stop()  # flushes the counters
    out = subprocess.run([sys.executable, "-m", "mellum_lsp.cli", "stats", "--json"], capture_output=True,
                         text=True, env={**__import__("os").environ, **server_env}, check=True)  # fmt: skip
    data = json.loads(out.stdout)
    assert data["totals"]["accepted"] >= 1 and data["totals"]["accepted_chars"] >= 12
    assert data["path"].startswith(server_env["XDG_STATE_HOME"])
