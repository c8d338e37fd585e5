"""The feature modules' pure parts, without a client: settings layers, sync, snapshots, the
completion fallback rule, feedback commands, status; and that the server registers every method."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from mellum_lsp.documents import UTF8, DocumentError, DocumentStore
from mellum_lsp.features import commands, inline, lifecycle, status, sync
from mellum_lsp.features.completions import Suggestion
from mellum_lsp.features.pipeline import Snapshot
from mellum_lsp.features.state import SettingsLayers
from mellum_lsp.features.workspace import WorkspaceContext
from mellum_lsp.server import create_server


def change(start: tuple[int, int], end: tuple[int, int], text: str):
    pos = [types.Position(line=line, character=char) for line, char in (start, end)]
    return types.TextDocumentContentChangePartial(range=types.Range(start=pos[0], end=pos[1]), text=text)


def test_settings_layers_later_sources_win_and_problems_are_shown_once():
    layers = SettingsLayers()
    settings, problems = layers.set("cli", {"model": {"backend": "ort"}, "completion": {"maxTokens": 9}})
    assert (settings.model.backend, settings.completion.max_tokens, problems) == ("ort", 9, ())
    settings, problems = layers.set("config", {"completion": {"maxTokens": 20}})
    settings, _ = layers.set("init", {"completion": {"maxTokens": 12, "debounceMs": 5}})
    assert (settings.model.backend, settings.completion.max_tokens, settings.completion.debounce_ms) == (
        "ort", 20, 5,
    )  # fmt: skip
    _, problems = layers.set("config", {"completion": {"maxTokens": "lots"}})
    assert len(problems) == 1 and "mellum.completion.maxTokens" in problems[0]
    assert layers.set("config", {"completion": {"maxTokens": "lots"}})[1] == ()  # the same problems again
    assert layers.problems == problems
    with pytest.raises(ValueError, match="unknown settings source 'editor'"):
        layers.set("editor", {})


def test_root_paths_and_watchers():
    assert lifecycle.root_paths(["file:///a/b", "untitled:x", "file:///c%20d"], "file:///r") == [
        "/a/b",
        "/c d",
    ]
    assert lifecycle.root_paths([], "file:///r/s") == ["/r/s"]
    assert lifecycle.root_paths([], None) == []
    (registration,) = lifecycle.watcher_registration().registrations
    assert registration.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES
    assert registration.register_options.watchers[0].glob_pattern == lifecycle.WATCH_GLOB


def test_apply_changes_returns_the_lines_touched():
    docs = DocumentStore(UTF8)
    doc = docs.open("file:///x.py", "a = 1\nb = 2\nc = 3\n", 1, "python")
    assert sync.apply_changes(doc, [change((1, 0), (1, 1), "bb"), change((2, 4), (2, 5), "3\nd = 4")]) == (
        1,
        3,
    )
    assert doc.text == "a = 1\nbb = 2\nc = 3\nd = 4\n"
    assert sync.apply_changes(doc, []) is None
    assert sync.apply_changes(doc, [change((40, 0), (40, 1), "e")]) == (4, 4)  # past the end: appended
    with pytest.raises(DocumentError, match="text as a string"):
        sync.apply_changes(doc, [SimpleNamespace(text=None)])


def test_watched_changes_keep_file_uris():
    events = [
        types.FileEvent(uri="file:///w/a.py", type=types.FileChangeType.Created),
        types.FileEvent(uri="file:///w/b.py", type=types.FileChangeType.Deleted),
        types.FileEvent(uri="vscode-remote://w/c.py", type=types.FileChangeType.Changed),
    ]
    assert sync.watched_changes(events) == [("/w/a.py", False), ("/w/b.py", True)]


def test_snapshot_at(tmp_path):
    (tmp_path / "pkg").mkdir()
    workspace = WorkspaceContext(lambda path: None)
    workspace.set_roots([str(tmp_path)])
    docs = DocumentStore()
    uri = (tmp_path / "pkg" / "m.py").as_uri()
    docs.open(uri, "def f():\n    return 1\n", 3, "python")
    snap, doc = inline.snapshot_at(docs, workspace, uri, types.Position(line=1, character=4))
    assert (snap.prefix, snap.suffix) == ("def f():\n    ", "return 1\n")
    assert (snap.rel, snap.language, snap.version, doc.uri) == ("pkg/m.py", "python", 3, uri)
    with pytest.raises(JsonRpcInvalidParams, match="never.py"):
        inline.snapshot_at(docs, workspace, "file:///never.py", types.Position(line=0, character=0))
    with pytest.raises(JsonRpcInvalidParams):
        inline.snapshot_at(docs, workspace, uri, types.Position(line=9, character=0))


@pytest.mark.parametrize(
    ("mode", "has_inline", "expected"),
    [("auto", False, True), ("auto", True, False), ("always", True, True), ("never", False, False)],
)
def test_use_fallback(mode, has_inline, expected):
    assert inline.use_fallback(mode, has_inline) is expected


def test_shown_event():
    snap = Snapshot("file:///x.py", "x", 1)
    assert inline.shown_event(Suggestion("", "model", "1", snap)) is None
    assert inline.shown_event(Suggestion("abc", "model", "1", snap)) == "shown"
    assert inline.shown_event(Suggestion("bc", "typed_along", "2", snap)) == "typed_along"


def test_feedback_commands():
    args = [{"id": "1", "uri": "file:///x.py", "length": 12, "acceptedLength": 4, "language": "go"}]
    assert commands.feedback("mellum.accepted", args) == ("accepted", "go", 12)
    assert commands.feedback("mellum.partiallyAccepted", args) == ("partially_accepted", "go", 4)
    assert commands.feedback("mellum.partiallyAccepted", [{"length": 7}]) == ("partially_accepted", None, 7)
    assert commands.feedback("mellum.rejected", args) == ("rejected", "go", 0)
    assert commands.feedback("mellum.accepted", []) == ("accepted", None, 0)
    assert commands.feedback("mellum.accepted", ["not an object"]) == ("accepted", None, 0)


def test_status_report_and_params(tmp_path):
    workspace = WorkspaceContext(lambda path: None)
    (root,) = workspace.set_roots([str(tmp_path)])
    report = status.status_report("9.9", "utf-8", None, [root], ("bad",), {"shown": 1})
    assert report == {
        "version": "9.9",
        "positionEncoding": "utf-8",
        "engine": None,
        "roots": {str(tmp_path): {"built": False, "files": 0}},
        "settingsProblems": ["bad"],
        "session": {"shown": 1},
    }
    assert status.param({"uri": "file:///a"}, "uri") == "file:///a"
    assert status.param(None, "uri") is None and status.param([1], "uri") is None
    doc = DocumentStore().open("file:///a", "x\ny", 2, "python")
    assert status.document_report(doc) == {"text": "x\ny", "version": 2, "lineCount": 2}


def test_every_method_is_registered_once():
    server = create_server()
    features, cmds = server.protocol.fm.features, server.protocol.fm.commands
    assert set(features) == {
        types.INITIALIZE, types.INITIALIZED, types.SHUTDOWN,
        types.TEXT_DOCUMENT_DID_OPEN, types.TEXT_DOCUMENT_DID_CHANGE, types.TEXT_DOCUMENT_DID_CLOSE,
        types.TEXT_DOCUMENT_DID_SAVE, types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
        types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS, types.WORKSPACE_DID_CHANGE_CONFIGURATION,
        types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION,
        "mellum/lastCompletion", "mellum/document", "mellum/engineStats", "mellum/status",
        "mellum/chat", "mellum/chat/reset", types.WORKSPACE_TEXT_DOCUMENT_CONTENT, "mellum/agent",
        types.TEXT_DOCUMENT_CODE_ACTION, types.CODE_ACTION_RESOLVE, types.TEXT_DOCUMENT_DIAGNOSTIC, "mellum/edit",
    }  # fmt: skip
    assert set(cmds) == set(commands.COMMANDS) | {"mellum.editWithInstruction", "mellum.explain"}
